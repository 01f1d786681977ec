//! The transfer driver (I/O shell): one round of copies for the node's own membership
//! change, the loop that runs rounds on an interval, and the status it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::fallback::{
    DEFAULT_SOURCE_STALL, Replacement, StallTracker, choose_fallback, choose_redirect,
};
use super::plan::{Task, plan};
use super::progress::Progress;
use super::throttle::{Allowance, FixedThrottle, TransferThrottle};
use crate::NodeId;
use crate::background::BackgroundBudget;
use crate::cluster::Cluster;
use crate::members::Members;
use crate::membership::{Member, MemberState};
use crate::metrics::Metrics;
use crate::quorum::QuorumConfig;
use crate::ring::{Ring, Token, TokenRange};
use crate::shutdown::wait_for;
use crate::storage::Durability;
use crate::store::{Store, encode_state};
use crate::time::Millis;
use crate::transport::{
    MAX_BATCH_ENTRIES, MAX_SCAN_BYTES, MAX_SCAN_ENTRIES, MergeBatch, RangeEntry, RangePage,
    RangeScan, Transport,
};

/// The meta record holding the driver's [`Progress`].
pub(super) const META_PROGRESS: &str = "transfer-progress";

/// How often the transfer loop runs a round, and how much each round may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSettings {
    /// Time between rounds.
    pub interval: Duration,
    /// What one round may send.
    pub per_round: Allowance,
    /// How long a peer of the transfer may fail before it is worked around (see
    /// [`super::fallback`]): a source's copies are then taken from other settled
    /// replicas of the range, and a destination's ranges sent to other target replicas;
    /// zero never works around a peer.
    pub source_stall: Duration,
}

impl Default for TransferSettings {
    /// A round every 250 ms of at most 4096 keys and 4 MiB: up to 16 MiB/s; a source
    /// replaced after failing for [`DEFAULT_SOURCE_STALL`].
    fn default() -> Self {
        Self {
            interval: crate::config::DEFAULT_TRANSFER_INTERVAL,
            per_round: Allowance {
                keys: crate::config::DEFAULT_TRANSFER_BATCH_KEYS,
                bytes: crate::config::DEFAULT_TRANSFER_BATCH_BYTES,
            },
            source_stall: DEFAULT_SOURCE_STALL,
        }
    }
}

/// Why this node is transferring ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferRole {
    /// It is joining: it pulls the ranges it gains, then becomes a Member.
    Joining,
    /// It is leaving: it pushes the ranges it held, then becomes Removed.
    Leaving,
    /// Its weight changed: it pulls the ranges it gains and pushes the ranges it loses
    /// (and relays any others the plan moves), then settles its weight.
    Reweighting,
}

impl TransferRole {
    /// The role of a node whose own member entry is `member`, if it has a transfer to
    /// drive: a joining or leaving node, or a member whose weight change is pending.
    pub fn of(member: &Member) -> Option<Self> {
        match member.state() {
            MemberState::Joining => Some(Self::Joining),
            MemberState::Leaving => Some(Self::Leaving),
            MemberState::Member if member.is_reweighting() => Some(Self::Reweighting),
            _ => None,
        }
    }

    /// The name `Admin.Status.transfer` and `dynamoctl status` report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Leaving => "leaving",
            Self::Reweighting => "reweighting",
        }
    }
}

/// The pending part of a transfer with one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerTransfer {
    /// The peer: the source of ranges this node pulls, or the destination of ranges
    /// it pushes.
    pub peer: NodeId,
    /// Ranges not yet fully acknowledged.
    pub pending_ranges: u64,
    /// The fraction of the ring those ranges still cover past their cursors, `0..=1`.
    pub ring_fraction_remaining: f64,
    /// Keys left to send, estimated from this node's own key density; `None` when
    /// this node is not the source (it cannot count a peer's keys).
    pub estimated_keys_remaining: Option<u64>,
    /// Keys acknowledged so far in the current transfer.
    pub keys_sent: u64,
    /// Key and state bytes acknowledged so far in the current transfer.
    pub bytes_sent: u64,
    /// How long this peer has been failing as a source or destination of the
    /// transfer; `None` while it answers.
    pub unreachable_for: Option<Duration>,
    /// Ranges this peer was to hand over (as a source) or to receive (as a
    /// destination) that are copied from other settled replicas, or sent to other
    /// target replicas, instead, because it stalled (see [`super::fallback`]), and are
    /// not complete yet.
    pub ranges_on_fallback: u64,
    /// Ranges this peer stalled on for which too few other replicas are reachable to
    /// work around it: they wait (for the peer, or for enough replicas).
    pub ranges_waiting: u64,
}

