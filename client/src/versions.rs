//! What a get returns and a write takes back: the versions and their opaque context.

use bytes::Bytes;

/// An opaque causal context (Dynamo §4.4): from a get, passed to the next put or
/// delete of the key so the write supersedes the versions the get saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Context(pub(crate) Bytes);

impl Context {
    /// No context: a blind write, concurrent with every stored version.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A context from bytes a node returned earlier.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The context of an answer, copied out of it. A decoded answer's bytes are slices
    /// of the buffer the whole answer arrived in, and a context is kept far longer than
    /// its answer (one per key a client works on): held as a slice it would keep that
    /// buffer alive. `dynamoctl bench` holding the contexts of 4.8 million inserts so
    /// grew to 23 GB and was killed; a copy costs the context's few dozen bytes.
    pub(crate) fn received(bytes: &Bytes) -> Self {
        Self(Bytes::copy_from_slice(bytes))
    }

    /// The encoded context.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Whether this is the empty context.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a get returns: every concurrent version (siblings) and one context covering
/// them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    /// The concurrent values; empty when the key does not exist or was deleted.
    pub values: Vec<Bytes>,
    /// The context to pass to the next write of the key.
    pub context: Context,
}

impl Versions {
    /// Whether the key has no value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether the replicas hold diverging versions the application should reconcile.
    pub fn has_siblings(&self) -> bool {
        self.values.len() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_context_does_not_hold_the_answer_s_buffer() {
        let answer = Bytes::from(vec![7u8; 1 << 20]);
        let context = Context::received(&answer.slice(100..140));
        assert_eq!(context.as_bytes().as_ref(), &[7u8; 40][..]);
        let buffer = answer.as_ptr_range();
        let kept = context.as_bytes().as_ptr();
        assert!(
            !buffer.contains(&kept),
            "the context points into the 1 MiB answer buffer, which it keeps alive"
        );
    }
}
