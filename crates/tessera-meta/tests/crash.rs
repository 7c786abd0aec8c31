//! Crash safety of the meta write path, with real processes: a three-node
//! group whose nodes are this test binary re-run as children, killed with
//! SIGKILL (no shutdown, no flush) while 32 writers are busy, then
//! restarted on the same directories. Every write acknowledged before the
//! kill must be there. The state machine does not flush after applying
//! (see `store/state_machine.rs`), and concurrent writes are committed in
//! batches: both are exercised.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_meta::{serve, MetaConfig};
use tessera_proto::{ClusterAuth, ClusterSecret, MetaClient};
use tessera_types::meta::{
    ListObjectsQuery, MetaCommand, MetaQuery, MetaReply, QueryReply, WriteCondition,
};
use tessera_types::{Bucket, ObjectData, ObjectManifest};
use tokio::time::Instant;

const SECRET: &str = "meta-crash-secret-0123456";
const CHILD_ENV: &str = "TESSERA_META_CRASH_CHILD";

/// Node id, data dir and peers of a child, as `id;dir;1=addr,2=addr,..`.
fn child_spec(id: u64, dir: &Path, peers: &BTreeMap<u64, String>) -> String {
    let peers: Vec<String> = peers.iter().map(|(i, a)| format!("{i}={a}")).collect();
    format!("{id};{};{}", dir.display(), peers.join(","))
}

/// Not a test of its own: the body of a child process (a meta node that
/// runs until it is killed). Without the environment variable it returns.
#[test]
fn crash_child_node() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(';');
    let id: u64 = parts.next().unwrap().parse().unwrap();
    let dir = PathBuf::from(parts.next().unwrap());
    let peers: BTreeMap<u64, String> = parts
        .next()
        .unwrap()
        .split(',')
        .map(|p| {
            let (i, a) = p.split_once('=').unwrap();
            (i.parse().unwrap(), a.to_string())
        })
        .collect();
    let config = MetaConfig {
        id,
        data_dir: dir,
        peers: peers.clone(),
        bootstrap: true,
        snapshot_every: 50,
        raft_logs_to_keep: 20,
        cluster_secret: Some(ClusterSecret::new(SECRET).unwrap()),
        ..MetaConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(peers[&id].as_str())
            .await
            .unwrap();
        // Runs until SIGKILL; the token is never cancelled.
        serve(config, listener, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    });
}

/// The three children; killed (SIGKILL) on drop, so a failing test leaves
/// no process behind.
struct Group {
    children: Vec<Child>,
}

impl Group {
    fn start(root: &Path, peers: &BTreeMap<u64, String>) -> Group {
        let exe = std::env::current_exe().unwrap();
        let children = peers
            .keys()
            .map(|id| {
                Command::new(&exe)
                    .args(["crash_child_node", "--exact", "--nocapture"])
                    .env(
                        CHILD_ENV,
                        child_spec(*id, &root.join(format!("meta{id}")), peers),
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        Group { children }
    }

    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three consecutive free ports below 32768.
fn free_ports() -> BTreeMap<u64, String> {
    let seed = u64::from(std::process::id()).wrapping_mul(7919);
    for attempt in 0..500u64 {
        let base = 21_000 + ((seed + attempt * 37) % 9_000) as u16;
        let free = (0..3).all(|off| std::net::TcpListener::bind(("127.0.0.1", base + off)).is_ok());
        if free {
            return (1..=3u64)
                .map(|id| (id, format!("127.0.0.1:{}", base + id as u16 - 1)))
                .collect();
        }
    }
    panic!("no free ports");
}

fn client(peers: &BTreeMap<u64, String>) -> MetaClient {
    let auth = ClusterAuth::new(ClusterSecret::new(SECRET).unwrap());
    MetaClient::with_auth(
        peers.values().cloned().collect(),
        Duration::from_secs(3),
        auth,
    )
}

/// Waits until the group accepts writes (a leader is elected and has
/// caught up).
async fn wait_writable(client: &MetaClient) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .write(&MetaCommand::PutAccessKey(tessera_types::AccessKey {
                id: "probe".into(),
                secret: "probe-secret".into(),
                name: "probe".into(),
                created: 1,
            }))
            .await;
        if matches!(r, Ok(MetaReply::Ok)) {
            return;
        }
        assert!(Instant::now() < deadline, "group not writable: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn manifest(key: &str) -> ObjectManifest {
    ObjectManifest {
        layout: 1,
        bucket: "crash".into(),
        key: key.into(),
        version_id: format!("v-{key}"),
        size: 3,
        etag: format!("etag-{key}"),
        content_type: None,
        headers: Default::default(),
        user_metadata: Default::default(),
        checksums: Default::default(),
        created: tessera_types::now_millis(),
        data: ObjectData::Inline(bytes::Bytes::from_static(b"abc")),
    }
}

async fn list_all(client: &MetaClient) -> Vec<String> {
    let mut keys = Vec::new();
    loop {
        let q = MetaQuery::ListObjects(ListObjectsQuery {
            bucket: "crash".into(),
            start_after: keys.last().cloned().unwrap_or_default(),
            max_keys: 1000,
            ..Default::default()
        });
        match client.query(&q).await.unwrap() {
            QueryReply::Listing(p) => {
                keys.extend(p.objects.into_iter().map(|o| o.key));
                if !p.is_truncated {
                    return keys;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_every_meta_node() {
    let root = tempfile::tempdir().unwrap();
    let peers = free_ports();
    let mut group = Group::start(root.path(), &peers);
    let meta = client(&peers);
    wait_writable(&meta).await;
    let r = meta
        .write(&MetaCommand::CreateBucket(Bucket {
            name: "crash".into(),
            owner: "alice".into(),
            created: 1,
        }))
        .await
        .unwrap();
    assert_eq!(r, MetaReply::Ok);

    let mut acked_all: Vec<String> = Vec::new();
    for round in 0..3 {
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut writers = Vec::new();
        for w in 0..32 {
            let (meta, acked) = (meta.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                for j in 0.. {
                    let key = format!("r{round}/w{w:02}/{j:05}");
                    let r = meta
                        .write(&MetaCommand::PutObject {
                            manifest: manifest(&key),
                            condition: WriteCondition::None,
                        })
                        .await;
                    match r {
                        // (Some: the client retried a write that had
                        // been applied.)
                        Ok(MetaReply::Replaced(_)) => acked.lock().unwrap().push(key),
                        Ok(other) => panic!("{key}: {other:?}"),
                        Err(_) => return,
                    }
                }
            }));
        }
        // Kill every node while the writers are busy, right after a few
        // hundred acknowledgements.
        let target = 300 * (round + 1) / 2;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < target {
            assert!(Instant::now() < deadline, "writes too slow");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        group.kill();
        for w in writers {
            w.abort();
            let _ = w.await;
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        eprintln!(
            "round {round}: {} writes acknowledged before the kill",
            acked.len()
        );
        acked_all.extend(acked);

        group = Group::start(root.path(), &peers);
        wait_writable(&meta).await;
        let present: std::collections::HashSet<String> =
            list_all(&meta).await.into_iter().collect();
        let lost: Vec<&String> = acked_all.iter().filter(|k| !present.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        // Each one exactly once, with its own content.
        for k in acked_all.iter().take(20) {
            match meta
                .query(&MetaQuery::GetObject {
                    bucket: "crash".into(),
                    key: k.clone(),
                })
                .await
                .unwrap()
            {
                QueryReply::Object(Some(m)) => assert_eq!(m.etag, format!("etag-{k}")),
                other => panic!("{k}: {other:?}"),
            }
        }
    }
    group.kill();
}