/// What a node reports about its transfers (Admin `Status`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransferStatus {
    /// Why it transfers, if it does.
    pub role: Option<TransferRole>,
    /// Per peer, in id order.
    pub peers: Vec<PeerTransfer>,
}

impl TransferStatus {
    /// Ranges not yet fully acknowledged, over all peers.
    pub fn pending_ranges(&self) -> u64 {
        self.peers.iter().map(|p| p.pending_ranges).sum()
    }
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// What it sent (acknowledged).
    pub used: Allowance,
    /// Tasks of the plan not yet done after the round.
    pub pending_tasks: usize,
    /// The round finished the transfer and flipped this node's member state.
    pub completed: bool,
    /// Calls that failed (the tasks retry from their cursors next round).
    pub errors: Vec<String>,
}

impl RoundReport {
    fn idle() -> Self {
        Self {
            used: Allowance::NONE,
            pending_tasks: 0,
            completed: false,
            errors: Vec::new(),
        }
    }
}

/// The stray ranges computed for the rings of one (settled, target) epoch pair.
pub(super) type StrayCache = ((u64, u64), Vec<TokenRange>);

/// The driver's state inside a node.
#[derive(Debug)]
pub(crate) struct TransferShared {
    pub(crate) settings: TransferSettings,
    /// The last round's view, for status calls. A std `Mutex`: held only to copy.
    status: Mutex<TransferStatus>,
    /// One round at a time (the loop and a simulator or test may both call); a tokio
    /// mutex because a round awaits peers while holding it.
    round: tokio::sync::Mutex<()>,
    /// The version of this node's own member entry every peer took (0: none yet) since
    /// the transfer began; until they took the current one (a second weight change
    /// bumps it), each round announces it again before copying.
    announced: AtomicU64,
    /// One stray sweep at a time (see [`super::sweep`]).
    pub(super) sweep: tokio::sync::Mutex<()>,
    /// The stray ranges of the rings of the given (settled, target) epochs. A std
    /// `Mutex`: held only to read or replace.
    pub(super) stray: Mutex<Option<StrayCache>>,
    /// When each peer (source or destination) of the transfer began failing, to work
    /// around stalled ones. A std `Mutex`: held only for bookkeeping, never across an
    /// `.await`.
    stalls: Mutex<StallTracker>,
    /// Whether `stalls` took back the failure times saved with the progress (once per
    /// transfer and process).
    stalls_restored: AtomicBool,
}

impl TransferShared {
    pub(crate) fn new(settings: TransferSettings) -> Self {
        Self {
            settings,
            status: Mutex::new(TransferStatus::default()),
            round: tokio::sync::Mutex::new(()),
            announced: AtomicU64::new(0),
            sweep: tokio::sync::Mutex::new(()),
            stray: Mutex::new(None),
            stalls: Mutex::new(StallTracker::new()),
            stalls_restored: AtomicBool::new(false),
        }
    }

    fn stalls(&self) -> std::sync::MutexGuard<'_, StallTracker> {
        // Bookkeeping only: a panic elsewhere cannot leave it inconsistent.
        self.stalls.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn status(&self) -> TransferStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, status: TransferStatus) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

/// The range transfer subsystem (Dynamo §4.9) and the stray sweep: the handles their
/// rounds need, nothing else.
#[derive(Clone)]
/// The node wires it with a struct literal: each field is a handle it shares.
pub struct TransferWorker {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) store: Store,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) metrics: Metrics,
    pub(crate) quorum: QuorumConfig,
    pub(crate) background: Arc<BackgroundBudget>,
    pub(crate) transfer: Arc<TransferShared>,
    pub(crate) members: Arc<Members>,
}

impl std::fmt::Debug for TransferWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferWorker")
            .field("node", self.cluster.me())
            .finish_non_exhaustive()
    }
}

impl TransferWorker {
    /// Runs a transfer round every interval with the fixed throttle of the settings,
    /// then a stray sweep in what it left. Returns at `shutdown`, after the round under
    /// way.
    pub(crate) async fn run(self, shutdown: watch::Receiver<bool>) {
        let settings = self.transfer.settings;
        let mut throttle = FixedThrottle::new(settings.per_round);
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = wait_for(shutdown.clone()) => return,
            }
            let wanted = throttle.allowance(self.cluster.clock().monotonic());
            let allowance = self.admitted_transfer_allowance(wanted);
            let report = self.transfer_round(allowance).await;
            throttle.consumed(report.used);
            for error in &report.errors {
                tracing::debug!(%error, "transfer paused");
            }
            // What the transfer left of the round's throttle hands stray keys over; the
            // sweep draws what it sends from the shared budget itself.
            let sweep = self.sweep_round(wanted.minus(report.used)).await;
            throttle.consumed(sweep.used);
            for error in &sweep.errors {
                tracing::debug!(%error, "stray sweep paused");
            }
            if sweep.keys_handed_over > 0 {
                tracing::debug!(
                    keys = sweep.keys_handed_over,
                    "handed stray keys to their replicas"
                );
            }
        }
    }
}

