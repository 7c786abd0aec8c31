//! The command line: one subcommand per role, plus `dev`, `admin` and
//! `bench`.
//!
//! Role flags override the values of the `--config` TOML file; every role
//! flag can also be set through the `TESSERA_*` variable named in its help.
//! Precedence, lowest first: built-in default, config file, environment,
//! flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tessera_proto::ClusterSecret;

/// Tessera: an erasure-coded, S3-compatible object store.
///
/// One binary, one subcommand per role. Try `tessera dev` for a whole
/// cluster on this machine.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    /// Threads of the async runtime (default: one per core). Lower it when
    /// several Tessera processes share a machine's cores: idle workers
    /// woken for every task cost more than they bring. `tessera dev` gives
    /// each of its nodes a share of the cores (at least 1) unless set.
    #[arg(
        long,
        global = true,
        env = "TESSERA_WORKER_THREADS",
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub worker_threads: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging flags, accepted by every subcommand. Logs go to stderr.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log filter, e.g. `info`, `debug` or `tessera_meta=debug,info`.
    /// Overrides RUST_LOG. Default: `info` (`warn` for `admin`).
    #[arg(long, global = true, env = "TESSERA_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "TESSERA_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a metadata node: one member of the Raft group that holds the
    /// namespace and the cluster map.
    Meta(MetaArgs),
    /// Run a storage node: shard files on one or more local disks.
    Storage(StorageArgs),
    /// Run an S3 gateway (stateless; also runs repair and GC workers).
    Gateway(GatewayArgs),
    /// Run a whole cluster on this machine (3 meta, N storage, 1 gateway)
    /// as child processes, with all data under one directory.
    Dev(DevArgs),
    /// Operate a running cluster: status, access keys.
    Admin(AdminArgs),
    /// Probe a node's admin HTTP port (`/health/ready` by default): exit 0
    /// on 200 OK, 1 otherwise. For container health checks.
    Health(HealthArgs),
    /// Load-test any S3 endpoint (put, get, stat, list, delete, mixed) and
    /// report throughput, latency percentiles and server CPU per operation.
    Bench(crate::bench::BenchArgs),
}

/// `tessera health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The node's admin HTTP address. [default: this container's
    /// TESSERA_ADMIN_LISTEN, a wildcard host asked on loopback]
    #[arg(long, env = "TESSERA_HEALTH_ADDR", value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// The path to ask for: `/health/ready` (serving) or `/health/live`
    /// (the process answers).
    #[arg(long, default_value = "/health/ready")]
    pub path: String,
    /// Give up after this long.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// `tessera meta`.
