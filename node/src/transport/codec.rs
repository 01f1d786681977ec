//! The wire form of the replica calls, shared by the gRPC and in-memory transports so
//! both exercise the same encodings: domain values to `proto` messages and back, and
//! [`ReplicaError`] to a gRPC [`Status`] and back.
//!
//! Everything decoded here comes from a peer, so every decoder returns an error for
//! garbage, truncated or oversized input and never panics.

use bytes::Bytes;
use tonic::{Code, Status};

use super::{
    ForwardedPut, MAX_BATCH_ENTRIES, MAX_MERKLE_INDICES, MAX_SCAN_BYTES, MAX_SCAN_ENTRIES,
    MergeBatch, MerkleQuery, RangeEntry, RangePage, RangeScan, ReplicaError, ReplicaWrite,
    TransportError,
};
use crate::NodeId;
use crate::membership::MemberTable;
use crate::merkle::{Hash, MAX_DEPTH};
use crate::proto;
use crate::ring::{Token, TokenRange};
use crate::version::{SiblingSet, StorageFormatError, context};

pub use dynamo_core::limits::MAX_MESSAGE_BYTES;
pub(crate) use dynamo_proto::wire::ERROR_MARKER;
pub use dynamo_proto::wire::never_sent;

/// A replica state on the wire. The empty set (a key never written) is the empty
/// byte string, which the storage encoding itself never produces.
pub(crate) fn encode_state(state: &SiblingSet) -> Bytes {
    if *state == SiblingSet::new() {
        Bytes::new()
    } else {
        Bytes::from(state.to_bytes())
    }
}

/// The inverse of [`encode_state`].
pub(crate) fn decode_state(bytes: &[u8]) -> Result<SiblingSet, StorageFormatError> {
    if bytes.is_empty() {
        Ok(SiblingSet::new())
    } else {
        SiblingSet::from_bytes(bytes)
    }
}

// ---- caller side: requests out, replies in ----

pub(crate) fn read_request(key: &[u8]) -> proto::ReplicaReadRequest {
    proto::ReplicaReadRequest {
        key: Bytes::copy_from_slice(key),
    }
}

pub(crate) fn write_request(write: ReplicaWrite) -> proto::ReplicaWriteRequest {
    proto::ReplicaWriteRequest {
        key: Bytes::from(write.key),
        state: encode_state(&write.state),
        durable: write.durable,
        hint_for: write.hint_for.map(|id| id.as_str().to_owned()),
    }
}

pub(crate) fn coordinate_put_request(put: ForwardedPut) -> proto::CoordinatePutRequest {
    proto::CoordinatePutRequest {
        key: Bytes::from(put.key),
        context: Bytes::from(context::encode(&put.context)),
        value: put.value.map(Bytes::from),
        w: put.w,
        deadline_unix_ms: put.deadline.map(|deadline| deadline.0),
    }
}

pub(crate) fn gossip_request(table: &MemberTable) -> proto::GossipRequest {
    proto::GossipRequest {
        table: Bytes::from(table.encode()),
    }
}

fn encode_range(range: TokenRange) -> proto::TokenRange {
    proto::TokenRange {
        start: Bytes::copy_from_slice(&range.start.0.to_be_bytes()),
        end: Bytes::copy_from_slice(&range.end.0.to_be_bytes()),
    }
}

fn decode_token(bytes: &[u8]) -> Result<Token, String> {
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| format!("a token is 16 bytes, got {}", bytes.len()))?;
    Ok(Token(u128::from_be_bytes(array)))
}

fn decode_range(range: Option<proto::TokenRange>) -> Result<TokenRange, String> {
    let range = range.ok_or("missing token range")?;
    Ok(TokenRange::new(
        decode_token(&range.start)?,
        decode_token(&range.end)?,
    ))
}

fn encode_entries(entries: Vec<RangeEntry>) -> Vec<proto::RangeEntry> {
    entries
        .into_iter()
        .map(|entry| proto::RangeEntry {
            state: encode_state(&entry.state),
            key: Bytes::from(entry.key),
        })
        .collect()
}

/// Decodes entries, refusing more than `max` of them before decoding any state.
fn decode_entries(entries: Vec<proto::RangeEntry>, max: usize) -> Result<Vec<RangeEntry>, String> {
    if entries.len() > max {
        return Err(format!("{} entries, at most {max} allowed", entries.len()));
    }
    entries
        .into_iter()
        .map(|entry| {
            let state = decode_state(&entry.state).map_err(|e| format!("state: {e}"))?;
            Ok(RangeEntry {
                key: entry.key.to_vec(),
                state,
            })
        })
        .collect()
}

pub(crate) fn scan_range_request(scan: RangeScan) -> proto::ScanRangeRequest {
    proto::ScanRangeRequest {
        range: Some(encode_range(scan.range)),
        after: scan.after.map(Bytes::from),
        max_entries: scan.max_entries,
        max_bytes: scan.max_bytes,
    }
}