/// What [`TransferWorker::replace_stalled_peers`] decided.
#[derive(Debug, Default)]
struct Replacements {
    /// A fallback or redirect was chosen or changed: the progress must be saved.
    changed: bool,
    /// Per stalled source or destination, its ranges that wait for enough reachable
    /// replicas.
    waiting: BTreeMap<NodeId, u64>,
    /// One line per waiting range, for the round's report.
    messages: Vec<String>,
}

/// Which peer of a copy stalled, and so which kind of replacement stands in for it.
#[derive(Debug, Clone, Copy)]
enum Stalled {
    /// The source: the copy is taken from other settled replicas (a fallback).
    Source,
    /// The destination: the range is sent to other target replicas (a redirect).
    Destination,
}

impl Replacements {
    /// Records `choice` for `task`, whose `side` stalled and whose replacement so far
    /// was `current`: new replacement peers go into `progress` (and the log), and too
    /// few usable ones count the range as waiting on the stalled peer, with a line for
    /// the round's report.
    fn apply(
        &mut self,
        task: &Task,
        side: Stalled,
        choice: Replacement,
        current: &[NodeId],
        progress: &mut Progress,
    ) {
        let stalled = match side {
            Stalled::Source => &task.source,
            Stalled::Destination => &task.dest,
        };
        match choice {
            Replacement::Nodes(nodes) if nodes == current => {}
            Replacement::Nodes(nodes) => {
                // Tracing field names are fixed at compile time: one call per side.
                match side {
                    Stalled::Source => tracing::info!(
                        range = ?task.range,
                        %stalled,
                        fallback = ?nodes,
                        "copying a stalled source's range from other replicas"
                    ),
                    Stalled::Destination => tracing::info!(
                        range = ?task.range,
                        %stalled,
                        redirect = ?nodes,
                        "sending a stalled destination's range to other target replicas"
                    ),
                }
                match side {
                    Stalled::Source => progress.set_fallback(task, nodes),
                    Stalled::Destination => progress.set_redirect(task, nodes),
                }
                self.changed = true;
            }
            Replacement::Wait { needed, usable } => {
                *self.waiting.entry(stalled.clone()).or_default() += 1;
                // The two sides' lines differ only in these words.
                let (way, peer, replicas, kind) = match side {
                    Stalled::Source => ("from", "source", "other replicas", "fallback"),
                    Stalled::Destination => {
                        ("to", "destination", "other target replicas", "redirect")
                    }
                };
                self.messages.push(format!(
                    "{:?} {way} {stalled} waits: its {peer} stalled and {} of the {needed} {replicas} a {kind} needs are reachable ({usable:?})",
                    task.range,
                    usable.len()
                ));
            }
        }
    }
}

/// A call that failed, and the peer to skip for the rest of the round.
struct CallError {
    peer: NodeId,
    reason: String,
}

impl TransferWorker {
    /// What a transfer round may send: `wanted` (the round's own throttle), with its keys
    /// drawn from the node's shared background budget (admission control), one unit per
    /// [`TRANSFER_KEYS_PER_UNIT`](super::TRANSFER_KEYS_PER_UNIT) keys, so transfer
    /// backs off when foreground latency rises. Nothing is drawn while this node has no
    /// transfer to drive (it is not joining, leaving or changing its weight), so an idle
    /// transfer loop never eats the budget that hinted handoff and anti-entropy share.
    pub fn admitted_transfer_allowance(&self, wanted: Allowance) -> Allowance {
        let me = self.cluster.me();
        let transferring = self
            .cluster
            .table()
            .get(me)
            .and_then(TransferRole::of)
            .is_some();
        if !transferring {
            return wanted;
        }
        let units = self.background.take(
            crate::admission::WorkKind::Transfer,
            wanted.keys.div_ceil(super::TRANSFER_KEYS_PER_UNIT),
        );
        let keys = units
            .saturating_mul(super::TRANSFER_KEYS_PER_UNIT)
            .min(wanted.keys);
        Allowance {
            keys,
            bytes: if keys == 0 { 0 } else { wanted.bytes },
        }
    }

