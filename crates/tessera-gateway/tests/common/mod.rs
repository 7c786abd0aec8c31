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
    QueryReply, WriteCondition,
};
use tessera_types::{
    AccessKey, Bucket, ClusterMap, NodeId, NodeInfo, NodeState, ObjectManifest, StripeId,
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

/// A meta node with an in-memory state machine (no Raft).
#[derive(Default)]
pub struct FakeMeta {
    pub buckets: Mutex<BTreeMap<String, Bucket>>,
    pub objects: Mutex<BTreeMap<(String, String), ObjectManifest>>,
    pub keys: Mutex<HashMap<String, AccessKey>>,
    pub map: Mutex<ClusterMap>,
    /// Every call fails as if meta were unreachable.
    pub dead: AtomicBool,
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

    pub fn apply(&self, cmd: MetaCommand) -> MetaReply {
        let mut buckets = self.buckets.lock().unwrap();
        let mut objects = self.objects.lock().unwrap();
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
            _ => MetaReply::Ok,
        }
    }

    pub fn query(&self, q: MetaQuery) -> QueryReply {
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
        let reply = self.0.apply(cmd);
        Ok(Response::new(Envelope {
            payload: codec::encode(&reply).into(),
        }))
    }

    async fn read(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        if self.0.dead.load(Ordering::SeqCst) {
            return Err(Status::unavailable("meta down"));
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
