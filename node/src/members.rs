//! This node's side of membership (Dynamo §4.8): the member table as it learns it from
//! peers and changes it by explicit admin calls, persisted so a restart remembers it,
//! and its own entry's announcements (the client address, the zone while it joins).
//! Gossip, range transfer and the Admin API all change the table through here.

use std::sync::Arc;

use crate::cluster::{ChangeError, Cluster};
use crate::membership::{Member, MemberState, MemberTable, MembershipError};
use crate::storage::{Durability, StorageEngine, StorageError};

/// The meta record that holds the persisted member table.
pub(crate) const META_MEMBERS: &str = "members";

/// Why an explicit membership change failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipChangeError {
    /// The table or ring refused it.
    #[error(transparent)]
    Refused(#[from] ChangeError),
    /// It could not be persisted.
    #[error("persisting the member table: {0}")]
    Storage(#[from] StorageError),
}

/// The member table's owner on this node.
pub struct Members {
    cluster: Arc<Cluster>,
    engine: Arc<dyn StorageEngine>,
    /// Our client address, announced in the member table whenever it is missing or
    /// stale there.
    client_advertise: Option<String>,
    /// Our zone (`--zone`), announced in the member table while we join.
    zone: Option<String>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("node", self.cluster.me())
            .finish_non_exhaustive()
    }
}

impl Members {
    /// The owner of `cluster`'s table, persisting it in `engine`.
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        engine: Arc<dyn StorageEngine>,
        client_advertise: Option<String>,
        zone: Option<String>,
    ) -> Self {
        Members {
            cluster,
            engine,
            client_advertise,
            zone,
        }
    }

    /// Our zone (`--zone`), if configured.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The cluster view whose table this owns.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Writes the member table to disk so a restarted node remembers membership.
    pub fn persist_table(&self, table: &MemberTable) -> Result<(), StorageError> {
        self.engine
            .meta_put(META_MEMBERS, &table.encode(), Durability::Sync)
    }

    /// Merges a table learned from a peer and persists it if it changed. Our own join
    /// or leave finishes in the transfer loop, once our ranges moved.
    pub fn learn_table(&self, table: &MemberTable) -> Result<(), String> {
        let changed = self.cluster.merge_table(table).map_err(|e| e.to_string())?;
        // Once we are in the table (an admin may have joined us through another node),
        // tell clients where to reach us; gossip that lost our announcement to a
        // concurrent change at the same version brings us back here to redo it.
        let announced = self.announce_self().map_err(|e| e.to_string())?;
        match announced {
            Some(table) => self.persist_table(&table).map_err(|e| e.to_string())?,
            None if changed => self
                .persist_table(&self.cluster.table())
                .map_err(|e| e.to_string())?,
            None => {}
        }
        Ok(())
    }

    /// Applies an explicit membership change here, persists it, and returns the changed
    /// member; gossip spreads it.
    ///
    /// # Errors
    /// The change is refused, or persisting it failed.
    pub fn change_membership(
        &self,
        change: impl FnOnce(&mut MemberTable) -> Result<Member, MembershipError>,
    ) -> Result<Member, MembershipChangeError> {
        let (member, table) = self.cluster.change(change)?;
        // Our own join through our own Admin API: announce our zone now, since no
        // gossip about it may reach us before we are a member.
        let table = self.announce_self()?.unwrap_or(table);
        self.persist_table(&table)?;
        tracing::info!(node = %member.id(), state = %member.state(), weight = member.weight(), "membership change");
        Ok(member)
    }

    /// Our own entry's announcements: the client address, and the zone while we join.
    /// Returns the newest table if either changed it.
    pub(crate) fn announce_self(&self) -> Result<Option<MemberTable>, ChangeError> {
        announce_self(
            &self.cluster,
            self.client_advertise.as_deref(),
            self.zone.as_deref(),
        )
    }
}

/// Our own entry's announcements: the client address, and the zone while we join.
/// Returns the newest table if either changed it.
pub(crate) fn announce_self(
    cluster: &Cluster,
    client_advertise: Option<&str>,
    zone: Option<&str>,
) -> Result<Option<MemberTable>, ChangeError> {
    let client = announce_client_address(cluster, client_advertise)?;
    Ok(announce_zone(cluster, zone)?.or(client))
}

/// Sets our zone in the member table while we are `Joining` and it differs from
/// `zone`: an admin may have joined us without one (the zone decides where replicas
/// go, so it is fixed once we are a member; see [`MemberTable::set_zone`]).
fn announce_zone(
    cluster: &Cluster,
    zone: Option<&str>,
) -> Result<Option<MemberTable>, ChangeError> {
    let Some(zone) = zone else {
        return Ok(None);
    };
    let me = cluster.me().clone();
    let joining_elsewhere = cluster
        .table()
        .get(&me)
        .is_some_and(|m| m.state() == MemberState::Joining && m.zone() != Some(zone));
    if !joining_elsewhere {
        return Ok(None);
    }
    let (_, table) = cluster.change(|t| t.set_zone(&me, zone))?;
    tracing::info!(node = %me, zone, "announced the zone");
    Ok(Some(table))
}

/// Sets our client address in the member table when we are in it (not removed) and it
/// is missing or differs from `client_advertise`; returns the new table if it changed.
fn announce_client_address(
    cluster: &Cluster,
    client_advertise: Option<&str>,
) -> Result<Option<MemberTable>, ChangeError> {
    let Some(address) = client_advertise else {
        return Ok(None);
    };
    let me = cluster.me().clone();
    let stale = cluster
        .table()
        .get(&me)
        .is_some_and(|m| m.state() != MemberState::Removed && m.client_address() != Some(address));
    if !stale {
        return Ok(None);
    }
    let (_, table) = cluster.change(|t| t.set_client_address(&me, address))?;
    tracing::info!(node = %me, client_address = address, "announced the client address");
    Ok(Some(table))
}
