//! Rendering answers: aligned tables for people, one JSON document (`--json`) for scripts.
//! Pure functions from the gRPC messages to text, so every shape is unit-tested.

use std::io::Write as _;

use serde::Serialize;

use crate::error::CtlError;
use crate::wire::encode_context;
use dynamo_proto as proto;

/// `get --json`: every sibling and the context, all bytes in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GetJson {
    /// The key as given.
    pub key: String,
    /// The concurrent values; empty when the key does not exist.
    pub values: Vec<String>,
    /// The context to pass to the next put or delete.
    pub context: String,
}

impl GetJson {
    /// The document for `key`'s get answer.
    pub fn new(key: &str, response: &proto::GetResponse) -> Self {
        Self {
            key: key.to_owned(),
            values: response.values.iter().map(|v| encode_context(v)).collect(),
            context: encode_context(&response.context),
        }
    }
}

/// `put --json` and `delete --json`: the context of the version just written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteJson {
    /// The key as given.
    pub key: String,
    /// The new version's context (base64).
    pub context: String,
}

/// One member of the table, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberJson {
    /// Node id.
    pub node_id: String,
    /// Internode host:port.
    pub address: String,
    /// `joining`, `member`, `leaving`, `removed` (or `unspecified`).
    pub state: &'static str,
    /// Relative capacity (the target ring's weight, where placement is heading).
    pub weight: u32,
    /// The weight its data is laid out for (the settled ring, which reads use);
    /// differs from `weight` while a weight change is handed over.
    pub settled_weight: u32,
    /// Version of this member's record in the gossiped table.
    pub version: u64,
    /// Fraction of the ring owned as primary, 0..=1.
    pub ownership: f64,
    /// Whether the answering node considers it reachable.
    pub reachable: bool,
    /// Its failure domain; `null` for none.
    pub zone: Option<String>,
}

impl From<&proto::MemberInfo> for MemberJson {
    fn from(member: &proto::MemberInfo) -> Self {
        Self {
            node_id: member.node_id.clone(),
            address: member.address.clone(),
            state: state_name(member.state),
            weight: member.weight,
            settled_weight: settled_weight(member),
            version: member.version,
            ownership: member.ownership,
            reachable: member.reachable,
            zone: (!member.zone.is_empty()).then(|| member.zone.clone()),
        }
    }
}

/// `ring --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RingJson {
    /// Members sorted by id.
    pub members: Vec<MemberJson>,
    /// Digest of the member table; equal on nodes that agree.
    pub table_digest: String,
    /// Partitioning strategy.
    pub partitioning: String,
    /// N.
    pub replication_factor: u32,
}

impl From<&proto::RingResponse> for RingJson {
    fn from(ring: &proto::RingResponse) -> Self {
        Self {
            members: sorted_members(&ring.members)
                .into_iter()
                .map(MemberJson::from)
                .collect(),
            table_digest: ring.table_digest.clone(),
            partitioning: ring.partitioning.clone(),
            replication_factor: ring.replication_factor,
        }
    }
}

/// One target's hint backlog, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HintJson {
    /// The node the hints are for.
    pub target: String,
    /// Keys waiting to be handed off to it.
    pub keys: u64,
}

/// One peer's pending range transfer, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferJson {
    /// The node ranges come from (joining) or go to (leaving).
    pub peer: String,
    /// Ranges not yet acknowledged.
    pub ranges: u64,
    /// Fraction of the ring still to copy, 0..=1.
    pub ring_fraction: f64,
    /// Keys left (estimate), or null when this node cannot count them.
    pub estimated_keys: Option<u64>,
    /// Keys acknowledged so far.
    pub keys_sent: u64,
    /// Bytes acknowledged so far.
    pub bytes_sent: u64,
    /// Milliseconds the peer has been failing as a source, or null while it answers.
    pub unreachable_ms: Option<u64>,
    /// Ranges the peer stalled on, copied from other replicas instead.
    pub ranges_on_fallback: u64,
    /// Ranges the peer stalled on that wait for enough reachable replicas.
    pub ranges_waiting: u64,
}