pub(crate) fn merge_batch_request(batch: MergeBatch) -> proto::MergeBatchRequest {
    proto::MergeBatchRequest {
        entries: encode_entries(batch.entries),
        durable: batch.durable,
    }
}

/// Checks the page against what was asked: no more entries than requested, every key's
/// token inside the range, so a confused peer cannot slip foreign keys into a transfer.
pub(crate) fn scan_range_reply(
    address: &str,
    asked: &proto::ScanRangeRequest,
    reply: proto::ScanRangeResponse,
) -> Result<RangePage, TransportError> {
    let max = asked.max_entries.min(MAX_SCAN_ENTRIES) as usize;
    let entries = decode_entries(reply.entries, max).map_err(|e| bad_reply(address, e))?;
    let range = decode_range(asked.range.clone()).map_err(|e| bad_reply(address, e))?;
    if let Some(stray) = entries.iter().find(|e| !range.contains(Token::of(&e.key))) {
        return Err(bad_reply(
            address,
            format!("key {:?} is outside the scanned range", stray.key),
        ));
    }
    Ok(RangePage {
        entries,
        done: reply.done,
    })
}

pub(crate) fn read_reply(
    address: &str,
    reply: proto::ReplicaReadResponse,
) -> Result<SiblingSet, TransportError> {
    decode_state(&reply.state).map_err(|e| bad_reply(address, format!("state: {e}")))
}

/// Checks that the returned context decodes, so a garbled one is caught here rather
/// than handed to a client.
pub(crate) fn coordinate_put_reply(
    address: &str,
    reply: proto::PutResponse,
) -> Result<Vec<u8>, TransportError> {
    context::decode(&reply.context).map_err(|e| bad_reply(address, format!("context: {e}")))?;
    Ok(reply.context.to_vec())
}

pub(crate) fn gossip_reply(
    address: &str,
    reply: proto::GossipResponse,
) -> Result<MemberTable, TransportError> {
    MemberTable::decode(&reply.table).map_err(|e| bad_reply(address, format!("table: {e}")))
}

fn bad_reply(address: &str, reason: String) -> TransportError {
    TransportError::BadReply {
        address: address.to_owned(),
        reason,
    }
}

/// Classifies a failed call: a status carrying [`ERROR_MARKER`] is the peer's answer
/// and becomes [`TransportError::Rejected`] with the variant restored from the code;
/// anything else (refused, reset, h2 errors, a proxy's answer) means the peer may be
/// down and becomes [`TransportError::Unreachable`].
pub(crate) fn status_to_error(address: &str, status: &Status) -> TransportError {
    if status.metadata().get(ERROR_MARKER).is_none() {
        // tonic reports a failed connection attempt (before anything was sent) as
        // Unavailable "tcp connect error"; everything else may have reached the peer.
        if never_sent(status) {
            return TransportError::NotConnected {
                address: address.to_owned(),
                reason: status.message().to_owned(),
            };
        }
        return TransportError::Unreachable {
            address: address.to_owned(),
            reason: format!("{}: {}", status.code(), status.message()),
        };
    }
    TransportError::Rejected {
        address: address.to_owned(),
        error: replica_error(status.code(), status.message().to_owned()),
    }
}

/// The [`ReplicaError`] a peer's status code and message stand for (the inverse of
/// [`error_code`]).
fn replica_error(code: Code, message: String) -> ReplicaError {
    match code {
        Code::InvalidArgument => ReplicaError::InvalidArgument(message),
        Code::Unavailable => ReplicaError::Unavailable(message),
        Code::Unauthenticated => ReplicaError::Unauthenticated(message),
        Code::Internal => ReplicaError::Internal(message),
        Code::Aborted => ReplicaError::Conflict(message),
        // A newer peer may use a code this version does not know; keep what it said.
        other => ReplicaError::Internal(format!("{other}: {message}")),
    }
}

/// Whether a failed call's status says the peer does not serve the method at all (a
/// node from before the method existed): tonic's router answers so without running
/// anything, so the call had no effect and the caller may fall back to an older one.
pub(crate) fn unimplemented(status: &Status) -> bool {
    status.metadata().get(ERROR_MARKER).is_none() && status.code() == Code::Unimplemented
}

/// A batch of encoded writes (see [`write_request`]).
pub(crate) fn write_batch_request(
    writes: Vec<proto::ReplicaWriteRequest>,
) -> proto::ReplicaWriteBatchRequest {
    proto::ReplicaWriteBatchRequest { writes }
}

