//! The nodes' `dynamo.v1.Admin` API, as the controller uses it: read the member table and
//! a node's status, and change membership (join with a weight, leave, set a weight).
//!
//! Dynamo §4.8.1: "an administrator uses a command line tool or a browser to connect to a
//! Dynamo node and issue a membership change". [`GrpcAdmin`] is that connection, with
//! the admin token as `authorization: Bearer` metadata (as `dynamoctl` sends it), optional
//! TLS, and a deadline on every call. [`NodeAdmin`] is the seam the reconciler calls
//! through, so the same reconcile code drives real nodes in a pod network and real nodes on
//! loopback in tests.

use std::collections::BTreeMap;
use std::time::Duration;

use dynamo_proto::{self as proto, admin_client::AdminClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::planner::{MemberState, RingMember};

/// The most members a ring reply may list; a longer table is refused as malformed.
pub const MAX_RING_MEMBERS: usize = 10_000;
/// The most hint targets a status reply may list.
pub const MAX_HINT_TARGETS: usize = 10_000;
/// The most per-peer transfer rows a status reply may list (one per peer a node pulls
/// from or pushes to, so at most the ring's size).
pub const MAX_TRANSFER_PEERS: usize = MAX_RING_MEMBERS;
/// The largest reply the client decodes (a 10 000-member table fits well within it).
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// Why an `Admin` call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The node could not be reached (connection refused, DNS, TLS handshake, deadline).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The node answered with an error status.
    #[error("{call} on {url} failed ({code:?}): {message}")]
    Rpc {
        /// The call, e.g. `Leave`.
        call: &'static str,
        /// The endpoint.
        url: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
    /// The node's reply breaks the protocol (unknown member state, too many rows).
    #[error("malformed {call} reply from {url}: {reason}")]
    Malformed {
        /// The call.
        call: &'static str,
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The admin token cannot be sent as gRPC metadata.
    #[error("the admin token must be printable ASCII")]
    InvalidToken,
    /// The TLS material cannot be used.
    #[error("invalid TLS material: {0}")]
    Tls(String),
}

impl AdminError {
    /// The gRPC code when the node answered, e.g. to tell "already joined" from a failure.
    #[must_use]
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// TLS for admin calls: the CA the nodes' certificates chain to, and the client identity
/// presented for mutual TLS (the cluster's own certificate, from its TLS Secret).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// PEM CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// PEM client certificate chain and key, when the nodes require client certificates.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log line.
        f.debug_struct("AdminTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// Where and how to reach one node's `Admin` service.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTarget {
    /// `http://host:port` or `https://host:port` of the internode listener.
    pub url: String,
    /// The admin token, sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// TLS settings for `https://` URLs.
    pub tls: Option<AdminTls>,
}

impl std::fmt::Debug for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTarget")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// One row of the member table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The node id (the pod name for this operator's nodes).
    pub node_id: String,
    /// Its advertised internode address.
    pub address: String,
    /// Its weight (where placement is heading).
    pub weight: u32,
    /// The weight its data is laid out for: differs from `weight` while a weight change
    /// is being handed over (a node that predates settled weights reports 0, read as
    /// `weight`).
    pub settled_weight: u32,
    /// Its state.
    pub state: MemberState,
    /// The row's version: a later change of the same member has a higher one, so views
    /// from several nodes merge by taking the highest (as the nodes' gossip does).
    pub version: u64,
    /// Whether the answering node considers it reachable.
    pub reachable: bool,
}

impl MemberView {
    /// Whether a weight change of this member is still being handed over: a `Member`
    /// whose settled weight differs from its weight.
    #[must_use]
    pub fn is_reweighting(&self) -> bool {
        self.state == MemberState::Member && self.settled_weight != self.weight
    }

    /// The planner's view of this row. The member table says whether a weight change is
    /// still being handed over (`transfers_pending` then), which holds from the moment
    /// the weight is set, before the node's first transfer round reports anything; the
    /// controller adds the node's own [`NodeStatus::transfers_pending`].
    #[must_use]
    pub fn ring_member(&self) -> RingMember<'_> {
        RingMember {
            node_id: &self.node_id,
            state: self.state,
            weight: self.weight,
            transfers_pending: self.is_reweighting(),
        }
    }
}

/// The member table one node reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingView {
    /// The rows.
    pub members: Vec<MemberView>,
    /// Digest of the table; equal on nodes that agree.
    pub table_digest: String,
    /// The node's replication factor `N`.
    pub replication_factor: u32,
}

