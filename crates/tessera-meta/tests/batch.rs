//! Group commit in the state machine: a `MetaCommand::Batch` entry applies
//! its commands in order, each seeing the ones before it, each answered on
//! its own; the same commands as single entries give the same replies and
//! the same state; a re-applied batch (after a crash in its middle) skips
//! what was applied.

use std::collections::BTreeMap;

use tessera_meta::store::open_db;
use tessera_types::meta::{
    MetaCommand, MetaError, MetaQuery, MetaReply, QueryReply, WriteCondition,
};
use tessera_types::{Bucket, ObjectData, ObjectManifest, Part, StorageClass, Stripe, StripeId};

mod common;
use common::Harness;

fn bucket(name: &str) -> Bucket {
    Bucket {
        name: name.into(),
        owner: "alice".into(),
        created: 1_000,
    }
}

fn stripe(id: u64) -> Stripe {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&id.to_be_bytes());
    Stripe {
        id: StripeId(b),
        len: 10,
        shard_len: 5,
        class: StorageClass::rs(2, 1, 1024),
        shards: vec![],
    }
}

/// An object of one stripe (`id`), created at a fixed time: every GC item
/// of a batch gets the same time, so only the key tells them apart.
fn manifest(b: &str, k: &str, etag: &str, id: u64) -> ObjectManifest {
    ObjectManifest {
        layout: 1,
        bucket: b.into(),
        key: k.into(),
        version_id: format!("v-{etag}-{id}"),
        size: 10,
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
            stripes: vec![stripe(id)],
        }]),
    }
}

fn put(b: &str, k: &str, etag: &str, id: u64, condition: WriteCondition) -> MetaCommand {
    MetaCommand::PutObject {
        manifest: manifest(b, k, etag, id),
        condition,
    }
}

fn batch_replies(r: MetaReply) -> Vec<MetaReply> {
    match r {
        MetaReply::Batch(r) => r,
        other => panic!("not a batch reply: {other:?}"),
    }
}

fn object(h: &Harness, b: &str, k: &str) -> Option<ObjectManifest> {
    match h.q(MetaQuery::GetObject {
        bucket: b.into(),
        key: k.into(),
    }) {
        QueryReply::Object(o) => o.map(|o| *o),
        QueryReply::Err(MetaError::NoSuchBucket) => None,
        other => panic!("{other:?}"),
    }
}

/// The GC queue as (bucket, key, version, stripe ids), keys left out (a
/// batch entry's keys differ from single entries' by design).
fn gc(h: &Harness) -> Vec<(String, String, String, Vec<StripeId>)> {
    let mut v: Vec<_> =
        h.sm.trees()
            .gc_items()
            .unwrap()
            .into_iter()
            .map(|i| {
                (
                    i.bucket,
                    i.key,
                    i.version_id,
                    i.stripes.iter().map(|s| s.id).collect(),
                )
            })
            .collect();
    v.sort();
    v
}

