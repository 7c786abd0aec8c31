//! Meta node configuration.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use tessera_proto::ClusterSecret;

use crate::MetaNodeError;

/// Meta node configuration (TOML, kebab-case).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct MetaConfig {
    /// This node's Raft id (1, 2, 3, ...).
    pub id: u64,
    /// Directory of the sled database (Raft log, vote, state machine).
    pub data_dir: PathBuf,
    /// Address peers and clients use to reach this node; defaults to the
    /// bound listen address.
    pub advertise: Option<String>,
    /// The initial members, id -> address, used to bootstrap the group.
    pub peers: BTreeMap<u64, String>,
    /// Initialize the group with `peers` if it was never initialized. Safe
    /// to set on every node: the lowest id among peers does it.
    pub bootstrap: bool,
    /// A storage node missing heartbeats this long is marked suspect.
    pub suspect_after_ms: u64,
    /// ... and down after this long.
    pub down_after_ms: u64,
    /// Take a snapshot (and compact the log) every this many entries.
    pub snapshot_every: u64,
    /// Raft leader heartbeat interval.
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout: a follower that hears nothing from a leader
    /// for a random time between this and twice this starts an election.
    pub election_timeout_ms: u64,
    /// How often the leader's failure detector looks at storage nodes.
    pub detector_interval_ms: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up from the log instead of receiving a whole snapshot.
    pub raft_logs_to_keep: u64,
    /// Address of the admin HTTP port (`/metrics`, `/health/live`,
    /// `/health/ready`); unset = none.
    pub admin_listen: Option<String>,
    /// Group commit: most concurrent writes coalesced into one Raft log
    /// entry (1: every write is its own entry).
    pub write_batch_commands: usize,
    /// Group commit: most request bytes in one Raft log entry.
    pub write_batch_bytes: usize,
    /// Raft writes the leader keeps in flight at once; writes arriving
    /// meanwhile wait and are coalesced into the next one.
    pub writes_in_flight: usize,
    /// Free space kept on the data directory's file system: below it,
    /// writes that add data are refused (deletes still go until a quarter
    /// of it is left); 0 = automatic, 5% of the file system up to 1 GiB.
    /// See [`crate::space`].
    pub min_free_bytes: u64,
    /// The cluster secret that signs and checks every internode call.
    /// Required; never serialized.
    #[serde(skip_serializing)]
    pub cluster_secret: Option<ClusterSecret>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            id: 1,
            data_dir: PathBuf::from("data/meta"),
            advertise: None,
            peers: BTreeMap::new(),
            bootstrap: true,
            suspect_after_ms: 5_000,
            down_after_ms: 30_000,
            snapshot_every: 5_000,
            raft_heartbeat_ms: 250,
            election_timeout_ms: 800,
            detector_interval_ms: 500,
            raft_logs_to_keep: 1_000,
            admin_listen: None,
            write_batch_commands: 64,
            write_batch_bytes: 1 << 20,
            writes_in_flight: 2,
            min_free_bytes: 0,
            cluster_secret: None,
        }
    }
}

impl MetaConfig {
    /// Checks the values that would make the node misbehave.
    pub fn validate(&self) -> Result<(), MetaNodeError> {
        let bad = |m: &str| Err(MetaNodeError::Config(m.to_string()));
        if self.id == 0 {
            return bad("id must be >= 1");
        }
        if let Some(addr) = self.peers.get(&self.id) {
            if addr.is_empty() {
                return bad("own peer address is empty");
            }
        } else if !self.peers.is_empty() {
            return bad("peers must include this node's id");
        }
        if self.suspect_after_ms == 0 || self.down_after_ms < self.suspect_after_ms {
            return bad("need 0 < suspect-after-ms <= down-after-ms");
        }
        if self.snapshot_every == 0 {
            return bad("snapshot-every must be >= 1");
        }
        if self.raft_heartbeat_ms == 0 || self.election_timeout_ms <= 2 * self.raft_heartbeat_ms {
            return bad("need election-timeout-ms > 2 * raft-heartbeat-ms > 0");
        }
        if self.write_batch_commands == 0 || self.writes_in_flight == 0 {
            return bad("write-batch-commands and writes-in-flight must be >= 1");
        }
        if self.detector_interval_ms == 0 {
            return bad("detector-interval-ms must be >= 1");
        }
        if self.cluster_secret.is_none() {
            return bad(tessera_proto::auth::MISSING_SECRET_HELP);
        }
        Ok(())
    }
}
