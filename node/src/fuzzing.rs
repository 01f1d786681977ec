//! Entry points for the coverage-guided fuzz targets in `fuzz/` (and the proptests
//! below, which run the same checks in CI): each hands bytes from the network to one
//! decoder. Decoding must answer with a value or an error, never panic, and whatever
//! decodes must survive encoding and decoding again unchanged.
//!
//! Built only for tests and under `cfg(fuzzing)`, which `cargo fuzz` sets; the
//! decoders themselves are the ones the node runs.
//!
//! # Panics
//! Every function here panics when a decoded value does not round-trip: that is a bug
//! the fuzzer reports as a crash.

use bytes::Bytes;
use prost::Message;

use crate::membership::MemberTable;
use crate::proto;
use crate::transport::codec;
use crate::version::{SiblingSet, context};

/// A client context (the `context` of `Kv` requests and the HTTP context header).
pub fn client_context(bytes: &[u8]) {
    if let Ok(clock) = context::decode(bytes) {
        let again = context::decode(&context::encode(&clock)).expect("an encoded context decodes");
        // Contexts carry no timestamps: decoded entries all have timestamp zero.
        assert_eq!(again, clock, "context round-trips");
    }
}

/// A stored or replicated sibling set (the storage encoding, as replicas exchange it).
pub fn stored_state(bytes: &[u8]) {
    if let Ok(state) = SiblingSet::from_bytes(bytes) {
        let again = SiblingSet::from_bytes(&state.to_bytes()).expect("an encoded state decodes");
        assert_eq!(again, state, "state round-trips");
        assert_eq!(again.digest(), state.digest());
    }
}

/// A gossiped member table.
pub fn member_table(bytes: &[u8]) {
    if let Ok(table) = MemberTable::decode(bytes) {
        let again = MemberTable::decode(&table.encode()).expect("an encoded table decodes");
        assert_eq!(again, table, "member table round-trips");
        assert_eq!(again.digest(), table.digest());
    }
}

