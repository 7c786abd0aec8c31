//! In-process fakes for the gateway's tests: storage nodes that keep shards
//! in memory (with fault switches: dead, slow, corrupt) and a meta node
//! with an in-memory state machine, both served over real gRPC on port 0.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tessera_proto::meta::meta_server::{Meta, MetaServer};
use tessera_proto::meta::{
    Envelope, HeartbeatRequest, HeartbeatResponse, RaftStatusRequest, RaftStatusResponse,
};
use tessera_proto::storage::storage_server::{Storage, StorageServer};
use tessera_proto::storage::{
    put_shard_request, DeleteShardResponse, GetShardRequest, NodeInfoRequest, NodeInfoResponse,
    PutShardRequest, PutShardResponse, ShardChunk, ShardRef, StatShardResponse,
};
use tessera_types::codec;
use tessera_types::meta::{
    ListObjectsPage, ListObjectsQuery, MetaCommand, MetaError, MetaQuery, MetaReply, ObjectSummary,
    PartRecord, PartsPage, QueryReply, Upload, WriteCondition,
};
use tessera_types::repair::{
    GcLease, RepairConfig, RepairItem, RepairOutcome, RepairTask, ShardProblem, StripeOwner,
};
use tessera_types::{
    AccessKey, Bucket, ClusterMap, NodeId, NodeInfo, NodeState, ObjectData, ObjectManifest, Stripe,
    StripeId,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub mod s3client;

type Key = (StripeId, u8);

/// A storage node keeping shards in memory.
#[derive(Default)]
pub struct FakeStorage {
    pub shards: Mutex<HashMap<Key, Bytes>>,
    /// Every call fails as if the node were unreachable.
    pub dead: AtomicBool,
    /// Reads wait this long (milliseconds) before answering.
    pub read_delay_ms: AtomicU64,
    pub reads: AtomicU64,
}

impl FakeStorage {
    pub fn count(&self) -> usize {
        self.shards.lock().unwrap().len()
    }

    /// Flips a byte of every shard this node holds (bit rot the node does
    /// not notice: it serves the bytes anyway).
    pub fn corrupt_all(&self) {
        for v in self.shards.lock().unwrap().values_mut() {
            let mut b = BytesMut::from(&v[..]);
            if let Some(x) = b.first_mut() {
                *x ^= 0xff;
            }
            *v = b.freeze();
        }
    }

    fn check(&self) -> Result<(), Status> {
        if self.dead.load(Ordering::SeqCst) {
            Err(Status::unavailable("node is down"))
        } else {
            Ok(())
        }
    }
}

fn key(r: Option<ShardRef>) -> Result<Key, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("no shard"))?;
    let id = StripeId::from_slice(&r.stripe_id).ok_or_else(|| Status::invalid_argument("id"))?;
    Ok((id, r.shard_index as u8))
}

pub struct StorageSvc(pub Arc<FakeStorage>);

#[tonic::async_trait]
impl Storage for StorageSvc {
    async fn put_shard(
        &self,
        request: Request<tonic::Streaming<PutShardRequest>>,
    ) -> Result<Response<PutShardResponse>, Status> {
        self.0.check()?;
        let mut stream = request.into_inner();
        let mut k = None;
        let mut hash = Vec::new();
        let mut buf = BytesMut::new();
        while let Some(msg) = stream.next().await {
            match msg?.msg {
                Some(put_shard_request::Msg::Header(h)) => {
                    k = Some(key(h.shard)?);
                    hash = h.blake3.to_vec();
                }
                Some(put_shard_request::Msg::Data(d)) => buf.extend_from_slice(&d),
                None => {}
            }
        }
        let k = k.ok_or_else(|| Status::invalid_argument("no header"))?;
        if blake3::hash(&buf).as_bytes().as_slice() != hash.as_slice() {
            return Err(Status::invalid_argument("hash mismatch"));
        }
        self.0.check()?;
        self.0.shards.lock().unwrap().insert(k, buf.freeze());
        Ok(Response::new(PutShardResponse {}))
    }

