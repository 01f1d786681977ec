//! Why a quorum was not reached, with the evidence.

use std::fmt;

use crate::NodeId;

/// The longest per-node failure reason kept, in bytes. Reasons come from transports
/// and remote peers; the cap keeps one error message readable and bounded.
pub const MAX_REASON_LEN: usize = 200;

/// Which operation a quorum belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A get: R replies needed.
    Read,
    /// A put: W acknowledgements needed.
    Write,
}

impl Operation {
    /// What the quorum counts, for messages.
    fn unit(self) -> &'static str {
        match self {
            Operation::Read => "replies",
            Operation::Write => "acknowledgements",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read",
            Operation::Write => "write",
        })
    }
}

/// A get or put that could not gather its quorum: how many answers it needed, how
/// many it got, and what went wrong with each node that failed.
///
/// `errors` holds at most one entry per node the coordinator contacted: the failure
/// the shell reported, or `"timeout"` for a node still silent at the deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{op} quorum not reached: needed {needed} {unit}, got {got}{details}",
    unit = op.unit(),
    details = NodeErrors(errors)
)]
#[non_exhaustive]
pub struct QuorumError {
    /// The operation that failed.
    pub op: Operation,
    /// R or W.
    pub needed: usize,
    /// Distinct replicas that answered successfully before the decision.
    pub got: usize,
    /// Per-node failures, in the order they were learnt.
    pub errors: Vec<(NodeId, String)>,
    /// Whether the deadline decided the failure (rather than too many failures).
    pub timed_out: bool,
}

impl QuorumError {
    /// A shortfall counted outside the coordinator machines, with no per-node errors
    /// (the struct is non-exhaustive, so other crates build it here).
    pub fn new(op: Operation, needed: usize, got: usize, timed_out: bool) -> Self {
        QuorumError {
            op,
            needed,
            got,
            errors: Vec::new(),
            timed_out,
        }
    }
}

/// The reason recorded for a node still silent at the deadline.
pub(crate) const TIMEOUT_REASON: &str = "timeout";

/// Formats the per-node errors as ` (n2: timeout, n3: connection refused)`, or
/// nothing when there are none.
struct NodeErrors<'a>(&'a [(NodeId, String)]);

impl fmt::Display for NodeErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (node, reason)) in self.0.iter().enumerate() {
            f.write_str(if index == 0 { " (" } else { ", " })?;
            write!(f, "{node}: {reason}")?;
        }
        if !self.0.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// `reason` cut to at most [`MAX_REASON_LEN`] bytes on a character boundary.
pub(crate) fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn message_names_needed_got_and_each_node_error() {
        let error = QuorumError {
            op: Operation::Write,
            needed: 2,
            got: 1,
            errors: vec![
                (node("n2"), "timeout".to_owned()),
                (node("n3"), "connection refused".to_owned()),
            ],
            timed_out: true,
        };
        assert_eq!(
            error.to_string(),
            "write quorum not reached: needed 2 acknowledgements, got 1 \
             (n2: timeout, n3: connection refused)"
        );
    }

    #[test]
    fn message_without_node_errors_has_no_parentheses() {
        let error = QuorumError {
            op: Operation::Read,
            needed: 2,
            got: 0,
            errors: Vec::new(),
            timed_out: false,
        };
        assert_eq!(
            error.to_string(),
            "read quorum not reached: needed 2 replies, got 0"
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_reason("short".to_owned()), "short");
        let long = "é".repeat(MAX_REASON_LEN); // two bytes per character
        let cut = bounded_reason(long);
        assert_eq!(cut.len(), MAX_REASON_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("x{}", "é".repeat(MAX_REASON_LEN));
        assert_eq!(bounded_reason(odd).len(), MAX_REASON_LEN - 1);
    }
}