/// The internode messages: the first byte picks the message type, the rest is its
/// protobuf encoding, decoded by prost and then converted as the transport does.
pub fn replica_message(bytes: &[u8]) {
    let Some((&kind, body)) = bytes.split_first() else {
        return;
    };
    match kind % 12 {
        0 => {
            let Ok(request) = proto::ReplicaWriteRequest::decode(body) else {
                return;
            };
            if let Ok(write) = codec::decode_write(request) {
                let again = codec::decode_write(codec::write_request(write.clone()))
                    .expect("an encoded write decodes");
                assert_eq!(again, write, "replica write round-trips");
            }
        }
        1 => {
            let Ok(request) = proto::CoordinatePutRequest::decode(body) else {
                return;
            };
            if let Ok(put) = codec::decode_coordinate_put(request) {
                let again =
                    codec::decode_coordinate_put(codec::coordinate_put_request(put.clone()))
                        .expect("an encoded forwarded put decodes");
                assert_eq!(again.context, put.context);
                assert_eq!(
                    (again.key, again.value, again.w),
                    (put.key, put.value, put.w)
                );
            }
        }
        2 => {
            let Ok(request) = proto::GossipRequest::decode(body) else {
                return;
            };
            if let Ok(table) = codec::decode_gossip(request) {
                let again = codec::decode_gossip(codec::gossip_request(&table))
                    .expect("an encoded gossip request decodes");
                assert_eq!(again, table, "gossip request round-trips");
            }
        }
        3 => {
            let Ok(reply) = proto::ReplicaReadResponse::decode(body) else {
                return;
            };
            if let Ok(state) = codec::read_reply("peer:1", reply) {
                let reply = proto::ReplicaReadResponse {
                    state: codec::encode_state(&state),
                };
                let again = codec::read_reply("peer:1", reply).expect("an encoded state decodes");
                assert_eq!(again, state, "read reply round-trips");
            }
        }
        4 => {
            let Ok(reply) = proto::PutResponse::decode(body) else {
                return;
            };
            if let Ok(raw) = codec::coordinate_put_reply("peer:1", reply) {
                client_context(&raw);
            }
        }
        5 => {
            let Ok(reply) = proto::GossipResponse::decode(body) else {
                return;
            };
            if let Ok(table) = codec::gossip_reply("peer:1", reply) {
                let reply = proto::GossipResponse {
                    table: Bytes::from(table.encode()),
                };
                let again = codec::gossip_reply("peer:1", reply).expect("an encoded table decodes");
                assert_eq!(again, table, "gossip reply round-trips");
            }
        }
        6 => {
            // Client API requests: the context is the only structured field.
            if let Ok(request) = proto::PutRequest::decode(body) {
                client_context(&request.context);
            }
            if let Ok(request) = proto::DeleteRequest::decode(body) {
                client_context(&request.context);
            }
            let _ = proto::GetRequest::decode(body);
        }
        7 => {
            let Ok(request) = proto::ScanRangeRequest::decode(body) else {
                return;
            };
            if let Ok(scan) = codec::decode_scan_range(request) {
                let again = codec::decode_scan_range(codec::scan_range_request(scan.clone()))
                    .expect("an encoded scan decodes");
                assert_eq!(again, scan, "scan request round-trips");
            }
        }
        8 => {
            let Ok(request) = proto::MergeBatchRequest::decode(body) else {
                return;
            };
            if let Ok(batch) = codec::decode_merge_batch(request) {
                let again = codec::decode_merge_batch(codec::merge_batch_request(batch.clone()))
                    .expect("an encoded batch decodes");
                assert_eq!(again, batch, "merge batch round-trips");
            }
        }
        9 => {
            let Ok(request) = proto::MerkleHashesRequest::decode(body) else {
                return;
            };
            if let Ok(query) = codec::decode_merkle_hashes(request) {
                let again =
                    codec::decode_merkle_hashes(codec::merkle_hashes_request(query.clone()))
                        .expect("an encoded Merkle query decodes");
                assert_eq!(again, query, "Merkle query round-trips");
            }
        }
        10 => {
            let Ok(request) = proto::PurgeTombstoneRequest::decode(body) else {
                return;
            };
            if let Ok((key, digest)) = codec::decode_purge_tombstone(request) {
                let again =
                    codec::decode_purge_tombstone(codec::purge_tombstone_request(&key, digest))
                        .expect("an encoded purge decodes");
                assert_eq!(again, (key, digest), "purge request round-trips");
            }
        }
        _ => {
            let _ = proto::ReplicaReadRequest::decode(body);
            // A batch of writes (bounded before any state decodes), and its reply.
            if let Ok(request) = proto::ReplicaWriteBatchRequest::decode(body) {
                if let Ok(writes) = codec::decode_write_batch(request) {
                    for write in writes.into_iter().flatten() {
                        let again = codec::decode_write(codec::write_request(write.clone()))
                            .expect("an encoded write decodes");
                        assert_eq!(again, write, "a batched write round-trips");
                    }
                }
            }
            if let Ok(reply) = proto::ReplicaWriteBatchResponse::decode(body) {
                let sent = reply.results.len();
                let _ = codec::write_batch_reply("peer:1", sent, reply);
            }
            // A batch of reads (bounded before any key is copied), and its reply: every
            // state that decodes is re-encoded into a reply that reads back the same.
            if let Ok(request) = proto::ReplicaReadBatchRequest::decode(body) {
                if let Ok(keys) = codec::decode_read_batch(request) {
                    assert!(keys.len() <= crate::transport::MAX_BATCH_ENTRIES);
                }
            }
            if let Ok(reply) = proto::ReplicaReadBatchResponse::decode(body) {
                let sent = reply.results.len();
                if let Ok(results) = codec::read_batch_reply("peer:1", sent, reply) {
                    let states: Vec<_> = results
                        .into_iter()
                        .filter_map(|result| result.and_then(Result::ok))
                        .collect();
                    let again = codec::read_batch_reply(
                        "peer:1",
                        states.len(),
                        codec::read_batch_response(states.iter().cloned().map(Ok)),
                    )
                    .expect("an encoded read batch reply decodes");
                    let again: Vec<_> = again
                        .into_iter()
                        .map(|result| result.and_then(Result::ok))
                        .collect();
                    assert_eq!(
                        again,
                        states.into_iter().map(Some).collect::<Vec<_>>(),
                        "a read batch reply round-trips"
                    );
                }
            }
            // A scan page answering a whole-ring scan of up to the largest page.
            if let Ok(reply) = proto::ScanRangeResponse::decode(body) {
                let asked = codec::scan_range_request(crate::transport::RangeScan {
                    range: crate::ring::TokenRange::full(),
                    after: None,
                    max_entries: crate::transport::MAX_SCAN_ENTRIES,
                    max_bytes: crate::transport::MAX_SCAN_BYTES,
                });
                let _ = codec::scan_range_reply("peer:1", &asked, reply);
            }
        }
    }
}

