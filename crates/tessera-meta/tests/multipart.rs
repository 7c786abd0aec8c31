//! State machine semantics of multipart uploads: create, parts (replaced
//! parts are released), complete (atomic check of the parts, unused parts
//! released, object committed), abort, listings, and snapshots.

use std::collections::BTreeMap;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use tessera_meta::store::{open_db, query::query, StateMachineStore};
use tessera_meta::TypeConfig;
use tessera_types::meta::{
    ListUploadsQuery, MetaCommand, MetaError, MetaQuery, MetaReply, PartRecord, PartsPage,
    QueryReply, Upload, UploadsPage, WriteCondition,
};
use tessera_types::{Bucket, ObjectData, ObjectManifest, Part, StorageClass, Stripe, StripeId};

struct Harness {
    _dir: tempfile::TempDir,
    sm: StateMachineStore,
    index: u64,
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let sm = open_db(db, dir.path()).unwrap().1;
        let mut h = Harness {
            _dir: dir,
            sm,
            index: 0,
        };
        let r = h
            .cmd(MetaCommand::CreateBucket(Bucket {
                name: "b".into(),
                owner: "alice".into(),
                created: 1_000,
            }))
            .await;
        assert_eq!(r, MetaReply::Ok);
        h
    }

    async fn cmd(&mut self, c: MetaCommand) -> MetaReply {
        self.index += 1;
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(c),
        };
        self.sm.apply(vec![entry]).await.unwrap().pop().unwrap()
    }

    fn q(&self, q: MetaQuery) -> QueryReply {
        query(&self.sm.trees(), &q).unwrap()
    }

    async fn create(&mut self, key: &str, id: &str) {
        let r = self
            .cmd(MetaCommand::CreateUpload {
                upload: upload(key, id),
            })
            .await;
        assert_eq!(r, MetaReply::Ok);
    }

    async fn put_part(&mut self, key: &str, id: &str, p: Part) -> MetaReply {
        self.cmd(MetaCommand::PutPart {
            bucket: "b".into(),
            key: key.into(),
            upload_id: id.into(),
            part: PartRecord {
                part: p,
                uploaded: 3_000,
            },
        })
        .await
    }

    fn parts(&self, key: &str, id: &str, marker: u32, max: u32) -> PartsPage {
        match self.q(MetaQuery::ListParts {
            bucket: "b".into(),
            key: key.into(),
            upload_id: id.into(),
            marker,
            max_parts: max,
        }) {
            QueryReply::Parts(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn uploads(&self, prefix: &str, key_marker: &str, id_marker: &str, max: u32) -> UploadsPage {
        self.uploads_delim(prefix, "", key_marker, id_marker, max)
    }

    fn uploads_delim(
        &self,
        prefix: &str,
        delimiter: &str,
        key_marker: &str,
        id_marker: &str,
        max: u32,
    ) -> UploadsPage {
        match self.q(MetaQuery::ListUploads(ListUploadsQuery {
            bucket: "b".into(),
            prefix: prefix.into(),
            key_marker: key_marker.into(),
            upload_id_marker: id_marker.into(),
            max_uploads: max,
            delimiter: delimiter.into(),
        })) {
            QueryReply::Uploads(p) => p,
            other => panic!("{other:?}"),
        }
    }
}

fn upload(key: &str, id: &str) -> Upload {
    Upload {
        bucket: "b".into(),
        key: key.into(),
        upload_id: id.into(),
        owner: "alice".into(),
        initiated: 2_000,
        content_type: Some("text/plain".into()),
        headers: BTreeMap::new(),
        user_metadata: BTreeMap::new(),
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

fn part(number: u32, etag: &str, seed: u8) -> Part {
    Part {
        number,
        size: 10,
        etag: etag.into(),
        checksums: BTreeMap::new(),
        stripes: vec![stripe(seed)],
    }
}

fn object(key: &str, parts: Vec<Part>) -> ObjectManifest {
    ObjectManifest {
        layout: 1,
        bucket: "b".into(),
        key: key.into(),
        version_id: "v1".into(),
        size: parts.iter().map(|p| p.size).sum(),
        etag: format!("x-{}", parts.len()),
        content_type: None,
        headers: BTreeMap::new(),
        user_metadata: BTreeMap::new(),
        checksums: BTreeMap::new(),
        created: 4_000,
        data: ObjectData::Parts(parts),
    }
}

fn ids(stripes: &[Stripe]) -> Vec<u8> {
    let mut v: Vec<u8> = stripes.iter().map(|s| s.id.0[0]).collect();
    v.sort();
    v
}

fn released(r: MetaReply) -> Vec<u8> {
    match r {
        MetaReply::Released(s) => ids(&s),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn parts_replace_and_complete() {
    let mut h = Harness::new().await;
    h.create("k", "u1").await;
    assert_eq!(
        h.q(MetaQuery::GetUpload {
            bucket: "b".into(),
            key: "k".into(),
            upload_id: "u1".into()
        }),
        QueryReply::Upload(Some(upload("k", "u1")))
    );
    assert!(released(h.put_part("k", "u1", part(1, "a", 1)).await).is_empty());
    assert!(released(h.put_part("k", "u1", part(2, "b", 2)).await).is_empty());
    assert!(released(h.put_part("k", "u1", part(3, "c", 3)).await).is_empty());
    // Re-uploading part 2 releases the old part's stripes.
    assert_eq!(
        released(h.put_part("k", "u1", part(2, "b2", 4)).await),
        vec![2]
    );
    // The same command applied twice (a retried write) releases nothing.
    assert!(released(h.put_part("k", "u1", part(2, "b2", 4)).await).is_empty());
    let page = h.parts("k", "u1", 0, 0);
    let numbers: Vec<u32> = page.parts.iter().map(|p| p.part.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(page.parts[1].part.etag, "b2");
    assert!(!page.is_truncated);

    // A manifest part that differs from the stored one is refused, and
    // nothing changes.
    let r = h
        .cmd(MetaCommand::CompleteUpload {
            upload_id: "u1".into(),
            manifest: object("k", vec![part(1, "a", 1), part(2, "b", 2)]),
            condition: WriteCondition::None,
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::InvalidPart { number: 2 }));
    assert_eq!(h.parts("k", "u1", 0, 0).parts.len(), 3);

    // Complete with parts 1 and 2: part 3 is released, the upload is gone,
    // the object is visible.
    let r = h
        .cmd(MetaCommand::CompleteUpload {
            upload_id: "u1".into(),
            manifest: object("k", vec![part(1, "a", 1), part(2, "b2", 4)]),
            condition: WriteCondition::None,
        })
        .await;
    assert_eq!(released(r), vec![3]);
    assert_eq!(
        h.q(MetaQuery::GetUpload {
            bucket: "b".into(),
            key: "k".into(),
            upload_id: "u1".into()
        }),
        QueryReply::Upload(None)
    );
    assert_eq!(
        h.q(MetaQuery::ListParts {
            bucket: "b".into(),
            key: "k".into(),
            upload_id: "u1".into(),
            marker: 0,
            max_parts: 0
        }),
        QueryReply::Err(MetaError::NoSuchUpload)
    );
    match h.q(MetaQuery::GetObject {
        bucket: "b".into(),
        key: "k".into(),
    }) {
        QueryReply::Object(Some(m)) => assert_eq!(m.etag, "x-2"),
        other => panic!("{other:?}"),
    }
    // Completing again: the upload no longer exists.
    let r = h
        .cmd(MetaCommand::CompleteUpload {
            upload_id: "u1".into(),
            manifest: object("k", vec![part(1, "a", 1)]),
            condition: WriteCondition::None,
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::NoSuchUpload));
    // A part for a finished upload is refused.
    assert_eq!(
        h.put_part("k", "u1", part(4, "d", 9)).await,
        MetaReply::Err(MetaError::NoSuchUpload)
    );

    // A second upload that replaces the object releases the old object's
    // stripes too, and honours If-None-Match.
    h.create("k", "u2").await;
    h.put_part("k", "u2", part(1, "n", 7)).await;
    let r = h
        .cmd(MetaCommand::CompleteUpload {
            upload_id: "u2".into(),
            manifest: object("k", vec![part(1, "n", 7)]),
            condition: WriteCondition::IfNoneMatch,
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::PreconditionFailed));
    let r = h
        .cmd(MetaCommand::CompleteUpload {
            upload_id: "u2".into(),
            manifest: object("k", vec![part(1, "n", 7)]),
            condition: WriteCondition::None,
        })
        .await;
    assert_eq!(released(r), vec![1, 4]);
    // Everything released went to the GC queue as well.
    let gc: Vec<u8> =
        h.sm.trees()
            .gc_items()
            .unwrap()
            .iter()
            .flat_map(|i| i.stripes.iter().map(|s| s.id.0[0]))
            .collect();
    let mut gc = gc;
    gc.sort();
    assert_eq!(gc, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn abort_and_errors() {
    let mut h = Harness::new().await;
    // No such bucket.
    let mut u = upload("k", "u1");
    u.bucket = "nope".into();
    assert_eq!(
        h.cmd(MetaCommand::CreateUpload { upload: u }).await,
        MetaReply::Err(MetaError::NoSuchBucket)
    );
    assert_eq!(
        h.put_part("k", "missing", part(1, "a", 1)).await,
        MetaReply::Err(MetaError::NoSuchUpload)
    );
    h.create("k", "u1").await;
    h.put_part("k", "u1", part(1, "a", 1)).await;
    h.put_part("k", "u1", part(2, "b", 2)).await;
    // The wrong key for the upload id is no such upload.
    let r = h
        .cmd(MetaCommand::AbortUpload {
            bucket: "b".into(),
            key: "other".into(),
            upload_id: "u1".into(),
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::NoSuchUpload));
    let r = h
        .cmd(MetaCommand::AbortUpload {
            bucket: "b".into(),
            key: "k".into(),
            upload_id: "u1".into(),
        })
        .await;
    assert_eq!(released(r), vec![1, 2]);
    assert!(h.uploads("", "", "", 0).uploads.is_empty());
    assert!(h.sm.trees().upload_parts("u1").unwrap().is_empty());
    let r = h
        .cmd(MetaCommand::AbortUpload {
            bucket: "b".into(),
            key: "k".into(),
            upload_id: "u1".into(),
        })
        .await;
    assert_eq!(r, MetaReply::Err(MetaError::NoSuchUpload));
}

#[tokio::test]
async fn list_parts_and_uploads_paginate() {
    let mut h = Harness::new().await;
    h.create("k", "u1").await;
    for n in 1..=5 {
        h.put_part("k", "u1", part(n, "e", n as u8)).await;
    }
    let p = h.parts("k", "u1", 0, 2);
    assert_eq!(
        p.parts.iter().map(|p| p.part.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(p.is_truncated);
    assert_eq!(p.next_marker, Some(2));
    let p = h.parts("k", "u1", 2, 2);
    assert_eq!(
        p.parts.iter().map(|p| p.part.number).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let p = h.parts("k", "u1", 4, 2);
    assert_eq!(
        p.parts.iter().map(|p| p.part.number).collect::<Vec<_>>(),
        vec![5]
    );
    assert!(!p.is_truncated);

    h.create("a/1", "x2").await;
    h.create("a/1", "x1").await;
    h.create("a/2", "y1").await;
    let all = h.uploads("", "", "", 0);
    let got: Vec<(String, String)> = all
        .uploads
        .iter()
        .map(|u| (u.key.clone(), u.upload_id.clone()))
        .collect();
    let want = [("a/1", "x1"), ("a/1", "x2"), ("a/2", "y1"), ("k", "u1")];
    assert_eq!(
        got,
        want.iter()
            .map(|(k, u)| (k.to_string(), u.to_string()))
            .collect::<Vec<_>>()
    );
    let page = h.uploads("a/", "", "", 2);
    assert_eq!(page.uploads.len(), 2);
    assert!(page.is_truncated);
    assert_eq!(page.next_key_marker.as_deref(), Some("a/1"));
    assert_eq!(page.next_upload_id_marker.as_deref(), Some("x2"));
    let page = h.uploads("a/", "a/1", "x2", 2);
    assert_eq!(page.uploads.len(), 1);
    assert_eq!(page.uploads[0].upload_id, "y1");
    assert!(!page.is_truncated);
    // A key marker alone skips every upload of that key.
    let page = h.uploads("", "a/1", "", 0);
    let keys: Vec<&str> = page.uploads.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys, vec!["a/2", "k"]);

    // With a delimiter: a/1 and a/2 collapse into "a/".
    let page = h.uploads_delim("", "/", "", "", 0);
    assert_eq!(page.common_prefixes, vec!["a/".to_string()]);
    let keys: Vec<&str> = page.uploads.iter().map(|u| u.key.as_str()).collect();
    assert_eq!(keys, vec!["k"]);
    let page = h.uploads_delim("", "/", "", "", 1);
    assert_eq!(page.common_prefixes, vec!["a/".to_string()]);
    assert!(page.uploads.is_empty() && page.is_truncated);
    assert_eq!(page.next_key_marker.as_deref(), Some("a/"));
    assert_eq!(page.next_upload_id_marker, None);
    let page = h.uploads_delim("", "/", "a/", "", 1);
    assert!(page.common_prefixes.is_empty());
    assert_eq!(page.uploads.len(), 1);
    assert_eq!(page.uploads[0].key, "k");
}

#[tokio::test]
async fn uploads_and_parts_are_in_snapshots() {
    let mut h = Harness::new().await;
    h.create("k", "u1").await;
    h.put_part("k", "u1", part(1, "a", 1)).await;
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
    let mut other = Harness::new().await;
    other.create("stale", "s1").await;
    other
        .sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    let page = other.uploads("", "", "", 0);
    assert_eq!(page.uploads, vec![upload("k", "u1")]);
    assert_eq!(other.parts("k", "u1", 0, 0), h.parts("k", "u1", 0, 0));
}

#[tokio::test]
async fn delete_bucket_drops_its_uploads() {
    let mut h = Harness::new().await;
    h.create("k", "u1").await;
    h.put_part("k", "u1", part(1, "a", 1)).await;
    h.put_part("k", "u1", part(2, "b", 2)).await;
    h.create("j", "u2").await;
    let r = h.cmd(MetaCommand::DeleteBucket { name: "b".into() }).await;
    assert_eq!(released(r), vec![1, 2]);
    assert!(h.sm.trees().upload_parts("u1").unwrap().is_empty());
    // A new bucket of the same name starts with no uploads.
    h.cmd(MetaCommand::CreateBucket(Bucket {
        name: "b".into(),
        owner: "alice".into(),
        created: 5_000,
    }))
    .await;
    assert!(h.uploads("", "", "", 0).uploads.is_empty());
    // Without uploads, DeleteBucket answers Ok.
    let r = h.cmd(MetaCommand::DeleteBucket { name: "b".into() }).await;
    assert_eq!(r, MetaReply::Ok);
}