    /// One round of range transfer for this node's own membership change (see the
    /// [module docs](crate::transfer)): copies what `allowance` permits of the plan
    /// between the settled and the target ring, in plan order, saving each task's
    /// cursor after every acknowledged batch; when every task is done, marks this node
    /// Member (joining) or Removed (leaving), or settles its weight (reweighting). Does
    /// nothing for a node that has no such change pending.
    ///
    /// Deterministic given the member table, the failure detector's view, the stores
    /// and the allowance: the plan is sorted and the pages follow ring order.
    pub async fn transfer_round(&self, allowance: Allowance) -> RoundReport {
        let _one_round = self.transfer.round.lock().await;
        let me = self.cluster.me().clone();
        let Some((role, planned_weight, my_version)) = self
            .cluster
            .table()
            .get(&me)
            .and_then(|m| Some((TransferRole::of(m)?, m.weight(), m.version())))
        else {
            self.finish_transfer();
            return RoundReport::idle();
        };
        let (settled, target) = self.cluster.rings();
        let n = usize::try_from(self.quorum.n()).unwrap_or(usize::MAX);
        let tasks = plan(&settled, &target, n);
        let mut report = RoundReport::idle();
        let mut progress = match self.load_progress() {
            Ok(progress) => progress,
            Err(error) => {
                report.errors.push(error);
                return report;
            }
        };
        // Wall-clock time: the failure times are saved with the progress and must mean
        // something to the next incarnation of the driver (see `StallTracker`).
        let now = self.cluster.clock().wall();
        if !self.transfer.stalls_restored.swap(true, Ordering::AcqRel) {
            self.transfer
                .stalls()
                .restore(progress.unreachable_since().iter().cloned());
        }
        let mut changed = progress.retain_plan(&tasks);
        let waiting = self.replace_stalled_peers(&tasks, &settled, &target, n, &mut progress, now);
        changed |= waiting.changed;
        report.errors.extend(waiting.messages.iter().cloned());
        if changed {
            if let Err(error) = self.save_progress(&progress) {
                report.errors.push(error);
                return report;
            }
        }
        // Before copying, every peer must know of the change: a coordinator that has not
        // heard of it writes to the old owners only, and a write of a key the copy's
        // cursor has passed would then never reach the new owner (the operator's scaling
        // e2e test saw replicas diverge this way with a 1 s gossip interval). Gossip
        // would tell them in its own time; this tells them now. Best effort: a peer we
        // cannot reach is asked again next round, and the copy goes on meanwhile.
        if self.transfer.announced.load(Ordering::Acquire) != my_version && self.announce().await {
            self.transfer.announced.store(my_version, Ordering::Release);
        }
        let left = self
            .copy_tasks(&tasks, &mut progress, allowance, now, &mut report)
            .await;
        // When the failing peers began failing goes with the progress, so a restarted
        // driver does not wait the whole stall time again.
        let failing = self.transfer.stalls().failing_since();
        if progress.set_unreachable_since(failing) {
            if let Err(error) = self.save_progress(&progress) {
                report.errors.push(error);
            }
        }
        report.used = allowance.minus(left);
        report.pending_tasks = tasks.iter().filter(|t| !progress.is_complete(t)).count();
        let can_finish = self.may_finish(role, target.is_empty(), &mut report);
        // Published before the membership change below, so no one reads the new state
        // (a leaver's "removed") next to the previous round's pending ranges.
        let status = self.transfer_status(role, &tasks, &progress, &settled, n, &waiting, now);
        self.metrics
            .set_transfer_pending(status.peers.iter().map(|p| (&p.peer, p.pending_ranges)));
        self.transfer.set_status(status);
        if report.pending_tasks == 0 && can_finish {
            self.complete(role, planned_weight, &mut report).await;
        }
        report
    }

    /// Whether the change may complete once every range is moved. The last node cannot
    /// leave: there is no one to hand its data to. Nor can a node leave while it holds
    /// hints: they are writes no one else may hold, which hinted handoff redirects to
    /// the keys' replicas first (a wait that is reported).
    fn may_finish(&self, role: TransferRole, target_empty: bool, report: &mut RoundReport) -> bool {
        let hints_left = match role {
            TransferRole::Joining | TransferRole::Reweighting => 0,
            TransferRole::Leaving => self.hints_held().unwrap_or(1),
        };
        if hints_left > 0 && report.pending_tasks == 0 {
            report
                .errors
                .push(format!("waiting for {hints_left} hints to be handed off"));
        }
        role != TransferRole::Leaving || (!target_empty && hints_left == 0)
    }

