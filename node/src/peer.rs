//! The receiving end of the internode transport: what a node answers its peers (replica
//! reads and writes, batched merges, range scans, gossip, Merkle queries and tombstone
//! purges), each checked against the node's bounds and served from its store or handed
//! to the subsystem that owns it.

use std::sync::Arc;

use crate::membership::MemberTable;
use crate::merkle::Hash;
use crate::node::NodeShared;
use crate::storage::{Durability, StorageError, run_engine_call};
use crate::store::StoreError;
use crate::transport::{
    ForwardedPut, MergeBatch, MerkleQuery, RangePage, RangeScan, ReplicaError, ReplicaHandler,
    ReplicaWrite,
};
use crate::version::SiblingSet;

/// Serves peers: the receiving end of the transport.
#[derive(Debug)]
pub(crate) struct PeerHandler {
    pub(crate) node: Arc<NodeShared>,
}

fn internal(e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Internal(e.to_string())
}

#[async_trait::async_trait]
impl ReplicaHandler for PeerHandler {
    async fn read(&self, key: Vec<u8>) -> Result<SiblingSet, ReplicaError> {
        // Inline, like the coordinator's local read: a read is served from sled's page
        // cache, and a blocking-pool hop per replica read cost more than the read.
        self.node.store.read(&key).map_err(internal)
    }

    async fn write(&self, write: ReplicaWrite) -> Result<(), ReplicaError> {
        let limits = self.node.coordinator.limits();
        limits
            .check_key(&write.key)
            .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        self.node.store_write(&write).await.map_err(internal)
    }

    /// Applies every write in memory, then waits once for a flush that covers all of
    /// them (shared with concurrent writers: group commit), so a batch of sync writes
    /// costs one flush wait instead of one each. A failed flush fails exactly the writes
    /// that needed it.
    async fn write_batch(&self, writes: Vec<ReplicaWrite>) -> Vec<Result<(), ReplicaError>> {
        let limits = self.node.coordinator.limits();
        let mut results: Vec<Result<(), ReplicaError>> = writes
            .iter()
            .map(|write| {
                limits
                    .check_key(&write.key)
                    .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
                self.node.apply_write(write).map_err(internal)
            })
            .collect();
        let durable: Vec<usize> = writes
            .iter()
            .zip(&results)
            .enumerate()
            .filter(|(_, (write, result))| result.is_ok() && self.node.must_flush(write))
            .map(|(index, _)| index)
            .collect();
        if !durable.is_empty() {
            if let Err(error) = self.node.store.make_durable().await {
                for index in durable {
                    results[index] = Err(internal(&error));
                }
            }
        }
        results
    }

    async fn coordinate_put(&self, put: ForwardedPut) -> Result<Vec<u8>, ReplicaError> {
        if let Some(deadline) = put.deadline {
            let now = self.node.cluster.clock().wall();
            if now > deadline {
                // The forwarding node has given up and told its client the outcome is
                // unknown; coordinating now would write the value as a new version
                // that the client may already have replaced.
                return Err(ReplicaError::Unavailable(format!(
                    "forwarded put arrived {} ms after its deadline",
                    now.0 - deadline.0
                )));
            }
        }
        let context = self
            .node
            .coordinator
            .coordinate_put(&put.key, put.context, put.value, put.w)
            .await
            .map_err(|e| crate::server::coordinator_replica_error(&e))?;
        Ok(crate::version::context::encode(&context))
    }

    async fn gossip(&self, table: MemberTable) -> Result<MemberTable, ReplicaError> {
        self.node.gossip.answer(&table)
    }

    async fn scan_range(&self, scan: RangeScan) -> Result<RangePage, ReplicaError> {
        let node = Arc::clone(&self.node);
        let page = run_engine_call(self.node.store.engine().as_ref(), move || {
            node.store.scan(
                scan.range,
                scan.after.as_deref(),
                scan.max_entries as usize,
                scan.max_bytes as usize,
            )
        })
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            StoreError::Storage(
                e @ (StorageError::CursorOutsideRange | StorageError::ZeroLimit),
            ) => ReplicaError::InvalidArgument(e.to_string()),
            other => internal(other),
        })?;
        Ok(RangePage::from(page))
    }

    async fn merge_batch(&self, batch: MergeBatch) -> Result<(), ReplicaError> {
        let limits = self.node.coordinator.limits();
        let mut entries = Vec::with_capacity(batch.entries.len());
        for entry in batch.entries {
            limits
                .check_key(&entry.key)
                .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
            entries.push((entry.key, entry.state));
        }
        let durability = if batch.durable {
            Durability::Sync
        } else {
            self.node.durability
        };
        let node = Arc::clone(&self.node);
        run_engine_call(self.node.store.engine().as_ref(), move || {
            node.store.merge_batch(&entries, durability)
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    async fn merkle_hashes(&self, query: MerkleQuery) -> Result<Vec<Hash>, ReplicaError> {
        self.node.antientropy_worker.answer_hashes(&query)
    }

    async fn purge_tombstone(&self, key: Vec<u8>, digest: Hash) -> Result<bool, ReplicaError> {
        self.node
            .coordinator
            .limits()
            .check_key(&key)
            .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        self.node.antientropy_worker.answer_purge(key, digest).await
    }
}

impl NodeShared {
    /// What this node serves to its peers.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn ReplicaHandler> {
        Arc::new(PeerHandler {
            node: Arc::clone(self),
        })
    }
}