#[derive(Debug, Clone, Default, Args)]
pub struct MetaArgs {
    /// TOML config file: `listen` plus any key of the meta configuration
    /// (kebab-case, e.g. `id`, `data-dir`, `down-after-ms`, and a `[peers]`
    /// table of id = "host:port"). See --print-config.
    #[arg(long, short = 'c', env = "TESSERA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file, environment and
    /// flags merged) as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Address of the admin HTTP port serving `/metrics` (Prometheus),
    /// `/health/live` and `/health/ready`. [default: none]
    #[arg(long, env = "TESSERA_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub admin_listen: Option<String>,
    /// Address to listen on for Raft and meta RPCs. [default: 127.0.0.1:7001]
    #[arg(long, env = "TESSERA_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// This node's Raft id (1, 2, 3, ...); must appear in --peers. [default: 1]
    #[arg(long, env = "TESSERA_META_ID")]
    pub id: Option<u64>,
    /// Address peers and clients use to reach this node. [default: this
    /// node's entry in --peers]
    #[arg(long, env = "TESSERA_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Directory of the node's database (Raft log, vote, state machine).
    /// [default: data/meta]
    #[arg(long, env = "TESSERA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members as `id=host:port`, comma-separated or repeated.
    /// [default: this node alone]
    #[arg(long, env = "TESSERA_PEERS", value_name = "ID=HOST:PORT",
          value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<(u64, String)>,
    /// Initialize the Raft group from --peers if it never was (safe on
    /// every node and on every start). [default: true]
    #[arg(long, env = "TESSERA_BOOTSTRAP", value_name = "BOOL")]
    pub bootstrap: Option<bool>,
    /// Mark a storage node suspect after this long without heartbeats.
    /// [default: 5000]
    #[arg(long, env = "TESSERA_SUSPECT_AFTER_MS", value_name = "MS")]
    pub suspect_after_ms: Option<u64>,
    /// Mark a storage node down (its shards get rebuilt) after this long
    /// without heartbeats. [default: 30000]
    #[arg(long, env = "TESSERA_DOWN_AFTER_MS", value_name = "MS")]
    pub down_after_ms: Option<u64>,
    /// Snapshot the state machine and compact the log every this many
    /// entries. [default: 5000]
    #[arg(long, env = "TESSERA_SNAPSHOT_EVERY", value_name = "ENTRIES")]
    pub snapshot_every: Option<u64>,
    /// Raft leader heartbeat interval. [default: 250]
    #[arg(long, env = "TESSERA_RAFT_HEARTBEAT_MS", value_name = "MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Raft election timeout (more than twice the heartbeat). [default: 800]
    #[arg(long, env = "TESSERA_ELECTION_TIMEOUT_MS", value_name = "MS")]
    pub election_timeout_ms: Option<u64>,
    /// Free space kept on the data directory's file system: below it,
    /// writes that add data are refused with a 503 (deletes still work
    /// until a quarter of it is left); 0 = 5% of the file system, at most
    /// 1 GiB. [default: 0]
    #[arg(long, env = "TESSERA_META_MIN_FREE_BYTES", value_name = "BYTES")]
    pub min_free_bytes: Option<u64>,
}

/// `tessera storage`.
#[derive(Debug, Clone, Default, Args)]
pub struct StorageArgs {
    /// TOML config file: `listen` plus any key of the storage configuration
    /// (kebab-case, e.g. `data-dirs`, `zone`, `meta`, `heartbeat-ms`). See
    /// --print-config.
    #[arg(long, short = 'c', env = "TESSERA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file, environment and
    /// flags merged) as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Address of the admin HTTP port serving `/metrics` (Prometheus),
    /// `/health/live` and `/health/ready`. [default: none]
    #[arg(long, env = "TESSERA_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub admin_listen: Option<String>,
    /// Address to listen on for shard RPCs. [default: 127.0.0.1:7101]
    #[arg(long, env = "TESSERA_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Address gateways use to reach this node; required when --listen is
    /// a wildcard address. [default: the bound listen address]
    #[arg(long, env = "TESSERA_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// A data directory (one per disk); repeat the flag or separate with
    /// commas. The node id is kept in the first. [default: data/storage]
    #[arg(
        long = "data-dir",
        env = "TESSERA_DATA_DIR",
        value_name = "DIR",
        value_delimiter = ','
    )]
    pub data_dirs: Vec<PathBuf>,
    /// Failure domain (rack, room, availability zone). [default: default]
    #[arg(long, env = "TESSERA_ZONE")]
    pub zone: Option<String>,
    /// Relative placement weight (1.0 = one ordinary disk). [default: 1.0]
    #[arg(long, env = "TESSERA_WEIGHT")]
    pub weight: Option<f64>,
    /// Meta node addresses, comma-separated or repeated.
    #[arg(
        long,
        env = "TESSERA_META",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub meta: Vec<String>,
    /// Heartbeat period to meta. [default: 1000]
    #[arg(long, env = "TESSERA_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Largest shard the node accepts. [default: 67108864]
    #[arg(long, env = "TESSERA_MAX_SHARD_BYTES", value_name = "BYTES")]
    pub max_shard_bytes: Option<u64>,
    /// Scrubber read rate in bytes per second. [default: 67108864]
    #[arg(long, env = "TESSERA_SCRUB_RATE", value_name = "BYTES_PER_SEC")]
    pub scrub_rate: Option<u64>,
    /// One full scrub pass per this period; 0 = scrubber off.
    /// [default: 86400000 (a day)]
    #[arg(long, env = "TESSERA_SCRUB_PERIOD_MS", value_name = "MS")]
    pub scrub_period_ms: Option<u64>,
    /// How often orphan shards (no manifest places them here) are looked
    /// for and deleted; 0 = off. [default: 3600000]
    #[arg(long, env = "TESSERA_ORPHAN_SCAN_INTERVAL_MS", value_name = "MS")]
    pub orphan_scan_interval_ms: Option<u64>,
    /// Only shard files older than this can be orphans; must exceed the
    /// longest upload. [default: 3600000]
    #[arg(long, env = "TESSERA_ORPHAN_SAFETY_AGE_MS", value_name = "MS")]
    pub orphan_safety_age_ms: Option<u64>,
    /// How often the node checks it has a file for every shard meta places
    /// on it (missing ones are reported for repair); 0 = off.
    /// [default: 600000]
    #[arg(long, env = "TESSERA_INVENTORY_INTERVAL_MS", value_name = "MS")]
    pub inventory_interval_ms: Option<u64>,
    /// Refuse writes (as a full disk) once shard files hold this many
    /// bytes. [default: the file system's capacity]
    #[arg(long, env = "TESSERA_CAPACITY_BYTES", value_name = "BYTES")]
    pub capacity_bytes: Option<u64>,
    /// Write shard files with O_DIRECT, bypassing the page cache; a file
    /// system that refuses it gets buffered writes anyway. Turn off where
    /// O_DIRECT is accepted but broken or slow. [default: true]
    #[arg(long, env = "TESSERA_DIRECT_IO", value_name = "BOOL")]
    pub direct_io: Option<bool>,
}