/// `status --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusJson {
    /// Node id.
    pub node_id: String,
    /// Incarnation (restarts of this node's identity).
    pub incarnation: u64,
    /// Membership state.
    pub state: &'static str,
    /// Approximate number of stored keys.
    pub keys: u64,
    /// Hinted-handoff backlog per target.
    pub hints: Vec<HintJson>,
    /// Durability mode.
    pub durability: String,
    /// Replicas per key.
    pub n: u32,
    /// Read quorum.
    pub r: u32,
    /// Write quorum.
    pub w: u32,
    /// The node's software version.
    pub version: String,
    /// `"joining"`, `"leaving"` or `"reweighting"` while the node transfers ranges, else
    /// null.
    pub transfer: Option<String>,
    /// Ranges of the transfer not yet acknowledged.
    pub transfer_pending_ranges: u64,
    /// The transfer's pending part per peer.
    pub transfers: Vec<TransferJson>,
    /// The node's configured zone; null for none.
    pub zone: Option<String>,
    /// The storage engine's size; null from a node that does not report it.
    pub storage: Option<StorageJson>,
}

/// `status --json`'s storage size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageJson {
    /// Bytes of the stored keys and values (every version, with its clock).
    pub live_bytes: u64,
    /// Bytes of the engine's files on disk; null for the in-memory engine.
    pub disk_bytes: Option<u64>,
    /// Disk bytes per live byte; null without both.
    pub amplification: Option<f64>,
}

impl From<&proto::StorageSpace> for StorageJson {
    fn from(space: &proto::StorageSpace) -> Self {
        Self {
            live_bytes: space.live_bytes,
            disk_bytes: space.disk_bytes,
            amplification: amplification(space),
        }
    }
}

/// Disk bytes per live byte, when both are known and something is live.
fn amplification(space: &proto::StorageSpace) -> Option<f64> {
    let disk = space.disk_bytes?;
    (space.live_bytes > 0).then(|| disk as f64 / space.live_bytes as f64)
}

/// Bytes for people, in MiB with one decimal (sizes here are of data directories).
fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// The `storage` line of `status`.
fn storage_summary(space: &proto::StorageSpace) -> String {
    let live = mebibytes(space.live_bytes);
    match (space.disk_bytes, amplification(space)) {
        (Some(disk), Some(ratio)) => {
            format!("{live} live, {} on disk ({ratio:.2}x)", mebibytes(disk))
        }
        (Some(disk), None) => format!("{live} live, {} on disk", mebibytes(disk)),
        (None, _) => format!("{live} live, in memory"),
    }
}

impl From<&proto::StatusResponse> for StatusJson {
    fn from(status: &proto::StatusResponse) -> Self {
        Self {
            node_id: status.node_id.clone(),
            incarnation: status.incarnation,
            state: state_name(status.state),
            keys: status.keys,
            hints: status
                .hints
                .iter()
                .map(|h| HintJson {
                    target: h.target.clone(),
                    keys: h.keys,
                })
                .collect(),
            durability: status.durability.clone(),
            n: status.n,
            r: status.r,
            w: status.w,
            version: status.version.clone(),
            transfer: (!status.transfer.is_empty()).then(|| status.transfer.clone()),
            transfer_pending_ranges: status.transfer_pending_ranges,
            transfers: status
                .transfers
                .iter()
                .map(|t| TransferJson {
                    peer: t.peer.clone(),
                    ranges: t.ranges,
                    ring_fraction: t.ring_fraction,
                    estimated_keys: t.estimated_keys,
                    keys_sent: t.keys_sent,
                    bytes_sent: t.bytes_sent,
                    unreachable_ms: t.unreachable_ms,
                    ranges_on_fallback: t.ranges_on_fallback,
                    ranges_waiting: t.ranges_waiting,
                })
                .collect(),
            zone: (!status.zone.is_empty()).then(|| status.zone.clone()),
            storage: status.storage.as_ref().map(StorageJson::from),
        }
    }
}

