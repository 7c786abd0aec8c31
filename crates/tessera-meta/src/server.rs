//! Starting and stopping a meta node: open sled, start Raft, serve gRPC,
//! bootstrap the group, run the failure detector, and shut all of it down
//! within a deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use tessera_proto::auth::{RequireAuthLayer, MISSING_SECRET_HELP};
use tessera_proto::meta::meta_server::MetaServer;
use tessera_proto::meta::raft_server::RaftServer;
use tessera_proto::{ClusterAuth, MAX_MESSAGE_BYTES};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::detector::{self, DetectorConfig, Liveness};
use crate::network::{MetaRaft, NetworkFactory, RaftTransport};
use crate::service::{BatchLimits, MetaService};
use crate::{store, MetaConfig, MetaNodeError};

/// How long each shutdown step may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

/// Openraft settings derived from the node configuration.
pub fn raft_config(c: &MetaConfig) -> Result<openraft::Config, MetaNodeError> {
    openraft::Config {
        cluster_name: "tessera-meta".to_string(),
        heartbeat_interval: c.raft_heartbeat_ms,
        election_timeout_min: c.election_timeout_ms,
        election_timeout_max: c.election_timeout_ms * 2,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_every),
        max_payload_entries: 256,
        max_in_snapshot_log_to_keep: c.raft_logs_to_keep,
        ..Default::default()
    }
    .validate()
    .map_err(|e| MetaNodeError::Config(e.to_string()))
}

/// How long a leader answers reads without a leader check after one: 3/4
/// of the shortest election timeout, while followers refuse other
/// candidates for the longest (`election_timeout_max`, twice that), so a
/// follower's clock may run 2.6 times as fast as the leader's before the
/// lease is unsafe (see [`crate::reads`]).
pub fn read_lease(raft: &openraft::Config) -> Duration {
    Duration::from_millis(raft.election_timeout_min * 3 / 4)
}

/// How long after start a node refuses vote requests: openraft's
/// follower-side leader lease, longer than any read lease this node may
/// have confirmed before it went down (see [`crate::reads`]).
pub fn no_votes_after_start(raft: &openraft::Config) -> Duration {
    Duration::from_millis(raft.election_timeout_max)
}

/// A node that led when it went down must win an election again: its
/// stored vote is kept but marked uncommitted, so openraft starts it as a
/// follower instead of restoring its leadership of the old term.
///
/// openraft 0.9 restores the leadership of a node whose stored vote is a
/// committed vote for itself, with whatever log it finds. Our log is synced
/// after `append` returns (`store/log.rs`), so a leader can commit entries
/// with its followers' acks before its own sync, and lose them in a crash.
/// Restored as leader, it would serve reads without them (chaos caught a
/// stale read so) and write new entries under log ids its followers already
/// hold with other contents. As a candidate it needs the votes of nodes
/// whose logs it must be at least as up to date as, so it cannot win
/// without those entries. An uncommitted vote for itself still refuses
/// every other candidate of that term.
async fn stand_for_election_again(log: &mut store::LogStore, id: u64) -> Result<(), MetaNodeError> {
    use openraft::storage::RaftLogStorage;
    let err = |e: openraft::StorageError<u64>| MetaNodeError::Raft(e.to_string());
    let Some(vote) = log.read_vote().await.map_err(err)? else {
        return Ok(());
    };
    if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
        let term = vote.leader_id().get_term();
        tracing::info!(term, "led before the restart: standing for election again");
        log.save_vote(&openraft::Vote::new(term, id))
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// Resolves when the Raft core has stopped on its own, with why.
///
/// openraft stops its core on a fatal error (a log or state machine write
/// that failed, e.g. on a full disk) and then refuses every call, while
/// the process, its gRPC server and a stale leader state in its metrics
/// live on: without this, such a node would be a zombie until someone
/// restarted it by hand.
///
/// It looks every [`RAFT_STOPPED_POLL`] rather than at each change: the
/// metrics change with every append and apply, and this future runs on
/// the process's main thread (`block_on`), so waiting on the changes woke
/// that thread about once per write (1000-1350 times a second per node at
/// 4 KiB PUT c16, as many wake-ups as the log's sync thread).
async fn raft_stopped(raft: &MetaRaft) -> String {
    let metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return fatal.to_string();
        }
        if metrics.has_changed().is_err() {
            return "the raft core is gone".to_string();
        }
        tokio::time::sleep(RAFT_STOPPED_POLL).await;
    }
}

/// How often [`raft_stopped`] looks.
const RAFT_STOPPED_POLL: Duration = Duration::from_millis(200);

