//! Node identities: the stable names of physical nodes.
//!
//! A node id is what the ring, the member table and vector clocks call a node. In
//! Kubernetes it is the pod name (`dynamo-0`), so ids are short, printable ASCII, and
//! bounded so a hostile peer cannot make us hold a megabyte-long name.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest node id accepted, in bytes (a DNS name's limit).
pub const MAX_NODE_ID_LEN: usize = 253;

/// The name of a physical node. Cheap to clone (shared string).
///
/// Valid ids are 1 to [`MAX_NODE_ID_LEN`] bytes of ASCII letters, digits, `-`, `_`, `.`
/// and `:`. Construction through [`NodeId::new`] or deserialization checks this, so a
/// `NodeId` value is always valid.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// The id was empty.
    #[error("node id is empty")]
    Empty,
    /// The id was longer than [`MAX_NODE_ID_LEN`].
    #[error("node id is {len} bytes, the limit is {MAX_NODE_ID_LEN}")]
    TooLong {
        /// Length of the rejected id.
        len: usize,
    },
    /// The id held a character outside the allowed set.
    #[error("node id contains {0:?}; allowed are ASCII letters, digits, '-', '_', '.', ':'")]
    BadChar(char),
}

impl NodeId {
    /// Checks and wraps a node id.
    ///
    /// # Errors
    /// [`NodeIdError`] when the id is empty, too long, or has a disallowed character.
    pub fn new(id: impl AsRef<str>) -> Result<Self, NodeIdError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(NodeIdError::TooLong { len: id.len() });
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(NodeIdError::BadChar(bad));
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodeId> for String {
    fn from(value: NodeId) -> Self {
        value.0.to_string()
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_pod_names_and_host_ports() {
        for ok in ["dynamo-0", "a", "node_1.example", "127.0.0.1:7000"] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_empty_long_and_odd_characters() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(
            NodeId::new("x".repeat(254)),
            Err(NodeIdError::TooLong { len: 254 })
        );
        assert_eq!(NodeId::new("a b"), Err(NodeIdError::BadChar(' ')));
        assert_eq!(NodeId::new("é"), Err(NodeIdError::BadChar('é')));
    }

    #[test]
    fn deserialization_validates() {
        let good: NodeId = postcard::from_bytes(&postcard::to_allocvec("n1").unwrap()).unwrap();
        assert_eq!(good.as_str(), "n1");
        let bad = postcard::from_bytes::<NodeId>(&postcard::to_allocvec("n 1").unwrap());
        assert!(bad.is_err());
    }
}