    type GetShardStream = futures::stream::Iter<std::vec::IntoIter<Result<ShardChunk, Status>>>;

    async fn get_shard(
        &self,
        request: Request<GetShardRequest>,
    ) -> Result<Response<Self::GetShardStream>, Status> {
        self.0.check()?;
        self.0.reads.fetch_add(1, Ordering::SeqCst);
        let delay = self.0.read_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let k = key(request.into_inner().shard)?;
        let data = self
            .0
            .shards
            .lock()
            .unwrap()
            .get(&k)
            .cloned()
            .ok_or_else(|| Status::not_found("no such shard"))?;
        let frames: Vec<_> = data
            .chunks(1 << 20)
            .map(|c| {
                Ok(ShardChunk {
                    data: Bytes::copy_from_slice(c),
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(frames)))
    }

    async fn delete_shard(
        &self,
        request: Request<ShardRef>,
    ) -> Result<Response<DeleteShardResponse>, Status> {
        self.0.check()?;
        let k = key(Some(request.into_inner()))?;
        let existed = self.0.shards.lock().unwrap().remove(&k).is_some();
        Ok(Response::new(DeleteShardResponse { existed }))
    }

    async fn stat_shard(
        &self,
        request: Request<ShardRef>,
    ) -> Result<Response<StatShardResponse>, Status> {
        let k = key(Some(request.into_inner()))?;
        let g = self.0.shards.lock().unwrap();
        Ok(Response::new(StatShardResponse {
            exists: g.contains_key(&k),
            length: g.get(&k).map(|b| b.len() as u64).unwrap_or(0),
            blake3: Bytes::new(),
        }))
    }

    async fn node_info(
        &self,
        _request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        Ok(Response::new(NodeInfoResponse::default()))
    }
}

/// Runs fake storage nodes; returns them with a cluster map listing them
/// (all Up, one zone per node).
pub async fn storage_nodes(
    n: usize,
    shutdown: &CancellationToken,
) -> (Vec<Arc<FakeStorage>>, ClusterMap) {
    let mut nodes = Vec::new();
    let mut map = ClusterMap {
        epoch: 1,
        nodes: vec![],
    };
    for i in 0..n {
        let fake = Arc::new(FakeStorage::default());
        let addr = serve_grpc(
            tonic::transport::Server::builder()
                .add_service(StorageServer::new(StorageSvc(fake.clone()))),
            shutdown,
        )
        .await;
        map.nodes.push(NodeInfo {
            id: NodeId(format!("s-{i}")),
            addr: addr.to_string(),
            zone: format!("z{i}"),
            weight: 1.0,
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            shard_count: 0,
            state: NodeState::Up,
            last_heartbeat: 0,
        });
        nodes.push(fake);
    }
    (nodes, map)
}

async fn serve_grpc(
    router: tonic::transport::server::Router,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), token.cancelled())
            .await;
    });
    addr
}

/// An upload in progress in [`FakeMeta`] and its parts by number.
pub type FakeUpload = (Upload, BTreeMap<u32, PartRecord>);

