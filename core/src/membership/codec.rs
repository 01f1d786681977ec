//! The member table's wire and disk format, and its digest.
//!
//! Layout: one format byte ([`TABLE_FORMAT_VERSION`]), then the postcard encoding of
//! the members as a sequence in id order. The encoding is canonical (one table, one
//! byte string), so equal digests mean equal tables and gossip can skip the transfer.
//!
//! Formats: 1 wrote each member as `(id, address, weight, state, version)`; 2 appends
//! the optional client address; 3 appends the settled weight (see
//! [`Member::settled_weight`]); 4 appends the zone ([`Member::zone`]). The decoder reads
//! all four: a table persisted by a node of an earlier release loads (its members have
//! no client address until each node announces its own, their settled weight is their
//! weight, and they have no zone).
//!
//! Format 4 is written only while some member has a zone, so a cluster that uses no
//! zones keeps gossiping tables the previous release reads. Give zones once every node
//! runs a release that reads format 4 (older nodes refuse its gossip).
//!
//! # Rolling upgrades
//!
//! The encoder writes format 2 while every member's settled weight equals its weight,
//! which is lossless (format 2 decodes with settled = weight), and format 3 only while
//! a weight change is being handed over. The format is a function of the table, so the
//! encoding stays canonical and digests still compare tables. So nodes of the previous
//! release keep reading the table through a rolling upgrade; only while a weight change
//! is pending do they refuse the new nodes' gossip (format 3 is unknown to them), keep
//! their old table (the old weight in both rings, which is the settled ring the new
//! nodes read from), and learn the new weight in one step when the hand-over completes
//! and the table is format 2 again. Writes they coordinate meanwhile reach the settled
//! replicas only, like a coordinator that has not heard of a change (see
//! [`crate::transfer`]'s known limits): do not change weights until every node runs a
//! release that reads format 3.

use std::collections::BTreeMap;
use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::error::DecodeError;
use super::limits::{MAX_ENCODED_LEN, MAX_MEMBERS};
use super::table::{Member, MemberTable, RawMember, RawMemberV1, RawMemberV2, RawMemberV3};
use crate::NodeId;

/// The newest format byte that starts an encoded table (written while a member has a
/// zone; see the [module docs](self)). A new layout gets a new number and the decoder
/// keeps reading the old ones.
pub const TABLE_FORMAT_VERSION: u8 = 4;

/// The format with settled weights but no zones: written while a weight change is
/// pending and no member has a zone.
const TABLE_FORMAT_V3: u8 = 3;

/// The format without settled weights: written while no weight change is pending, so
/// nodes of the previous release keep reading the table.
const TABLE_FORMAT_V2: u8 = 2;

/// The first format, without client addresses: still read, never written.
const TABLE_FORMAT_V1: u8 = 1;

/// The MD5 of a table's canonical encoding: peers whose digests agree hold equal
/// tables.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableDigest(pub [u8; 16]);

impl fmt::Debug for TableDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableDigest({self})")
    }
}

impl fmt::Display for TableDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl MemberTable {
    /// The table's canonical encoding, for gossip and for persisting: format 2 while no
    /// member's settled weight differs from its weight, format 3 otherwise (see the
    /// [module docs](self)).
    pub fn encode(&self) -> Vec<u8> {
        // Postcard cannot fail on strings, integers, unit enums and a sequence of
        // known length written to a growable buffer.
        if self.iter().any(|m| m.zone().is_some()) {
            let members: Vec<&Member> = self.iter().collect();
            postcard::to_extend(&members, vec![TABLE_FORMAT_VERSION])
                .expect("postcard encodes a member list")
        } else if self.iter().any(|m| m.settled_weight() != m.weight()) {
            let members: Vec<_> = self
                .iter()
                .map(|m| {
                    (
                        m.id().as_str(),
                        m.address(),
                        m.weight(),
                        m.state(),
                        m.version(),
                        m.client_address(),
                        m.settled_weight(),
                    )
                })
                .collect();
            postcard::to_extend(&members, vec![TABLE_FORMAT_V3])
                .expect("postcard encodes a member list")
        } else {
            let members: Vec<_> = self
                .iter()
                .map(|m| {
                    (
                        m.id().as_str(),
                        m.address(),
                        m.weight(),
                        m.state(),
                        m.version(),
                        m.client_address(),
                    )
                })
                .collect();
            postcard::to_extend(&members, vec![TABLE_FORMAT_V2])
                .expect("postcard encodes a member list")
        }
    }