/// A node's own report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its id.
    pub node_id: String,
    /// Its state in its own table, `None` before it is in one.
    pub state: Option<MemberState>,
    /// Approximate number of keys it stores.
    pub keys: u64,
    /// Hinted writes it holds for other nodes (Dynamo §4.6), by target node id.
    pub hint_backlog: BTreeMap<String, u64>,
    /// The range transfer this node drives for its own membership change, if any.
    pub transfer: Option<TransferRole>,
    /// Ranges of that transfer not yet acknowledged, over all peers.
    pub transfer_pending_ranges: u64,
    /// Whether key ranges are still moving for this node: a transfer role is reported
    /// or ranges are unacknowledged. The planner waits while any member says so.
    pub transfers_pending: bool,
}

/// Why a node transfers ranges (`Admin.Status.transfer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferRole {
    /// It joined and pulls the ranges it gains.
    Joining,
    /// It is leaving and pushes the ranges it loses.
    Leaving,
    /// Its weight changed: it moves the ranges it gains or loses, then settles the
    /// weight.
    Reweighting,
}

/// The transfer fields of a status reply: the role, and whether anything is moving. A
/// role this client does not know (from a newer node) still counts as moving: waiting
/// is the safe reading.
fn transfer_of(reply: &proto::StatusResponse) -> (Option<TransferRole>, bool) {
    let role = match reply.transfer.as_str() {
        "joining" => Some(TransferRole::Joining),
        "leaving" => Some(TransferRole::Leaving),
        "reweighting" => Some(TransferRole::Reweighting),
        _ => None,
    };
    let pending = !reply.transfer.is_empty() || reply.transfer_pending_ranges > 0;
    (role, pending)
}

/// The `Admin` calls the controller makes. Implemented by [`GrpcAdmin`]; the seam lets the
/// same reconcile code reach nodes wherever they listen.
#[async_trait::async_trait]
pub trait NodeAdmin: Send + Sync {
    /// `Admin.Ring`: the member table as `target` sees it.
    async fn ring(&self, target: &AdminTarget) -> Result<RingView, AdminError>;
    /// `Admin.Status`: the node's own state and hint backlog.
    async fn status(&self, target: &AdminTarget) -> Result<NodeStatus, AdminError>;
    /// `Admin.Join`: adds `node_id` at `address` with `weight` (or brings a removed node
    /// back), through the node at `target`.
    async fn join(
        &self,
        target: &AdminTarget,
        node_id: &str,
        address: &str,
        weight: u32,
    ) -> Result<MemberView, AdminError>;
    /// `Admin.Leave`: starts decommissioning `node_id`.
    async fn leave(&self, target: &AdminTarget, node_id: &str) -> Result<MemberView, AdminError>;
    /// `Admin.Remove`: takes a dead member out of the ring at once, without a hand-off
    /// (refused by a node that can still reach it).
    async fn remove(&self, target: &AdminTarget, node_id: &str) -> Result<MemberView, AdminError>;
    /// `Admin.SetWeight`: changes a member's weight.
    async fn set_weight(
        &self,
        target: &AdminTarget,
        node_id: &str,
        weight: u32,
    ) -> Result<MemberView, AdminError>;
}

/// The gRPC `Admin` client: one connection per call, each bounded by a deadline.
#[derive(Debug, Clone)]
pub struct GrpcAdmin {
    timeout: Duration,
}