/// The lowercase name of a wire `MemberState`; unknown numbers read as `unspecified`.
pub fn state_name(state: i32) -> &'static str {
    match proto::MemberState::try_from(state) {
        Ok(proto::MemberState::Joining) => "joining",
        Ok(proto::MemberState::Member) => "member",
        Ok(proto::MemberState::Leaving) => "leaving",
        Ok(proto::MemberState::Removed) => "removed",
        Ok(proto::MemberState::Unspecified) | Err(_) => "unspecified",
    }
}

/// A member's settled weight; a node that predates settled weights reports 0, which
/// means no weight change is pending.
fn settled_weight(member: &proto::MemberInfo) -> u32 {
    if member.settled_weight == 0 {
        member.weight
    } else {
        member.settled_weight
    }
}

fn sorted_members(members: &[proto::MemberInfo]) -> Vec<&proto::MemberInfo> {
    let mut sorted: Vec<&proto::MemberInfo> = members.iter().collect();
    sorted.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    sorted
}

/// Left-aligned columns separated by two spaces, a header row first, no trailing spaces.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

const MEMBER_HEADERS: [&str; 7] = [
    "ID",
    "ADDRESS",
    "STATE",
    "ZONE",
    "WEIGHT",
    "OWNERSHIP",
    "REACHABLE",
];

fn member_row(member: &proto::MemberInfo) -> Vec<String> {
    vec![
        member.node_id.clone(),
        member.address.clone(),
        state_name(member.state).to_owned(),
        if member.zone.is_empty() {
            "-".to_owned()
        } else {
            member.zone.clone()
        },
        match settled_weight(member) {
            settled if settled == member.weight => member.weight.to_string(),
            settled => format!("{} (from {settled})", member.weight),
        },
        format!("{:.1}%", member.ownership * 100.0),
        if member.reachable { "yes" } else { "no" }.to_owned(),
    ]
}

/// `ring` for people: a summary line, then the member table sorted by id.
pub fn render_ring(ring: &proto::RingResponse) -> String {
    let rows: Vec<Vec<String>> = sorted_members(&ring.members)
        .into_iter()
        .map(member_row)
        .collect();
    format!(
        "partitioning {}, N={}, {} members, table digest {}\n{}",
        ring.partitioning,
        ring.replication_factor,
        ring.members.len(),
        ring.table_digest,
        render_table(&MEMBER_HEADERS, &rows)
    )
}

/// An admin change's answer for people: the member's row after the change.
pub fn render_member(member: &proto::MemberInfo) -> String {
    render_table(&MEMBER_HEADERS, &[member_row(member)])
}

/// The transfer line of `status`: `none`, or the role, the pending ranges and per peer
/// what is left.
fn transfer_summary(status: &proto::StatusResponse) -> String {
    if status.transfer.is_empty() {
        return "none".to_owned();
    }
    let peers: Vec<String> = status
        .transfers
        .iter()
        .map(|t| {
            let keys = t
                .estimated_keys
                .map_or_else(String::new, |k| format!(", ~{k} keys left"));
            let stalled = match t.unreachable_ms {
                Some(ms) => format!(", unreachable for {:.1}s", ms as f64 / 1000.0),
                None => String::new(),
            };
            let fallback = if t.ranges_on_fallback + t.ranges_waiting > 0 {
                format!(
                    ", {} ranges worked around through other replicas, {} waiting for enough of them",
                    t.ranges_on_fallback, t.ranges_waiting
                )
            } else {
                String::new()
            };
            format!(
                "{} ({} ranges, {:.1}% of the ring{keys}, {} keys sent{stalled}{fallback})",
                t.peer,
                t.ranges,
                t.ring_fraction * 100.0,
                t.keys_sent
            )
        })
        .collect();
    format!(
        "{}: {} ranges pending{}{}",
        status.transfer,
        status.transfer_pending_ranges,
        if peers.is_empty() { "" } else { "; " },
        peers.join(", ")
    )
}

