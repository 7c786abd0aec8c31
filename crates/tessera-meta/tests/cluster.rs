//! In-process three-node meta groups on 127.0.0.1, over real gRPC, driven
//! with the meta client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_meta::{serve, MetaConfig, MetaNodeError};
use tessera_proto::meta::HeartbeatRequest;
use tessera_proto::{ClusterAuth, ClusterSecret, MetaClient};
use tessera_types::meta::{
    ListObjectsQuery, MetaCommand, MetaQuery, MetaReply, QueryReply, WriteCondition,
};
use tessera_types::{Bucket, ClusterMap, NodeId, NodeState, ObjectData, ObjectManifest};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Node {
    id: u64,
    dir: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), MetaNodeError>>,
}

const SECRET: &str = "meta-test-secret-0123456";

/// A meta client signing with the group's secret.
fn client_for(addrs: Vec<String>) -> MetaClient {
    let auth = ClusterAuth::new(ClusterSecret::new(SECRET).unwrap());
    MetaClient::with_auth(addrs, tessera_proto::meta_client::DEFAULT_DEADLINE, auth)
}

fn config(id: u64, dir: &Path, peers: &BTreeMap<u64, String>) -> MetaConfig {
    MetaConfig {
        id,
        data_dir: dir.to_path_buf(),
        advertise: None,
        peers: peers.clone(),
        bootstrap: true,
        suspect_after_ms: 1_000,
        down_after_ms: 2_500,
        snapshot_every: 20,
        detector_interval_ms: 100,
        // A restarted node has to catch up through a snapshot.
        raft_logs_to_keep: 0,
        cluster_secret: Some(ClusterSecret::new(SECRET).unwrap()),
        ..MetaConfig::default()
    }
}

fn start(id: u64, listener: TcpListener, dir: &Path, peers: &BTreeMap<u64, String>) -> Node {
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(config(id, dir, peers), listener, stop.clone()));
    Node {
        id,
        dir: dir.to_path_buf(),
        stop,
        task,
    }
}

async fn stop(node: Node) -> (u64, PathBuf) {
    node.stop.cancel();
    let res = tokio::time::timeout(Duration::from_secs(10), node.task)
        .await
        .expect("node stops within its deadline")
        .expect("node task");
    res.expect("clean shutdown");
    (node.id, node.dir)
}

/// Binds three listeners first, then starts the nodes with the peer map.
async fn cluster(root: &Path) -> (Vec<Node>, BTreeMap<u64, String>) {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap().to_string());
        listeners.push((id, l));
    }
    let nodes = listeners
        .into_iter()
        .map(|(id, l)| start(id, l, &root.join(format!("meta{id}")), &peers))
        .collect();
    (nodes, peers)
}