impl GrpcAdmin {
    /// A client whose connects and calls each take at most `timeout`.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    async fn client(&self, target: &AdminTarget) -> Result<AdminClient<Channel>, AdminError> {
        let unreachable = |reason: String| AdminError::Unreachable {
            url: target.url.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(target.url.clone())
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        if let Some(tls) = &target.tls {
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| AdminError::Tls(dynamo_proto::wire::error_chain(&e)))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(dynamo_proto::wire::error_chain(&e)))?;
        Ok(AdminClient::new(channel)
            .max_decoding_message_size(MAX_REPLY_BYTES)
            .max_encoding_message_size(64 * 1024))
    }

    fn request<T>(target: &AdminTarget, message: T) -> Result<tonic::Request<T>, AdminError> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &target.token {
            let value: MetadataValue<Ascii> = format!("Bearer {token}")
                .parse()
                .map_err(|_| AdminError::InvalidToken)?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    fn rpc_error(call: &'static str, target: &AdminTarget, status: &tonic::Status) -> AdminError {
        // A deadline or a broken connection shows up as a status too (a status made on
        // this side carries the transport error as its source, e.g. a TLS 1.3 server
        // refusing the client certificate after the handshake); all mean the node was
        // not heard from, which is what the reconciler needs to know.
        let local = std::error::Error::source(status).is_some();
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                AdminError::Unreachable {
                    url: target.url.clone(),
                    reason: format!("{call}: {}", status.message()),
                }
            }
            _ if local => AdminError::Unreachable {
                url: target.url.clone(),
                reason: format!("{call}: {}", dynamo_proto::wire::error_chain(status)),
            },
            code => AdminError::Rpc {
                call,
                url: target.url.clone(),
                code,
                message: status.message().to_owned(),
            },
        }
    }

    async fn change(
        &self,
        call: &'static str,
        target: &AdminTarget,
        send: impl AsyncFnOnce(
            AdminClient<Channel>,
        )
            -> Result<tonic::Response<proto::MemberChangeResponse>, tonic::Status>,
    ) -> Result<MemberView, AdminError> {
        let client = self.client(target).await?;
        let reply = send(client)
            .await
            .map_err(|status| Self::rpc_error(call, target, &status))?
            .into_inner();
        let member = reply.member.ok_or_else(|| AdminError::Malformed {
            call,
            url: target.url.clone(),
            reason: "no member in reply".to_owned(),
        })?;
        member_view(call, target, member)
    }
}

fn member_state(state: i32) -> Option<MemberState> {
    match proto::MemberState::try_from(state).ok()? {
        proto::MemberState::Joining => Some(MemberState::Joining),
        proto::MemberState::Member => Some(MemberState::Member),
        proto::MemberState::Leaving => Some(MemberState::Leaving),
        proto::MemberState::Removed => Some(MemberState::Removed),
        proto::MemberState::Unspecified => None,
    }
}

fn member_view(
    call: &'static str,
    target: &AdminTarget,
    member: proto::MemberInfo,
) -> Result<MemberView, AdminError> {
    let state = member_state(member.state).ok_or_else(|| AdminError::Malformed {
        call,
        url: target.url.clone(),
        reason: format!("member {:?} has state {}", member.node_id, member.state),
    })?;
    Ok(MemberView {
        node_id: member.node_id,
        address: member.address,
        weight: member.weight,
        settled_weight: if member.settled_weight == 0 {
            member.weight
        } else {
            member.settled_weight
        },
        state,
        version: member.version,
        reachable: member.reachable,
    })
}

#[async_trait::async_trait]
impl NodeAdmin for GrpcAdmin {
    async fn ring(&self, target: &AdminTarget) -> Result<RingView, AdminError> {
        let request = Self::request(target, proto::RingRequest {})?;
        let reply = self
            .client(target)
            .await?
            .ring(request)
            .await
            .map_err(|status| Self::rpc_error("Ring", target, &status))?
            .into_inner();
        if reply.members.len() > MAX_RING_MEMBERS {
            return Err(AdminError::Malformed {
                call: "Ring",
                url: target.url.clone(),
                reason: format!(
                    "{} members, at most {MAX_RING_MEMBERS}",
                    reply.members.len()
                ),
            });
        }
        let members = reply
            .members
            .into_iter()
            .map(|m| member_view("Ring", target, m))
            .collect::<Result<_, _>>()?;
        Ok(RingView {
            members,
            table_digest: reply.table_digest,
            replication_factor: reply.replication_factor,
        })
    }

