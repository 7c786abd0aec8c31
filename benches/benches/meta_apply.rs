//! The metadata state machine's cost per object PUT, as every meta node
//! pays it when it applies a committed entry (sled trees on a temporary
//! directory; no Raft, no network):
//!
//! - `inline_4KiB`: a 4 KiB object kept inline in its manifest (the
//!   gateway's path below `inline-threshold`);
//! - `striped_1MiB`: a 1 MiB object in one RS(4,2) stripe, its 6 shards on
//!   6 of 8 nodes (the object tree, plus the stripe index: owner and one
//!   node-index key per shard);
//! - each as one command per entry and as batch entries of 8 commands (the
//!   leader groups concurrent writes into `MetaCommand::Batch`);
//! - `striped_1MiB_256_nodes`: one command per entry in a map of 256
//!   storage nodes (what a PUT costs on a large cluster).
//!
//! Keys are new on every iteration (no overwrites, no GC items), as in
//! `tessera bench --workload put`.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use tessera_benches::{criterion_config, data_seeded};
use tessera_meta::store::{open_db, StateMachineStore};
use tessera_meta::TypeConfig;
use tessera_types::meta::{MetaCommand, WriteCondition};
use tessera_types::{
    Bucket, NodeId, NodeInfo, NodeState, ObjectData, ObjectManifest, Part, ShardEntry,
    StorageClass, Stripe, StripeId,
};

/// Storage nodes in the map (the large-cluster case has more).
const NODES: usize = 8;
const MANY_NODES: usize = 256;

/// A state machine with a bucket and `NODES` storage nodes, and the index
/// of its last entry.
struct Sm {
    _dir: tempfile::TempDir,
    sm: StateMachineStore,
    index: u64,
    rt: tokio::runtime::Runtime,
}

impl Sm {
    fn new(nodes: usize) -> Sm {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled");
        let sm = open_db(db, dir.path()).expect("open").1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut s = Sm {
            _dir: dir,
            sm,
            index: 0,
            rt,
        };
        s.apply(vec![MetaCommand::CreateBucket(Bucket {
            name: "b".into(),
            owner: "alice".into(),
            created: 1_000,
        })]);
        s.apply(
            (0..nodes)
                .map(|i| MetaCommand::UpsertNode(node(i)))
                .collect(),
        );
        s
    }

    /// Applies each command as an entry of its own.
    fn apply(&mut self, cmds: Vec<MetaCommand>) {
        let entries: Vec<Entry<TypeConfig>> = cmds
            .into_iter()
            .map(|c| {
                self.index += 1;
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                    payload: EntryPayload::Normal(c),
                }
            })
            .collect();
        self.rt.block_on(self.sm.apply(entries)).expect("apply");
    }
}

fn node(i: usize) -> NodeInfo {
    NodeInfo {
        id: NodeId::from(format!("storage-{i}").as_str()),
        addr: format!("127.0.0.1:{}", 9000 + i),
        zone: format!("z{}", i % 4),
        weight: 1.0,
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        shard_count: 0,
        state: NodeState::Up,
        last_heartbeat: 5_000,
    }
}

fn manifest(n: u64, data: ObjectData, size: u64) -> ObjectManifest {
    let mut checksums = BTreeMap::new();
    checksums.insert("CRC64NVME".to_string(), "AAAAAAAAAAA=".to_string());
    ObjectManifest {
        layout: 1,
        bucket: "b".into(),
        key: format!("tessera-bench/0123456789abcdef/put/w000-{n:08}"),
        version_id: format!("{n:032x}"),
        size,
        etag: format!("{n:032x}"),
        content_type: Some("application/octet-stream".into()),
        headers: BTreeMap::new(),
        user_metadata: BTreeMap::new(),
        checksums,
        created: 2_000 + n as i64,
        data,
    }
}

fn inline_put(n: u64) -> MetaCommand {
    put(manifest(n, ObjectData::Inline(data_seeded(4096, n)), 4096))
}

fn striped_put(n: u64) -> MetaCommand {
    let mut id = [0u8; 16];
    id.copy_from_slice(&data_seeded(16, n));
    let first = (n as usize) % NODES;
    let shards = (0..6u8)
        .map(|index| {
            let mut blake3 = [0u8; 32];
            blake3.copy_from_slice(&data_seeded(32, n << 3 | u64::from(index)));
            ShardEntry {
                index,
                node: node((first + index as usize) % NODES).id,
                blake3,
            }
        })
        .collect();
    let stripe = Stripe {
        id: StripeId(id),
        len: 1 << 20,
        shard_len: 256 << 10,
        class: StorageClass::rs(4, 2, 1 << 20),
        shards,
    };
    let data = ObjectData::Parts(vec![Part {
        number: 1,
        size: 1 << 20,
        etag: format!("{n:032x}"),
        checksums: BTreeMap::new(),
        stripes: vec![stripe],
    }]);
    put(manifest(n, data, 1 << 20))
}

fn put(manifest: ObjectManifest) -> MetaCommand {
    MetaCommand::PutObjectChecked {
        manifest,
        condition: WriteCondition::None,
        access_key: "alice".into(),
    }
}

fn meta_apply(c: &mut Criterion) {
    type Make = fn(u64) -> MetaCommand;
    let cases: [(&str, Make, usize, usize); 5] = [
        ("inline_4KiB/x1", inline_put, 1, NODES),
        ("inline_4KiB/x8", inline_put, 8, NODES),
        ("striped_1MiB/x1", striped_put, 1, NODES),
        ("striped_1MiB/x8", striped_put, 8, NODES),
        ("striped_1MiB_256_nodes/x1", striped_put, 1, MANY_NODES),
    ];
    let mut g = c.benchmark_group("meta_apply_put");
    for (name, make, per_entry, nodes) in cases {
        let mut sm = Sm::new(nodes);
        let mut n = 0u64;
        g.throughput(Throughput::Elements(per_entry as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let cmds: Vec<MetaCommand> = (0..per_entry)
                        .map(|_| {
                            n += 1;
                            make(n)
                        })
                        .collect();
                    match per_entry {
                        1 => cmds,
                        _ => vec![MetaCommand::Batch(cmds)],
                    }
                },
                |cmds| sm.apply(cmds),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = meta_apply
}
criterion_main!(benches);