/// A meta node with an in-memory state machine (no Raft).
#[derive(Default)]
pub struct FakeMeta {
    pub buckets: Mutex<BTreeMap<String, Bucket>>,
    pub objects: Mutex<BTreeMap<(String, String), ObjectManifest>>,
    /// Multipart uploads in progress by id, with their parts (no completion).
    pub uploads: Mutex<BTreeMap<String, FakeUpload>>,
    pub keys: Mutex<HashMap<String, AccessKey>>,
    pub map: Mutex<ClusterMap>,
    /// Every call fails as if meta were unreachable.
    pub dead: AtomicBool,
    /// Object, upload and part writes are refused as by a meta node whose
    /// disk is nearly full (RESOURCE_EXHAUSTED, before anything is
    /// committed).
    pub full: AtomicBool,
    /// With `full`: the write is applied, then refused as above (the
    /// meta client's retry of a try that committed and whose answer was
    /// lost, refused once the disk filled up).
    pub full_after_commit: AtomicBool,
    /// With `full`: once a write is refused, every read fails (not retried)
    /// until cleared, so the gateway cannot ask whether an earlier try of
    /// the write committed.
    pub reads_fail_after_refusal: AtomicBool,
    /// Every read fails with INTERNAL (armed by `reads_fail_after_refusal`).
    pub reads_fail: AtomicBool,
    /// Every write is applied twice and answered with the second reply, as
    /// the meta client's retry of a try whose answer was lost; with
    /// `reads_fail_after_refusal`, a refusal so answered arms `reads_fail`.
    pub lose_first_answer: AtomicBool,
    /// A minimal repair queue: items are leased in order, whatever their
    /// lease or back-off (tests lease explicitly).
    pub repairs: Mutex<Vec<RepairItem>>,
    pub repair_config: Mutex<Option<RepairConfig>>,
    /// Every ReleaseRepair, in order.
    pub released: Mutex<Vec<(StripeId, RepairOutcome)>>,
    /// Every CommitRepair that was applied.
    pub committed: Mutex<Vec<StripeId>>,
    /// Every ReportShards problem.
    pub reports: Mutex<Vec<ShardProblem>>,
    /// GC queue (CommitRepair feeds it like meta does); acked items go.
    pub gc: Mutex<Vec<GcLease>>,
    gc_seq: AtomicU64,
}

impl FakeMeta {
    pub fn add_key(&self, id: &str, secret: &str) {
        self.keys.lock().unwrap().insert(
            id.to_string(),
            AccessKey {
                id: id.to_string(),
                secret: secret.to_string(),
                name: id.to_string(),
                created: 0,
            },
        );
    }

    /// Queues `stripe` of `bucket`/`key` for repair (as meta would when a
    /// node goes down).
    pub fn queue_repair(&self, bucket: &str, key: &str, stripe: StripeId) {
        self.repairs.lock().unwrap().push(RepairItem {
            stripe,
            owner: StripeOwner::Object {
                bucket: bucket.into(),
                key: key.into(),
            },
            surviving: 0,
            bad: vec![],
            reasons: vec![],
            queued_at: 0,
            attempts: 0,
            lease: None,
            not_before: 0,
            requeued: false,
        });
    }

    /// The stripe `id` of `bucket`/`key` as the fake holds it now.
    pub fn stripe(&self, bucket: &str, key: &str, id: StripeId) -> Option<Stripe> {
        let objects = self.objects.lock().unwrap();
        let m = objects.get(&(bucket.to_string(), key.to_string()))?;
        let found = m.stripes().find(|s| s.id == id).cloned();
        found
    }

    pub fn push_gc(&self, stripes: Vec<Stripe>) {
        let seq = self.gc_seq.fetch_add(1, Ordering::SeqCst);
        self.gc.lock().unwrap().push(GcLease {
            key: seq.to_be_bytes().to_vec(),
            at: 0,
            stripes,
        });
    }