    async fn status(&self, target: &AdminTarget) -> Result<NodeStatus, AdminError> {
        let request = Self::request(target, proto::StatusRequest {})?;
        let reply = self
            .client(target)
            .await?
            .status(request)
            .await
            .map_err(|status| Self::rpc_error("Status", target, &status))?
            .into_inner();
        let malformed = |reason: String| AdminError::Malformed {
            call: "Status",
            url: target.url.clone(),
            reason,
        };
        if reply.transfers.len() > MAX_TRANSFER_PEERS {
            return Err(malformed(format!(
                "{} transfer peers, at most {MAX_TRANSFER_PEERS}",
                reply.transfers.len()
            )));
        }
        let (transfer, transfers_pending) = transfer_of(&reply);
        if reply.hints.len() > MAX_HINT_TARGETS {
            return Err(malformed(format!(
                "{} hint targets, at most {MAX_HINT_TARGETS}",
                reply.hints.len()
            )));
        }
        Ok(NodeStatus {
            node_id: reply.node_id,
            state: member_state(reply.state),
            keys: reply.keys,
            hint_backlog: reply
                .hints
                .into_iter()
                .map(|h| (h.target, h.keys))
                .collect(),
            transfer,
            transfer_pending_ranges: reply.transfer_pending_ranges,
            transfers_pending,
        })
    }

    async fn join(
        &self,
        target: &AdminTarget,
        node_id: &str,
        address: &str,
        weight: u32,
    ) -> Result<MemberView, AdminError> {
        let request = Self::request(
            target,
            proto::JoinRequest {
                node_id: node_id.to_owned(),
                address: address.to_owned(),
                weight,
                zone: String::new(),
            },
        )?;
        self.change("Join", target, async move |mut c| c.join(request).await)
            .await
    }

    async fn leave(&self, target: &AdminTarget, node_id: &str) -> Result<MemberView, AdminError> {
        let request = Self::request(
            target,
            proto::LeaveRequest {
                node_id: node_id.to_owned(),
            },
        )?;
        self.change("Leave", target, async move |mut c| c.leave(request).await)
            .await
    }

    async fn remove(&self, target: &AdminTarget, node_id: &str) -> Result<MemberView, AdminError> {
        let request = Self::request(
            target,
            proto::RemoveRequest {
                node_id: node_id.to_owned(),
            },
        )?;
        self.change("Remove", target, async move |mut c| c.remove(request).await)
            .await
    }

    async fn set_weight(
        &self,
        target: &AdminTarget,
        node_id: &str,
        weight: u32,
    ) -> Result<MemberView, AdminError> {
        let request = Self::request(
            target,
            proto::SetWeightRequest {
                node_id: node_id.to_owned(),
                weight,
            },
        )?;
        self.change("SetWeight", target, async move |mut c| {
            c.set_weight(request).await
        })
        .await
    }
}

