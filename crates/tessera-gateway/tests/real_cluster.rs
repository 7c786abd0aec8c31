//! The gateway in front of the real services: one `tessera_meta::serve`
//! node and six `tessera_storage::serve` nodes in this process, on port 0,
//! over real gRPC. Storage nodes register through their heartbeats; the
//! gateway learns them from the cluster map.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use tessera_gateway::GatewayConfig;
use tessera_proto::{ClusterAuth, ClusterSecret, MetaClient};
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tessera_types::{AccessKey, NodeState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use common::pattern;
use common::s3client::S3Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_meta_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let secret = ClusterSecret::new("real-cluster-test-secret").unwrap();

    let meta_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meta_addr = meta_listener.local_addr().unwrap().to_string();
    let meta_config = tessera_meta::MetaConfig {
        id: 1,
        data_dir: dir.path().join("meta"),
        peers: BTreeMap::from([(1, meta_addr.clone())]),
        bootstrap: true,
        cluster_secret: Some(secret.clone()),
        ..Default::default()
    };
    tokio::spawn(tessera_meta::serve(
        meta_config,
        meta_listener,
        shutdown.clone(),
    ));

    let mut storage_tokens = Vec::new();
    for i in 0..6 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token = shutdown.child_token();
        let config = tessera_storage::StorageConfig {
            data_dirs: vec![dir.path().join(format!("storage{i}"))],
            zone: format!("z{i}"),
            meta: vec![meta_addr.clone()],
            heartbeat_ms: 200,
            cluster_secret: Some(secret.clone()),
            ..Default::default()
        };
        tokio::spawn(tessera_storage::serve(config, l, token.clone()));
        storage_tokens.push(token);
    }

    let meta = MetaClient::with_auth(
        vec![meta_addr.clone()],
        Duration::from_secs(15),
        ClusterAuth::new(secret.clone()),
    );
    let key = AccessKey::generate("test", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match meta.write(&MetaCommand::PutAccessKey(key.clone())).await {
            Ok(MetaReply::Ok | MetaReply::Replaced(_)) => break,
            r => assert!(Instant::now() < deadline, "meta not ready: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        if let Ok(QueryReply::ClusterMap(m)) = meta.query(&MetaQuery::ClusterMap).await {
            if m.nodes.iter().filter(|n| n.state == NodeState::Up).count() == 6 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "storage nodes did not register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let config = GatewayConfig {
        meta: vec![meta_addr.clone()],
        shard_size: 64 << 10,
        cluster_secret: Some(secret.clone()),
        ..GatewayConfig::default()
    };
    let server = tokio::spawn(tessera_gateway::serve(config, listener, shutdown.clone()));
    let s3 = S3Client::new(&endpoint, Some((&key.id, &key.secret)));

    let r = s3.put("/real", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = pattern(1_500_000, 11);
    let r = s3.put("/real/obj", data.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("etag").unwrap(),
        format!("\"{}\"", hex::encode(Md5::digest(&data)))
    );
    let r = s3.get("/real/obj").await;
    assert_eq!(r.status, 200);
    assert!(r.body[..] == data[..], "read back identical");
    let r = s3.put("/real/small", b"tiny".to_vec()).await;
    assert_eq!(r.status, 200);
    let r = s3
        .send("GET", "/real", &[("list-type", "2")], &[], vec![])
        .await;
    assert!(r.text().contains("<Key>obj</Key>") && r.text().contains("<Key>small</Key>"));

    // Two storage nodes die: the object is still read back identical.
    storage_tokens[0].cancel();
    storage_tokens[3].cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = s3.get("/real/obj").await;
    assert_eq!(r.status, 200);
    assert!(r.body[..] == data[..], "degraded read identical");
    let r = s3
        .send(
            "GET",
            "/real/obj",
            &[],
            &[("range", "bytes=1000000-1000099")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], &data[1_000_000..1_000_100]);

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
}
