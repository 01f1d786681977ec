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