    /// Reads a table from bytes received from a peer or from disk.
    ///
    /// Never panics, and allocates at most in proportion to `bytes.len()`, which is
    /// capped at [`MAX_ENCODED_LEN`].
    ///
    /// # Errors
    /// [`DecodeError`] for oversized, truncated or garbage input, an unknown format,
    /// more than [`MAX_MEMBERS`] members, invalid fields, or members out of order.
    pub fn decode(bytes: &[u8]) -> Result<MemberTable, DecodeError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len() });
        }
        let (&format, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if ![
            TABLE_FORMAT_V1,
            TABLE_FORMAT_V2,
            TABLE_FORMAT_V3,
            TABLE_FORMAT_VERSION,
        ]
        .contains(&format)
        {
            return Err(DecodeError::UnsupportedFormat { found: format });
        }
        // Postcard writes a sequence's length as a varint; reading it as a u64 first
        // lets us refuse a huge count before reading any member.
        let (count, mut rest) =
            postcard::take_from_bytes::<u64>(rest).map_err(DecodeError::Malformed)?;
        if count > MAX_MEMBERS as u64 {
            return Err(DecodeError::TooManyMembers { count });
        }
        let mut members = BTreeMap::new();
        let mut last: Option<NodeId> = None;
        for _ in 0..count {
            let (raw, tail) = match format {
                TABLE_FORMAT_V1 => postcard::take_from_bytes::<RawMemberV1>(rest)
                    .map(|(raw, tail)| (RawMember::from(raw), tail)),
                TABLE_FORMAT_V2 => postcard::take_from_bytes::<RawMemberV2>(rest)
                    .map(|(raw, tail)| (RawMember::from(raw), tail)),
                TABLE_FORMAT_V3 => postcard::take_from_bytes::<RawMemberV3>(rest)
                    .map(|(raw, tail)| (RawMember::from(raw), tail)),
                _ => postcard::take_from_bytes::<RawMember>(rest),
            }
            .map_err(DecodeError::Malformed)?;
            rest = tail;
            let member = Member::try_from(raw)?;
            if last.as_ref().is_some_and(|last| last >= member.id()) {
                return Err(DecodeError::Unordered {
                    id: member.id().clone(),
                });
            }
            last = Some(member.id().clone());
            members.insert(member.id().clone(), member);
        }
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { len: rest.len() });
        }
        Ok(MemberTable { members })
    }

    /// The MD5 of [`encode`](Self::encode): equal for equal tables, so peers compare
    /// digests before sending whole tables.
    pub fn digest(&self) -> TableDigest {
        TableDigest(Md5::digest(self.encode()).into())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::membership::limits::{MAX_ADDRESS_LEN, MAX_ZONE_LEN};
    use crate::membership::table::tests::{id, tables};
    use crate::membership::{MAX_WEIGHT, MemberState};
    use crate::node_id::{MAX_NODE_ID_LEN, NodeIdError};

    fn sample() -> MemberTable {
        let mut t = MemberTable::new();
        t.join(id("dynamo-1"), "dynamo-1.dynamo:7000", 2).unwrap();
        t.join(id("dynamo-0"), "dynamo-0.dynamo:7000", 1).unwrap();
        t.mark_member(&id("dynamo-0")).unwrap();
        t.set_client_address(&id("dynamo-0"), "dynamo-0.dynamo:7001")
            .unwrap();
        t
    }

    /// Hand-encodes members after the format byte and count, to forge bad input.
    fn forged(members: &[(&str, &str, u32, u32, u64)]) -> Vec<u8> {
        let members: Vec<_> = members
            .iter()
            .map(|&(id, address, weight, state, version)| {
                (id, address, weight, state, version, None)
            })
            .collect();
        forged_v2(&members)
    }

    type ForgedMember<'a> = (&'a str, &'a str, u32, u32, u64, Option<&'a str>);

    /// Hand-encodes format 2 members, client address included.
    fn forged_v2(members: &[ForgedMember<'_>]) -> Vec<u8> {
        let mut bytes = vec![TABLE_FORMAT_V2];
        bytes = postcard::to_extend(&(members.len() as u64), bytes).unwrap();
        for member in members {
            bytes = postcard::to_extend(member, bytes).unwrap();
        }
        bytes
    }

    /// Hand-encodes a table in format 1, as a node of the previous release persisted it.
    fn forged_v1(members: &[(&str, &str, u32, u32, u64)]) -> Vec<u8> {
        let mut bytes = vec![TABLE_FORMAT_V1];
        bytes = postcard::to_extend(&(members.len() as u64), bytes).unwrap();
        for member in members {
            bytes = postcard::to_extend(member, bytes).unwrap();
        }
        bytes
    }

    type ForgedMemberV3<'a> = (&'a str, &'a str, u32, u32, u64, Option<&'a str>, u32);

    /// Hand-encodes format 3 members, settled weight included.
    fn forged_v3(members: &[ForgedMemberV3<'_>]) -> Vec<u8> {
        let mut bytes = vec![TABLE_FORMAT_V3];
        bytes = postcard::to_extend(&(members.len() as u64), bytes).unwrap();
        for member in members {
            bytes = postcard::to_extend(member, bytes).unwrap();
        }
        bytes
    }

    #[test]
    fn round_trips_and_starts_with_the_format_byte() {
        let t = sample();
        let bytes = t.encode();
        assert_eq!(bytes[0], TABLE_FORMAT_V2, "no weight change is pending");
        assert_eq!(MemberTable::decode(&bytes), Ok(t.clone()));
        assert_eq!(
            MemberTable::decode(&MemberTable::new().encode()),
            Ok(MemberTable::new())
        );
        assert_eq!(
            bytes,
            forged_v2(&[
                (
                    "dynamo-0",
                    "dynamo-0.dynamo:7000",
                    1,
                    1,
                    3,
                    Some("dynamo-0.dynamo:7001")
                ),
                ("dynamo-1", "dynamo-1.dynamo:7000", 2, 0, 1, None),
            ]),
            "the layout is the documented one"
        );
    }

    /// A member table persisted by a node of the previous release (format 1, no client
    /// addresses) still loads, and is written back in the current format.
    #[test]
    fn format_1_tables_still_decode() {
        let old = forged_v1(&[
            ("dynamo-0", "dynamo-0.dynamo:7000", 1, 1, 2),
            ("dynamo-1", "dynamo-1.dynamo:7000", 2, 0, 1),
        ]);
        let table = MemberTable::decode(&old).unwrap();
        let mut expected = MemberTable::new();
        expected
            .join(id("dynamo-1"), "dynamo-1.dynamo:7000", 2)
            .unwrap();
        expected
            .join(id("dynamo-0"), "dynamo-0.dynamo:7000", 1)
            .unwrap();
        expected.mark_member(&id("dynamo-0")).unwrap();
        assert_eq!(table, expected);
        assert!(table.iter().all(|m| m.client_address().is_none()));
        let rewritten = table.encode();
        assert_eq!(rewritten[0], TABLE_FORMAT_V2);
        assert_eq!(MemberTable::decode(&rewritten), Ok(table));
        // Format 1 is read with format 1's layout: a client address tag is trailing junk.
        let mut with_tag = forged_v1(&[("a", "a:1", 1, 0, 1)]);
        with_tag.push(0);
        assert_eq!(
            MemberTable::decode(&with_tag),
            Err(DecodeError::TrailingBytes { len: 1 })
        );
        for len in 1..old.len() {
            assert!(MemberTable::decode(&old[..len]).is_err(), "prefix {len}");
        }
    }

    /// While a weight change is pending the table is written in format 3, which carries
    /// both weights; once it settles, in format 2 again, which older nodes read.
    #[test]
    fn a_pending_weight_change_is_written_in_format_3_and_round_trips() {
        let mut t = sample();
        t.set_weight(&id("dynamo-0"), 5).unwrap();
        let bytes = t.encode();
        assert_eq!(bytes[0], TABLE_FORMAT_V3);
        let back = MemberTable::decode(&bytes).unwrap();
        assert_eq!(back, t);
        let member = back.get(&id("dynamo-0")).unwrap();
        assert_eq!((member.weight(), member.settled_weight()), (5, 1));
        assert_eq!(
            bytes,
            forged_v3(&[
                (
                    "dynamo-0",
                    "dynamo-0.dynamo:7000",
                    5,
                    1,
                    4,
                    Some("dynamo-0.dynamo:7001"),
                    1
                ),
                ("dynamo-1", "dynamo-1.dynamo:7000", 2, 0, 1, None, 2),
            ]),
            "the layout is the documented one"
        );
        let before = sample().digest();
        assert_ne!(t.digest(), before);
        t.settle_weight(&id("dynamo-0"), 5).unwrap();
        let settled = t.encode();
        assert_eq!(settled[0], TABLE_FORMAT_V2, "settled again: format 2");
        assert_eq!(MemberTable::decode(&settled), Ok(t));
    }

    /// Format 2 (a node of the previous release, or a table with nothing pending)
    /// decodes with each settled weight equal to the weight; a format 3 encoding of
    /// such a table decodes to the same table.
    #[test]
    fn format_2_tables_decode_with_settled_weights_equal_to_weights() {
        let v2 = forged_v2(&[("a", "a:1", 3, 1, 2, None), ("b", "b:1", 7, 0, 1, None)]);
        let table = MemberTable::decode(&v2).unwrap();
        for member in &table {
            assert_eq!(member.settled_weight(), member.weight());
            assert!(!member.is_reweighting());
        }
        let v3 = forged_v3(&[
            ("a", "a:1", 3, 1, 2, None, 3),
            ("b", "b:1", 7, 0, 1, None, 7),
        ]);
        assert_eq!(MemberTable::decode(&v3), Ok(table.clone()));
        assert_eq!(table.encode(), v2);
        // Format 2 is read with format 2's layout: a settled weight is trailing junk.
        let mut with_settled = forged_v2(&[("a", "a:1", 1, 0, 1, None)]);
        with_settled.push(1);
        assert_eq!(
            MemberTable::decode(&with_settled),
            Err(DecodeError::TrailingBytes { len: 1 })
        );
    }

    #[test]
    fn settled_weights_are_bounded_like_weights() {
        for bad in [0, MAX_WEIGHT + 1] {
            let bytes = forged_v3(&[("a", "a:1", 1, 1, 1, None, bad)]);
            assert_eq!(
                MemberTable::decode(&bytes),
                Err(DecodeError::InvalidWeight {
                    id: id("a"),
                    weight: bad
                })
            );
        }
        let bytes = forged_v3(&[("a", "a:1", 1, 1, 1, None, MAX_WEIGHT)]);
        let table = MemberTable::decode(&bytes).unwrap();
        assert_eq!(table.get(&id("a")).unwrap().settled_weight(), MAX_WEIGHT);
        // Truncated in the settled weight: an error, not a default.
        assert!(MemberTable::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn client_addresses_are_checked_like_addresses() {
        let bad = forged_v2(&[("a", "a:1", 1, 0, 1, Some("no-port"))]);
        assert!(matches!(
            MemberTable::decode(&bad),
            Err(DecodeError::InvalidAddress { .. })
        ));
        let good = forged_v2(&[("a", "a:1", 1, 0, 1, Some("a:2"))]);
        let table = MemberTable::decode(&good).unwrap();
        assert_eq!(table.get(&id("a")).unwrap().client_address(), Some("a:2"));
    }

    #[test]
    fn digest_tells_tables_apart() {
        let a = sample();
        let mut b = a.clone();
        assert_eq!(a.digest(), b.digest());
        b.set_weight(&id("dynamo-1"), 3).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(format!("{}", a.digest()).len(), 32);
    }

    #[test]
    fn rejects_empty_oversized_and_unknown_formats() {
        assert_eq!(MemberTable::decode(&[]), Err(DecodeError::Empty));
        let huge = vec![TABLE_FORMAT_VERSION; MAX_ENCODED_LEN + 1];
        assert_eq!(
            MemberTable::decode(&huge),
            Err(DecodeError::TooLarge {
                len: MAX_ENCODED_LEN + 1
            })
        );
        let mut bytes = sample().encode();
        for format in [0, TABLE_FORMAT_VERSION + 1, u8::MAX] {
            bytes[0] = format;
            assert_eq!(
                MemberTable::decode(&bytes),
                Err(DecodeError::UnsupportedFormat { found: format })
            );
        }
    }

    #[test]
    fn rejects_more_members_than_the_limit_before_reading_them() {
        let mut bytes = vec![TABLE_FORMAT_VERSION];
        bytes = postcard::to_extend(&(MAX_MEMBERS as u64 + 1), bytes).unwrap();
        assert_eq!(
            MemberTable::decode(&bytes),
            Err(DecodeError::TooManyMembers {
                count: MAX_MEMBERS as u64 + 1
            })
        );
        bytes.truncate(1);
        bytes = postcard::to_extend(&u64::MAX, bytes).unwrap();
        assert!(matches!(
            MemberTable::decode(&bytes),
            Err(DecodeError::TooManyMembers { .. })
        ));
    }

    #[test]
    fn rejects_invalid_fields() {
        let cases = [
            forged(&[("bad id", "a:1", 1, 0, 1)]),
            forged(&[("a", "no-port", 1, 0, 1)]),
            forged(&[("a", "a:1", 0, 0, 1)]),
            forged(&[("a", "a:1", MAX_WEIGHT + 1, 0, 1)]),
            forged(&[("a", "a:1", 1, 4, 1)]),
            forged(&[("b", "b:1", 1, 0, 1), ("a", "a:1", 1, 0, 1)]),
            forged(&[("a", "a:1", 1, 0, 1), ("a", "a:1", 1, 0, 1)]),
        ];
        let errors: Vec<_> = cases
            .iter()
            .map(|c| MemberTable::decode(c).unwrap_err())
            .collect();
        assert!(matches!(
            errors[0],
            DecodeError::InvalidId(NodeIdError::BadChar(' '))
        ));
        assert!(matches!(errors[1], DecodeError::InvalidAddress { .. }));
        assert!(matches!(
            errors[2],
            DecodeError::InvalidWeight { weight: 0, .. }
        ));
        assert!(matches!(errors[3], DecodeError::InvalidWeight { .. }));
        assert!(
            matches!(errors[4], DecodeError::Malformed(_)),
            "unknown state"
        );
        assert_eq!(errors[5], DecodeError::Unordered { id: id("a") });
        assert_eq!(errors[6], DecodeError::Unordered { id: id("a") });
    }

    #[test]
    fn rejects_truncation_and_trailing_bytes() {
        let bytes = sample().encode();
        for len in 1..bytes.len() {
            assert!(
                MemberTable::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            MemberTable::decode(&longer),
            Err(DecodeError::TrailingBytes { len: 1 })
        );
    }

    /// The size bound holds for the largest table that can be built.
    #[test]
    fn a_full_table_of_the_longest_fields_fits_the_size_bound() {
        let mut t = MemberTable::new();
        let address = format!("{}:65535", "h".repeat(MAX_ADDRESS_LEN - 6));
        for i in 0..MAX_MEMBERS {
            let name = format!("{i:0>width$}", width = MAX_NODE_ID_LEN);
            t.join_in_zone(
                id(&name),
                &address,
                MAX_WEIGHT - 1,
                &"z".repeat(MAX_ZONE_LEN),
            )
            .unwrap();
            t.set_client_address(&id(&name), &address).unwrap();
            t.mark_member(&id(&name)).unwrap();
            t.leave(&id(&name)).unwrap();
            t.set_weight(&id(&name), MAX_WEIGHT).unwrap();
        }
        let bytes = t.encode();
        assert_eq!(bytes[0], TABLE_FORMAT_VERSION, "zones: format 4");
        assert!(
            bytes.len() <= MAX_ENCODED_LEN,
            "{} > {MAX_ENCODED_LEN}",
            bytes.len()
        );
        let back = MemberTable::decode(&bytes).unwrap();
        assert_eq!(back.len(), MAX_MEMBERS);
        assert!(back.iter().all(|m| m.state() == MemberState::Leaving));
    }

    #[test]
    fn member_serde_validates_too() {
        let good =
            postcard::to_allocvec(&("a", "a:1", 1u32, 0u32, 1u64, Some("a:2"), 2u32, "eu-1"))
                .unwrap();
        let member: Member = postcard::from_bytes(&good).unwrap();
        assert_eq!((member.id(), member.version()), (&id("a"), 1));
        assert_eq!(member.client_address(), Some("a:2"));
        assert_eq!(member.settled_weight(), 2);
        assert_eq!(member.zone(), Some("eu-1"));
        let bad =
            postcard::to_allocvec(&("a", "a:1", 0u32, 0u32, 1u64, None::<&str>, 1u32, "")).unwrap();
        assert!(postcard::from_bytes::<Member>(&bad).is_err());
        let bad =
            postcard::to_allocvec(&("a", "a:1", 1u32, 0u32, 1u64, None::<&str>, 0u32, "")).unwrap();
        assert!(postcard::from_bytes::<Member>(&bad).is_err());
        let bad = postcard::to_allocvec(&("a", "a:1", 1u32, 0u32, 1u64, None::<&str>, 1u32, "a b"))
            .unwrap();
        assert!(postcard::from_bytes::<Member>(&bad).is_err());
    }

    /// Zones travel in format 4, written only while a member has one, so a cluster
    /// without zones keeps writing the formats older nodes read.
    #[test]
    fn zones_are_written_in_format_4_only_while_a_member_has_one() {
        let mut t = MemberTable::new();
        t.join_in_zone(id("a"), "a:1", 1, "eu-west-1a").unwrap();
        t.join(id("b"), "b:1", 1).unwrap();
        let bytes = t.encode();
        assert_eq!(bytes[0], TABLE_FORMAT_VERSION);
        let back = MemberTable::decode(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.get(&id("a")).unwrap().zone(), Some("eu-west-1a"));
        assert_eq!(back.get(&id("b")).unwrap().zone(), None);
        let mut plain = MemberTable::new();
        plain.join(id("a"), "a:1", 1).unwrap();
        assert_eq!(plain.encode()[0], TABLE_FORMAT_V2);
        // A zone that is not a zone name is refused off the wire too.
        let forged = postcard::to_extend(
            &vec![(
                "a",
                "a:1",
                1u32,
                0u32,
                1u64,
                None::<&str>,
                1u32,
                "x".repeat(64),
            )],
            vec![TABLE_FORMAT_VERSION],
        )
        .unwrap();
        assert!(matches!(
            MemberTable::decode(&forged),
            Err(DecodeError::InvalidZone { .. })
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = MemberTable::decode(&bytes);
            for format in [TABLE_FORMAT_V1, TABLE_FORMAT_V2, TABLE_FORMAT_V3, TABLE_FORMAT_VERSION] {
                let mut framed = vec![format];
                framed.extend_from_slice(&bytes);
                if let Ok(t) = MemberTable::decode(&framed) {
                    prop_assert_eq!(MemberTable::decode(&t.encode()), Ok(t));
                }
            }
        }

        /// Flipping bytes of a real encoding either still decodes to a valid table
        /// (which then round-trips) or is an error; never a panic.
        #[test]
        fn corrupted_encodings_never_panic(
            ts in tables(1),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = ts[0].encode();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Ok(t) = MemberTable::decode(&bytes) {
                prop_assert_eq!(MemberTable::decode(&t.encode()), Ok(t));
            }
        }

        #[test]
        fn every_table_round_trips_with_a_stable_digest(ts in tables(2)) {
            for t in &ts {
                let bytes = t.encode();
                let pending = t.iter().any(|m| m.settled_weight() != m.weight());
                let zoned = t.iter().any(|m| m.zone().is_some());
                let format = match (zoned, pending) {
                    (true, _) => TABLE_FORMAT_VERSION,
                    (false, true) => TABLE_FORMAT_V3,
                    (false, false) => TABLE_FORMAT_V2,
                };
                prop_assert_eq!(bytes[0], format);
                let back = MemberTable::decode(&bytes).unwrap();
                prop_assert_eq!(&back, t);
                prop_assert_eq!(back.digest(), t.digest());
            }
            prop_assert_eq!(ts[0] == ts[1], ts[0].digest() == ts[1].digest());
        }
    }
}