/// Serves the meta node (Raft + meta service) on `listener` until
/// `shutdown` is cancelled, or until Raft stops on its own
/// ([`MetaNodeError::RaftStopped`], returned at once with the node's
/// tasks still running: the caller should end the process without
/// dropping them, see `tessera_server::EXIT_RESTART`).
pub async fn serve(
    config: MetaConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MetaNodeError> {
    config.validate()?;
    let auth = ClusterAuth::new(
        config
            .cluster_secret
            .clone()
            .ok_or_else(|| MetaNodeError::Config(MISSING_SECRET_HELP.into()))?,
    );
    let local = listener.local_addr()?;
    let admin = match &config.admin_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let advertise = config
        .advertise
        .clone()
        .or_else(|| config.peers.get(&config.id).cloned())
        .unwrap_or_else(|| local.to_string());
    let raft_cfg = Arc::new(raft_config(&config)?);
    store::arm_crash_stop();
    let (mut log_store, sm) = store::open(&config.data_dir).await?;
    stand_for_election_again(&mut log_store, config.id).await?;
    let trees = sm.trees();
    let db = trees.db.clone();
    let raft = MetaRaft::new(
        config.id,
        raft_cfg.clone(),
        NetworkFactory::new(config.id, auth.clone()),
        log_store,
        sm,
    )
    .await
    .map_err(|e| MetaNodeError::Raft(e.to_string()))?;
    tracing::info!(id = config.id, %local, %advertise, "meta node started");

    if let Some(admin) = admin {
        let (registry, ready) =
            crate::metrics::start(raft.clone(), trees.clone(), shutdown.child_token());
        tokio::spawn(tessera_observe::serve_admin(
            admin,
            registry,
            ready,
            shutdown.child_token(),
        ));
    }

    let space = Arc::new(crate::space::SpaceGuard::new(
        &config.data_dir,
        config.min_free_bytes,
    ));
    let liveness = Arc::new(Liveness::default());
    let meta = MetaService::new(
        config.id,
        raft.clone(),
        trees.clone(),
        liveness.clone(),
        BatchLimits {
            max_commands: config.write_batch_commands,
            max_bytes: config.write_batch_bytes,
            in_flight: config.writes_in_flight,
        },
        read_lease(&raft_cfg),
        space.clone(),
        shutdown.child_token(),
    );
    let server_stop = shutdown.child_token();
    let stop = server_stop.clone();
    // A stream of our own listener bypasses tonic's tcp_nodelay setting;
    // without it every small meta answer waits ~40 ms for Nagle + delayed
    // ACK (measured: 4 KiB GET p50 46 ms -> 1.7 ms).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(s) = &conn {
            let _ = s.set_nodelay(true);
        }
        conn
    });
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(RequireAuthLayer::new(auth.clone()))
            .add_service(
                RaftServer::new(RaftTransport::new(
                    raft.clone(),
                    no_votes_after_start(&raft_cfg),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                MetaServer::new(meta)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
    );

    if config.bootstrap {
        bootstrap(&raft, &config, &advertise).await?;
    }

    let rebalancer = tokio::spawn(crate::rebalance::run(
        raft.clone(),
        config.id,
        trees.clone(),
        space,
        shutdown.clone(),
    ));
    let detector = tokio::spawn(detector::run(
        raft.clone(),
        trees,
        liveness,
        DetectorConfig {
            id: config.id,
            interval: Duration::from_millis(config.detector_interval_ms),
            suspect_after: Duration::from_millis(config.suspect_after_ms),
            down_after: Duration::from_millis(config.down_after_ms),
        },
        shutdown.clone(),
    ));

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown.cancelled() => {}
        why = raft_stopped(&raft) => {
            // No graceful shutdown: after the I/O error that stops Raft,
            // sled cannot flush, and dropping its last handle panics (an
            // abort, seen on a full disk). The caller ends the process as
            // a crash would; a restart rebuilds the state from the synced
            // Raft log.
            tracing::error!(error = %why, "raft stopped; the meta node stops too");
            return Err(MetaNodeError::RaftStopped(why));
        }
        res = &mut server => {
            // The server stopped on its own: report why, then stop the rest.
            result = match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(MetaNodeError::Transport(e)),
                Err(e) => Err(MetaNodeError::Io(std::io::Error::other(e))),
            };
            server_stop.cancel();
        }
    }
    server_stop.cancel();
    tracing::info!(id = config.id, "meta node shutting down");
    if tokio::time::timeout(SHUTDOWN_STEP, raft.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft did not stop in time");
    }
    if !server.is_finished()
        && tokio::time::timeout(SHUTDOWN_STEP, &mut server)
            .await
            .is_err()
    {
        tracing::warn!("gRPC server did not stop in time; aborting it");
        server.abort();
    }
    if tokio::time::timeout(SHUTDOWN_STEP, detector).await.is_err() {
        tracing::warn!("failure detector did not stop in time");
    }
    if tokio::time::timeout(SHUTDOWN_STEP, rebalancer)
        .await
        .is_err()
    {
        tracing::warn!("rebalancer did not stop in time");
    }
    drop(raft);
    let flushed = store::flush_db(&db).await;
    match (result, flushed) {
        (Ok(()), flushed) => flushed,
        // Why the node stopped matters more (after a full disk sled cannot
        // flush either).
        (Err(e), Err(flush)) => {
            tracing::error!(error = %flush, "final flush of the state failed");
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
    }
}

/// Initializes the group if this node is the lowest id among the peers
/// (or the only node) and the group was never initialized.
async fn bootstrap(
    raft: &MetaRaft,
    config: &MetaConfig,
    advertise: &str,
) -> Result<(), MetaNodeError> {
    let members: BTreeMap<u64, BasicNode> = if config.peers.is_empty() {
        BTreeMap::from([(config.id, BasicNode::new(advertise))])
    } else {
        config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect()
    };
    if members.keys().next() != Some(&config.id) {
        return Ok(());
    }
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| MetaNodeError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(id = config.id, "meta group initialized");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(MetaNodeError::Raft(e.to_string())),
    }
}
