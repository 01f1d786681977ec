//! Consistent hashing: tokens, virtual nodes, and preference lists (Dynamo §4.2, §4.3).
//!
//! No I/O: a ring is a value computed from the member set.

mod token;

pub use token::{Token, TokenRange};