/// Each write's outcome from a batch reply, which must hold exactly one result per
/// write sent (`sent`), in order.
pub(crate) fn write_batch_reply(
    address: &str,
    sent: usize,
    reply: proto::ReplicaWriteBatchResponse,
) -> Result<Vec<Result<(), TransportError>>, TransportError> {
    if reply.results.len() != sent {
        return Err(bad_reply(
            address,
            format!("{} results for {sent} writes", reply.results.len()),
        ));
    }
    Ok(reply
        .results
        .into_iter()
        .map(|result| {
            if result.code == 0 {
                return Ok(());
            }
            let code = i32::try_from(result.code).map_or(Code::Unknown, Code::from_i32);
            Err(TransportError::Rejected {
                address: address.to_owned(),
                error: replica_error(code, result.message),
            })
        })
        .collect())
}

/// Each read's outcome from a batch reply, which must hold exactly one result per read
/// sent (`sent`), in order; `None` for a read the peer deferred (no room left in its
/// reply), to be sent again as a single read.
pub(crate) fn read_batch_reply(
    address: &str,
    sent: usize,
    reply: proto::ReplicaReadBatchResponse,
) -> Result<super::BatchResults<SiblingSet>, TransportError> {
    if reply.results.len() != sent {
        return Err(bad_reply(
            address,
            format!("{} results for {sent} reads", reply.results.len()),
        ));
    }
    Ok(reply
        .results
        .into_iter()
        .map(|result| {
            if result.deferred {
                return None;
            }
            if result.code == 0 {
                return Some(
                    decode_state(&result.state)
                        .map_err(|e| bad_reply(address, format!("state: {e}"))),
                );
            }
            let code = i32::try_from(result.code).map_or(Code::Unknown, Code::from_i32);
            Some(Err(TransportError::Rejected {
                address: address.to_owned(),
                error: replica_error(code, result.message),
            }))
        })
        .collect())
}

// ---- serving side: requests in, replies out ----

/// The byte budget of the states in one `ReadBatch` reply: reads past it are deferred
/// (answered as single reads), so a batch of large values never makes a reply the
/// caller would refuse (the first state is always included, as a single read's would be).
pub(crate) const READ_BATCH_REPLY_BYTES: usize = 4 * 1024 * 1024;

const _: () = assert!(READ_BATCH_REPLY_BYTES < MAX_MESSAGE_BYTES);

/// The keys of a batch of reads, refusing more than [`MAX_BATCH_ENTRIES`] before
/// looking at any.
pub(crate) fn decode_read_batch(
    request: proto::ReplicaReadBatchRequest,
) -> Result<Vec<Vec<u8>>, ReplicaError> {
    if request.reads.len() > MAX_BATCH_ENTRIES {
        return Err(invalid(
            "batch",
            format!(
                "{} reads, at most {MAX_BATCH_ENTRIES} allowed",
                request.reads.len()
            ),
        ));
    }
    Ok(request
        .reads
        .into_iter()
        .map(|read| read.key.to_vec())
        .collect())
}

/// Fills a `ReadBatch` reply from each read's result, in order, deferring the reads
/// whose states no longer fit [`READ_BATCH_REPLY_BYTES`] (see there).
pub(crate) fn read_batch_response(
    results: impl IntoIterator<Item = Result<SiblingSet, ReplicaError>>,
) -> proto::ReplicaReadBatchResponse {
    let mut bytes = 0usize;
    let results = results
        .into_iter()
        .map(|result| match result {
            Ok(state) => {
                let state = encode_state(&state);
                if bytes > 0 && bytes.saturating_add(state.len()) > READ_BATCH_REPLY_BYTES {
                    return proto::ReplicaReadResult {
                        deferred: true,
                        ..Default::default()
                    };
                }
                bytes = bytes.saturating_add(state.len().max(1));
                proto::ReplicaReadResult {
                    state,
                    ..Default::default()
                }
            }
            Err(error) => {
                let (code, message) = error_code(error);
                proto::ReplicaReadResult {
                    code: u32::try_from(i32::from(code)).unwrap_or(u32::MAX),
                    message,
                    ..Default::default()
                }
            }
        })
        .collect();
    proto::ReplicaReadBatchResponse { results }
}

/// The status code and message that carry `error` (the inverse of [`replica_error`]).
fn error_code(error: ReplicaError) -> (Code, String) {
    match error {
        ReplicaError::InvalidArgument(m) => (Code::InvalidArgument, m),
        ReplicaError::Unavailable(m) => (Code::Unavailable, m),
        ReplicaError::Unauthenticated(m) => (Code::Unauthenticated, m),
        ReplicaError::Internal(m) => (Code::Internal, m),
        ReplicaError::Conflict(m) => (Code::Aborted, m),
    }
}