    /// Copies the plan's unfinished tasks in plan order until `allowance` runs out,
    /// skipping the tasks of a peer that failed this round; returns what is left.
    async fn copy_tasks(
        &self,
        tasks: &[Task],
        progress: &mut Progress,
        allowance: Allowance,
        now: Millis,
        report: &mut RoundReport,
    ) -> Allowance {
        let me = self.cluster.me().clone();
        let mut left = allowance;
        let mut failed: BTreeSet<NodeId> = BTreeSet::new();
        for task in &progress.copies(tasks) {
            if left.is_exhausted() {
                break;
            }
            if progress.of(task).done
                || failed.contains(&task.source)
                || failed.contains(&task.dest)
            {
                continue;
            }
            if let Err(error) = self.copy(task, progress, &mut left).await {
                report.errors.push(format!(
                    "copying {:?} from {} to {}: {}",
                    task.range, task.source, task.dest, error.reason
                ));
                if error.peer != me && (error.peer == task.source || error.peer == task.dest) {
                    self.transfer.stalls().handle_failure(&error.peer, now);
                }
                failed.insert(error.peer);
            }
        }
        left
    }

    /// Every range is moved: marks this node Member (joining) or Removed (leaving), or
    /// settles its weight, and announces it.
    async fn complete(&self, role: TransferRole, planned_weight: u32, report: &mut RoundReport) {
        let me = self.cluster.me().clone();
        let change = match role {
            TransferRole::Joining => self.members.change_membership(|t| t.mark_member(&me)),
            TransferRole::Leaving => self.members.change_membership(|t| t.mark_removed(&me)),
            // Only for the weight this round planned: if a second change arrived
            // meanwhile, the table refuses and the next round re-plans.
            TransferRole::Reweighting => self
                .members
                .change_membership(|t| t.settle_weight(&me, planned_weight)),
        };
        match change {
            Ok(member) => {
                tracing::info!(node = %me, state = %member.state(), weight = member.weight(), "range transfer complete");
                report.completed = true;
                self.finish_transfer();
                // The result does not matter: gossip spreads the rest.
                let _ = self.announce().await;
            }
            Err(error) => report
                .errors
                .push(format!("finishing the transfer: {error}")),
        }
    }

    /// Works around the peers that have failed for the stall time, recording the
    /// choices in `progress`:
    ///
    /// * a stalled source's copies are taken from other settled replicas of the range
    ///   ([`choose_fallback`]), and a fallback source that stalled in turn is replaced;
    /// * a stalled destination's ranges (a leaving node pushing to a down new owner)
    ///   are sent to W other target replicas of the range instead ([`choose_redirect`]),
    ///   and a redirect destination that stalled in turn is replaced.
    ///
    /// A task already on fallback sources is not redirected too (it waits for its
    /// destination). Ranges with too few reachable replicas wait, and are reported.
    fn replace_stalled_peers(
        &self,
        tasks: &[Task],
        settled: &Ring,
        target: &Ring,
        n: usize,
        progress: &mut Progress,
        now: Millis,
    ) -> Replacements {
        let me = self.cluster.me();
        let stall = self.transfer.settings.source_stall;
        let w = usize::try_from(self.quorum.w()).unwrap_or(usize::MAX);
        let mut stalls = self.transfer.stalls();
        // Peers the failure detector already believes down are failing too, even
        // before this round calls them.
        let copies = progress.copies(tasks);
        for copy in &copies {
            if progress.of(copy).done {
                continue;
            }
            for peer in [&copy.source, &copy.dest] {
                if peer != me && !self.cluster.is_available(peer) {
                    stalls.handle_failure(peer, now);
                }
            }
        }
        stalls.retain(|node| {
            let involves = |t: &Task| &t.source == node || &t.dest == node;
            tasks.iter().any(involves) || copies.iter().any(involves)
        });
        let mut outcome = Replacements::default();
        if stall.is_zero() {
            return outcome;
        }
        let usable = |node: &NodeId| {
            node == me || (self.cluster.is_available(node) && !stalls.is_stalled(node, now, stall))
        };
        for task in tasks {
            if progress.is_complete(task) {
                continue;
            }
            // The source side first: a task is redirected only while it copies from
            // its own source.
            if &task.source != me {
                let done = |node: &NodeId| copy_done(progress, task, node, &task.dest);
                let current: Option<Vec<NodeId>> = match progress.fallback_of(task) {
                    // Replaced, and every fallback source still serves (or is done).
                    Some(sources) if sources.iter().all(|s| done(s) || usable(s)) => None,
                    Some(sources) => Some(sources.to_vec()),
                    None if progress.redirect_of(task).is_none()
                        && stalls.is_stalled(&task.source, now, stall) =>
                    {
                        Some(Vec::new())
                    }
                    None => None,
                };
                if let Some(current) = current {
                    let choice = choose_fallback(task, settled, n, w, &current, usable, done);
                    outcome.apply(task, Stalled::Source, choice, &current, progress);
                    continue;
                }
            }
            if &task.dest == me || progress.fallback_of(task).is_some() {
                continue;
            }
            let done = |node: &NodeId| copy_done(progress, task, &task.source, node);
            let current: Vec<NodeId> = match progress.redirect_of(task) {
                // Redirected, and every destination still takes it (or is done).
                Some(dests) if dests.iter().all(|d| done(d) || usable(d)) => continue,
                Some(dests) => dests.to_vec(),
                None if stalls.is_stalled(&task.dest, now, stall) => Vec::new(),
                None => continue,
            };
            let choice = choose_redirect(task, target, n, w, &current, usable, done);
            outcome.apply(task, Stalled::Destination, choice, &current, progress);
        }
        outcome
    }