/// `status` for people: one `name value` line per field.
pub fn render_status(status: &proto::StatusResponse) -> String {
    let hints = if status.hints.is_empty() {
        "none".to_owned()
    } else {
        status
            .hints
            .iter()
            .map(|h| format!("{} ({} keys)", h.target, h.keys))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = vec![
        vec!["node".to_owned(), status.node_id.clone()],
        vec!["version".to_owned(), status.version.clone()],
        vec!["incarnation".to_owned(), status.incarnation.to_string()],
        vec!["state".to_owned(), state_name(status.state).to_owned()],
        vec!["keys".to_owned(), status.keys.to_string()],
        vec![
            "storage".to_owned(),
            status
                .storage
                .as_ref()
                .map_or_else(|| "not reported".to_owned(), storage_summary),
        ],
        vec!["hints".to_owned(), hints],
        vec![
            "quorum".to_owned(),
            format!("N={} R={} W={}", status.n, status.r, status.w),
        ],
        vec!["durability".to_owned(), status.durability.clone()],
        vec!["transfer".to_owned(), transfer_summary(status)],
    ];
    if !status.zone.is_empty() {
        rows.insert(1, vec!["zone".to_owned(), status.zone.clone()]);
    }
    // No header row: the names are the first column.
    render_table(&["", ""], &rows)
        .lines()
        .skip(1)
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `get` for people: the value bytes, or each sibling's, one per line. Values are
/// printed as they are (not escaped), so a single text value pipes cleanly.
pub fn render_values<V: AsRef<[u8]>>(values: &[V]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        out.extend_from_slice(value.as_ref());
        out.push(b'\n');
    }
    out
}

/// Serializes a JSON document followed by a newline.
///
/// # Panics
///
/// Never for the types of this module: they hold only strings, numbers and booleans.
pub fn to_json<T: Serialize>(document: &T) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("plain data serializes");
    text.push('\n');
    text
}