/// The status our server answers with, marked as an application error.
pub(crate) fn error_to_status(error: ReplicaError) -> Status {
    let (code, message) = error_code(error);
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        ERROR_MARKER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

fn invalid(what: &str, error: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::InvalidArgument(format!("{what}: {error}"))
}

pub(crate) fn decode_write(
    request: proto::ReplicaWriteRequest,
) -> Result<ReplicaWrite, ReplicaError> {
    let state = decode_state(&request.state).map_err(|e| invalid("state", e))?;
    let hint_for = request
        .hint_for
        .map(NodeId::new)
        .transpose()
        .map_err(|e| invalid("hint_for", e))?;
    Ok(ReplicaWrite {
        key: request.key.to_vec(),
        state,
        durable: request.durable,
        hint_for,
    })
}

/// Decodes a batch of writes, refusing more than [`MAX_BATCH_ENTRIES`] before decoding
/// any; a write that does not decode gets its own error, so the rest still apply.
pub(crate) fn decode_write_batch(
    request: proto::ReplicaWriteBatchRequest,
) -> Result<Vec<Result<ReplicaWrite, ReplicaError>>, ReplicaError> {
    if request.writes.len() > MAX_BATCH_ENTRIES {
        return Err(invalid(
            "batch",
            format!(
                "{} writes, at most {MAX_BATCH_ENTRIES} allowed",
                request.writes.len()
            ),
        ));
    }
    Ok(request.writes.into_iter().map(decode_write).collect())
}

/// One write's outcome in a batch reply.
pub(crate) fn write_result(result: Result<(), ReplicaError>) -> proto::ReplicaWriteResult {
    match result {
        Ok(()) => proto::ReplicaWriteResult::default(),
        Err(error) => {
            let (code, message) = error_code(error);
            proto::ReplicaWriteResult {
                code: u32::try_from(i32::from(code)).unwrap_or(u32::MAX),
                message,
            }
        }
    }
}

pub(crate) fn decode_coordinate_put(
    request: proto::CoordinatePutRequest,
) -> Result<ForwardedPut, ReplicaError> {
    let context = context::decode(&request.context).map_err(|e| invalid("context", e))?;
    Ok(ForwardedPut {
        key: request.key.to_vec(),
        context,
        value: request.value.map(|v| v.to_vec()),
        w: request.w,
        deadline: request.deadline_unix_ms.map(crate::time::Millis),
    })
}

pub(crate) fn decode_scan_range(
    request: proto::ScanRangeRequest,
) -> Result<RangeScan, ReplicaError> {
    let range = decode_range(request.range).map_err(|e| invalid("range", e))?;
    if request.max_entries == 0 {
        return Err(invalid("max_entries", "must be at least 1"));
    }
    Ok(RangeScan {
        range,
        after: request.after.map(|key| key.to_vec()),
        max_entries: request.max_entries.min(MAX_SCAN_ENTRIES),
        max_bytes: request.max_bytes.min(MAX_SCAN_BYTES),
    })
}

pub(crate) fn scan_range_response(page: RangePage) -> proto::ScanRangeResponse {
    proto::ScanRangeResponse {
        entries: encode_entries(page.entries),
        done: page.done,
    }
}

pub(crate) fn decode_merge_batch(
    request: proto::MergeBatchRequest,
) -> Result<MergeBatch, ReplicaError> {
    let entries =
        decode_entries(request.entries, MAX_BATCH_ENTRIES).map_err(|e| invalid("batch", e))?;
    Ok(MergeBatch {
        entries,
        durable: request.durable,
    })
}

pub(crate) fn merkle_hashes_request(query: MerkleQuery) -> proto::MerkleHashesRequest {
    proto::MerkleHashesRequest {
        range: Some(encode_range(query.range)),
        depth: u32::from(query.depth),
        level: u32::from(query.level),
        indices: query.indices.iter().map(|&i| i as u64).collect(),
    }
}

/// Checks the request's shape and bounds before any tree is touched: a depth a tree can
/// have, a level within it, at most [`MAX_MERKLE_INDICES`] indices, each inside the
/// level.
pub(crate) fn decode_merkle_hashes(
    request: proto::MerkleHashesRequest,
) -> Result<MerkleQuery, ReplicaError> {
    let range = decode_range(request.range).map_err(|e| invalid("range", e))?;
    let depth = u8::try_from(request.depth)
        .ok()
        .filter(|&d| d <= MAX_DEPTH)
        .ok_or_else(|| invalid("depth", format!("{} exceeds {MAX_DEPTH}", request.depth)))?;
    let level = u8::try_from(request.level)
        .ok()
        .filter(|&l| l <= depth)
        .ok_or_else(|| {
            invalid(
                "level",
                format!(
                    "{} is below the leaves of a depth-{depth} tree",
                    request.level
                ),
            )
        })?;
    if request.indices.len() > MAX_MERKLE_INDICES {
        return Err(invalid(
            "indices",
            format!(
                "{} indices, at most {MAX_MERKLE_INDICES} per request",
                request.indices.len()
            ),
        ));
    }
    let width = 1u64 << level;
    let indices = request
        .indices
        .iter()
        .map(|&index| {
            if index < width {
                usize::try_from(index).map_err(|_| invalid("indices", "index too large"))
            } else {
                Err(invalid(
                    "indices",
                    format!("index {index} outside level {level} ({width} nodes)"),
                ))
            }
        })
        .collect::<Result<Vec<usize>, ReplicaError>>()?;
    Ok(MerkleQuery {
        range,
        depth,
        level,
        indices,
    })
}

pub(crate) fn merkle_hashes_response(hashes: &[Hash]) -> proto::MerkleHashesResponse {
    proto::MerkleHashesResponse {
        hashes: hashes.concat().into(),
    }
}

/// Pairs the answer's hashes with the requested indices; the answer must hold exactly
/// one 16-byte hash per index.
pub(crate) fn merkle_hashes_reply(
    address: &str,
    asked: &[usize],
    reply: proto::MerkleHashesResponse,
) -> Result<Vec<(usize, Hash)>, TransportError> {
    if reply.hashes.len() != asked.len() * 16 {
        return Err(bad_reply(
            address,
            format!(
                "{} hash bytes for {} requested nodes",
                reply.hashes.len(),
                asked.len()
            ),
        ));
    }
    Ok(asked
        .iter()
        .zip(reply.hashes.chunks_exact(16))
        .map(|(&index, chunk)| {
            let mut hash = [0u8; 16];
            hash.copy_from_slice(chunk);
            (index, hash)
        })
        .collect())
}

pub(crate) fn purge_tombstone_request(key: &[u8], digest: Hash) -> proto::PurgeTombstoneRequest {
    proto::PurgeTombstoneRequest {
        key: Bytes::copy_from_slice(key),
        digest: Bytes::copy_from_slice(&digest),
    }
}

pub(crate) fn decode_purge_tombstone(
    request: proto::PurgeTombstoneRequest,
) -> Result<(Vec<u8>, Hash), ReplicaError> {
    let digest: Hash = request.digest.as_ref().try_into().map_err(|_| {
        invalid(
            "digest",
            format!("a digest is 16 bytes, got {}", request.digest.len()),
        )
    })?;
    Ok((request.key.to_vec(), digest))
}

pub(crate) fn decode_gossip(request: proto::GossipRequest) -> Result<MemberTable, ReplicaError> {
    MemberTable::decode(&request.table).map_err(|e| invalid("table", e))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_read_batch_reply_defers_the_states_past_its_budget_and_keeps_each_result() {
        let big = |byte: u8| {
            let mut state = SiblingSet::new();
            state
                .put(
                    &Context::new(),
                    crate::version::Value::data(vec![byte; READ_BATCH_REPLY_BYTES / 2]),
                    &crate::version::Actor::new(NodeId::new("a").unwrap(), 1),
                    crate::time::Millis(1),
                    &crate::version::SiblingLimits::default(),
                )
                .unwrap();
            state
        };
        let reply = read_batch_response([
            Ok(big(1)),
            Err(ReplicaError::Unavailable("busy".into())),
            Ok(big(2)), // no room left next to the first
            Ok(SiblingSet::new()),
            Ok(big(3)),
        ]);
        let results = read_batch_reply("peer", 5, reply.clone()).unwrap();
        assert_eq!(results[0], Some(Ok(big(1))));
        assert_eq!(
            results[1],
            Some(Err(TransportError::Rejected {
                address: "peer".into(),
                error: ReplicaError::Unavailable("busy".into()),
            }))
        );
        assert_eq!(results[2], None, "deferred: sent again alone");
        assert_eq!(results[3], Some(Ok(SiblingSet::new())));
        assert_eq!(results[4], None);
        assert!(
            matches!(
                read_batch_reply("peer", 4, reply),
                Err(TransportError::BadReply { .. })
            ),
            "a reply with the wrong count is refused whole"
        );
        // A single state larger than the budget still goes, alone in its batch.
        let alone = read_batch_reply("peer", 1, read_batch_response([Ok(big(4))])).unwrap();
        assert_eq!(alone, vec![Some(Ok(big(4)))]);
    }
    use crate::time::Millis;
    use crate::version::context::Context;
    use crate::version::{Actor, SiblingLimits, Value, VectorClock};

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn empty_state_is_empty_bytes_both_ways() {
        assert!(encode_state(&SiblingSet::new()).is_empty());
        assert_eq!(decode_state(&[]).unwrap(), SiblingSet::new());
    }

    #[test]
    fn state_with_a_tombstone_survives_the_wire() {
        // Dynamo §4.4: a delete is a version too and must travel like one.
        let actor = Actor::new(node("a"), 1);
        let mut state = SiblingSet::new();
        let limits = SiblingLimits::default();
        state
            .put(
                &Context::new(),
                Value::data(&b"v"[..]),
                &actor,
                Millis(1),
                &limits,
            )
            .unwrap();
        let context = state.context();
        state
            .put(&context, Value::Tombstone, &actor, Millis(2), &limits)
            .unwrap();
        assert!(state.is_deleted());
        assert_eq!(decode_state(&encode_state(&state)).unwrap(), state);
    }

    #[test]
    fn every_replica_error_survives_a_status_round_trip() {
        for error in [
            ReplicaError::InvalidArgument("bad key".into()),
            ReplicaError::Unavailable("shutting down".into()),
            ReplicaError::Unauthenticated("no token".into()),
            ReplicaError::Internal("disk full".into()),
            ReplicaError::Conflict("conflict: read and resolve".into()),
        ] {
            let status = error_to_status(error.clone());
            assert_eq!(
                status_to_error("peer:1", &status),
                TransportError::Rejected {
                    address: "peer:1".into(),
                    error
                }
            );
        }
    }

    #[test]
    fn only_a_failed_connection_counts_as_never_sent() {
        // A forwarded put (or a client's write) may go to another node only when it
        // certainly never reached the first: otherwise it could be applied twice.
        let refused = Status::new(Code::Unavailable, "tcp connect error");
        assert!(never_sent(&refused));
        assert!(matches!(
            status_to_error("peer:1", &refused),
            TransportError::NotConnected { .. }
        ));
        for maybe_arrived in [
            Status::new(Code::Unavailable, "connection reset"),
            Status::new(Code::Unknown, "h2 protocol error"),
            Status::new(Code::Cancelled, "timeout expired"),
        ] {
            assert!(!never_sent(&maybe_arrived), "{maybe_arrived:?}");
        }
        // The peer's own "unavailable" answer is an answer, not a failed connection.
        let answered = error_to_status(ReplicaError::Unavailable("tcp connect error".into()));
        assert!(!never_sent(&answered));
    }

    #[test]
    fn an_unmarked_status_means_unreachable_whatever_its_code() {
        // tonic reports a refused connection as Unavailable: without our marker it
        // must not pass for the peer's own "unavailable" answer.
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::InvalidArgument,
            Code::Unknown,
        ] {
            let error = status_to_error("peer:1", &Status::new(code, "transport error"));
            assert!(
                matches!(error, TransportError::Unreachable { .. }),
                "{code:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn a_bad_hint_target_is_an_invalid_argument() {
        let request = proto::ReplicaWriteRequest {
            key: Bytes::from_static(b"k"),
            state: Bytes::new(),
            durable: false,
            hint_for: Some(String::new()),
        };
        assert!(matches!(
            decode_write(request),
            Err(ReplicaError::InvalidArgument(m)) if m.starts_with("hint_for")
        ));
    }

    #[test]
    fn a_garbled_reply_context_is_a_bad_reply() {
        let reply = proto::PutResponse {
            context: Bytes::from_static(&[0xff, 0xff]),
        };
        assert!(matches!(
            coordinate_put_reply("peer:1", reply),
            Err(TransportError::BadReply { .. })
        ));
    }

    fn entry(key: &[u8]) -> RangeEntry {
        RangeEntry {
            key: key.to_vec(),
            state: concurrent_state(),
        }
    }

    fn concurrent_state() -> SiblingSet {
        let limits = SiblingLimits::default();
        let mut state = SiblingSet::new();
        for name in ["a", "b"] {
            let mut theirs = SiblingSet::new();
            theirs
                .put(
                    &Context::new(),
                    Value::data(name.as_bytes()),
                    &Actor::new(node(name), 1),
                    Millis(5),
                    &limits,
                )
                .unwrap();
            state.merge(&theirs);
        }
        state
    }

    #[test]
    fn a_scan_request_round_trips_with_a_wrapping_range_and_caps_applied() {
        let scan = RangeScan {
            range: TokenRange::new(Token(u128::MAX - 5), Token(7)),
            after: Some(b"k1".to_vec()),
            max_entries: MAX_SCAN_ENTRIES + 10,
            max_bytes: u32::MAX,
        };
        let decoded = decode_scan_range(scan_range_request(scan.clone())).unwrap();
        assert_eq!(decoded.range, scan.range);
        assert_eq!(decoded.after, scan.after);
        assert_eq!(decoded.max_entries, MAX_SCAN_ENTRIES);
        assert_eq!(decoded.max_bytes, MAX_SCAN_BYTES);
    }

    #[test]
    fn a_scan_request_with_a_short_token_or_zero_limit_is_refused() {
        let mut request = scan_range_request(RangeScan {
            range: TokenRange::full(),
            after: None,
            max_entries: 1,
            max_bytes: 1,
        });
        let good = request.clone();
        request.range.as_mut().unwrap().end = Bytes::from_static(&[1, 2, 3]);
        assert!(matches!(
            decode_scan_range(request),
            Err(ReplicaError::InvalidArgument(m)) if m.contains("16 bytes")
        ));
        let mut zero = good.clone();
        zero.max_entries = 0;
        assert!(decode_scan_range(zero).is_err());
        let mut missing = good;
        missing.range = None;
        assert!(decode_scan_range(missing).is_err());
    }

    #[test]
    fn a_merge_batch_round_trips_and_an_oversized_one_is_refused() {
        let batch = MergeBatch {
            entries: vec![entry(b"a"), entry(b"b")],
            durable: true,
        };
        assert_eq!(
            decode_merge_batch(merge_batch_request(batch.clone())).unwrap(),
            batch
        );
        let huge = MergeBatch {
            entries: vec![entry(b"a"); MAX_BATCH_ENTRIES + 1],
            durable: false,
        };
        assert!(matches!(
            decode_merge_batch(merge_batch_request(huge)),
            Err(ReplicaError::InvalidArgument(m)) if m.contains("at most")
        ));
    }

    #[test]
    fn a_scan_reply_with_a_foreign_key_or_too_many_entries_is_a_bad_reply() {
        let key = b"inside".to_vec();
        let token = Token::of(&key);
        let asked = scan_range_request(RangeScan {
            range: TokenRange::new(Token(token.0 - 1), token),
            after: None,
            max_entries: 2,
            max_bytes: 1024,
        });
        let page = |keys: &[&[u8]]| {
            scan_range_response(RangePage {
                entries: keys.iter().map(|k| entry(k)).collect(),
                done: true,
            })
        };
        let ok = scan_range_reply("peer:1", &asked, page(&[&key])).unwrap();
        assert_eq!(ok.entries, vec![entry(&key)]);
        assert!(ok.done);
        assert!(matches!(
            scan_range_reply("peer:1", &asked, page(&[b"elsewhere"])),
            Err(TransportError::BadReply { reason, .. }) if reason.contains("outside")
        ));
        assert!(matches!(
            scan_range_reply("peer:1", &asked, page(&[&key, &key, &key])),
            Err(TransportError::BadReply { reason, .. }) if reason.contains("at most 2")
        ));
    }

    #[test]
    fn merkle_requests_are_bounded_before_any_tree_is_touched() {
        let query = MerkleQuery {
            range: TokenRange::new(Token(3), Token(9)),
            depth: 4,
            level: 2,
            indices: vec![0, 3],
        };
        let request = merkle_hashes_request(query.clone());
        assert_eq!(decode_merkle_hashes(request.clone()).unwrap(), query);
        let refused = |mutate: &dyn Fn(&mut proto::MerkleHashesRequest), needle: &str| {
            let mut bad = request.clone();
            mutate(&mut bad);
            match decode_merkle_hashes(bad) {
                Err(ReplicaError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("expected a refusal naming {needle}, got {other:?}"),
            }
        };
        refused(&|r| r.depth = u32::from(MAX_DEPTH) + 1, "depth");
        refused(&|r| r.depth = u32::MAX, "depth");
        refused(&|r| r.level = 5, "level");
        refused(&|r| r.indices = vec![4], "outside level 2");
        refused(&|r| r.indices = vec![u64::MAX], "outside level 2");
        refused(
            &|r| {
                r.level = 4;
                r.depth = 20;
                r.indices = vec![0; MAX_MERKLE_INDICES + 1];
            },
            "at most",
        );
        refused(&|r| r.range = None, "range");
    }

    #[test]
    fn a_merkle_reply_must_hold_one_hash_per_requested_node() {
        let hashes = [[1u8; 16], [2u8; 16]];
        let reply = merkle_hashes_response(&hashes);
        assert_eq!(
            merkle_hashes_reply("peer:1", &[5, 9], reply.clone()).unwrap(),
            vec![(5, [1u8; 16]), (9, [2u8; 16])]
        );
        assert!(matches!(
            merkle_hashes_reply("peer:1", &[5], reply),
            Err(TransportError::BadReply { .. })
        ));
        let (key, digest) = decode_purge_tombstone(purge_tombstone_request(b"k", [7; 16])).unwrap();
        assert_eq!((key, digest), (b"k".to_vec(), [7; 16]));
        assert!(
            decode_purge_tombstone(proto::PurgeTombstoneRequest {
                key: Bytes::from_static(b"k"),
                digest: Bytes::from_static(&[1, 2]),
            })
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics_the_merkle_decoders(
            depth in any::<u32>(),
            level in any::<u32>(),
            indices in proptest::collection::vec(any::<u64>(), 0..40),
            hashes in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let request = proto::MerkleHashesRequest {
                range: Some(encode_range(TokenRange::full())),
                depth,
                level,
                indices: indices.clone(),
            };
            if let Ok(query) = decode_merkle_hashes(request) {
                prop_assert!(query.level <= query.depth && query.depth <= MAX_DEPTH);
                prop_assert!(query.indices.iter().all(|&i| i < 1usize << query.level));
            }
            let asked: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
            let _ = merkle_hashes_reply(
                "peer:1",
                &asked,
                proto::MerkleHashesResponse { hashes: Bytes::from(hashes.clone()) },
            );
            let _ = decode_purge_tombstone(proto::PurgeTombstoneRequest {
                key: Bytes::from_static(b"k"),
                digest: Bytes::from(hashes),
            });
        }

        #[test]
        fn garbage_never_panics_the_range_decoders(
            start in proptest::collection::vec(any::<u8>(), 0..20),
            end in proptest::collection::vec(any::<u8>(), 0..20),
            state in proptest::collection::vec(any::<u8>(), 0..64),
            max_entries in any::<u32>(),
        ) {
            let range = proto::TokenRange { start: Bytes::from(start), end: Bytes::from(end) };
            let request = proto::ScanRangeRequest {
                range: Some(range),
                after: None,
                max_entries,
                max_bytes: max_entries,
            };
            if let Ok(scan) = decode_scan_range(request.clone()) {
                prop_assert!(scan.max_entries >= 1 && scan.max_entries <= MAX_SCAN_ENTRIES);
            }
            let entries = vec![proto::RangeEntry { key: Bytes::from_static(b"k"), state: Bytes::from(state) }];
            let _ = decode_merge_batch(proto::MergeBatchRequest { entries: entries.clone(), durable: false });
            let _ = scan_range_reply("peer:1", &request, proto::ScanRangeResponse { entries, done: false });
        }

        #[test]
        fn garbage_never_panics_the_request_decoders(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            hint in proptest::option::of(".{0,8}"),
        ) {
            let bytes = Bytes::from(bytes);
            let _ = decode_write(proto::ReplicaWriteRequest {
                key: bytes.clone(),
                state: bytes.clone(),
                durable: true,
                hint_for: hint,
            });
            let _ = decode_coordinate_put(proto::CoordinatePutRequest {
                key: bytes.clone(),
                context: bytes.clone(),
                value: None,
                w: None,
                deadline_unix_ms: None,
            });
            let _ = decode_gossip(proto::GossipRequest { table: bytes.clone() });
            let _ = read_reply("peer:1", proto::ReplicaReadResponse { state: bytes });
        }

        #[test]
        fn forwarded_put_round_trips(
            key in proptest::collection::vec(any::<u8>(), 0..16),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            w in proptest::option::of(1u32..5),
            increments in 0usize..4,
        ) {
            let mut clock = VectorClock::new();
            let actor = Actor::new(node("n1"), 3);
            for _ in 0..increments {
                clock.increment(&actor, Millis(0));
            }
            let mut context = Context::from(clock);
            if increments % 2 == 1 {
                // A put's dotted context, as a put returns when siblings remain.
                context = context.with_dot(crate::version::Dot {
                    actor: Actor::new(node("n2"), 1),
                    counter: 7,
                });
            }
            let put = ForwardedPut { key, context, value, w, deadline: None };
            let back = decode_coordinate_put(coordinate_put_request(put.clone())).unwrap();
            // Contexts carry no timestamps, so compare the causal content.
            prop_assert!(back.context.descends(&put.context) && put.context.descends(&back.context));
            prop_assert_eq!(back.context.dots(), put.context.dots());
            prop_assert_eq!((back.key, back.value, back.w), (put.key, put.value, put.w));
        }
    }

    #[test]
    fn every_replica_error_survives_a_batch_result() {
        for error in [
            ReplicaError::InvalidArgument("bad key".into()),
            ReplicaError::Unavailable("shutting down".into()),
            ReplicaError::Unauthenticated("no credentials".into()),
            ReplicaError::Internal("disk failed".into()),
            ReplicaError::Conflict("conflict: read and resolve".into()),
        ] {
            let reply = proto::ReplicaWriteBatchResponse {
                results: vec![write_result(Ok(())), write_result(Err(error.clone()))],
            };
            let results = write_batch_reply("peer", 2, reply).unwrap();
            assert_eq!(
                results,
                vec![
                    Ok(()),
                    Err(TransportError::Rejected {
                        address: "peer".into(),
                        error
                    })
                ]
            );
        }
    }

    #[test]
    fn a_batch_reply_with_the_wrong_number_of_results_is_a_bad_reply() {
        let reply = proto::ReplicaWriteBatchResponse {
            results: vec![write_result(Ok(()))],
        };
        assert!(matches!(
            write_batch_reply("peer", 2, reply),
            Err(TransportError::BadReply { .. })
        ));
        // An unknown code from a newer peer is still a rejection, never a success.
        let reply = proto::ReplicaWriteBatchResponse {
            results: vec![proto::ReplicaWriteResult {
                code: u32::MAX,
                message: "what".into(),
            }],
        };
        assert!(matches!(
            write_batch_reply("peer", 1, reply).unwrap().as_slice(),
            [Err(TransportError::Rejected {
                error: ReplicaError::Internal(_),
                ..
            })]
        ));
    }
}