    /// Pushes our member table to every peer once, so a change (the write set widening
    /// at its start; reads switching to the new owners, or a leaving node's removal, at
    /// its end) does not wait for random gossip to reach everyone. Best effort: gossip
    /// carries it anyway. Returns whether every peer took it.
    async fn announce(&self) -> bool {
        let table = self.cluster.table();
        let me = self.cluster.me();
        let mut everyone = true;
        for member in table.iter() {
            if member.id() == me || member.state() == MemberState::Removed {
                continue;
            }
            match self.transport.gossip(member.address(), table.clone()).await {
                Ok(theirs) => {
                    if let Err(error) = self.members.learn_table(&theirs) {
                        tracing::debug!(peer = %member.id(), %error, "announcing a change");
                    }
                }
                Err(error) => {
                    everyone = false;
                    tracing::debug!(peer = %member.id(), %error, "announcing a change");
                }
            }
        }
        everyone
    }

    /// How many hints this node holds (for any home).
    fn hints_held(&self) -> Result<u64, String> {
        self.store
            .engine()
            .hint_targets()
            .map(|targets| targets.iter().map(|(_, count)| count).sum())
            .map_err(|e| format!("reading hint targets: {e}"))
    }

    /// Forgets a finished (or abandoned) transfer: its progress, its status, and that
    /// it was announced.
    fn finish_transfer(&self) {
        self.transfer.announced.store(0, Ordering::Release);
        *self.transfer.stalls() = StallTracker::new();
        self.transfer
            .stalls_restored
            .store(false, Ordering::Release);
        let had_progress = matches!(self.store.engine().meta_get(META_PROGRESS), Ok(Some(_)));
        if had_progress {
            if let Err(error) = self.store.engine().meta_remove(META_PROGRESS) {
                tracing::warn!(%error, "removing transfer progress");
            }
        }
        if self.transfer.status().role.is_some() {
            self.transfer.set_status(TransferStatus::default());
            self.metrics.set_transfer_pending(std::iter::empty());
        }
    }

    fn load_progress(&self) -> Result<Progress, String> {
        match self.store.engine().meta_get(META_PROGRESS) {
            Ok(Some(bytes)) => Progress::decode(&bytes).map_err(|e| e.to_string()),
            Ok(None) => Ok(Progress::new()),
            Err(error) => Err(format!("reading transfer progress: {error}")),
        }
    }

    fn save_progress(&self, progress: &Progress) -> Result<(), String> {
        self.store
            .engine()
            .meta_put(META_PROGRESS, &progress.encode(), Durability::Sync)
            .map_err(|e| format!("saving transfer progress: {e}"))
    }