#[tokio::test]
async fn commands_of_a_batch_see_each_other_and_fail_alone() {
    let mut h = Harness::new();
    let r = batch_replies(
        h.cmd(MetaCommand::Batch(vec![
            MetaCommand::CreateBucket(bucket("b")),
            // Sees the bucket created just before it.
            put("b", "k", "e1", 1, WriteCondition::IfNoneMatch),
            // Sees k: refused, and only this one.
            put("b", "k", "e2", 2, WriteCondition::IfNoneMatch),
            // CAS on what the second command wrote.
            put("b", "k", "e3", 3, WriteCondition::IfMatch("e1".into())),
            put("b", "k", "e4", 4, WriteCondition::IfMatch("e1".into())),
            MetaCommand::CreateBucket(bucket("b")),
            MetaCommand::Batch(vec![MetaCommand::CreateBucket(bucket("c"))]),
            MetaCommand::DeleteObject {
                bucket: "nope".into(),
                key: "k".into(),
            },
            put("b", "other", "e5", 5, WriteCondition::None),
        ]))
        .await,
    );
    assert_eq!(r.len(), 9);
    assert_eq!(r[0], MetaReply::Ok);
    assert_eq!(r[1], MetaReply::Replaced(None));
    assert_eq!(r[2], MetaReply::Err(MetaError::PreconditionFailed));
    assert_eq!(
        r[3],
        MetaReply::Replaced(Some(Box::new(manifest("b", "k", "e1", 1))))
    );
    assert_eq!(r[4], MetaReply::Err(MetaError::PreconditionFailed));
    assert_eq!(
        r[5],
        MetaReply::Err(MetaError::BucketAlreadyExists {
            owner: "alice".into()
        })
    );
    assert!(
        matches!(r[6], MetaReply::Err(MetaError::Invalid(_))),
        "{:?}",
        r[6]
    );
    assert_eq!(r[7], MetaReply::Err(MetaError::NoSuchBucket));
    assert_eq!(r[8], MetaReply::Replaced(None));

    assert_eq!(object(&h, "b", "k"), Some(manifest("b", "k", "e3", 3)));
    assert_eq!(
        object(&h, "b", "other"),
        Some(manifest("b", "other", "e5", 5))
    );
    assert!(matches!(
        h.q(MetaQuery::GetBucket { name: "c".into() }),
        QueryReply::Bucket(None)
    ));
    // The replaced version's stripe went to GC, once.
    assert_eq!(
        gc(&h),
        vec![("b".into(), "k".into(), "v-e1-1".into(), vec![stripe(1).id])]
    );
    // last_applied is the batch entry.
    let (last, _) = h.sm.trees().applied_state().unwrap();
    assert_eq!(last.map(|l| l.index), Some(h.index));

    // An empty batch is an entry like any other.
    assert_eq!(
        h.cmd(MetaCommand::Batch(vec![])).await,
        MetaReply::Batch(vec![])
    );
    let (last, _) = h.sm.trees().applied_state().unwrap();
    assert_eq!(last.map(|l| l.index), Some(h.index));
}

#[tokio::test]
async fn gc_items_of_one_batch_do_not_collide() {
    let mut h = Harness::new();
    h.cmd(MetaCommand::CreateBucket(bucket("b"))).await;
    let first: Vec<_> = (0..5)
        .map(|i| put("b", &format!("k{i}"), "a", 10 + i, WriteCondition::None))
        .collect();
    h.cmd(MetaCommand::Batch(first)).await;
    // Same time, same log index: five replaced versions, five GC items.
    let second: Vec<_> = (0..5)
        .map(|i| put("b", &format!("k{i}"), "b", 20 + i, WriteCondition::None))
        .collect();
    h.cmd(MetaCommand::Batch(second)).await;
    let q = gc(&h);
    assert_eq!(q.len(), 5, "{q:?}");
    for i in 0..5u64 {
        assert!(q.iter().any(|(_, _, _, s)| s == &vec![stripe(10 + i).id]));
    }
}

/// Tiny deterministic generator (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_command(rng: &mut Rng, next_stripe: &mut u64) -> MetaCommand {
    let b = ["b0", "b1"][rng.below(2) as usize];
    let k = format!("k{}", rng.below(3));
    let etag = format!("e{}", rng.below(3));
    match rng.below(10) {
        0 => MetaCommand::CreateBucket(bucket(b)),
        1 => MetaCommand::DeleteBucket { name: b.into() },
        2 => MetaCommand::DeleteObject {
            bucket: b.into(),
            key: k,
        },
        3 => MetaCommand::SetObjectTagging {
            bucket: b.into(),
            key: k,
            tagging: Some(format!("t={}", rng.below(5))),
        },
        n => {
            let condition = match n {
                4 | 5 => WriteCondition::None,
                6 | 7 => WriteCondition::IfNoneMatch,
                _ => WriteCondition::IfMatch(format!("e{}", rng.below(3))),
            };
            *next_stripe += 1;
            // Times out of order: the state machine clock (the GC items'
            // times) must move as it does entry by entry.
            let mut manifest = manifest(b, &k, &etag, *next_stripe);
            manifest.created = 1_000 + rng.below(5_000) as i64;
            MetaCommand::PutObject {
                manifest,
                condition,
            }
        }
    }
}