    /// The repair commands (separate from `apply`'s locks on the
    /// namespace, which they take themselves).
    fn apply_repair(&self, cmd: MetaCommand) -> MetaReply {
        match cmd {
            MetaCommand::LeaseRepairs { worker, max, .. } => {
                let mut q = self.repairs.lock().unwrap();
                let objects = self.objects.lock().unwrap();
                let mut tasks = vec![];
                q.retain(|item| {
                    let StripeOwner::Object { bucket, key } = &item.owner else {
                        return false;
                    };
                    // An owner that no longer holds the stripe drops it.
                    objects
                        .get(&(bucket.clone(), key.clone()))
                        .is_some_and(|m| m.stripes().any(|s| s.id == item.stripe))
                });
                for item in q.iter_mut().take(max as usize) {
                    let StripeOwner::Object { bucket, key } = &item.owner else {
                        continue;
                    };
                    let Some(stripe) = objects
                        .get(&(bucket.clone(), key.clone()))
                        .and_then(|m| m.stripes().find(|s| s.id == item.stripe).cloned())
                    else {
                        continue;
                    };
                    item.lease = Some((worker.clone(), i64::MAX));
                    tasks.push(RepairTask {
                        item: item.clone(),
                        stripe,
                    });
                }
                MetaReply::Repairs(tasks)
            }
            MetaCommand::ReleaseRepair {
                stripe, outcome, ..
            } => {
                self.released.lock().unwrap().push((stripe, outcome));
                let mut q = self.repairs.lock().unwrap();
                match outcome {
                    RepairOutcome::Done => q.retain(|i| i.stripe != stripe),
                    RepairOutcome::Failed => {
                        for i in q.iter_mut().filter(|i| i.stripe == stripe) {
                            i.attempts += 1;
                            i.lease = None;
                        }
                    }
                }
                MetaReply::Ok
            }
            MetaCommand::CommitRepair {
                owner,
                stripe,
                expected,
                shards,
                ..
            } => {
                self.repairs.lock().unwrap().retain(|i| i.stripe != stripe);
                let StripeOwner::Object { bucket, key } = owner else {
                    return MetaReply::Err(MetaError::Invalid(
                        "parts unsupported by the fake".into(),
                    ));
                };
                let mut objects = self.objects.lock().unwrap();
                let target = objects
                    .get_mut(&(bucket, key))
                    .and_then(|m| match &mut m.data {
                        ObjectData::Parts(parts) => parts
                            .iter_mut()
                            .flat_map(|p| p.stripes.iter_mut())
                            .find(|s| s.id == stripe),
                        ObjectData::Inline(_) => None,
                    });
                let (reply, garbage) = match target {
                    Some(s) if s.shards == expected => {
                        let old = std::mem::replace(&mut s.shards, shards.clone());
                        let mut g = s.clone();
                        g.shards = old.into_iter().filter(|e| !shards.contains(e)).collect();
                        self.committed.lock().unwrap().push(stripe);
                        (MetaReply::Ok, g)
                    }
                    other => {
                        let mut g = other.map(|s| s.clone()).unwrap_or(Stripe {
                            id: stripe,
                            len: 0,
                            shard_len: 0,
                            class: tessera_types::StorageClass::rs(1, 0, 1),
                            shards: vec![],
                        });
                        g.shards = shards
                            .into_iter()
                            .filter(|e| !expected.contains(e))
                            .collect();
                        (MetaReply::Err(MetaError::PreconditionFailed), g)
                    }
                };
                drop(objects);
                if !garbage.shards.is_empty() {
                    self.push_gc(vec![garbage]);
                }
                reply
            }
            MetaCommand::ReportShards { problems, .. } => {
                // Queue each reported stripe, with the shard as bad, as meta
                // does.
                let owners: Vec<(String, String, StripeId)> = {
                    let objects = self.objects.lock().unwrap();
                    problems
                        .iter()
                        .filter_map(|p| {
                            objects
                                .values()
                                .find(|m| m.stripes().any(|s| s.id == p.stripe))
                                .map(|m| (m.bucket.clone(), m.key.clone(), p.stripe))
                        })
                        .collect()
                };
                for (bucket, key, stripe) in owners {
                    if !self
                        .repairs
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|i| i.stripe == stripe)
                    {
                        self.queue_repair(&bucket, &key, stripe);
                    }
                }
                {
                    let mut q = self.repairs.lock().unwrap();
                    for p in &problems {
                        for item in q.iter_mut().filter(|i| i.stripe == p.stripe) {
                            if !item.bad.contains(&(p.index, p.node.clone())) {
                                item.bad.push((p.index, p.node.clone()));
                            }
                        }
                    }
                }
                self.reports.lock().unwrap().extend(problems);
                MetaReply::Ok
            }
            MetaCommand::SetRepairConfig(c) => {
                *self.repair_config.lock().unwrap() = Some(c);
                MetaReply::Ok
            }
            MetaCommand::LeaseGc { max, .. } => {
                let gc = self.gc.lock().unwrap();
                MetaReply::Gc(gc.iter().take(max as usize).cloned().collect())
            }
            MetaCommand::AckGc { keys } => {
                self.gc.lock().unwrap().retain(|l| !keys.contains(&l.key));
                MetaReply::Ok
            }
            _ => MetaReply::Ok,
        }
    }

    pub fn apply(&self, cmd: MetaCommand) -> MetaReply {
        if matches!(
            cmd,
            MetaCommand::LeaseRepairs { .. }
                | MetaCommand::ReleaseRepair { .. }
                | MetaCommand::CommitRepair { .. }
                | MetaCommand::ReportShards { .. }
                | MetaCommand::SetRepairConfig(_)
                | MetaCommand::LeaseGc { .. }
                | MetaCommand::AckGc { .. }
        ) {
            return self.apply_repair(cmd);
        }
        let mut buckets = self.buckets.lock().unwrap();
        let mut objects = self.objects.lock().unwrap();
        if let MetaCommand::PutObjectChecked {
            manifest,
            access_key,
            ..
        } = &cmd
        {
            // Only owners may write (the fake keeps no grants).
            if buckets
                .get(&manifest.bucket)
                .is_some_and(|b| &b.owner != access_key)
            {
                return MetaReply::Err(MetaError::AccessDenied);
            }
        }
        match cmd {
            MetaCommand::CreateBucket(b) => {
                if let Some(old) = buckets.get(&b.name) {
                    return MetaReply::Err(MetaError::BucketAlreadyExists {
                        owner: old.owner.clone(),
                    });
                }
                buckets.insert(b.name.clone(), b);
                MetaReply::Ok
            }
            MetaCommand::DeleteBucket { name } => {
                if !buckets.contains_key(&name) {
                    return MetaReply::Err(MetaError::NoSuchBucket);
                }
                if objects.keys().any(|(b, _)| *b == name) {
                    return MetaReply::Err(MetaError::BucketNotEmpty);
                }
                buckets.remove(&name);
                MetaReply::Ok
            }
            MetaCommand::PutObject {
                manifest,
                condition,
            }
            | MetaCommand::PutObjectChecked {
                manifest,
                condition,
                ..
            } => {
                if !buckets.contains_key(&manifest.bucket) {
                    return MetaReply::Err(MetaError::NoSuchBucket);
                }
                let k = (manifest.bucket.clone(), manifest.key.clone());
                let cur = objects.get(&k);
                let ok = match &condition {
                    WriteCondition::None => true,
                    WriteCondition::IfNoneMatch => cur.is_none(),
                    WriteCondition::IfMatch(e) => cur.is_some_and(|m| &m.etag == e),
                };
                if !ok {
                    return MetaReply::Err(MetaError::PreconditionFailed);
                }
                MetaReply::Replaced(objects.insert(k, manifest).map(Box::new))
            }
            MetaCommand::DeleteObject { bucket, key } => {
                if !buckets.contains_key(&bucket) {
                    return MetaReply::Err(MetaError::NoSuchBucket);
                }
                MetaReply::Replaced(objects.remove(&(bucket, key)).map(Box::new))
            }
            MetaCommand::PutAccessKey(k) => {
                self.keys.lock().unwrap().insert(k.id.clone(), k);
                MetaReply::Ok
            }
            MetaCommand::CreateUpload { upload } => {
                if !buckets.contains_key(&upload.bucket) {
                    return MetaReply::Err(MetaError::NoSuchBucket);
                }
                let id = upload.upload_id.clone();
                self.uploads
                    .lock()
                    .unwrap()
                    .insert(id, (upload, BTreeMap::new()));
                MetaReply::Ok
            }
            MetaCommand::CompleteUpload {
                upload_id,
                manifest,
                ..
            } => {
                // The parts are taken as the manifest names them (no checks).
                if self.uploads.lock().unwrap().remove(&upload_id).is_none() {
                    return MetaReply::Err(MetaError::NoSuchUpload);
                }
                let k = (manifest.bucket.clone(), manifest.key.clone());
                objects.insert(k, manifest);
                MetaReply::Released(Vec::new())
            }
            MetaCommand::PutPart {
                upload_id, part, ..
            } => {
                let mut uploads = self.uploads.lock().unwrap();
                let Some((_, parts)) = uploads.get_mut(&upload_id) else {
                    return MetaReply::Err(MetaError::NoSuchUpload);
                };
                let new: Vec<StripeId> = part.part.stripes.iter().map(|s| s.id).collect();
                let old = parts.insert(part.part.number, part);
                MetaReply::Released(
                    old.map(|o| o.part.stripes)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|s| !new.contains(&s.id))
                        .collect(),
                )
            }
            _ => MetaReply::Ok,
        }
    }

    pub fn query(&self, q: MetaQuery) -> QueryReply {
        let q = match q {
            MetaQuery::Many(qs) => {
                return QueryReply::Many(qs.into_iter().map(|q| self.query(q)).collect())
            }
            q => q,
        };
        let buckets = self.buckets.lock().unwrap();
        let objects = self.objects.lock().unwrap();
        match q {
            MetaQuery::GetBucket { name } => QueryReply::Bucket(buckets.get(&name).cloned()),
            MetaQuery::ListBuckets => QueryReply::Buckets(buckets.values().cloned().collect()),
            MetaQuery::GetObject { bucket, key } => {
                if !buckets.contains_key(&bucket) {
                    return QueryReply::Err(MetaError::NoSuchBucket);
                }
                QueryReply::Object(objects.get(&(bucket, key)).cloned().map(Box::new))
            }
            MetaQuery::ListObjects(q) => {
                if !buckets.contains_key(&q.bucket) {
                    return QueryReply::Err(MetaError::NoSuchBucket);
                }
                QueryReply::Listing(list(&objects, &q))
            }
            MetaQuery::GetAccessKey { id } => {
                QueryReply::AccessKey(self.keys.lock().unwrap().get(&id).cloned())
            }
            MetaQuery::ClusterMap => QueryReply::ClusterMap(self.map.lock().unwrap().clone()),
            MetaQuery::RepairConfig => {
                QueryReply::RepairConfig(self.repair_config.lock().unwrap().unwrap_or_default())
            }
            MetaQuery::BucketAccess { bucket, access_key } => {
                QueryReply::BucketAccess(buckets.get(&bucket).map(|b| {
                    let all = b.owner == access_key;
                    let grant = tessera_types::meta::Grant {
                        read: all,
                        write: all,
                    };
                    (b.clone(), grant)
                }))
            }
            MetaQuery::GetUpload { upload_id, .. } => QueryReply::Upload(
                self.uploads
                    .lock()
                    .unwrap()
                    .get(&upload_id)
                    .map(|(u, _)| u.clone()),
            ),
            MetaQuery::ListParts {
                upload_id,
                marker,
                max_parts,
                ..
            } => {
                let uploads = self.uploads.lock().unwrap();
                let Some((_, parts)) = uploads.get(&upload_id) else {
                    return QueryReply::Err(MetaError::NoSuchUpload);
                };
                let max = if max_parts == 0 {
                    usize::MAX
                } else {
                    max_parts as usize
                };
                let after: Vec<&PartRecord> = parts
                    .range(marker.saturating_add(1)..)
                    .map(|(_, r)| r)
                    .collect();
                let page: Vec<PartRecord> = after.iter().take(max).map(|r| (*r).clone()).collect();
                let is_truncated = after.len() > page.len();
                QueryReply::Parts(PartsPage {
                    next_marker: is_truncated
                        .then(|| page.last().map(|r| r.part.number))
                        .flatten(),
                    parts: page,
                    is_truncated,
                })
            }
            _ => QueryReply::Err(MetaError::Invalid("unsupported by the fake".into())),
        }
    }
}