/// Merges member tables reported by several nodes: per node id, the row with the highest
/// version wins (the member table's own merge rule), so a change one node has already
/// heard of is not undone by another's stale view.
#[must_use]
pub fn merge_views(views: &[RingView]) -> Vec<MemberView> {
    let mut merged: BTreeMap<&str, &MemberView> = BTreeMap::new();
    for row in views.iter().flat_map(|v| &v.members) {
        merged
            .entry(&row.node_id)
            .and_modify(|best| {
                if row.version > best.version {
                    *best = row;
                }
            })
            .or_insert(row);
    }
    merged.into_values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: MemberState, version: u64) -> MemberView {
        MemberView {
            node_id: id.to_owned(),
            address: format!("{id}:7001"),
            weight: 1,
            settled_weight: 1,
            state,
            version,
            reachable: true,
        }
    }

    /// A weight change is pending from the moment it is set (the table says so), until
    /// the node settles it; a node that predates settled weights (0) has none pending.
    #[test]
    fn a_member_with_an_unsettled_weight_has_transfers_pending() {
        let mut member = row("db-1", MemberState::Member, 3);
        assert!(!member.ring_member().transfers_pending);
        member.weight = 4;
        assert!(member.is_reweighting());
        assert!(member.ring_member().transfers_pending);
        // A joining or leaving node's own transfer covers its weight.
        member.state = MemberState::Leaving;
        assert!(!member.ring_member().transfers_pending);
        let target = AdminTarget {
            url: "http://n:7001".into(),
            token: None,
            tls: None,
        };
        let info = |settled_weight| proto::MemberInfo {
            node_id: "db-1".into(),
            weight: 4,
            settled_weight,
            state: proto::MemberState::Member as i32,
            ..proto::MemberInfo::default()
        };
        let old = member_view("Ring", &target, info(0)).unwrap();
        assert_eq!(old.settled_weight, 4);
        assert!(!old.is_reweighting());
        let pending = member_view("Ring", &target, info(2)).unwrap();
        assert!(pending.is_reweighting());
    }

    fn view(rows: Vec<MemberView>) -> RingView {
        RingView {
            members: rows,
            table_digest: String::new(),
            replication_factor: 3,
        }
    }

    #[test]
    fn merged_views_keep_the_latest_row_per_node() {
        let stale = view(vec![
            row("db-0", MemberState::Member, 2),
            row("db-3", MemberState::Member, 2),
        ]);
        let fresh = view(vec![
            row("db-3", MemberState::Leaving, 3),
            row("db-1", MemberState::Joining, 1),
        ]);
        let merged = merge_views(&[stale.clone(), fresh.clone()]);
        assert_eq!(
            merged,
            merge_views(&[fresh, stale]),
            "order does not matter"
        );
        let states: Vec<_> = merged
            .iter()
            .map(|m| (m.node_id.as_str(), m.state))
            .collect();
        assert_eq!(
            states,
            [
                ("db-0", MemberState::Member),
                ("db-1", MemberState::Joining),
                ("db-3", MemberState::Leaving),
            ]
        );
    }

    #[test]
    fn unknown_member_states_are_malformed() {
        assert_eq!(
            member_state(proto::MemberState::Leaving as i32),
            Some(MemberState::Leaving)
        );
        assert_eq!(member_state(0), None);
        assert_eq!(member_state(99), None);
        let target = AdminTarget {
            url: "http://n:7001".into(),
            token: None,
            tls: None,
        };
        let err = member_view(
            "Ring",
            &target,
            proto::MemberInfo {
                node_id: "db-0".into(),
                state: 0,
                ..proto::MemberInfo::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, AdminError::Malformed { .. }), "{err}");
    }

    #[test]
    fn transfers_are_pending_while_a_role_or_ranges_are_reported() {
        let reply = |transfer: &str, ranges| proto::StatusResponse {
            transfer: transfer.to_owned(),
            transfer_pending_ranges: ranges,
            ..proto::StatusResponse::default()
        };
        assert_eq!(transfer_of(&reply("", 0)), (None, false));
        assert_eq!(
            transfer_of(&reply("joining", 4)),
            (Some(TransferRole::Joining), true)
        );
        // Every range acknowledged, the state flip not yet done: still moving.
        assert_eq!(
            transfer_of(&reply("leaving", 0)),
            (Some(TransferRole::Leaving), true)
        );
        // A weight change being handed over, even with every range acknowledged.
        assert_eq!(
            transfer_of(&reply("reweighting", 0)),
            (Some(TransferRole::Reweighting), true)
        );
        // Ranges without a role, or a role this client does not know: still moving.
        assert_eq!(transfer_of(&reply("", 2)), (None, true));
        assert_eq!(transfer_of(&reply("rebalancing", 0)), (None, true));
    }

    #[test]
    fn tokens_are_redacted_and_checked() {
        let target = AdminTarget {
            url: "http://n:7001".into(),
            token: Some("s3cret".into()),
            tls: None,
        };
        assert!(!format!("{target:?}").contains("s3cret"));
        let request = GrpcAdmin::request(&target, proto::RingRequest {}).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        let bad = AdminTarget {
            token: Some("line\nbreak".into()),
            ..target
        };
        assert_eq!(
            GrpcAdmin::request(&bad, proto::RingRequest {}).unwrap_err(),
            AdminError::InvalidToken
        );
    }
}
