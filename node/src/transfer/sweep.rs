//! The stray sweep: data a node holds for keys it is no home replica of is handed to
//! the keys' current replicas, then dropped here.
//!
//! Such data has two sources. A node that handed ranges over (to a joining node, or in
//! a rebuilt strategy-3 ring) keeps what it held; and, worse, a coordinator that had not
//! yet heard of a membership change writes to the *old* replicas only (see the module
//! docs' known limits). If the new owner's transfer had already passed that key, the
//! write lives only on nodes that are no longer replicas, which anti-entropy never
//! visits (it runs among a range's current replicas): an acknowledged write that no
//! quorum read can find. The deterministic simulator found exactly that (a node
//! partitioned from gossip during a join kept coordinating with the old ring).
//!
//! A sweep round scans the ranges where this node is no home replica in either ring
//! ([`stray_ranges`]), sends each page to every home replica of its keys
//! (`MergeBatch`, durable; merging by vector clock makes a resend harmless), and once
//! every one of them acknowledged, removes each key here by compare-and-delete on the
//! state it sent, so a write that arrived meanwhile stays for the next round. The
//! sweep needs no progress record: what it handed over is gone, so each round starts
//! from the ranges' beginnings and finds only what is left.
//!
//! Like hinted handoff, transfer and anti-entropy, the sweep is background work: it
//! draws every batch it sends from the node's shared budget (admission control, kind
//! `sweep`), and only for keys it actually sends, so a stand-in holding keys of a down
//! home does not spend the budget on them every round. Its figures are in `/metrics`
//! (`dynamo_sweep_rounds_total`, `dynamo_sweep_keys_handed_over_total`,
//! `dynamo_sweep_keys_removed_total`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::driver::TransferWorker;
use super::plan::{stray_ranges, write_set};
use super::throttle::Allowance;
use crate::NodeId;
use crate::admission::WorkKind;
use crate::ring::{Token, TokenRange};
use crate::storage::run_engine_call;
use crate::store::encode_state;
use crate::transport::{MAX_BATCH_ENTRIES, MAX_SCAN_BYTES, MergeBatch, RangeEntry};
use crate::version::SiblingSet;

/// What one sweep round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Keys and bytes scanned for the round (each key counted once, however many
    /// replicas got it).
    pub used: Allowance,
    /// Keys every current home replica acknowledged.
    pub keys_handed_over: u64,
    /// Handed-over keys removed here (a key written again meanwhile stays).
    pub keys_removed: u64,
    /// The shared background budget granted less than the round wanted to send: the
    /// rest waits for a later round.
    pub budget_exhausted: bool,
    /// Calls that failed; the keys stay here for the next round.
    pub errors: Vec<String>,
}

/// Whether a round goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    Left,
    Spent,
}

impl TransferWorker {
    /// One stray sweep round within `allowance` and what the node's shared background
    /// budget grants (kind `sweep`; see [`crate::transfer::sweep`]): hands the keys
    /// this node holds but does not replicate to their current home replicas and
    /// removes them here; counts the round in the node's metrics. Deterministic given
    /// the rings, the failure detector's view, the budget and the stores.
    pub async fn sweep_round(&self, allowance: Allowance) -> SweepReport {
        let _one_round = self.transfer.sweep.lock().await;
        let mut report = SweepReport {
            used: Allowance::NONE,
            keys_handed_over: 0,
            keys_removed: 0,
            budget_exhausted: false,
            errors: Vec::new(),
        };
        let n = usize::try_from(self.quorum.n()).unwrap_or(usize::MAX);
        let mut left = allowance;
        for range in self.stray_ranges_now(n) {
            if left.is_exhausted() || report.budget_exhausted {
                break;
            }
            if let Err(error) = self.sweep_range(range, n, &mut left, &mut report).await {
                report.errors.push(format!("sweeping {range:?}: {error}"));
            }
        }
        report.used = allowance.minus(left);
        self.metrics
            .record_sweep_round(report.keys_handed_over, report.keys_removed);
        report
    }

    /// [`stray_ranges`] of the current rings, recomputed only when the rings changed
    /// (their epoch moves with every table change).
    fn stray_ranges_now(&self, n: usize) -> Vec<TokenRange> {
        let (settled, target) = self.cluster.rings();
        let epochs = (settled.epoch(), target.epoch());
        let mut cache = self
            .transfer
            .stray
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cache {
            Some((cached, ranges)) if *cached == epochs => ranges.clone(),
            _ => {
                let ranges = stray_ranges(&settled, &target, self.cluster.me(), n);
                *cache = Some((epochs, ranges.clone()));
                ranges
            }
        }
    }

