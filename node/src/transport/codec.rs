//! The wire form of the replica calls, shared by the gRPC and in-memory transports so
//! both exercise the same encodings: domain values to `proto` messages and back, and
//! [`ReplicaError`] to a gRPC [`Status`] and back.
//!
//! Everything decoded here comes from a peer, so every decoder returns an error for
//! garbage, truncated or oversized input and never panics.

use bytes::Bytes;
use tonic::{Code, Status};

use super::{ForwardedPut, ReplicaError, ReplicaWrite, TransportError};
use crate::NodeId;
use crate::membership::MemberTable;
use crate::proto;
use crate::version::{SiblingSet, StorageFormatError, context};

/// The largest gRPC message either side encodes or accepts. A replica state is one
/// key's siblings, far below this; the bound stops a confused or hostile peer from
/// making us buffer arbitrary amounts.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The metadata key our server sets on every status it produces from a
/// [`ReplicaError`]. A status without it was produced by the transport (tonic, h2, a
/// proxy), so it says nothing about what the peer decided.
pub(crate) const ERROR_MARKER: &str = "x-dynamo-error";

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
        return TransportError::Unreachable {
            address: address.to_owned(),
            reason: format!("{}: {}", status.code(), status.message()),
        };
    }
    let message = status.message().to_owned();
    let error = match status.code() {
        Code::InvalidArgument => ReplicaError::InvalidArgument(message),
        Code::Unavailable => ReplicaError::Unavailable(message),
        Code::Unauthenticated => ReplicaError::Unauthenticated(message),
        Code::Internal => ReplicaError::Internal(message),
        // A newer peer may use a code this version does not know; keep what it said.
        other => ReplicaError::Internal(format!("{other}: {message}")),
    };
    TransportError::Rejected {
        address: address.to_owned(),
        error,
    }
}

// ---- serving side: requests in, replies out ----

/// The status our server answers with, marked as an application error.
pub(crate) fn error_to_status(error: ReplicaError) -> Status {
    let (code, message) = match error {
        ReplicaError::InvalidArgument(m) => (Code::InvalidArgument, m),
        ReplicaError::Unavailable(m) => (Code::Unavailable, m),
        ReplicaError::Unauthenticated(m) => (Code::Unauthenticated, m),
        ReplicaError::Internal(m) => (Code::Internal, m),
    };
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

pub(crate) fn decode_gossip(request: proto::GossipRequest) -> Result<MemberTable, ReplicaError> {
    MemberTable::decode(&request.table).map_err(|e| invalid("table", e))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::time::Millis;
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
                &VectorClock::new(),
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

    proptest! {
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
            let put = ForwardedPut { key, context: clock, value, w, deadline: None };
            let back = decode_coordinate_put(coordinate_put_request(put.clone())).unwrap();
            // Contexts carry no timestamps, so compare the causal content.
            prop_assert_eq!(back.context.compare(&put.context), crate::version::Causality::Equal);
            prop_assert_eq!((back.key, back.value, back.w), (put.key, put.value, put.w));
        }
    }
}