/// `tessera gateway`.
#[derive(Debug, Clone, Default, Args)]
pub struct GatewayArgs {
    /// TOML config file: `listen` plus any key of the gateway configuration
    /// (kebab-case, e.g. `meta`, `region`, `k`, `m`, `shard-size`, `domain`,
    /// `gc-grace-ms`). See --print-config.
    #[arg(long, short = 'c', env = "TESSERA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file, environment and
    /// flags merged) as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Address of the admin HTTP port serving `/metrics` (Prometheus),
    /// `/health/live` and `/health/ready`. [default: none]
    #[arg(long, env = "TESSERA_ADMIN_LISTEN", value_name = "HOST:PORT")]
    pub admin_listen: Option<String>,
    /// Address to serve S3 (HTTP) on. [default: 127.0.0.1:9000]
    #[arg(long, env = "TESSERA_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Meta node addresses, comma-separated or repeated.
    #[arg(
        long,
        env = "TESSERA_META",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub meta: Vec<String>,
    /// S3 region clients sign for. [default: us-east-1]
    #[arg(long, env = "TESSERA_REGION")]
    pub region: Option<String>,
    /// Data shards per stripe of new objects. [default: 4]
    #[arg(long, env = "TESSERA_K")]
    pub k: Option<u8>,
    /// Parity shards per stripe of new objects (node losses survived).
    /// [default: 2]
    #[arg(long, env = "TESSERA_M")]
    pub m: Option<u8>,
    /// Bytes per shard of a full stripe. [default: 1048576]
    #[arg(long, env = "TESSERA_SHARD_SIZE", value_name = "BYTES")]
    pub shard_size: Option<u32>,
    /// Objects up to this size are stored inline in their manifest.
    /// [default: 65536]
    #[arg(long, env = "TESSERA_INLINE_THRESHOLD", value_name = "BYTES")]
    pub inline_threshold: Option<u64>,
    /// Stripes encoded or sent at once per request (bounds memory).
    /// [default: 4]
    #[arg(long, env = "TESSERA_STRIPES_IN_FLIGHT", value_name = "N")]
    pub stripes_in_flight: Option<usize>,
    /// Shards that must be durable for a write to succeed, between k and
    /// k+m. [default: k+1]
    #[arg(long, env = "TESSERA_WRITE_QUORUM", value_name = "N")]
    pub write_quorum: Option<u8>,
    /// Stripe buffers shared by all requests (bounds data memory).
    /// [default: 64]
    #[arg(long, env = "TESSERA_MAX_BUFFERED_STRIPES", value_name = "N")]
    pub max_buffered_stripes: Option<usize>,
    /// Largest object one PutObject may upload. [default: 5 GiB]
    #[arg(long, env = "TESSERA_MAX_OBJECT_SIZE", value_name = "BYTES")]
    pub max_object_size: Option<u64>,
    /// Most concurrent client connections. [default: 4096]
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Base domain for virtual-hosted-style requests: `Host:
    /// bucket.DOMAIN` addresses `bucket` (path-style keeps working).
    /// Repeat or separate with commas for several. [default: path-style
    /// only]
    #[arg(
        long = "s3-domain",
        env = "TESSERA_S3_DOMAIN",
        value_name = "DOMAIN",
        value_delimiter = ','
    )]
    pub s3_domain: Vec<String>,
    /// PEM certificate chain: with --tls-key, S3 is served over HTTPS
    /// (only) on --listen. [default: plain HTTP]
    #[arg(long, env = "TESSERA_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TESSERA_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// `tessera dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Directory holding every node's data, the logs (`logs/`), the root
    /// credentials and `cluster.json`. Reusing it brings the data back.
    #[arg(
        long,
        env = "TESSERA_DEV_DATA_DIR",
        value_name = "DIR",
        default_value = "./tessera-data"
    )]
    pub data_dir: PathBuf,
    /// First port: the gateway serves S3 on it, meta node i (1-3) listens
    /// on BASE+10+i and storage node i (1-N) on BASE+20+i.
    #[arg(
        long,
        env = "TESSERA_DEV_PORT_BASE",
        value_name = "PORT",
        default_value_t = 9000
    )]
    pub port_base: u16,
    /// Number of storage nodes (at least k+m).
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub storage_nodes: usize,
    /// Number of zones; storage nodes are assigned z1..zZ round-robin.
    #[arg(long, value_name = "Z", default_value_t = 3)]
    pub zones: usize,
    /// Data shards per stripe.
    #[arg(long, default_value_t = 4)]
    pub k: u8,
    /// Parity shards per stripe.
    #[arg(long, default_value_t = 2)]
    pub m: u8,
    /// S3 region of the gateway.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Give up starting if the cluster is not ready after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub ready_timeout: u64,
    /// Passed to the meta nodes: mark a silent storage node suspect after
    /// this long. [default: the meta default]
    #[arg(long, value_name = "MS")]
    pub suspect_after_ms: Option<u64>,
    /// Passed to the meta nodes: mark a silent storage node down after this
    /// long. [default: the meta default]
    #[arg(long, value_name = "MS")]
    pub down_after_ms: Option<u64>,
    /// Serve S3 over HTTPS with a self-signed certificate for localhost and
    /// 127.0.0.1, created once in DIR/tls/ (trust DIR/tls/ca.pem).
    #[arg(long)]
    pub tls: bool,
}

