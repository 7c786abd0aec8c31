//! State machine semantics: every command and condition, queries and
//! listings, snapshots and restarts.

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use tessera_meta::store::query::query;
use tessera_types::meta::{
    ListObjectsPage, ListObjectsQuery, MetaCommand, MetaError, MetaQuery, MetaReply, QueryReply,
    WriteCondition,
};
use tessera_types::{
    AccessKey, Bucket, NodeId, NodeInfo, NodeState, ObjectData, ObjectManifest, Part, StorageClass,
    Stripe, StripeId,
};

mod common;
use common::{open, Harness};

impl Harness {
    async fn bucket(&mut self, name: &str) {
        let r = self
            .cmd(MetaCommand::CreateBucket(bucket(name, "alice")))
            .await;
        assert_eq!(r, MetaReply::Ok);
    }

    async fn put(&mut self, b: &str, k: &str) {
        let r = self
            .cmd(MetaCommand::PutObject {
                manifest: manifest(b, k, "e", 1),
                condition: WriteCondition::None,
            })
            .await;
        assert!(matches!(r, MetaReply::Replaced(_)), "{r:?}");
    }

    /// Registers a new access key for `name`; returns its id.
    async fn access_key(&mut self, name: &str) -> String {
        let k = AccessKey::generate(name, 1);
        let r = self.cmd(MetaCommand::PutAccessKey(k.clone())).await;
        assert_eq!(r, MetaReply::Ok);
        k.id
    }

    fn list(&self, b: &str, prefix: &str, delim: &str, after: &str, max: u32) -> ListObjectsPage {
        match self.q(MetaQuery::ListObjects(ListObjectsQuery {
            bucket: b.into(),
            prefix: prefix.into(),
            delimiter: delim.into(),
            start_after: after.into(),
            max_keys: max,
        })) {
            QueryReply::Listing(p) => p,
            other => panic!("{other:?}"),
        }
    }
}

fn bucket(name: &str, owner: &str) -> Bucket {
    Bucket {
        name: name.into(),
        owner: owner.into(),
        created: 1_000,
    }
}

fn stripe(seed: u8) -> Stripe {
    Stripe {
        id: StripeId([seed; 16]),
        len: 10,
        shard_len: 5,
        class: StorageClass::rs(2, 1, 1024),
        shards: vec![],
    }
}

fn manifest_with(b: &str, k: &str, etag: &str, stripes: Vec<Stripe>) -> ObjectManifest {
    ObjectManifest {
        layout: 1,
        bucket: b.into(),
        key: k.into(),
        version_id: format!("v-{etag}"),
        size: 10 * stripes.len() as u64 + 1,
        etag: etag.into(),
        content_type: None,
        headers: BTreeMap::new(),
        user_metadata: BTreeMap::new(),
        checksums: BTreeMap::new(),
        created: 2_000,
        data: ObjectData::Parts(vec![Part {
            number: 1,
            size: 10,
            etag: etag.into(),
            checksums: BTreeMap::new(),
            stripes,
        }]),
    }
}

fn manifest(b: &str, k: &str, etag: &str, seed: u8) -> ObjectManifest {
    manifest_with(b, k, etag, vec![stripe(seed)])
}

fn node(id: &str, used: u64) -> NodeInfo {
    NodeInfo {
        id: NodeId::from(id),
        addr: "127.0.0.1:9000".into(),
        zone: "z1".into(),
        weight: 1.0,
        capacity_bytes: 1000,
        used_bytes: used,
        shard_count: 0,
        state: NodeState::Up,
        last_heartbeat: 5_000,
    }
}