fn state(h: &Harness) -> Vec<String> {
    let mut out = Vec::new();
    for b in ["b0", "b1"] {
        out.push(format!(
            "{:?}",
            h.q(MetaQuery::GetBucket { name: b.into() })
        ));
        for k in 0..3 {
            out.push(format!("{:?}", object(h, b, &format!("k{k}"))));
        }
    }
    out.push(format!("{:?}", gc(h)));
    let mut times: Vec<_> =
        h.sm.trees()
            .gc_items()
            .unwrap()
            .into_iter()
            .map(|i| (i.version_id, i.at))
            .collect();
    times.sort();
    out.push(format!("{times:?}"));
    out.push(format!("{:?}", h.q(MetaQuery::Durability)));
    out
}

#[tokio::test]
async fn batches_give_the_replies_and_state_of_single_entries() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut next_stripe = 0;
        let cmds: Vec<MetaCommand> = (0..60)
            .map(|_| random_command(&mut rng, &mut next_stripe))
            .collect();

        let mut single = Harness::new();
        let mut expected = Vec::new();
        for c in &cmds {
            expected.push(single.cmd(c.clone()).await);
        }

        let mut batched = Harness::new();
        let mut got = Vec::new();
        let mut rest = cmds.as_slice();
        while !rest.is_empty() {
            let n = (1 + rng.below(8) as usize).min(rest.len());
            let (now, later) = rest.split_at(n);
            got.extend(batch_replies(
                batched.cmd(MetaCommand::Batch(now.to_vec())).await,
            ));
            rest = later;
        }
        assert_eq!(got, expected, "seed {seed}");
        assert_eq!(state(&batched), state(&single), "seed {seed}");
    }
}

#[tokio::test]
async fn a_batch_reapplied_after_a_crash_skips_what_was_applied() {
    // A database handle of our own, to plant the progress record a crash
    // in the middle of a batch entry leaves behind.
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let sm = open_db(db.clone(), dir.path()).unwrap().1;
    let mut h = Harness { dir, sm, index: 0 };
    h.cmd(MetaCommand::CreateBucket(bucket("b"))).await;
    let a = put("b", "a", "e1", 1, WriteCondition::None);
    let b = put("b", "b", "e2", 2, WriteCondition::None);
    // Entry 2 is [a, b]; a was committed with the progress record, then the
    // node died: the state after "a" alone, last_applied still 1.
    h.cmd(a.clone()).await;
    set_meta(&db, "last_applied", &Some(log_id(1)));
    set_meta(&db, "batch_progress", &(2u64, 1u32));
    h.index = 1;
    let r = batch_replies(h.cmd(MetaCommand::Batch(vec![a, b])).await);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1], MetaReply::Replaced(None));
    // "a" was not applied twice: it would have replaced itself and queued
    // its own (live) stripe for GC.
    assert_eq!(gc(&h), vec![]);
    assert_eq!(object(&h, "b", "a"), Some(manifest("b", "a", "e1", 1)));
    assert_eq!(object(&h, "b", "b"), Some(manifest("b", "b", "e2", 2)));
    assert!(db
        .open_tree("sm_meta")
        .unwrap()
        .get("batch_progress")
        .unwrap()
        .is_none());
    let (last, _) = h.sm.trees().applied_state().unwrap();
    assert_eq!(last.map(|l| l.index), Some(2));

    // A stale record (of another index) is ignored.
    set_meta(&db, "batch_progress", &(2u64, 1u32));
    let c = put("b", "c", "e3", 3, WriteCondition::None);
    let r = batch_replies(h.cmd(MetaCommand::Batch(vec![c])).await);
    assert_eq!(r, vec![MetaReply::Replaced(None)]);
    assert!(object(&h, "b", "c").is_some());
}

/// Writes a state-machine meta record behind the store's back (a crash
/// left it so).
fn set_meta<T: serde::Serialize>(db: &sled::Db, key: &str, value: &T) {
    db.open_tree("sm_meta")
        .unwrap()
        .insert(key, tessera_types::codec::encode(value))
        .unwrap();
}

fn log_id(index: u64) -> openraft::LogId<u64> {
    openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
}