fn list(
    objects: &BTreeMap<(String, String), ObjectManifest>,
    q: &ListObjectsQuery,
) -> ListObjectsPage {
    let mut page = ListObjectsPage::default();
    let mut seen = HashSet::new();
    let mut count = 0u32;
    for ((_, key), m) in objects.range((q.bucket.clone(), String::new())..) {
        if m.bucket != q.bucket {
            break;
        }
        if key.as_str() <= q.start_after.as_str() || !key.starts_with(&q.prefix) {
            continue;
        }
        let rest = &key[q.prefix.len()..];
        let entry = match (!q.delimiter.is_empty())
            .then(|| rest.find(&q.delimiter))
            .flatten()
        {
            Some(i) => {
                let cp = format!("{}{}", q.prefix, &rest[..i + q.delimiter.len()]);
                if cp.as_str() <= q.start_after.as_str() || seen.contains(&cp) {
                    continue;
                }
                Err(cp)
            }
            None => Ok(key.clone()),
        };
        if count == q.max_keys {
            page.is_truncated = true;
            break;
        }
        count += 1;
        match entry {
            Ok(k) => {
                page.next_marker = Some(k.clone());
                page.objects.push(ObjectSummary {
                    key: k,
                    size: m.size,
                    etag: m.etag.clone(),
                    last_modified: m.created,
                });
            }
            Err(cp) => {
                seen.insert(cp.clone());
                page.next_marker = Some(cp.clone());
                page.common_prefixes.push(cp);
            }
        }
    }
    if !page.is_truncated {
        page.next_marker = None;
    }
    page
}