fn cluster(h: &Harness) -> tessera_types::ClusterMap {
    match h.q(MetaQuery::ClusterMap) {
        QueryReply::ClusterMap(m) => m,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn buckets_create_delete_list() {
    let mut h = Harness::new();
    h.bucket("b2").await;
    h.bucket("b1").await;
    assert_eq!(
        h.cmd(MetaCommand::CreateBucket(bucket("b1", "alice")))
            .await,
        MetaReply::Err(MetaError::BucketAlreadyExists {
            owner: "alice".into()
        })
    );
    assert_eq!(
        h.cmd(MetaCommand::CreateBucket(bucket("b1", "bob"))).await,
        MetaReply::Err(MetaError::BucketAlreadyExists {
            owner: "alice".into()
        })
    );
    assert!(matches!(
        h.cmd(MetaCommand::CreateBucket(bucket("", "bob"))).await,
        MetaReply::Err(MetaError::Invalid(_))
    ));
    match h.q(MetaQuery::ListBuckets) {
        QueryReply::Buckets(b) => {
            assert_eq!(
                b.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
                ["b1", "b2"]
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.q(MetaQuery::GetBucket { name: "b1".into() }),
        QueryReply::Bucket(Some(bucket("b1", "alice")))
    );
    assert_eq!(
        h.cmd(MetaCommand::DeleteBucket {
            name: "nope".into()
        })
        .await,
        MetaReply::Err(MetaError::NoSuchBucket)
    );
    h.put("b1", "k").await;
    assert_eq!(
        h.cmd(MetaCommand::DeleteBucket { name: "b1".into() }).await,
        MetaReply::Err(MetaError::BucketNotEmpty)
    );
    // A bucket whose name extends another's is not "inside" it.
    h.bucket("b").await;
    assert_eq!(
        h.cmd(MetaCommand::DeleteBucket { name: "b".into() }).await,
        MetaReply::Ok
    );
    assert_eq!(
        h.q(MetaQuery::GetBucket { name: "b".into() }),
        QueryReply::Bucket(None)
    );
}

#[tokio::test]
async fn put_object_conditions_and_gc() {
    let mut h = Harness::new();
    let r = h
        .cmd(MetaCommand::PutObject {
            manifest: manifest("nob", "k", "e1", 1),
            condition: WriteCondition::None,
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::NoSuchBucket));
    h.bucket("b").await;

    // If-Match on a missing key fails.
    let r = h
        .cmd(MetaCommand::PutObject {
            manifest: manifest("b", "k", "e1", 1),
            condition: WriteCondition::IfMatch("e1".into()),
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::PreconditionFailed));
    // If-None-Match on a missing key succeeds.
    let r = h
        .cmd(MetaCommand::PutObject {
            manifest: manifest("b", "k", "e1", 1),
            condition: WriteCondition::IfNoneMatch,
        })
        .await;
    assert_eq!(r, MetaReply::Replaced(None));
    // ... and then fails.
    let r = h
        .cmd(MetaCommand::PutObject {
            manifest: manifest("b", "k", "e2", 2),
            condition: WriteCondition::IfNoneMatch,
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::PreconditionFailed));
    // If-Match with the wrong ETag fails, with the right one (quoted) wins.
    let r = h
        .cmd(MetaCommand::PutObject {
            manifest: manifest("b", "k", "e2", 2),
            condition: WriteCondition::IfMatch("zzz".into()),
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::PreconditionFailed));
    let r = h
        .cmd(MetaCommand::PutObject {
            manifest: manifest("b", "k", "e2", 2),
            condition: WriteCondition::IfMatch("\"e1\"".into()),
        })
        .await;
    assert_eq!(
        r,
        MetaReply::Replaced(Some(Box::new(manifest("b", "k", "e1", 1))))
    );
    let gc = h.sm.trees().gc_items().unwrap();
    assert_eq!(gc.len(), 1);
    assert_eq!(gc[0].stripes, vec![stripe(1)]);
    assert_eq!(gc[0].at, 2_000);

    // An overwrite that reuses a stripe does not queue it.
    let r = h
        .cmd(MetaCommand::PutObject {
            manifest: manifest_with("b", "k", "e3", vec![stripe(2), stripe(3)]),
            condition: WriteCondition::None,
        })
        .await;
    assert!(matches!(r, MetaReply::Replaced(Some(_))));
    assert_eq!(h.sm.trees().gc_items().unwrap().len(), 1);

    assert_eq!(
        h.q(MetaQuery::GetObject {
            bucket: "b".into(),
            key: "k".into()
        }),
        QueryReply::Object(Some(Box::new(manifest_with(
            "b",
            "k",
            "e3",
            vec![stripe(2), stripe(3)]
        ))))
    );
    assert_eq!(
        h.q(MetaQuery::GetObject {
            bucket: "b".into(),
            key: "other".into()
        }),
        QueryReply::Object(None)
    );
    assert_eq!(
        h.q(MetaQuery::GetObject {
            bucket: "nob".into(),
            key: "k".into()
        }),
        QueryReply::Err(MetaError::NoSuchBucket)
    );
}

#[tokio::test]
async fn delete_object_and_stats() {
    let mut h = Harness::new();
    assert_eq!(
        h.cmd(MetaCommand::DeleteObject {
            bucket: "b".into(),
            key: "k".into()
        })
        .await,
        MetaReply::Err(MetaError::NoSuchBucket)
    );
    h.bucket("b").await;
    h.put("b", "k").await;
    h.put("b", "k2").await;
    assert_eq!(
        h.q(MetaQuery::BucketStats { name: "b".into() }),
        QueryReply::BucketStats(tessera_types::meta::BucketStats {
            objects: 2,
            bytes: 22
        })
    );
    let r = h
        .cmd(MetaCommand::DeleteObject {
            bucket: "b".into(),
            key: "k".into(),
        })
        .await;
    assert_eq!(
        r,
        MetaReply::Replaced(Some(Box::new(manifest("b", "k", "e", 1))))
    );
    let r = h
        .cmd(MetaCommand::DeleteObject {
            bucket: "b".into(),
            key: "k".into(),
        })
        .await;
    assert_eq!(r, MetaReply::Replaced(None));
    let gc = h.sm.trees().gc_items().unwrap();
    assert_eq!(gc.len(), 1);
    assert_eq!(gc[0].key, "k");
    // A delete is stamped with the latest time the log has seen.
    assert_eq!(gc[0].at, 2_000);
    assert_eq!(
        h.q(MetaQuery::BucketStats { name: "b".into() }),
        QueryReply::BucketStats(tessera_types::meta::BucketStats {
            objects: 1,
            bytes: 11
        })
    );
}

#[tokio::test]
async fn access_keys() {
    let mut h = Harness::new();
    let k1 = AccessKey::generate("one", 1);
    let k2 = AccessKey::generate("two", 2);
    assert_eq!(
        h.cmd(MetaCommand::PutAccessKey(k1.clone())).await,
        MetaReply::Ok
    );
    assert_eq!(
        h.cmd(MetaCommand::PutAccessKey(k2.clone())).await,
        MetaReply::Ok
    );
    assert_eq!(
        h.q(MetaQuery::GetAccessKey { id: k1.id.clone() }),
        QueryReply::AccessKey(Some(k1.clone()))
    );
    match h.q(MetaQuery::ListAccessKeys) {
        QueryReply::AccessKeys(v) => assert_eq!(v.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.cmd(MetaCommand::DeleteAccessKey { id: k1.id.clone() })
            .await,
        MetaReply::Ok
    );
    assert_eq!(
        h.cmd(MetaCommand::DeleteAccessKey { id: k1.id.clone() })
            .await,
        MetaReply::Err(MetaError::NoSuchAccessKey)
    );
    assert_eq!(
        h.q(MetaQuery::GetAccessKey { id: k1.id }),
        QueryReply::AccessKey(None)
    );
}

#[tokio::test]
async fn nodes_and_epoch() {
    let mut h = Harness::new();
    assert_eq!(cluster(&h).epoch, 0);
    assert_eq!(
        h.cmd(MetaCommand::UpsertNode(node("s1", 0))).await,
        MetaReply::Ok
    );
    assert_eq!(cluster(&h).epoch, 1);
    // Usage only: no epoch change.
    h.cmd(MetaCommand::UpsertNode(node("s1", 10))).await;
    let m = cluster(&h);
    assert_eq!(m.epoch, 1);
    assert_eq!(m.node(&NodeId::from("s1")).unwrap().used_bytes, 10);
    // Suspect, then a heartbeat brings it back up.
    let r = h
        .cmd(MetaCommand::SetNodeState {
            id: NodeId::from("s1"),
            state: NodeState::Suspect,
            at: 6_000,
        })
        .await;
    assert_eq!(r, MetaReply::Ok);
    let m = cluster(&h);
    assert_eq!(m.epoch, 2);
    assert_eq!(
        m.node(&NodeId::from("s1")).unwrap().state,
        NodeState::Suspect
    );
    let mut back = node("s1", 10);
    back.state = NodeState::Down;
    h.cmd(MetaCommand::UpsertNode(back)).await;
    let m = cluster(&h);
    assert_eq!(m.epoch, 3);
    assert_eq!(m.node(&NodeId::from("s1")).unwrap().state, NodeState::Up);
    // Draining survives heartbeats.
    h.cmd(MetaCommand::SetNodeState {
        id: NodeId::from("s1"),
        state: NodeState::Draining,
        at: 7_000,
    })
    .await;
    h.cmd(MetaCommand::UpsertNode(node("s1", 11))).await;
    assert_eq!(
        cluster(&h).node(&NodeId::from("s1")).unwrap().state,
        NodeState::Draining
    );
    let mut moved = node("s1", 11);
    moved.addr = "127.0.0.1:9001".into();
    let e = cluster(&h).epoch;
    h.cmd(MetaCommand::UpsertNode(moved)).await;
    assert_eq!(cluster(&h).epoch, e + 1);
    assert_eq!(
        h.cmd(MetaCommand::SetNodeState {
            id: NodeId::from("nope"),
            state: NodeState::Down,
            at: 1
        })
        .await,
        MetaReply::Err(MetaError::NoSuchNode)
    );
    assert_eq!(
        h.cmd(MetaCommand::RemoveNode {
            id: NodeId::from("s1")
        })
        .await,
        MetaReply::Ok
    );
    assert_eq!(
        h.cmd(MetaCommand::RemoveNode {
            id: NodeId::from("s1")
        })
        .await,
        MetaReply::Err(MetaError::NoSuchNode)
    );
    let m = cluster(&h);
    assert!(m.nodes.is_empty());
    assert_eq!(m.epoch, e + 2);
}

fn keys(p: &ListObjectsPage) -> Vec<&str> {
    p.objects.iter().map(|o| o.key.as_str()).collect()
}

#[tokio::test]
async fn list_prefix_delimiter_start_after() {
    let mut h = Harness::new();
    h.bucket("b").await;
    h.bucket("b2").await;
    for k in [
        "a.txt",
        "dir/x",
        "dir/y",
        "dir/sub/z",
        "dir2/q",
        "e",
        "photos/2024/1.jpg",
        "photos/2024/2.jpg",
        "photos/2025/1.jpg",
        "photos/readme",
    ] {
        h.put("b", k).await;
    }
    h.put("b2", "dir/other").await;

    let p = h.list("b", "", "", "", 0);
    assert_eq!(p.objects.len(), 10);
    assert!(!p.is_truncated);
    assert_eq!(p.next_marker, None);

    let p = h.list("b", "dir/", "", "", 0);
    assert_eq!(keys(&p), ["dir/sub/z", "dir/x", "dir/y"]);

    let p = h.list("b", "", "/", "", 0);
    assert_eq!(keys(&p), ["a.txt", "e"]);
    assert_eq!(p.common_prefixes, ["dir/", "dir2/", "photos/"]);

    let p = h.list("b", "photos/", "/", "", 0);
    assert_eq!(keys(&p), ["photos/readme"]);
    assert_eq!(p.common_prefixes, ["photos/2024/", "photos/2025/"]);

    // Paginate with a delimiter: common prefixes count toward max-keys and
    // continue after the returned prefix.
    let p1 = h.list("b", "", "/", "", 2);
    assert_eq!(keys(&p1), ["a.txt"]);
    assert_eq!(p1.common_prefixes, ["dir/"]);
    assert!(p1.is_truncated);
    assert_eq!(p1.next_marker.as_deref(), Some("dir/"));
    let p2 = h.list("b", "", "/", "dir/", 2);
    assert_eq!(p2.common_prefixes, ["dir2/"]);
    assert_eq!(keys(&p2), ["e"]);
    assert!(p2.is_truncated);
    assert_eq!(p2.next_marker.as_deref(), Some("e"));
    let p3 = h.list("b", "", "/", "e", 2);
    assert_eq!(p3.common_prefixes, ["photos/"]);
    assert!(keys(&p3).is_empty());
    assert!(!p3.is_truncated);

    // start_after inside a prefix, and a multi-char delimiter.
    let p = h.list("b", "dir/", "", "dir/x", 0);
    assert_eq!(keys(&p), ["dir/y"]);
    let p = h.list("b", "photos", "/20", "", 0);
    assert_eq!(p.common_prefixes, ["photos/20"]);
    assert_eq!(keys(&p), ["photos/readme"]);
    // start_after before the prefix, and past everything.
    assert_eq!(keys(&h.list("b", "e", "", "a", 0)), ["e"]);
    assert!(h.list("b", "", "", "zzz", 0).objects.is_empty());
    assert_eq!(
        h.q(MetaQuery::ListObjects(ListObjectsQuery {
            bucket: "nob".into(),
            ..Default::default()
        })),
        QueryReply::Err(MetaError::NoSuchBucket)
    );
}

#[tokio::test]
async fn list_pagination_and_unicode_order() {
    let mut h = Harness::new();
    h.bucket("b").await;
    let mut all: Vec<String> = (0..57).map(|i| format!("k{i:03}")).collect();
    for k in ["ä", "é/x", "日本/語", "z", "\u{10FFFF}", "emoji-😀", "a b"] {
        all.push(k.to_string());
    }
    for k in &all {
        h.put("b", k).await;
    }
    // UTF-8 byte order is the order of `str`.
    all.sort();
    let mut got = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let p = h.list("b", "", "", &after, 10);
        pages += 1;
        assert!(p.objects.len() <= 10);
        got.extend(p.objects.iter().map(|o| o.key.clone()));
        if !p.is_truncated {
            assert_eq!(p.next_marker, None);
            break;
        }
        after = p.next_marker.clone().unwrap();
        assert_eq!(&after, got.last().unwrap());
    }
    assert_eq!(got, all);
    assert_eq!(pages, 7);
    // Exactly max-keys left: not truncated.
    let p = h.list("b", "k05", "", "", 7);
    assert_eq!(p.objects.len(), 7);
    assert!(!p.is_truncated);
    // Delimiter with unicode.
    let p = h.list("b", "", "/", "", 1000);
    assert_eq!(p.common_prefixes, ["é/", "日本/"]);
    // max_keys is capped at 1000.
    assert_eq!(h.list("b", "", "", "", 5000).objects.len(), all.len());
}

#[tokio::test]
async fn restart_and_snapshot_roundtrip() {
    let mut h = Harness::new();
    h.bucket("b").await;
    h.put("b", "k1").await;
    h.cmd(MetaCommand::UpsertNode(node("s1", 1))).await;
    let applied = h.sm.applied_state().await.unwrap().0;
    assert_eq!(applied.map(|l| l.index), Some(3));

    // Snapshot, then install into a fresh state machine.
    // A built snapshot is only its meta; the data comes from the current
    // snapshot, as openraft gets it to send one.
    let built =
        h.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    let snap = h.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snap.meta, built.meta);
    assert_eq!(snap.meta.last_log_id, applied);
    let mut other = Harness::new();
    other.bucket("stale").await;
    other
        .sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(other.sm.applied_state().await.unwrap().0, applied);
    assert_eq!(
        other.q(MetaQuery::GetBucket {
            name: "stale".into()
        }),
        QueryReply::Bucket(None)
    );
    assert_eq!(h.q(MetaQuery::ListBuckets), other.q(MetaQuery::ListBuckets));
    assert_eq!(cluster(&h), cluster(&other));
    assert_eq!(
        other.list("b", "", "", "", 0).objects.len(),
        1,
        "objects came with the snapshot"
    );
    let cur = other.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, snap.meta);

    // Reopen the database: everything is still there.
    let Harness { dir, sm, .. } = h;
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(sm.applied_state().await.unwrap().0, applied);
    let r = query(
        &sm.trees(),
        &MetaQuery::GetObject {
            bucket: "b".into(),
            key: "k1".into(),
        },
    )
    .unwrap();
    assert!(matches!(r, QueryReply::Object(Some(_))));
    assert!(sm.get_current_snapshot().await.unwrap().is_some());
}

/// Building a snapshot copies nothing; the copy made when one is sent
/// covers what was applied since, and is recorded as the newer snapshot
/// (also across a restart).
#[tokio::test]
async fn current_snapshot_covers_entries_applied_after_the_build() {
    let mut h = Harness::new();
    assert!(h.sm.get_current_snapshot().await.unwrap().is_none());
    h.bucket("b").await;
    h.put("b", "k1").await;
    let built =
        h.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    assert!(
        built.snapshot.get_ref().is_empty(),
        "a build copies nothing"
    );
    h.put("b", "k2").await;
    h.put("b", "k3").await;
    let applied = h.sm.applied_state().await.unwrap().0;
    assert!(applied > built.meta.last_log_id);

    let cur = h.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta.last_log_id, applied);
    assert_ne!(cur.meta.snapshot_id, built.meta.snapshot_id);
    // Asked again with nothing applied in between: the same snapshot.
    let again = h.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(again.meta, cur.meta);
    assert_eq!(again.snapshot.get_ref(), cur.snapshot.get_ref());

    let mut other = Harness::new();
    other
        .sm
        .install_snapshot(&cur.meta, cur.snapshot)
        .await
        .unwrap();
    assert_eq!(other.sm.applied_state().await.unwrap().0, applied);
    assert_eq!(
        other.list("b", "", "", "", 0).objects.len(),
        3,
        "the entries applied after the build came with the snapshot"
    );
    assert_eq!(cluster(&h), cluster(&other));
    assert_eq!(
        other.sm.get_current_snapshot().await.unwrap().unwrap().meta,
        cur.meta
    );

    // The newer snapshot was recorded: a reopened store has it.
    let Harness { dir, sm, .. } = h;
    drop(sm);
    let mut sm = open(dir.path());
    assert_eq!(
        sm.get_current_snapshot().await.unwrap().unwrap().meta,
        cur.meta
    );
}

/// An empty or garbled snapshot is refused and leaves the state as it was.
#[tokio::test]
async fn installing_a_garbled_snapshot_changes_nothing() {
    let mut h = Harness::new();
    h.bucket("b").await;
    h.put("b", "k1").await;
    h.sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut cur = h.sm.get_current_snapshot().await.unwrap().unwrap();
    let before = h.sm.applied_state().await.unwrap();
    for data in [Vec::new(), vec![0xff; 64]] {
        *cur.snapshot = std::io::Cursor::new(data);
        let mut target = Harness::new();
        target.bucket("keep").await;
        let target_before = target.sm.applied_state().await.unwrap();
        assert!(target
            .sm
            .install_snapshot(&cur.meta, cur.snapshot.clone())
            .await
            .is_err());
        assert_eq!(target.sm.applied_state().await.unwrap(), target_before);
        assert_eq!(target.list("keep", "", "", "", 0).objects.len(), 0);
        assert!(matches!(
            target.q(MetaQuery::GetBucket {
                name: "keep".into()
            }),
            QueryReply::Bucket(Some(_))
        ));
    }
    assert_eq!(h.sm.applied_state().await.unwrap(), before);
}

/// A checked put commits only if its key may write into the bucket when
/// it is applied; a refused one changes nothing.
#[tokio::test]
async fn checked_put_is_refused_without_write_permission_at_commit() {
    use tessera_types::meta::Grant;
    let mut h = Harness::new();
    h.bucket("b").await; // owned by alice
    let bob = h.access_key("bob").await;
    let bob = bob.as_str();
    let checked = |m: ObjectManifest, condition, as_key: &str| MetaCommand::PutObjectChecked {
        manifest: m,
        condition,
        access_key: as_key.into(),
    };
    let put =
        |key: &str, as_key: &str| checked(manifest("b", key, "e", 1), WriteCondition::None, as_key);
    let grant = |write: bool| MetaCommand::SetGrant {
        bucket: "b".into(),
        access_key: bob.into(),
        grant: Grant { read: true, write },
    };
    let count = |h: &Harness| h.list("b", "", "", "", 0).objects.len();
    assert!(matches!(
        h.cmd(put("k1", "alice")).await,
        MetaReply::Replaced(None)
    ));
    assert_eq!(
        h.cmd(put("k2", bob)).await,
        MetaReply::Err(MetaError::AccessDenied)
    );
    assert_eq!(h.cmd(grant(false)).await, MetaReply::Ok);
    assert_eq!(
        h.cmd(put("k2", bob)).await,
        MetaReply::Err(MetaError::AccessDenied),
        "a read grant does not allow writes"
    );
    assert_eq!(count(&h), 1);
    assert_eq!(h.cmd(grant(true)).await, MetaReply::Ok);
    assert!(matches!(
        h.cmd(put("k2", bob)).await,
        MetaReply::Replaced(None)
    ));
    // Revoked while bob's body was streaming: refused at commit.
    assert_eq!(h.cmd(grant(false)).await, MetaReply::Ok);
    assert_eq!(
        h.cmd(put("k3", bob)).await,
        MetaReply::Err(MetaError::AccessDenied)
    );
    assert_eq!(
        h.cmd(checked(
            manifest("nope", "k", "e", 1),
            WriteCondition::None,
            "alice"
        ))
        .await,
        MetaReply::Err(MetaError::NoSuchBucket)
    );
    assert_eq!(count(&h), 2);
    // Conditions still apply to a permitted put.
    assert_eq!(
        h.cmd(checked(
            manifest("b", "k1", "e2", 2),
            WriteCondition::IfNoneMatch,
            "alice"
        ))
        .await,
        MetaReply::Err(MetaError::PreconditionFailed)
    );
}

#[tokio::test]
async fn grants_give_other_keys_access_and_go_with_the_bucket() {
    use tessera_types::meta::Grant;
    let mut h = Harness::new();
    h.bucket("b").await; // owned by alice
    let bob = h.access_key("bob").await;
    let access = |h: &Harness, key: &str| match h.q(MetaQuery::BucketAccess {
        bucket: "b".into(),
        access_key: key.into(),
    }) {
        QueryReply::BucketAccess(a) => a.map(|(_, g)| g),
        other => panic!("{other:?}"),
    };
    let all = Grant {
        read: true,
        write: true,
    };
    assert_eq!(access(&h, "alice"), Some(all));
    assert_eq!(access(&h, &bob), Some(Grant::default()));
    let read = Grant {
        read: true,
        write: false,
    };
    let set = |key: &str, grant| MetaCommand::SetGrant {
        bucket: "b".into(),
        access_key: key.into(),
        grant,
    };
    assert_eq!(h.cmd(set(&bob, read)).await, MetaReply::Ok);
    assert_eq!(access(&h, &bob), Some(read));
    assert_eq!(
        h.q(MetaQuery::ListGrants { bucket: "b".into() }),
        QueryReply::Grants(vec![(bob.clone(), read)])
    );
    assert_eq!(
        h.cmd(set("nobody", read)).await,
        MetaReply::Err(MetaError::NoSuchAccessKey)
    );
    // Revoking, and a deleted bucket takes its grants along.
    assert_eq!(h.cmd(set(&bob, Grant::default())).await, MetaReply::Ok);
    assert_eq!(access(&h, &bob), Some(Grant::default()));
    assert_eq!(h.cmd(set(&bob, all)).await, MetaReply::Ok);
    let r = h.cmd(MetaCommand::DeleteBucket { name: "b".into() }).await;
    assert_eq!(r, MetaReply::Ok);
    h.bucket("b").await;
    assert_eq!(access(&h, &bob), Some(Grant::default()));
    assert!(access(&h, "nope").is_some());
    assert_eq!(
        h.q(MetaQuery::BucketAccess {
            bucket: "zz".into(),
            access_key: "alice".into()
        }),
        QueryReply::BucketAccess(None)
    );
}

#[tokio::test]
async fn object_tagging_is_replaced_in_place() {
    let mut h = Harness::new();
    let set = |key: &str, tagging: Option<&str>| MetaCommand::SetObjectTagging {
        bucket: "b".into(),
        key: key.into(),
        tagging: tagging.map(str::to_string),
    };
    assert_eq!(
        h.cmd(set("k", Some("a=1"))).await,
        MetaReply::Err(MetaError::NoSuchBucket)
    );
    h.bucket("b").await;
    assert_eq!(
        h.cmd(set("k", Some("a=1"))).await,
        MetaReply::Err(MetaError::NoSuchKey)
    );
    h.put("b", "k").await;
    let get = |h: &Harness| match h.q(MetaQuery::GetObject {
        bucket: "b".into(),
        key: "k".into(),
    }) {
        QueryReply::Object(Some(m)) => *m,
        other => panic!("{other:?}"),
    };
    let before = get(&h);
    assert_eq!(h.cmd(set("k", Some("a=1&b=2"))).await, MetaReply::Ok);
    let mut expected = before.clone();
    expected
        .headers
        .insert(tessera_types::TAGGING_HEADER.into(), "a=1&b=2".into());
    // Only the tag set changed: same version, ETag, stripes; no GC.
    assert_eq!(get(&h), expected);
    assert!(h.sm.trees().gc_items().unwrap().is_empty());
    assert_eq!(h.cmd(set("k", None)).await, MetaReply::Ok);
    assert_eq!(get(&h), before);
    // Removing tags that are not there is fine too.
    assert_eq!(h.cmd(set("k", None)).await, MetaReply::Ok);
    assert_eq!(get(&h), before);
}

#[tokio::test]
async fn many_answers_each_query_in_order_and_refuses_nesting_and_excess() {
    use tessera_types::meta::MAX_MANY_QUERIES;
    let mut h = Harness::new();
    h.bucket("b").await;
    h.put("b", "k").await;
    let access = MetaQuery::BucketAccess {
        bucket: "b".into(),
        access_key: "alice".into(),
    };
    let get = |key: &str| MetaQuery::GetObject {
        bucket: "b".into(),
        key: key.into(),
    };
    let alone: Vec<QueryReply> = [access.clone(), get("k"), get("nope")]
        .into_iter()
        .map(|q| h.q(q))
        .collect();
    let many = MetaQuery::Many(vec![access.clone(), get("k"), get("nope")]);
    assert!(many.is_point());
    assert_eq!(h.q(many), QueryReply::Many(alone));
    assert!(matches!(
        h.q(MetaQuery::Many(vec![get("k"), MetaQuery::Many(vec![])])),
        QueryReply::Err(MetaError::Invalid(_))
    ));
    assert!(matches!(
        h.q(MetaQuery::Many(vec![get("k"); MAX_MANY_QUERIES + 1])),
        QueryReply::Err(MetaError::Invalid(_))
    ));
    assert_eq!(h.q(MetaQuery::Many(vec![])), QueryReply::Many(vec![]));
    assert!(!MetaQuery::Many(vec![get("k"), MetaQuery::ListBuckets]).is_point());
}