    /// Copies pages of one task until it is done or the allowance is used up.
    async fn copy(
        &self,
        task: &Task,
        progress: &mut Progress,
        left: &mut Allowance,
    ) -> Result<(), CallError> {
        let page_entries = u32::try_from(left.keys)
            .unwrap_or(u32::MAX)
            .min(MAX_SCAN_ENTRIES)
            .min(u32::try_from(MAX_BATCH_ENTRIES).unwrap_or(u32::MAX));
        while !left.is_exhausted() {
            let cursor = progress.of(task).cursor;
            let scan = RangeScan {
                range: task.range,
                after: cursor,
                max_entries: page_entries
                    .min(u32::try_from(left.keys).unwrap_or(u32::MAX))
                    .max(1),
                max_bytes: u32::try_from(left.bytes)
                    .unwrap_or(u32::MAX)
                    .min(MAX_SCAN_BYTES),
            };
            let page = self.scan_source(&task.source, scan).await?;
            self.transfer.stalls().handle_success(&task.source);
            let keys = page.entries.len() as u64;
            let bytes: u64 = page
                .entries
                .iter()
                .map(|e| (e.key.len() + encode_state(&e.state).len()) as u64)
                .sum();
            let last = page.entries.last().map(|e| e.key.clone());
            let done = page.done;
            if !page.entries.is_empty() {
                self.merge_into(&task.dest, page.entries).await?;
                self.transfer.stalls().handle_success(&task.dest);
            }
            progress.acknowledge(task, last, done, keys, bytes);
            self.save_progress(progress).map_err(|reason| CallError {
                peer: self.cluster.me().clone(),
                reason,
            })?;
            self.metrics.add_transfer_sent(keys, bytes);
            *left = left.minus(Allowance { keys, bytes });
            if done || keys == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn scan_source(&self, source: &NodeId, scan: RangeScan) -> Result<RangePage, CallError> {
        if source == self.cluster.me() {
            let page = self
                .store
                .scan(
                    scan.range,
                    scan.after.as_deref(),
                    scan.max_entries as usize,
                    scan.max_bytes as usize,
                )
                .map_err(|e| CallError {
                    peer: source.clone(),
                    reason: format!("local scan: {e}"),
                })?;
            return Ok(RangePage::from(page));
        }
        let address = self.peer_address(source)?;
        let result = self.transport.scan_range(&address, scan).await;
        self.cluster.record_call(source, &result);
        result.map_err(|e| CallError {
            peer: source.clone(),
            reason: e.to_string(),
        })
    }

    async fn merge_into(&self, dest: &NodeId, entries: Vec<RangeEntry>) -> Result<(), CallError> {
        if dest == self.cluster.me() {
            let entries: Vec<(Vec<u8>, crate::version::SiblingSet)> =
                entries.into_iter().map(|e| (e.key, e.state)).collect();
            return self
                .store
                .merge_batch(&entries, Durability::Sync)
                .map_err(|e| CallError {
                    peer: dest.clone(),
                    reason: format!("local merge: {e}"),
                });
        }
        let address = self.peer_address(dest)?;
        let batch = MergeBatch {
            entries,
            durable: true,
        };
        let result = self.transport.merge_batch(&address, batch).await;
        self.cluster.record_call(dest, &result);
        result.map_err(|e| CallError {
            peer: dest.clone(),
            reason: e.to_string(),
        })
    }

    fn peer_address(&self, peer: &NodeId) -> Result<String, CallError> {
        self.cluster.address_of(peer).ok_or_else(|| CallError {
            peer: peer.clone(),
            reason: "no address in the member table".into(),
        })
    }

    /// The per-peer view of the pending copies (a replaced task's fallback copies are
    /// pending with their sources; the replaced task shows with its stalled source).
    #[allow(clippy::too_many_arguments)]
    fn transfer_status(
        &self,
        role: TransferRole,
        tasks: &[Task],
        progress: &Progress,
        settled: &Ring,
        n: usize,
        replacements: &Replacements,
        now: Millis,
    ) -> TransferStatus {
        let me = self.cluster.me();
        // Keys per unit of ring this node replicates, for estimating what it still has
        // to send from its own store.
        let replicated: f64 = settled
            .replica_ranges(me, n)
            .iter()
            .map(TokenRange::fraction)
            .sum();
        let density =
            (replicated > 0.0).then(|| self.store.engine().approximate_len() as f64 / replicated);
        let mut peers: BTreeMap<NodeId, PeerTransfer> = BTreeMap::new();
        let stalls = self.transfer.stalls();
        let unreachable = |peer: &NodeId| stalls.unreachable_for(peer, now);
        for task in &progress.copies(tasks) {
            let entry = peer_entry(&mut peers, me, task, unreachable);
            let state = progress.of(task);
            entry.keys_sent += state.keys_sent;
            entry.bytes_sent += state.bytes_sent;
            if state.done {
                continue;
            }
            entry.pending_ranges += 1;
            let remaining = remaining_fraction(task.range, state.cursor.as_deref());
            entry.ring_fraction_remaining += remaining;
            if let (Some(estimate), Some(density)) =
                (entry.estimated_keys_remaining.as_mut(), density)
            {
                *estimate += (remaining * density).ceil() as u64;
            }
        }
        for task in tasks {
            if progress.fallback_of(task).is_none() && progress.redirect_of(task).is_none() {
                continue;
            }
            // What the stalled peer took part in before it was worked around.
            let state = progress.of(task);
            let stalled = if progress.fallback_of(task).is_some() {
                &task.source
            } else {
                &task.dest
            };
            let entry = stalled_peer_entry(&mut peers, me, task, stalled, unreachable);
            entry.keys_sent += state.keys_sent;
            entry.bytes_sent += state.bytes_sent;
            if !progress.is_complete(task) {
                entry.ranges_on_fallback += 1;
            }
        }
        for (peer, &count) in &replacements.waiting {
            if let Some(task) = tasks.iter().find(|t| &t.source == peer || &t.dest == peer) {
                stalled_peer_entry(&mut peers, me, task, peer, unreachable).ranges_waiting = count;
            }
        }
        TransferStatus {
            role: Some(role),
            peers: peers.into_values().collect(),
        }
    }
}

/// Whether the copy of `task`'s range from `source` to `dest` is done.
fn copy_done(progress: &Progress, task: &Task, source: &NodeId, dest: &NodeId) -> bool {
    progress
        .of(&Task {
            range: task.range,
            source: source.clone(),
            dest: dest.clone(),
        })
        .done
}

/// The status entry of the peer `task` involves besides `me` (its source, or the
/// destination of what `me` sends), created empty if missing.
fn peer_entry<'a>(
    peers: &'a mut BTreeMap<NodeId, PeerTransfer>,
    me: &NodeId,
    task: &Task,
    unreachable: impl Fn(&NodeId) -> Option<Duration>,
) -> &'a mut PeerTransfer {
    let peer = if &task.source == me {
        &task.dest
    } else {
        &task.source
    };
    stalled_peer_entry(peers, me, task, peer, unreachable)
}