pub struct MetaSvc(pub Arc<FakeMeta>);

#[tonic::async_trait]
impl Meta for MetaSvc {
    async fn write(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        if self.0.dead.load(Ordering::SeqCst) {
            return Err(Status::unavailable("meta down"));
        }
        let cmd: MetaCommand = codec::decode(&request.into_inner().payload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.0.full.load(Ordering::SeqCst)
            && matches!(
                cmd,
                MetaCommand::PutObject { .. }
                    | MetaCommand::PutObjectChecked { .. }
                    | MetaCommand::CreateUpload { .. }
                    | MetaCommand::PutPart { .. }
            )
        {
            if self.0.full_after_commit.load(Ordering::SeqCst) {
                self.0.apply(cmd);
            }
            if self.0.reads_fail_after_refusal.load(Ordering::SeqCst) {
                self.0.reads_fail.store(true, Ordering::SeqCst);
            }
            return Err(Status::resource_exhausted(
                "meta disk nearly full: 1.0 MiB free, below the 20.0 MiB kept in reserve",
            ));
        }
        let reply = if self.0.lose_first_answer.load(Ordering::SeqCst) {
            self.0.apply(cmd.clone());
            let reply = self.0.apply(cmd);
            if matches!(reply, MetaReply::Err(_))
                && self.0.reads_fail_after_refusal.load(Ordering::SeqCst)
            {
                self.0.reads_fail.store(true, Ordering::SeqCst);
            }
            reply
        } else {
            self.0.apply(cmd)
        };
        Ok(Response::new(Envelope {
            payload: codec::encode(&reply).into(),
        }))
    }

    async fn read(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        if self.0.dead.load(Ordering::SeqCst) {
            return Err(Status::unavailable("meta down"));
        }
        if self.0.reads_fail.load(Ordering::SeqCst) {
            return Err(Status::internal("meta read failed"));
        }
        let q: MetaQuery = codec::decode(&request.into_inner().payload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reply = self.0.query(q);
        Ok(Response::new(Envelope {
            payload: codec::encode(&reply).into(),
        }))
    }

    async fn heartbeat(
        &self,
        _request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse {}))
    }

    async fn raft_status(
        &self,
        _request: Request<RaftStatusRequest>,
    ) -> Result<Response<RaftStatusResponse>, Status> {
        Ok(Response::new(RaftStatusResponse::default()))
    }
}

/// Runs a fake meta node; returns it and its address.
pub async fn meta_node(shutdown: &CancellationToken) -> (Arc<FakeMeta>, SocketAddr) {
    let fake = Arc::new(FakeMeta::default());
    let addr = serve_grpc(
        tonic::transport::Server::builder().add_service(MetaServer::new(MetaSvc(fake.clone()))),
        shutdown,
    )
    .await;
    (fake, addr)
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect()
}