/// An HTTP kv request head: the bytes up to the first NUL are the path and query, the
/// rest the `x-dynamo-context` header value.
pub fn http_request(bytes: &[u8]) {
    let (path, header) = match bytes.iter().position(|&b| b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[][..]),
    };
    let Ok(uri) = axum::http::Uri::try_from(path) else {
        return;
    };
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(value) = axum::http::HeaderValue::from_bytes(header) {
        headers.insert(crate::server::http::CONTEXT_HEADER, value);
    }
    crate::server::http::check_request_head(&uri, &headers);
}

#[cfg(test)]
mod tests {
    //! Arbitrary bytes, and valid encodings with a few bytes changed, through every
    //! decoder. Small case counts: these run in CI beside the coverage-guided
    //! fuzzers, which explore far further (BENCHMARKS.md, "Fuzzing").

    use proptest::prelude::*;

    use super::*;
    use crate::NodeId;
    use crate::ring::TokenRange;
    use crate::time::Millis;
    use crate::transport::{
        ForwardedPut, MergeBatch, MerkleQuery, RangeEntry, RangeScan, ReplicaWrite,
    };
    use crate::version::context::Context;
    use crate::version::{Actor, SiblingLimits, Value};

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    /// Up to four bytes overwritten, and maybe a truncation.
    fn mutations() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
        (
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            proptest::option::of(any::<usize>()),
        )
    }

    fn mutate(mut bytes: Vec<u8>, (flips, cut): &(Vec<(usize, u8)>, Option<usize>)) -> Vec<u8> {
        if !bytes.is_empty() {
            for &(at, byte) in flips {
                let len = bytes.len();
                bytes[at % len] = byte;
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        bytes
    }

    /// A state of up to three siblings (a tombstone among them) from up to three
    /// actors, made by real puts.
    fn state() -> impl Strategy<Value = SiblingSet> {
        proptest::collection::vec((0u8..3, proptest::option::of(bytes(8))), 0..4).prop_map(|puts| {
            let mut state = SiblingSet::new();
            for (actor, value) in puts {
                let actor = Actor::new(NodeId::new(format!("n{actor}")).unwrap(), 7);
                let value = value.map_or(Value::Tombstone, Value::data);
                // Blind puts: every one a new sibling, until the default cap.
                let _ = state.put(
                    &Context::new(),
                    value,
                    &actor,
                    Millis(5),
                    &SiblingLimits::default(),
                );
            }
            state
        })
    }

    fn table() -> impl Strategy<Value = MemberTable> {
        proptest::collection::vec((0u8..5, 1u32..4), 0..5).prop_map(|members| {
            let mut table = MemberTable::new();
            for (i, weight) in members {
                let _ = table.join(
                    NodeId::new(format!("node-{i}")).unwrap(),
                    &format!("10.0.0.{i}:7001"),
                    weight,
                );
            }
            table
        })
    }

    fn framed(kind: u8, message: &impl Message) -> Vec<u8> {
        let mut out = vec![kind];
        message.encode(&mut out).expect("a Vec grows as needed");
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_any_decoder(input in bytes(256)) {
            client_context(&input);
            stored_state(&input);
            member_table(&input);
            replica_message(&input);
            http_request(&input);
        }

        #[test]
        fn mutated_contexts_and_states_never_panic(state in state(), m in mutations()) {
            client_context(&mutate(context::encode(&state.context()), &m));
            stored_state(&mutate(state.to_bytes(), &m));
            // Valid encodings decode (and the checks above round-trip them).
            prop_assert!(context::decode(&context::encode(&state.context())).is_ok());
            prop_assert!(SiblingSet::from_bytes(&state.to_bytes()).is_ok());
            client_context(&context::encode(&state.context()));
            stored_state(&state.to_bytes());
        }

        #[test]
        fn mutated_member_tables_never_panic(table in table(), m in mutations()) {
            prop_assert!(MemberTable::decode(&table.encode()).is_ok());
            member_table(&table.encode());
            member_table(&mutate(table.encode(), &m));
        }

        #[test]
        fn mutated_replica_messages_never_panic(
            state in state(),
            table in table(),
            key in bytes(16),
            hint in proptest::option::of("[a-z0-9-]{0,8}"),
            m in mutations(),
        ) {
            let write = codec::write_request(ReplicaWrite {
                key: key.clone(),
                state: state.clone(),
                durable: true,
                hint_for: None,
            });
            let write = proto::ReplicaWriteRequest { hint_for: hint, ..write };
            let put = codec::coordinate_put_request(ForwardedPut {
                key: key.clone(),
                context: state.context(),
                value: Some(key.clone()),
                w: Some(2),
                deadline: Some(crate::time::Millis(1_700_000_000_000)),
            });
            let valid_hint = write.hint_for.as_deref().is_none_or(|h| NodeId::new(h).is_ok());
            prop_assert_eq!(codec::decode_write(write.clone()).is_ok(), valid_hint);
            prop_assert!(codec::decode_coordinate_put(put.clone()).is_ok());
            let messages = [
                framed(0, &write),
                framed(1, &put),
                framed(2, &codec::gossip_request(&table)),
                framed(3, &proto::ReplicaReadResponse { state: codec::encode_state(&state) }),
                framed(4, &proto::PutResponse { context: context::encode(&state.context()).into() }),
                framed(5, &proto::GossipResponse { table: table.encode().into() }),
                framed(7, &codec::scan_range_request(RangeScan {
                    range: TokenRange::full(),
                    after: Some(key.clone()),
                    max_entries: 10,
                    max_bytes: 1000,
                })),
                framed(8, &codec::merge_batch_request(MergeBatch {
                    entries: vec![RangeEntry { key: key.clone(), state: state.clone() }],
                    durable: true,
                })),
                framed(9, &codec::merkle_hashes_request(MerkleQuery {
                    range: TokenRange::full(),
                    depth: 4,
                    level: 2,
                    indices: vec![0, 3],
                })),
                framed(10, &codec::purge_tombstone_request(&key, [7u8; 16])),
                framed(11, &proto::ReplicaReadBatchRequest {
                    reads: vec![codec::read_request(&key), codec::read_request(b"k")],
                }),
                framed(11, &codec::read_batch_response([
                    Ok(state.clone()),
                    Err(crate::transport::ReplicaError::Unavailable("busy".into())),
                    Ok(SiblingSet::new()),
                ])),
            ];
            for message in messages {
                replica_message(&message);
                replica_message(&mutate(message, &m));
            }
        }

        #[test]
        fn mutated_http_heads_never_panic(
            key in bytes(24),
            query in "(r=[0-9]{1,3}|w=[0-9a-z]{0,3}|&){0,3}",
            state in state(),
            m in mutations(),
        ) {
            use base64::Engine as _;
            let encoded: String =
                percent_encoding::percent_encode(&key, percent_encoding::NON_ALPHANUMERIC).collect();
            let mut head = format!("/v1/kv/{encoded}?{query}").into_bytes();
            head.push(0);
            head.extend(base64::engine::general_purpose::STANDARD.encode(context::encode(&state.context())).bytes());
            http_request(&head);
            http_request(&mutate(head, &m));
        }
    }
}