/// The status entry of `peer`, one of `task`'s source and destination, created empty
/// if missing.
fn stalled_peer_entry<'a>(
    peers: &'a mut BTreeMap<NodeId, PeerTransfer>,
    me: &NodeId,
    task: &Task,
    peer: &NodeId,
    unreachable: impl Fn(&NodeId) -> Option<Duration>,
) -> &'a mut PeerTransfer {
    peers.entry(peer.clone()).or_insert_with(|| PeerTransfer {
        peer: peer.clone(),
        pending_ranges: 0,
        ring_fraction_remaining: 0.0,
        estimated_keys_remaining: (&task.source == me).then_some(0),
        keys_sent: 0,
        bytes_sent: 0,
        unreachable_for: unreachable(peer),
        ranges_on_fallback: 0,
        ranges_waiting: 0,
    })
}

/// The fraction of the ring `range` covers after `cursor`'s token.
fn remaining_fraction(range: TokenRange, cursor: Option<&[u8]>) -> f64 {
    match cursor {
        None => range.fraction(),
        Some(key) => {
            let at = Token::of(key);
            if at == range.end {
                0.0
            } else {
                TokenRange::new(at, range.end).fraction()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn task() -> Task {
        Task {
            range: TokenRange::new(Token(1), Token(101)),
            source: id("a"),
            dest: id("x"),
        }
    }

    #[test]
    fn a_new_replacement_is_recorded_on_its_side_and_an_unchanged_one_is_not() {
        let task = task();
        let mut progress = Progress::new();
        let mut outcome = Replacements::default();
        let same = Replacement::Nodes(vec![id("b")]);
        outcome.apply(&task, Stalled::Source, same, &[id("b")], &mut progress);
        assert!(!outcome.changed, "the same fallback again changes nothing");
        assert_eq!(progress.fallback_of(&task), None);

        let fallback = Replacement::Nodes(vec![id("b"), id("c")]);
        outcome.apply(&task, Stalled::Source, fallback, &[], &mut progress);
        assert!(outcome.changed);
        assert_eq!(progress.fallback_of(&task), Some(&[id("b"), id("c")][..]));
        assert_eq!(progress.redirect_of(&task), None);

        let mut progress = Progress::new();
        let mut outcome = Replacements::default();
        let redirect = Replacement::Nodes(vec![id("y")]);
        outcome.apply(
            &task,
            Stalled::Destination,
            redirect,
            &[id("z")],
            &mut progress,
        );
        assert!(outcome.changed);
        assert_eq!(progress.redirect_of(&task), Some(&[id("y")][..]));
        assert_eq!(progress.fallback_of(&task), None);
        assert!(outcome.waiting.is_empty() && outcome.messages.is_empty());
    }

    #[test]
    fn a_waiting_replacement_counts_against_the_stalled_peer_and_says_why() {
        let task = task();
        let mut progress = Progress::new();
        let mut outcome = Replacements::default();
        let waits = [
            (Stalled::Source, vec![id("b")]),
            (Stalled::Destination, vec![]),
            (Stalled::Destination, vec![]),
        ];
        for (side, usable) in waits {
            let wait = Replacement::Wait { needed: 2, usable };
            outcome.apply(&task, side, wait, &[], &mut progress);
        }
        assert!(!outcome.changed);
        assert_eq!(progress.fallback_of(&task), None);
        assert_eq!(progress.redirect_of(&task), None);
        assert_eq!(
            outcome.waiting,
            BTreeMap::from([(id("a"), 1), (id("x"), 2)])
        );
        let range = format!("{:?}", task.range);
        let source = format!(
            "{range} from a waits: its source stalled and 1 of the 2 other replicas a fallback needs are reachable ([\"b\"])"
        );
        let dest = format!(
            "{range} to x waits: its destination stalled and 0 of the 2 other target replicas a redirect needs are reachable ([])"
        );
        assert_eq!(outcome.messages, vec![source, dest.clone(), dest]);
    }
}