/// `tessera admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub target: MetaTarget,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Where a node finds the cluster secret that signs and checks every
/// internode call. First match wins: --cluster-secret-file,
/// $TESSERA_CLUSTER_SECRET, `cluster-secret` in the config file. There is
/// no default: meta, storage and gateway refuse to start without one. The
/// secret itself is never a flag (it would show in `ps`).
#[derive(Debug, Clone, Default, Args)]
pub struct SecretArgs {
    /// File holding the cluster secret (the same on every node, at least
    /// 16 bytes, e.g. from `openssl rand -hex 32`). The secret itself can
    /// come from $TESSERA_CLUSTER_SECRET instead.
    #[arg(
        long,
        global = true,
        env = "TESSERA_CLUSTER_SECRET_FILE",
        value_name = "FILE"
    )]
    pub cluster_secret_file: Option<PathBuf>,
    /// A secret set by the caller (tests, `tessera dev` in-process).
    #[arg(skip)]
    pub cluster_secret: Option<ClusterSecret>,
}

/// Where the admin CLI finds the meta group. First match wins: --meta,
/// --cluster, $TESSERA_META, $TESSERA_CLUSTER, ./tessera-data/cluster.json.
#[derive(Debug, Clone, Default, Args)]
pub struct MetaTarget {
    /// Meta node addresses, comma-separated or repeated (env: TESSERA_META).
    #[arg(long, global = true, value_name = "HOST:PORT", value_delimiter = ',')]
    pub meta: Vec<String>,
    /// A dev cluster's cluster.json to take the meta addresses from
    /// (env: TESSERA_CLUSTER).
    #[arg(long, global = true, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// The cluster secret; for a dev cluster it is read from the
    /// `cluster-secret` file beside its cluster.json.
    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Meta members and their Raft view, the leader, and storage nodes.
    /// Exits 1 when no leader or cluster map could be reached.
    Status {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Manage S3 access keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Repair settings (cluster-wide, applied at run time) and progress.
    Repair(RepairArgs),
    /// Storage node lifecycle: drain, check, remove.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Buckets: owners and access grants.
    #[command(subcommand)]
    Bucket(BucketCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum BucketCommand {
    /// List buckets with their owners and grants.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Let an access key other than the owner read and/or write a bucket
    /// (replaces its earlier grant).
    Allow {
        /// The bucket.
        bucket: String,
        /// The access key id.
        key: String,
        /// GET/HEAD objects, list objects and uploads.
        #[arg(long)]
        read: bool,
        /// PUT/DELETE/copy objects, multipart uploads.
        #[arg(long)]
        write: bool,
    },
    /// Take back every grant of an access key on a bucket.
    Deny {
        /// The bucket.
        bucket: String,
        /// The access key id.
        key: String,
    },
}

/// `tessera admin repair`: with no flags, prints the settings and queue.
#[derive(Debug, Clone, Args)]
pub struct RepairArgs {
    /// Rebuilt bytes per second per gateway, e.g. 200MiB/s, 1GB/s, 0 =
    /// unlimited.
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Stripes repaired at once per gateway.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Stop repairing (the queue keeps filling).
    #[arg(long, conflicts_with = "resume")]
    pub pause: bool,
    /// Start repairing again after --pause.
    #[arg(long)]
    pub resume: bool,
    /// Show a progress bar until the cluster is back to full redundancy.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 1). [default: none]
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Decommission a node: it gets no new shards and its shards move to
    /// other nodes; `admin repair --wait` follows the move.
    Drain {
        /// The storage node id (see `admin status`).
        id: String,
    },
    /// Stop draining: the node takes new shards again.
    Undrain {
        /// The storage node id.
        id: String,
    },
    /// Verify every shard a node should hold and rebuild missing ones
    /// (after replacing a failed disk).
    Check {
        /// The storage node id.
        id: String,
    },
    /// Remove a node from the cluster map: a drained node (no shards left)
    /// or a node that is down (its shards are rebuilt elsewhere). Stop the
    /// node first: a running node registers again with its next heartbeat.
    Remove {
        /// The storage node id.
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Create an access key and print it as JSON (the only time the secret
    /// is shown).
    Create {
        /// A name for the key's owner.
        name: String,
        /// Use this access key id instead of a generated one.
        #[arg(long, value_name = "ID")]
        access_key: Option<String>,
        /// Use this secret instead of a generated one.
        #[arg(
            long,
            value_name = "SECRET",
            env = "TESSERA_SECRET_KEY",
            hide_env_values = true
        )]
        secret_key: Option<String>,
        /// Succeed without change when the key already exists with the same
        /// secret (and name): makes an init job or script safe to re-run.
        /// A different secret is still an error.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List access keys (secrets are not shown).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete an access key.
    Delete {
        /// The access key id.
        id: String,
    },
}

/// Parses one `id=host:port` peer.
pub fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: peer id `{id}` is not a number"))?;
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(format!("`{s}`: empty address"));
    }
    Ok((id, addr.to_string()))
}