async fn leader(client: &MetaClient, addrs: &[String]) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for a in addrs {
            if let Ok(s) = client.raft_status(a).await {
                if s.state == "Leader" {
                    return (s.id, s.leader_addr);
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn manifest(bucket: &str, key: &str) -> ObjectManifest {
    ObjectManifest {
        layout: 1,
        bucket: bucket.into(),
        key: key.into(),
        version_id: format!("v-{key}"),
        size: 3,
        etag: "etag".into(),
        content_type: None,
        headers: Default::default(),
        user_metadata: Default::default(),
        checksums: Default::default(),
        created: tessera_types::now_millis(),
        data: ObjectData::Inline(bytes::Bytes::from_static(b"abc")),
    }
}

async fn put(client: &MetaClient, bucket: &str, key: &str) {
    let r = client
        .write(&MetaCommand::PutObject {
            manifest: manifest(bucket, key),
            condition: WriteCondition::None,
        })
        .await
        .unwrap();
    assert!(matches!(r, MetaReply::Replaced(_)), "{r:?}");
}

async fn list_all(client: &MetaClient, bucket: &str) -> Vec<String> {
    let q = MetaQuery::ListObjects(ListObjectsQuery {
        bucket: bucket.into(),
        max_keys: 1000,
        ..Default::default()
    });
    match client.query(&q).await.unwrap() {
        QueryReply::Listing(p) => p.objects.into_iter().map(|o| o.key).collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_follow_the_leader_survive_failover_and_restarts() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, peers) = cluster(root.path()).await;
    let addrs: Vec<String> = peers.values().cloned().collect();
    let client = client_for(addrs.clone());

    let r = client
        .write(&MetaCommand::CreateBucket(Bucket {
            name: "photos".into(),
            owner: "alice".into(),
            created: 1,
        }))
        .await
        .unwrap();
    assert_eq!(r, MetaReply::Ok);

    // Through each node's address alone: followers hand out the leader.
    for (i, addr) in addrs.iter().enumerate() {
        let one = client_for(vec![addr.clone()]);
        for j in 0..10 {
            put(&one, "photos", &format!("n{i}/k{j:02}")).await;
        }
        assert_eq!(list_all(&one, "photos").await.len(), (i + 1) * 10);
    }

    // Kill the leader: a new one takes over and writes continue.
    let (old_leader, _) = leader(&client, &addrs).await;
    let idx = nodes.iter().position(|n| n.id == old_leader).unwrap();
    let dead = nodes.remove(idx);
    let stopping = Instant::now();
    let (dead_id, dead_dir) = stop(dead).await;
    eprintln!("leader shutdown took {:?}", stopping.elapsed());
    let killed_at = Instant::now();
    put(&client, "photos", "after-failover").await;
    let failover = killed_at.elapsed();
    eprintln!("failover: first write committed {failover:?} after the kill");
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let (new_leader, _) = leader(&client, &addrs).await;
    assert_ne!(new_leader, old_leader);
    for j in 0..30 {
        put(&client, "photos", &format!("late/{j:02}")).await;
    }
    assert_eq!(list_all(&client, "photos").await.len(), 61);

    // Restart the old leader from its data dir: it catches up.
    let l = TcpListener::bind(peers[&dead_id].as_str()).await.unwrap();
    nodes.push(start(dead_id, l, &dead_dir, &peers));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lead = client.raft_status(&peers[&new_leader]).await.unwrap();
        if let Ok(s) = client.raft_status(&peers[&dead_id]).await {
            if s.last_applied >= lead.last_applied && s.leader_id == new_leader {
                break;
            }
        }
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop everyone, restart everyone from disk: the state is intact.
    let term_before = client
        .raft_status(&peers[&new_leader])
        .await
        .unwrap()
        .current_term;
    let mut dirs = Vec::new();
    for n in nodes.drain(..) {
        dirs.push(stop(n).await);
    }
    for (id, dir) in dirs {
        let l = TcpListener::bind(peers[&id].as_str()).await.unwrap();
        nodes.push(start(id, l, &dir, &peers));
    }
    let client = client_for(addrs.clone());
    // The leader that went down does not resume its term (its log may lack
    // entries it committed before its own sync): a new term is elected.
    let (_, lead_addr) = leader(&client, &addrs).await;
    let term_after = client.raft_status(&lead_addr).await.unwrap().current_term;
    assert!(
        term_after > term_before,
        "leadership of term {term_before} was restored without an election"
    );
    let keys = list_all(&client, "photos").await;
    assert_eq!(keys.len(), 61);
    assert!(keys.contains(&"after-failover".to_string()));
    put(&client, "photos", "after-restart").await;
    for n in nodes {
        stop(n).await;
    }
}

async fn cluster_map(client: &MetaClient) -> ClusterMap {
    match client.query(&MetaQuery::ClusterMap).await.unwrap() {
        QueryReply::ClusterMap(m) => m,
        other => panic!("{other:?}"),
    }
}

fn hb(id: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        node_id: id.into(),
        addr: format!("127.0.0.1:{}", 9000 + id.len()),
        zone: "z1".into(),
        capacity_bytes: 1 << 30,
        used_bytes: 0,
        shard_count: 0,
        weight: 1.0,
    }
}

async fn wait_state(client: &MetaClient, id: &str, state: NodeState, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let m = cluster_map(client).await;
        if m.node(&NodeId::from(id)).map(|n| n.state) == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {state:?}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_register_nodes_and_silence_marks_them_down() {
    let root = tempfile::tempdir().unwrap();
    let (nodes, peers) = cluster(root.path()).await;
    let client = client_for(peers.values().cloned().collect());

    client.heartbeat(hb("s-alive")).await.unwrap();
    client.heartbeat(hb("s-quiet")).await.unwrap();
    let m = cluster_map(&client).await;
    assert_eq!(m.nodes.len(), 2);
    assert!(m.nodes.iter().all(|n| n.state == NodeState::Up));
    let epoch = m.epoch;
    assert!(epoch >= 2);

    // Repeated identical heartbeats do not touch the map.
    client.heartbeat(hb("s-alive")).await.unwrap();
    assert_eq!(cluster_map(&client).await.epoch, epoch);

    let stop_beats = CancellationToken::new();
    let beats = {
        let client = client.clone();
        let stop_beats = stop_beats.clone();
        tokio::spawn(async move {
            while !stop_beats.is_cancelled() {
                let _ = client.heartbeat(hb("s-alive")).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    wait_state(
        &client,
        "s-quiet",
        NodeState::Suspect,
        Duration::from_secs(5),
    )
    .await;
    wait_state(&client, "s-quiet", NodeState::Down, Duration::from_secs(5)).await;
    assert_eq!(
        cluster_map(&client)
            .await
            .node(&NodeId::from("s-alive"))
            .unwrap()
            .state,
        NodeState::Up
    );
    // It comes back.
    client.heartbeat(hb("s-quiet")).await.unwrap();
    wait_state(&client, "s-quiet", NodeState::Up, Duration::from_secs(2)).await;

    stop_beats.cancel();
    beats.await.unwrap();
    for n in nodes {
        stop(n).await;
    }
}