    async fn sweep_range(
        &self,
        range: TokenRange,
        n: usize,
        left: &mut Allowance,
        report: &mut SweepReport,
    ) -> Result<(), String> {
        let mut after: Option<Vec<u8>> = None;
        while !left.is_exhausted() {
            let max_entries = usize::try_from(left.keys)
                .unwrap_or(usize::MAX)
                .min(MAX_BATCH_ENTRIES);
            let max_bytes = usize::try_from(left.bytes)
                .unwrap_or(usize::MAX)
                .min(MAX_SCAN_BYTES as usize);
            let page = self
                .store
                .scan(range, after.as_deref(), max_entries, max_bytes)
                .map_err(|e| format!("local scan: {e}"))?;
            let Some((last, _)) = page.entries.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let bytes: u64 = page
                .entries
                .iter()
                .map(|(key, state)| (key.len() + encode_state(state).len()) as u64)
                .sum();
            *left = left.minus(Allowance {
                keys: page.entries.len() as u64,
                bytes,
            });
            if self.hand_over(page.entries, n, report).await? == Budget::Spent {
                report.budget_exhausted = true;
                return Ok(());
            }
            if page.done {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends `entries` (as many as the background budget grants) to every home
    /// replica of each key (as of now), then removes each key whose state is unchanged
    /// here. Nothing is removed unless every batch was acknowledged.
    async fn hand_over(
        &self,
        entries: Vec<(Vec<u8>, SiblingSet)>,
        n: usize,
        report: &mut SweepReport,
    ) -> Result<Budget, String> {
        let (settled, target) = self.cluster.rings();
        let me = self.cluster.me();
        let mut sendable: Vec<(Vec<u8>, SiblingSet, Vec<NodeId>)> = Vec::new();
        for (key, state) in entries {
            let writes = write_set(&settled, &target, Token::of(&key), n);
            let homes = &writes.extended[..writes.home];
            // The ring moved under the round and made us a replica again, or there
            // is no ring: keep the key.
            if homes.is_empty() || homes.contains(me) {
                continue;
            }
            // A home believed down would fail the batch and leave the key here anyway;
            // wait for it rather than resend to the others every round. (Stand-ins
            // hold such keys routinely: the sloppy quorum's writes for a down home.)
            if homes.iter().any(|home| !self.cluster.is_available(home)) {
                continue;
            }
            sendable.push((key, state, homes.to_vec()));
        }
        if sendable.is_empty() {
            return Ok(Budget::Left);
        }
        let wanted = sendable.len() as u64;
        let granted = self.background.take(WorkKind::Sweep, wanted);
        let budget = if granted < wanted {
            Budget::Spent
        } else {
            Budget::Left
        };
        sendable.truncate(usize::try_from(granted).unwrap_or(usize::MAX));
        let mut batches: BTreeMap<NodeId, Vec<RangeEntry>> = BTreeMap::new();
        let mut sent: Vec<(Vec<u8>, [u8; 16])> = Vec::new();
        for (key, state, homes) in sendable {
            for home in homes {
                batches.entry(home).or_default().push(RangeEntry {
                    key: key.clone(),
                    state: state.clone(),
                });
            }
            sent.push((key, state.digest()));
        }
        for (home, entries) in batches {
            let address = self
                .cluster
                .address_of(&home)
                .ok_or_else(|| format!("no address for {home}"))?;
            let batch = MergeBatch {
                entries,
                durable: true,
            };
            let result = self.transport.merge_batch(&address, batch).await;
            self.cluster.record_call(&home, &result);
            result.map_err(|e| format!("handing keys to {home}: {e}"))?;
        }
        report.keys_handed_over += sent.len() as u64;
        let mut removed = 0;
        for (key, digest) in sent {
            if self
                .store
                .remove_unchanged(&key, digest)
                .map_err(|e| format!("removing a handed-over key: {e}"))?
            {
                removed += 1;
            }
        }
        report.keys_removed += removed;
        if removed > 0 {
            // A tombstone purge takes a key this node no longer holds for handed over
            // (it reads every member first, see `antientropy`); a buffered node's
            // crash must not undo the removal and bring the stray copy back after it.
            let engine = Arc::clone(self.store.engine());
            let flushing = Arc::clone(&engine);
            run_engine_call(engine.as_ref(), move || flushing.flush())
                .await
                .map_err(|e| format!("flushing removed strays: {e}"))?
                .map_err(|e| format!("flushing removed strays: {e}"))?;
        }
        Ok(budget)
    }
}
