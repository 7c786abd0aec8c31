//! Internode authentication against real meta and storage nodes in this
//! process: a storage node with another cluster's secret never registers,
//! unsigned calls are refused, and garbage message bodies never panic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tessera_proto::channel::ChannelPool;
use tessera_proto::meta::meta_client::MetaClient as RawMetaClient;
use tessera_proto::meta::RaftStatusRequest;
use tessera_proto::{ClusterAuth, ClusterSecret, MetaClient, RpcError};
use tessera_types::meta::{MetaQuery, QueryReply};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "internode-test-secret-42";

async fn start_storage(
    dir: &std::path::Path,
    meta: &str,
    secret: &str,
    shutdown: &CancellationToken,
) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let config = tessera_storage::StorageConfig {
        data_dirs: vec![dir.to_path_buf()],
        meta: vec![meta.to_string()],
        heartbeat_ms: 100,
        cluster_secret: Some(ClusterSecret::new(secret).unwrap()),
        ..Default::default()
    };
    tokio::spawn(tessera_storage::serve(config, l, shutdown.clone()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_the_cluster_secret_take_part() {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let secret = ClusterSecret::new(SECRET).unwrap();
    let auth = ClusterAuth::new(secret.clone());

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meta_addr = l.local_addr().unwrap().to_string();
    let config = tessera_meta::MetaConfig {
        id: 1,
        data_dir: dir.path().join("meta"),
        peers: BTreeMap::from([(1, meta_addr.clone())]),
        cluster_secret: Some(secret.clone()),
        ..Default::default()
    };
    tokio::spawn(tessera_meta::serve(config, l, shutdown.clone()));

    // Without a secret, a node does not start.
    let err = tessera_meta::serve(
        tessera_meta::MetaConfig {
            data_dir: dir.path().join("nosecret"),
            ..Default::default()
        },
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cluster-secret"), "{err}");

    let good = start_storage(&dir.path().join("good"), &meta_addr, SECRET, &shutdown).await;
    let bad = start_storage(
        &dir.path().join("bad"),
        &meta_addr,
        "another-clusters-secret",
        &shutdown,
    )
    .await;

    let meta = MetaClient::with_auth(
        vec![meta_addr.clone()],
        Duration::from_secs(5),
        auth.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(QueryReply::ClusterMap(m)) = meta.query(&MetaQuery::ClusterMap).await {
            if m.nodes.iter().any(|n| n.addr == good) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the good storage node never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Many heartbeat periods later the other cluster's node is still unknown.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let Ok(QueryReply::ClusterMap(m)) = meta.query(&MetaQuery::ClusterMap).await else {
        panic!("no cluster map");
    };
    assert!(m.nodes.iter().all(|n| n.addr != bad), "{m:?}");
    assert_eq!(m.nodes.len(), 1);

    // A plain tonic client, without the header.
    let mut raw = RawMetaClient::connect(format!("http://{meta_addr}"))
        .await
        .unwrap();
    let err = raw.raft_status(RaftStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // The client library with the wrong secret, and with none.
    let wrong = ClusterAuth::new(ClusterSecret::new("another-clusters-secret").unwrap());
    let c = MetaClient::with_auth(vec![meta_addr.clone()], Duration::from_secs(2), wrong);
    let err = c.query(&MetaQuery::ClusterMap).await.unwrap_err();
    assert!(matches!(err, RpcError::Unauthenticated(_)), "{err:?}");
    let c = MetaClient::with_deadline(vec![meta_addr.clone()], Duration::from_secs(2));
    let err = c.raft_status(&meta_addr).await.unwrap_err();
    assert!(matches!(err, RpcError::Unauthenticated(_)), "{err:?}");

    // Signed garbage to every meta and Raft method: errors, no panic.
    let channel = ChannelPool::with_auth(auth.clone())
        .get(&meta_addr)
        .unwrap();
    let methods = [
        "/tessera.meta.v1.Meta/Write",
        "/tessera.meta.v1.Meta/Read",
        "/tessera.meta.v1.Meta/Heartbeat",
        "/tessera.meta.v1.Meta/RaftStatus",
        "/tessera.meta.v1.Raft/AppendEntries",
        "/tessera.meta.v1.Raft/Vote",
        "/tessera.meta.v1.Raft/InstallSnapshot",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for path in methods {
        for len in [1usize, 3, 17, 200, 5000] {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = tessera_proto::raw::unary(channel.clone(), path, body).await;
        }
        // A well-formed envelope whose payload is garbage.
        let _ =
            tessera_proto::raw::unary(channel.clone(), path, vec![0x0a, 3, 0xff, 0x00, 0x13]).await;
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    // Still serving.
    meta.query(&MetaQuery::ClusterMap).await.unwrap();
    shutdown.cancel();
}