/// Writes `text` to stdout and flushes it (a closed pipe is an error, not a panic).
pub(crate) fn print_out(text: String) -> Result<(), CtlError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn member(id: &str, state: proto::MemberState, ownership: f64) -> proto::MemberInfo {
        proto::MemberInfo {
            node_id: id.to_owned(),
            address: format!("127.0.0.1:70{}", id.len()),
            weight: 1,
            state: state as i32,
            version: 2,
            ownership,
            reachable: id != "node3",
            client_address: String::new(),
            settled_weight: 1,
            zone: String::new(),
        }
    }

    fn ring() -> proto::RingResponse {
        proto::RingResponse {
            members: vec![
                member("node2", proto::MemberState::Member, 0.25),
                member("node1", proto::MemberState::Member, 0.5),
                member("node3", proto::MemberState::Joining, 0.25),
            ],
            table_digest: "ab12".to_owned(),
            partitioning: "equal-partitions".to_owned(),
            replication_factor: 3,
        }
    }

    #[test]
    fn table_columns_align_without_trailing_spaces() {
        let table = render_table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["wide cell".into(), "x".into(), "".into()],
                vec!["y".into(), "z".into(), "end".into()],
            ],
        );
        assert_eq!(
            table,
            "A          LONG HEADER  C\n\
             wide cell  x\n\
             y          z            end\n"
        );
    }

    #[test]
    fn ring_table_sorts_by_id_and_shows_ownership_percent() {
        let text = render_ring(&ring());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "partitioning equal-partitions, N=3, 3 members, table digest ab12"
        );
        assert!(lines[1].starts_with("ID "), "{text}");
        assert!(
            lines[2].starts_with("node1 ") && lines[2].contains("50.0%"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("node2 ") && lines[3].contains("member"),
            "{text}"
        );
        assert!(
            lines[4].contains("joining") && lines[4].ends_with("no"),
            "{text}"
        );
    }

    #[test]
    fn ring_json_shape() {
        let doc: Value = serde_json::from_str(&to_json(&RingJson::from(&ring()))).unwrap();
        assert_eq!(doc["replication_factor"], 3);
        assert_eq!(doc["partitioning"], "equal-partitions");
        assert_eq!(doc["table_digest"], "ab12");
        assert_eq!(
            doc["members"][0],
            json!({
                "node_id": "node1", "address": "127.0.0.1:705", "state": "member",
                "weight": 1, "settled_weight": 1, "version": 2, "ownership": 0.5,
                "reachable": true, "zone": null
            })
        );
        assert_eq!(doc["members"][2]["state"], "joining");
        let mut zoned = ring();
        zoned.members[1].zone = "eu-west-1b".into();
        let doc: Value = serde_json::from_str(&to_json(&RingJson::from(&zoned))).unwrap();
        let zoned_id = zoned.members[1].node_id.clone();
        let member = doc["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node_id"] == zoned_id.as_str())
            .unwrap();
        assert_eq!(member["zone"], "eu-west-1b");
        let text = render_ring(&zoned);
        assert!(text.lines().any(|l| l.contains("eu-west-1b")), "{text}");
        assert!(text.contains("ZONE"), "{text}");
    }

    /// A pending weight change shows both weights; a node that predates settled
    /// weights (0 on the wire) shows none pending.
    #[test]
    fn a_pending_weight_change_shows_both_weights() {
        let mut ring = ring();
        ring.members[0].weight = 3;
        ring.members[1].settled_weight = 0;
        let text = render_ring(&ring);
        assert!(
            text.lines()
                .any(|l| l.starts_with("node2 ") && l.contains("3 (from 1)")),
            "{text}"
        );
        let doc: Value = serde_json::from_str(&to_json(&RingJson::from(&ring))).unwrap();
        assert_eq!(doc["members"][1]["weight"], 3);
        assert_eq!(doc["members"][1]["settled_weight"], 1);
        assert_eq!(
            doc["members"][0]["settled_weight"], 1,
            "0 reads as the weight"
        );
    }

    #[test]
    fn get_json_encodes_values_and_context_in_base64() {
        let response = proto::GetResponse {
            values: vec![b"hello".to_vec().into(), vec![0, 255].into()],
            context: vec![1, 2, 3].into(),
        };
        let doc: Value = serde_json::from_str(&to_json(&GetJson::new("k", &response))).unwrap();
        assert_eq!(
            doc,
            json!({"key": "k", "values": ["aGVsbG8=", "AP8="], "context": "AQID"})
        );
    }

    #[test]
    fn write_json_shape() {
        let doc: Value = serde_json::from_str(&to_json(&WriteJson {
            key: "k".into(),
            context: "AQ==".into(),
        }))
        .unwrap();
        assert_eq!(doc, json!({"key": "k", "context": "AQ=="}));
    }

    fn status() -> proto::StatusResponse {
        proto::StatusResponse {
            node_id: "node1".into(),
            incarnation: 4,
            state: proto::MemberState::Member as i32,
            keys: 120,
            hints: vec![proto::HintBacklog {
                target: "node2".into(),
                keys: 7,
            }],
            durability: "sync".into(),
            n: 3,
            r: 2,
            w: 2,
            version: "0.1.0".into(),
            transfer: String::new(),
            transfer_pending_ranges: 0,
            transfers: vec![],
            anti_entropy: None,
            zone: String::new(),
            storage: Some(proto::StorageSpace {
                live_bytes: 3 << 20,
                disk_bytes: Some(9 << 20),
            }),
        }
    }

    #[test]
    fn status_for_people_lists_every_field() {
        let text = render_status(&status());
        assert_eq!(
            text,
            "node         node1\n\
             version      0.1.0\n\
             incarnation  4\n\
             state        member\n\
             keys         120\n\
             storage      3.0 MiB live, 9.0 MiB on disk (3.00x)\n\
             hints        node2 (7 keys)\n\
             quorum       N=3 R=2 W=2\n\
             durability   sync\n\
             transfer     none\n"
        );
        let empty = proto::StatusResponse {
            hints: vec![],
            ..status()
        };
        assert!(render_status(&empty).contains("hints        none\n"));
        let in_memory = proto::StatusResponse {
            storage: Some(proto::StorageSpace {
                live_bytes: 0,
                disk_bytes: None,
            }),
            ..status()
        };
        assert!(render_status(&in_memory).contains("storage      0.0 MiB live, in memory\n"));
        let empty_disk = proto::StatusResponse {
            storage: Some(proto::StorageSpace {
                live_bytes: 0,
                disk_bytes: Some(1 << 20),
            }),
            ..status()
        };
        assert!(
            render_status(&empty_disk).contains("storage      0.0 MiB live, 1.0 MiB on disk\n")
        );
        let older_node = proto::StatusResponse {
            storage: None,
            ..status()
        };
        assert!(render_status(&older_node).contains("storage      not reported\n"));
    }

    #[test]
    fn status_json_shape() {
        let doc: Value = serde_json::from_str(&to_json(&StatusJson::from(&status()))).unwrap();
        assert_eq!(
            doc,
            json!({
                "node_id": "node1", "incarnation": 4, "state": "member", "keys": 120,
                "hints": [{"target": "node2", "keys": 7}], "durability": "sync",
                "n": 3, "r": 2, "w": 2, "version": "0.1.0",
                "transfer": null, "transfer_pending_ranges": 0, "transfers": [], "zone": null,
                "storage": {"live_bytes": 3 << 20, "disk_bytes": 9 << 20, "amplification": 3.0}
            })
        );
        let leaving = proto::StatusResponse {
            state: proto::MemberState::Leaving as i32,
            transfer: "leaving".into(),
            transfer_pending_ranges: 3,
            transfers: vec![proto::TransferPending {
                peer: "node2".into(),
                ranges: 3,
                ring_fraction: 0.25,
                estimated_keys: Some(40),
                keys_sent: 10,
                bytes_sent: 1000,
                ..Default::default()
            }],
            ..status()
        };
        let doc: Value = serde_json::from_str(&to_json(&StatusJson::from(&leaving))).unwrap();
        assert_eq!(doc["transfer"], json!("leaving"));
        assert_eq!(doc["transfer_pending_ranges"], json!(3));
        assert_eq!(
            doc["transfers"],
            json!([{"peer": "node2", "ranges": 3, "ring_fraction": 0.25,
                    "estimated_keys": 40, "keys_sent": 10, "bytes_sent": 1000,
                    "unreachable_ms": null, "ranges_on_fallback": 0, "ranges_waiting": 0}])
        );
        assert!(render_status(&leaving).contains(
            "transfer     leaving: 3 ranges pending; node2 (3 ranges, 25.0% of the ring, ~40 keys left, 10 keys sent)\n"
        ));
        // A joining node whose source stalled says so.
        let stalled = proto::StatusResponse {
            state: proto::MemberState::Joining as i32,
            transfer: "joining".into(),
            transfer_pending_ranges: 2,
            transfers: vec![proto::TransferPending {
                peer: "node3".into(),
                ranges: 0,
                unreachable_ms: Some(61_500),
                ranges_on_fallback: 2,
                ranges_waiting: 1,
                ..Default::default()
            }],
            ..status()
        };
        let doc: Value = serde_json::from_str(&to_json(&StatusJson::from(&stalled))).unwrap();
        assert_eq!(doc["transfers"][0]["unreachable_ms"], json!(61_500));
        assert_eq!(doc["transfers"][0]["ranges_on_fallback"], json!(2));
        assert_eq!(doc["transfers"][0]["ranges_waiting"], json!(1));
        assert!(
            render_status(&stalled).contains(
                "node3 (0 ranges, 0.0% of the ring, 0 keys sent, unreachable for 61.5s, 2 ranges worked around through other replicas, 1 waiting for enough of them)"
            ),
            "{}",
            render_status(&stalled)
        );
    }

    #[test]
    fn unknown_member_state_numbers_read_as_unspecified() {
        assert_eq!(state_name(99), "unspecified");
        assert_eq!(state_name(-1), "unspecified");
        assert_eq!(state_name(proto::MemberState::Leaving as i32), "leaving");
    }

    #[test]
    fn siblings_print_one_per_line() {
        // Dynamo §4.4: a get may return several concurrent versions; all are shown.
        assert_eq!(
            render_values(&[b"a".to_vec(), b"b".to_vec()]),
            b"a\nb\n".to_vec()
        );
        assert_eq!(render_values(&[b"only".to_vec()]), b"only\n".to_vec());
    }
}
