//! `tessera dev`: a whole cluster on one machine, as child processes of the
//! same binary, with all state under one directory.
//!
//! Layout of the data directory:
//!
//! ```text
//! DIR/meta-<i>/          meta node i (1..=3)
//! DIR/storage-<i>/       storage node i (1..=N)
//! DIR/logs/<role>-<i>.log  each child's stdout and stderr, appended
//! DIR/credentials.json   the root access key, created once (mode 0600)
//! DIR/cluster-secret     the internode secret, created once (mode 0600),
//!                        handed to children in $TESSERA_CLUSTER_SECRET
//! DIR/cluster.json       endpoint, credentials, nodes; rewritten on every start
//!                        (each node with its exact command line, so that a
//!                        test harness can restart a node it killed)
//! DIR/dev.lock           held while a supervisor runs on DIR
//! DIR/tls/               with --tls, created once: ca.pem (the dev CA to
//!                        trust), cert.pem (localhost and 127.0.0.1, chain
//!                        with the CA) and key.pem (mode 0600)
//! ```
//!
//! Ports, from `--port-base B` (all on 127.0.0.1):
//!
//! ```text
//! B                 gateway, S3 over HTTP (HTTPS with --tls)
//! B+1               gateway admin HTTP (/metrics, /health/*)
//! B+2  ..= B+9      reserved for the gateway
//! B+11 ..= B+13     meta node 1..=3  (B+10+i)
//! B+16 ..= B+18     meta node 1..=3 admin HTTP  (B+15+i)
//! B+21 ..= B+20+N   storage node 1..=N  (B+20+i)
//! B+21+N ..= B+20+2N  storage node 1..=N admin HTTP  (B+20+N+i)
//! ```
//!
//! Storage ports come last, so any N fits as long as B+20+2N <= 65535.
//! Every node's admin address is in cluster.json (`admin_addr`).
//! Restarting on the same directory reuses the same ports, ids and data.
//!
//! The supervisor restarts only a node that exits with
//! [`crate::EXIT_RESTART`] (it panicked, or a meta node's Raft core stopped,
//! e.g. on a full disk: restarted, it recovers once the cause is gone), after a
//! backoff (1 s, doubling up to 30 s; back to 1 s once it has run a minute).
//! Any other exit, a kill above all, is final: tests kill nodes on purpose
//! and count on them staying dead. Children get SIGTERM when the supervisor dies
//! (PR_SET_PDEATHSIG), even by SIGKILL, and run in their own process group,
//! so a terminal's Ctrl-C reaches only the supervisor, which then stops them
//! in order: gateway and storage first, meta last.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tessera_proto::{ClusterAuth, ClusterSecret, MetaClient};
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tessera_types::{AccessKey, ClusterMap, NodeState};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::check_erasure;
use crate::fsutil::write_atomic;

/// Meta nodes in a dev cluster.
pub const META_NODES: usize = 3;
/// How long children get to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// File of the cluster secret in a dev data directory.
pub const SECRET_FILE: &str = "cluster-secret";
/// Name of the root access key.
pub const ROOT_KEY_NAME: &str = "root";

const POLL: Duration = Duration::from_millis(200);
/// First and longest wait before restarting a child that asked for it.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// A restarted child that runs this long starts its backoff over.
const RESTART_RESET: Duration = Duration::from_secs(60);
const LOOPBACK: &str = "127.0.0.1";
/// The gateway's virtual-host base domain: `Host: bucket.localhost:PORT`
/// addresses `bucket` (a client must resolve `bucket.localhost` to
/// loopback itself where its resolver does not).
pub const DEV_S3_DOMAIN: &str = "localhost";

/// The gateway's S3 port.
pub fn gateway_port(base: u16) -> u16 {
    base
}
/// Meta node `i`'s port (i = 1..=3).
pub fn meta_port(base: u16, i: usize) -> u16 {
    offset_port(base, 10 + i)
}
/// Storage node `i`'s port (i = 1..=N).
pub fn storage_port(base: u16, i: usize) -> u16 {
    offset_port(base, 20 + i)
}
/// The gateway's admin HTTP port.
pub fn gateway_admin_port(base: u16) -> u16 {
    offset_port(base, 1)
}
/// Meta node `i`'s admin HTTP port (i = 1..=3).
pub fn meta_admin_port(base: u16, i: usize) -> u16 {
    offset_port(base, 15 + i)
}
/// Storage node `i`'s admin HTTP port, of `n` storage nodes (i = 1..=n).
pub fn storage_admin_port(base: u16, n: usize, i: usize) -> u16 {
    offset_port(base, 20 + n + i)
}
fn offset_port(base: u16, off: usize) -> u16 {
    // Range-checked by `DevOptions::validate`.
    u16::try_from(usize::from(base) + off).unwrap_or(u16::MAX)
}

/// What to start.
#[derive(Clone, Debug)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    pub port_base: u16,
    pub storage_nodes: usize,
    pub zones: usize,
    pub k: u8,
    pub m: u8,
    pub region: String,
    /// Give up if the cluster is not ready by then.
    pub ready_timeout: Duration,
    /// The `tessera` binary to run; default: the current executable (tests
    /// pass `env!("CARGO_BIN_EXE_tessera")`).
    pub binary: Option<PathBuf>,
    /// `--log-level` for the children (default: inherit RUST_LOG).
    pub log_level: Option<String>,
    /// `--worker-threads` for the children; default
    /// [`default_child_workers`].
    pub worker_threads: Option<usize>,
    pub suspect_after_ms: Option<u64>,
    pub down_after_ms: Option<u64>,
    /// Serve S3 over HTTPS with a self-signed dev certificate (DIR/tls/).
    pub tls: bool,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            data_dir: PathBuf::from("./tessera-data"),
            port_base: 9000,
            storage_nodes: 6,
            zones: 3,
            k: 4,
            m: 2,
            region: "us-east-1".into(),
            ready_timeout: Duration::from_secs(60),
            binary: None,
            log_level: None,
            worker_threads: None,
            suspect_after_ms: None,
            down_after_ms: None,
            tls: false,
        }
    }
}

impl DevOptions {
    pub fn validate(&self) -> Result<()> {
        check_erasure(self.k, self.m)?;
        let width = usize::from(self.k) + usize::from(self.m);
        if self.storage_nodes < width {
            bail!(
                "--storage-nodes {} is less than k+m = {width}: no stripe could be placed",
                self.storage_nodes
            );
        }
        if self.zones == 0 || self.zones > self.storage_nodes {
            bail!(
                "--zones {} must be between 1 and --storage-nodes ({})",
                self.zones,
                self.storage_nodes
            );
        }
        if self.port_base == 0 {
            bail!("--port-base must be a real port (1..)");
        }
        let top = usize::from(self.port_base) + 20 + 2 * self.storage_nodes;
        if top > usize::from(u16::MAX) {
            bail!(
                "--port-base {} + 20 + 2 x {} storage nodes (service and admin ports) = {top} \
                 is past port 65535",
                self.port_base,
                self.storage_nodes
            );
        }
        if self.region.trim().is_empty() {
            bail!("--region must not be empty");
        }
        Ok(())
    }
}

/// `DIR/cluster.json`: how clients and tests reach a dev cluster.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub s3_endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub nodes: Vec<NodeEntry>,
    /// With `--tls`: the CA certificate (PEM) that signed the gateway's
    /// certificate, for clients to trust (`AWS_CA_BUNDLE`, boto3 `verify=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<String>,
    /// The gateway's virtual-host base domains (`s3-domain`).
    #[serde(default)]
    pub s3_domain: Vec<String>,
}

impl std::fmt::Debug for ClusterInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterInfo")
            .field("s3_endpoint", &self.s3_endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// One process of a dev cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `meta`, `storage` or `gateway`.
    pub role: String,
    /// Meta: the Raft id ("1".."3"); storage: the node id in the cluster
    /// map; gateway: "gw-1".
    pub id: String,
    pub pid: u32,
    /// `host:port` it listens on.
    pub addr: String,
    /// `host:port` of its admin HTTP port (`/metrics`, `/health/live`,
    /// `/health/ready`).
    #[serde(default)]
    pub admin_addr: String,
    /// The exact command line it was started with, binary first. The
    /// supervisor never restarts a killed child (only a node that
    /// asks to be, see the module doc); a harness that kills one restarts
    /// it with this argv, the environment variables named in `env` and no
    /// other `TESSERA_*` variable.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Names (never values) of the environment variables set for it:
    /// `TESSERA_CLUSTER_SECRET` holds the text of `DIR/cluster-secret`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Its log file (stdout and stderr, appended).
    #[serde(default)]
    pub log: String,
}

impl ClusterInfo {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
    /// Addresses of the meta nodes.
    pub fn meta_addrs(&self) -> Vec<String> {
        self.addrs_of("meta")
    }
    pub fn addrs_of(&self, role: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.addr.clone())
            .collect()
    }
}

/// `DIR/credentials.json`.
#[derive(Serialize, Deserialize)]
struct Credentials {
    name: String,
    access_key: String,
    secret_key: String,
    created: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Meta,
    Storage,
    Gateway,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Storage => "storage",
            Role::Gateway => "gateway",
        }
    }
}

/// One child to start.
#[derive(Clone)]
struct ChildSpec {
    role: Role,
    /// `meta-1`, `storage-4`, `gateway-1`.
    name: String,
    addr: String,
    admin_addr: String,
    args: Vec<OsString>,
}

struct ChildProc {
    /// What it was started from (role, name, addresses), to start it again.
    spec: ChildSpec,
    started: Instant,
    /// Restarts in a row without a [`RESTART_RESET`] run between them.
    restarts: u32,
    /// When a child that asked for a restart gets it.
    restart_at: Option<Instant>,
    /// Binary and arguments, for cluster.json.
    argv: Vec<String>,
    log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

impl ChildProc {
    /// Reaps the child if it has exited; true while it runs.
    fn running(&mut self) -> bool {
        if self.exit.is_none() {
            match self.child.try_wait() {
                Ok(Some(st)) => self.exit = Some(st),
                Ok(None) => {}
                Err(e) => warn!(node = %self.spec.name, "cannot poll child: {e}"),
            }
        }
        self.exit.is_none()
    }

    fn signal(&mut self, sig: i32) {
        // Only a child not yet reaped: its pid cannot have been reused.
        if !self.running() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain syscall on our own unreaped child's pid.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

/// A running dev cluster. Dropping it kills the children (SIGKILL); call
/// [`DevCluster::stop`] for a graceful stop.
pub struct DevCluster {
    opts: DevOptions,
    binary: PathBuf,
    secret: ClusterSecret,
    data_dir: PathBuf,
    info: ClusterInfo,
    children: Vec<ChildProc>,
    started_in: Duration,
    _lock: File,
}

impl DevCluster {
    /// Starts the cluster and waits until it is ready (see the module doc).
    ///
    /// Children are told to die with the thread that spawns them
    /// (PR_SET_PDEATHSIG is per thread): call this from a thread that lives
    /// as long as the cluster, e.g. the one in `Runtime::block_on` or a
    /// tokio worker, never from `spawn_blocking`.
    pub async fn start(opts: DevOptions) -> Result<DevCluster> {
        Self::start_cancellable(opts, CancellationToken::new()).await
    }

    /// [`DevCluster::start`], giving up (and stopping what was started)
    /// when `cancel` fires.
    pub async fn start_cancellable(
        opts: DevOptions,
        cancel: CancellationToken,
    ) -> Result<DevCluster> {
        let t0 = Instant::now();
        opts.validate()?;
        fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("creating {}", opts.data_dir.display()))?;
        let data_dir = fs::canonicalize(&opts.data_dir)
            .with_context(|| format!("resolving {}", opts.data_dir.display()))?;
        let lock = lock_dir(&data_dir)?;
        fs::create_dir_all(data_dir.join("logs"))?;
        let root = load_or_create_root_key(&data_dir)?;
        let secret = load_or_create_secret(&data_dir)?;
        let tls = if opts.tls {
            Some(load_or_create_tls(&data_dir)?)
        } else {
            None
        };
        let specs = child_specs(&opts, &data_dir);
        check_ports_free(&specs)?;
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("locating the tessera binary")?,
        };

        let mut cluster = DevCluster {
            info: ClusterInfo {
                s3_endpoint: format!(
                    "{}://{LOOPBACK}:{}",
                    if tls.is_some() { "https" } else { "http" },
                    gateway_port(opts.port_base)
                ),
                region: opts.region.clone(),
                access_key: root.id.clone(),
                secret_key: root.secret.clone(),
                nodes: vec![],
                ca_path: tls.map(|t| t.ca.display().to_string()),
                s3_domain: vec![DEV_S3_DOMAIN.to_string()],
            },
            opts,
            binary: binary.clone(),
            secret,
            data_dir,
            children: Vec::new(),
            started_in: Duration::ZERO,
            _lock: lock,
        };
        info!(dir = %cluster.data_dir.display(), "starting dev cluster");
        for spec in specs {
            let child = spawn_child(
                &binary,
                &cluster.data_dir,
                spec,
                cluster.opts.log_level.as_deref(),
                cluster
                    .opts
                    .worker_threads
                    .unwrap_or_else(default_child_workers),
                &text_of(&cluster.data_dir)?,
            )?;
            debug!(node = %child.spec.name, pid = child.child.id(), "spawned");
            cluster.children.push(child);
        }
        let map = match cluster.wait_ready(&root, &cancel).await {
            Ok(map) => map,
            Err(e) => {
                cluster.shutdown_children(STOP_GRACE).await;
                return Err(e);
            }
        };
        cluster.info.nodes = cluster.node_entries(&map);
        let json = serde_json::to_vec_pretty(&cluster.info)?;
        write_atomic(&cluster.cluster_file(), &json, 0o600)
            .with_context(|| format!("writing {}", cluster.cluster_file().display()))?;
        cluster.started_in = t0.elapsed();
        info!(elapsed = ?cluster.started_in, "dev cluster ready");
        Ok(cluster)
    }

    /// Endpoint, credentials and nodes (what `cluster.json` holds).
    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }
    /// The (absolute) data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.data_dir.join("cluster.json")
    }
    /// Time from `start` until ready.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }
    /// The child's pid, while it runs; names are `meta-1`, `storage-3`,
    /// `gateway-1`.
    pub fn pid(&mut self, name: &str) -> Option<u32> {
        let c = self.children.iter_mut().find(|c| c.spec.name == name)?;
        c.running().then(|| c.child.id())
    }
    /// Sends `sig` to a child (e.g. `libc::SIGKILL` to simulate a crash).
    pub fn signal_node(&mut self, name: &str, sig: i32) -> Result<()> {
        let c = self
            .children
            .iter_mut()
            .find(|c| c.spec.name == name)
            .ok_or_else(|| anyhow!("no node named {name}"))?;
        c.signal(sig);
        Ok(())
    }

    /// Children that exited since the last call: (name, status).
    pub fn reap(&mut self) -> Vec<(String, ExitStatus)> {
        let mut out = Vec::new();
        for c in &mut self.children {
            let before = c.exit.is_some();
            if !c.running() && !before {
                if let Some(st) = c.exit {
                    out.push((c.spec.name.clone(), st));
                }
            }
        }
        out
    }

    /// Watches the children until `shutdown`, logging unexpected exits
    /// and restarting the children that ask for it (see the module doc).
    pub async fn supervise(&mut self, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.supervise_once(),
            }
        }
    }

    /// One look at the children: reaps, schedules and performs restarts.
    fn supervise_once(&mut self) {
        for (name, status) in self.reap() {
            let log = self.log_of(&name);
            let Some(c) = self.children.iter_mut().find(|c| c.spec.name == name) else {
                continue;
            };
            // A node being restarted that fails again at startup (its
            // disk still full) is tried again too; a kill is always final.
            let asked = status.code() == Some(i32::from(crate::EXIT_RESTART));
            let retrying =
                c.restarts > 0 && c.started.elapsed() < RESTART_RESET && status.code().is_some();
            if !(asked || retrying) {
                warn!(node = %name, %status, log = %log.display(),
                      "node exited unexpectedly; it will not be restarted");
                continue;
            }
            if c.started.elapsed() >= RESTART_RESET {
                c.restarts = 0;
            }
            let wait = restart_backoff(c.restarts);
            c.restarts += 1;
            c.restart_at = Some(Instant::now() + wait);
            warn!(node = %name, %status, log = %log.display(), ?wait,
                  "node stopped and asked to be restarted; restarting it");
        }
        let due: Vec<usize> = (0..self.children.len())
            .filter(|&i| {
                self.children[i]
                    .restart_at
                    .is_some_and(|at| at <= Instant::now())
            })
            .collect();
        for i in due {
            if let Err(e) = self.restart_child(i) {
                warn!(node = %self.children[i].spec.name, "restart failed: {e:#}");
                let c = &mut self.children[i];
                c.restart_at = Some(Instant::now() + restart_backoff(c.restarts));
                c.restarts += 1;
            }
        }
    }

    /// Starts child `i` again with its original command line, and records
    /// its new pid in `cluster.json`.
    fn restart_child(&mut self, i: usize) -> Result<()> {
        let old = &self.children[i];
        let mut child = spawn_child(
            &self.binary,
            &self.data_dir,
            old.spec.clone(),
            self.opts.log_level.as_deref(),
            self.opts
                .worker_threads
                .unwrap_or_else(default_child_workers),
            &text_of(&self.data_dir)?,
        )?;
        child.restarts = old.restarts;
        let pid = child.child.id();
        info!(node = %child.spec.name, pid, "node restarted");
        if let Some(n) = self
            .info
            .nodes
            .iter_mut()
            .find(|n| n.addr == child.spec.addr)
        {
            n.pid = pid;
        }
        self.children[i] = child;
        // The node runs: a cluster.json that cannot be rewritten (its disk
        // may be the full one) only leaves a stale pid in it.
        let json = serde_json::to_vec_pretty(&self.info)?;
        if let Err(e) = write_atomic(&self.cluster_file(), &json, 0o600) {
            warn!(file = %self.cluster_file().display(), "cannot record the restarted node's pid: {e}");
        }
        Ok(())
    }

    /// Stops every child: SIGTERM, up to [`STOP_GRACE`], then SIGKILL.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown_children(STOP_GRACE).await;
        Ok(())
    }

    /// A friendly description for humans.
    pub fn banner(&self) -> String {
        let i = &self.info;
        let ep = &i.s3_endpoint;
        let o = &self.opts;
        let dir = self.data_dir.display();
        format!(
            "\n\
             Tessera dev cluster is up (ready in {secs:.1} s)\n\
             \n\
             \x20 S3 endpoint   {ep}\n\
             \x20 Region        {region}\n\
             \x20 Access key    {ak}\n\
             \x20 Secret key    {sk}\n\
             \x20 Erasure code  RS({k},{m}): {n} storage nodes in {z} zones, 3 meta nodes\n\
             \x20 Data          {dir}  (logs in {dir}/logs)\n\
             \n\
             Try it:\n\
             \x20 export AWS_ACCESS_KEY_ID='{ak}'\n\
             \x20 export AWS_SECRET_ACCESS_KEY='{sk}'\n\
             \x20 export AWS_DEFAULT_REGION='{region}'\n\
             \x20 aws --endpoint-url {ep} s3 mb s3://demo\n\
             \x20 aws --endpoint-url {ep} s3 ls\n\
             \n\
             Status:  tessera admin status --cluster {dir}/cluster.json\n\
             {tls}\
             Press Ctrl-C to stop; run the same command again to bring the data back.\n",
            tls = match &i.ca_path {
                Some(ca) => format!(
                    "TLS: self-signed dev certificate for localhost and 127.0.0.1 in {dir}/tls/;\n\
                     \x20 trust its CA: export AWS_CA_BUNDLE='{ca}'  (boto3: verify='{ca}')\n\n"
                ),
                None => String::new(),
            },
            secs = self.started_in.as_secs_f64(),
            region = i.region,
            ak = i.access_key,
            sk = i.secret_key,
            k = o.k,
            m = o.m,
            n = o.storage_nodes,
            z = o.zones,
        )
    }

    fn log_of(&self, name: &str) -> PathBuf {
        self.children
            .iter()
            .find(|c| c.spec.name == name)
            .map(|c| c.log.clone())
            .unwrap_or_default()
    }

    fn meta_addrs(&self) -> Vec<String> {
        self.addrs(Role::Meta)
    }

    fn addrs(&self, role: Role) -> Vec<String> {
        self.children
            .iter()
            .filter(|c| c.spec.role == role)
            .map(|c| c.spec.addr.clone())
            .collect()
    }

    /// Fails if any child has exited, with the tail of its log.
    fn check_alive(&mut self) -> Result<()> {
        for c in &mut self.children {
            if !c.running() {
                let status = c.exit.map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "{} exited during startup ({status}); last lines of {}:\n{}",
                    c.spec.name,
                    c.log.display(),
                    log_tail(&c.log, 20)
                );
            }
        }
        Ok(())
    }

    /// Leader elected -> root key written -> gateway accepting and every
    /// storage node registered, with at least k+m of them up and accepting.
    async fn wait_ready(
        &mut self,
        root: &AccessKey,
        cancel: &CancellationToken,
    ) -> Result<ClusterMap> {
        let timeout = self.opts.ready_timeout;
        let deadline = Instant::now() + timeout;
        let logs = self.data_dir.join("logs");
        let meta_addrs = self.meta_addrs();
        let client = MetaClient::with_auth(
            meta_addrs.clone(),
            Duration::from_secs(5),
            ClusterAuth::new(self.secret.clone()),
        );

        // 1. A meta leader.
        let mut status;
        loop {
            self.check_alive()?;
            match find_leader(&client, &meta_addrs).await {
                Some((id, addr)) => {
                    info!(leader = id, %addr, "meta leader elected");
                    break;
                }
                None => status = "no leader yet".to_string(),
            }
            self.pause(deadline, cancel, &status, &logs).await?;
        }

        // 2. The root access key (idempotent).
        loop {
            self.check_alive()?;
            match client.write(&MetaCommand::PutAccessKey(root.clone())).await {
                Ok(MetaReply::Err(e)) => bail!("meta refused the root access key: {e}"),
                Ok(_) => break,
                Err(e) if e.is_retryable() => status = format!("writing the root key: {e}"),
                Err(e) => return Err(e).context("writing the root access key"),
            }
            self.pause(deadline, cancel, &status, &logs).await?;
        }
        info!("root access key in place");

        // 3. Storage nodes and the gateway.
        let need = usize::from(self.opts.k) + usize::from(self.opts.m);
        let storage = self.addrs(Role::Storage);
        let gateway = self.addrs(Role::Gateway);
        let gateway_admin: Vec<String> = self
            .children
            .iter()
            .filter(|c| c.spec.role == Role::Gateway)
            .map(|c| c.spec.admin_addr.clone())
            .collect();
        loop {
            self.check_alive()?;
            // Accepting S3 connections, and ready: a cluster map loaded.
            let gw_ok = accepts_all(&gateway).await && all_ready(&gateway_admin).await;
            match client.query(&MetaQuery::ClusterMap).await {
                Ok(QueryReply::ClusterMap(map)) => {
                    let mut registered = 0;
                    let mut up = 0;
                    for addr in &storage {
                        if let Some(n) = map.nodes.iter().find(|n| &n.addr == addr) {
                            registered += 1;
                            if n.state == NodeState::Up && accepts(addr).await {
                                up += 1;
                            }
                        }
                    }
                    if gw_ok && registered == storage.len() && up >= need {
                        info!(up, registered, "storage nodes up");
                        return Ok(map);
                    }
                    status = format!(
                        "{registered}/{} storage nodes registered, {up} up (need {need}), \
                         gateway {}",
                        storage.len(),
                        if gw_ok {
                            "ready"
                        } else {
                            "not ready yet (no cluster map)"
                        }
                    );
                }
                Ok(other) => bail!("unexpected answer to a cluster map query: {other:?}"),
                Err(e) => status = format!("reading the cluster map: {e}"),
            }
            self.pause(deadline, cancel, &status, &logs).await?;
        }
    }

    async fn pause(
        &self,
        deadline: Instant,
        cancel: &CancellationToken,
        status: &str,
        logs: &Path,
    ) -> Result<()> {
        if Instant::now() >= deadline {
            bail!(
                "cluster not ready after {:?}: {status}; see the logs in {}",
                self.opts.ready_timeout,
                logs.display()
            );
        }
        debug!(status, "waiting for the cluster");
        tokio::select! {
            _ = cancel.cancelled() => bail!("interrupted while starting"),
            _ = tokio::time::sleep(POLL) => Ok(()),
        }
    }

    fn node_entries(&self, map: &ClusterMap) -> Vec<NodeEntry> {
        let mut meta_i = 0;
        self.children
            .iter()
            .map(|c| {
                let id = match c.spec.role {
                    Role::Meta => {
                        meta_i += 1;
                        meta_i.to_string()
                    }
                    Role::Storage => map
                        .nodes
                        .iter()
                        .find(|n| n.addr == c.spec.addr)
                        .map(|n| n.id.to_string())
                        .unwrap_or_default(),
                    Role::Gateway => "gw-1".to_string(),
                };
                NodeEntry {
                    role: c.spec.role.as_str().to_string(),
                    id,
                    pid: c.child.id(),
                    addr: c.spec.addr.clone(),
                    admin_addr: c.spec.admin_addr.clone(),
                    argv: c.argv.clone(),
                    env: vec![crate::config::SECRET_ENV.to_string()],
                    log: c.log.display().to_string(),
                }
            })
            .collect()
    }

    /// SIGTERM gateway and storage, then meta; SIGKILL whatever is left at
    /// the end of `grace`.
    async fn shutdown_children(&mut self, grace: Duration) {
        let start = Instant::now();
        let is_meta = |c: &ChildProc| c.spec.role == Role::Meta;
        for c in self.children.iter_mut().filter(|c| !is_meta(c)) {
            c.signal(libc::SIGTERM);
        }
        self.wait_exit(|c| !is_meta(c), start + grace / 2).await;
        for c in &mut self.children {
            c.signal(libc::SIGTERM);
        }
        self.wait_exit(|_| true, start + grace).await;
        for c in &mut self.children {
            if c.running() {
                warn!(node = %c.spec.name, "did not stop in time; killing");
                let _ = c.child.kill();
                if let Ok(st) = c.child.wait() {
                    c.exit = Some(st);
                }
            }
        }
        info!(elapsed = ?start.elapsed(), "dev cluster stopped");
    }

    async fn wait_exit(&mut self, which: impl Fn(&ChildProc) -> bool, until: Instant) {
        loop {
            let pending = self
                .children
                .iter_mut()
                .filter(|c| which(c))
                .filter_map(|c| c.running().then_some(()))
                .count();
            if pending == 0 || Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            if c.running() {
                let _ = c.child.kill();
                let _ = c.child.wait();
            }
        }
    }
}

/// Holds an exclusive lock on `DIR/dev.lock` for the supervisor's life.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("dev.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another `tessera dev` is already running on {} (lock {} is held)",
            dir.display(),
            path.display()
        );
    }
    f.set_len(0)?;
    writeln!(&f, "{}", std::process::id())?;
    Ok(f)
}

/// The secret text as the children get it (from the file, so that the
/// value never needs a `Display`).
fn text_of(dir: &Path) -> Result<String> {
    let path = dir.join(SECRET_FILE);
    Ok(fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// `DIR/cluster-secret`: 32 random bytes as hex, created once (0600).
fn load_or_create_secret(dir: &Path) -> Result<ClusterSecret> {
    let path = dir.join(SECRET_FILE);
    if path.exists() {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        return ClusterSecret::new(&text).with_context(|| {
            format!(
                "{} holds no usable secret; delete it to generate a new one \
                 (every node of this directory gets the new one)",
                path.display()
            )
        });
    }
    let bytes: [u8; 32] = rand::random();
    let text = hex_encode(&bytes);
    write_atomic(&path, format!("{text}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    info!(file = %path.display(), "generated the cluster secret");
    Ok(ClusterSecret::new(&text)?)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load_or_create_root_key(dir: &Path) -> Result<AccessKey> {
    let path = dir.join("credentials.json");
    if path.exists() {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let c: Credentials = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; delete it to generate a new root key",
                path.display()
            )
        })?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        return Ok(AccessKey {
            id: c.access_key,
            secret: c.secret_key,
            name: c.name,
            created: c.created,
        });
    }
    let key = AccessKey::generate(ROOT_KEY_NAME, tessera_types::now_millis());
    let c = Credentials {
        name: key.name.clone(),
        access_key: key.id.clone(),
        secret_key: key.secret.clone(),
        created: key.created,
    };
    write_atomic(&path, &serde_json::to_vec_pretty(&c)?, 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    info!(access_key = %key.id, "generated the root access key");
    Ok(key)
}

fn child_specs(o: &DevOptions, dir: &Path) -> Vec<ChildSpec> {
    let addr = |port: u16| format!("{LOOPBACK}:{port}");
    let meta: Vec<String> = (1..=META_NODES)
        .map(|i| addr(meta_port(o.port_base, i)))
        .collect();
    let peers = meta
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let meta_list = meta.join(",");
    let mut specs = Vec::new();
    for (i, a) in meta.iter().enumerate() {
        let i = i + 1;
        let mut args: Vec<OsString> = vec!["meta".into(), "--id".into(), i.to_string().into()];
        args.extend(["--listen".into(), a.into(), "--advertise".into(), a.into()]);
        args.extend(["--data-dir".into(), dir.join(format!("meta-{i}")).into()]);
        args.extend(["--peers".into(), peers.clone().into()]);
        args.extend(["--bootstrap".into(), "true".into()]);
        let admin = addr(meta_admin_port(o.port_base, i));
        args.extend(["--admin-listen".into(), admin.clone().into()]);
        if let Some(ms) = o.suspect_after_ms {
            args.extend(["--suspect-after-ms".into(), ms.to_string().into()]);
        }
        if let Some(ms) = o.down_after_ms {
            args.extend(["--down-after-ms".into(), ms.to_string().into()]);
        }
        specs.push(ChildSpec {
            role: Role::Meta,
            name: format!("meta-{i}"),
            addr: a.clone(),
            admin_addr: admin,
            args,
        });
    }
    for i in 1..=o.storage_nodes {
        let a = addr(storage_port(o.port_base, i));
        let zone = format!("z{}", (i - 1) % o.zones + 1);
        let mut args: Vec<OsString> = vec!["storage".into()];
        args.extend(["--listen".into(), a.clone().into()]);
        args.extend(["--advertise".into(), a.clone().into()]);
        args.extend(["--data-dir".into(), dir.join(format!("storage-{i}")).into()]);
        args.extend(["--zone".into(), zone.into()]);
        args.extend(["--meta".into(), meta_list.clone().into()]);
        let admin = addr(storage_admin_port(o.port_base, o.storage_nodes, i));
        args.extend(["--admin-listen".into(), admin.clone().into()]);
        args.extend(storage_background_args(|k| std::env::var_os(k)));
        specs.push(ChildSpec {
            role: Role::Storage,
            name: format!("storage-{i}"),
            addr: a,
            admin_addr: admin,
            args,
        });
    }
    let a = addr(gateway_port(o.port_base));
    let mut args: Vec<OsString> = vec!["gateway".into()];
    args.extend(["--listen".into(), a.clone().into()]);
    args.extend(["--meta".into(), meta_list.into()]);
    args.extend(["--region".into(), o.region.clone().into()]);
    args.extend(["--s3-domain".into(), DEV_S3_DOMAIN.into()]);
    args.extend(["--k".into(), o.k.to_string().into()]);
    args.extend(["--m".into(), o.m.to_string().into()]);
    let admin = addr(gateway_admin_port(o.port_base));
    args.extend(["--admin-listen".into(), admin.clone().into()]);
    if o.tls {
        let t = tls_paths(dir);
        args.extend(["--tls-cert".into(), t.cert.into()]);
        args.extend(["--tls-key".into(), t.key.into()]);
    }
    specs.push(ChildSpec {
        role: Role::Gateway,
        name: "gateway-1".into(),
        addr: a,
        admin_addr: admin,
        args,
    });
    specs
}

/// The files of a dev cluster's TLS certificate.
struct DevTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn tls_paths(dir: &Path) -> DevTls {
    let t = dir.join("tls");
    DevTls {
        ca: t.join("ca.pem"),
        cert: t.join("cert.pem"),
        key: t.join("key.pem"),
    }
}

/// DIR/tls/: a dev CA and a server certificate it signed for `localhost`
/// and `127.0.0.1`, created once and reused. A CA plus a leaf (rather than
/// one self-signed leaf) is what strict verifiers (Python 3.13's
/// VERIFY_X509_STRICT, used by urllib3 and so boto3) accept.
fn load_or_create_tls(dir: &Path) -> Result<DevTls> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let t = tls_paths(dir);
    if t.ca.exists() && t.cert.exists() && t.key.exists() {
        return Ok(t);
    }
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
    let gen = || -> std::result::Result<(String, String, String), rcgen::Error> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.distinguished_name
            .push(DnType::CommonName, "Tessera dev CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_string(), LOOPBACK.to_string()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        Ok((
            ca_cert.pem(),
            format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
            leaf_key.serialize_pem(),
        ))
    };
    let (ca_pem, chain_pem, key_pem) =
        gen().map_err(|e| anyhow!("generating the dev TLS certificate: {e}"))?;
    write_atomic(&t.key, key_pem.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", t.key.display()))?;
    write_atomic(&t.cert, chain_pem.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", t.cert.display()))?;
    write_atomic(&t.ca, ca_pem.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", t.ca.display()))?;
    info!(dir = %tls_dir.display(), "created a dev TLS certificate");
    Ok(t)
}

/// The settings of a dev storage node's background workers: a scrub pass
/// every 10 minutes, orphans collected after 10 minutes, an inventory
/// every 20 s, so they are visibly at work. A value the caller sets in the
/// variable `tessera storage` reads for the same setting wins (tests, and
/// benchmarks that want the production scrub period): the children do not
/// inherit `TESSERA_*` variables, so it is passed on as the flag.
fn storage_background_args(var: impl Fn(&str) -> Option<OsString>) -> Vec<OsString> {
    let settings = [
        (
            "--scrub-period-ms",
            "TESSERA_SCRUB_PERIOD_MS",
            DEV_SCRUB_PERIOD_MS,
        ),
        (
            "--orphan-scan-interval-ms",
            "TESSERA_ORPHAN_SCAN_INTERVAL_MS",
            DEV_ORPHAN_MS,
        ),
        (
            "--orphan-safety-age-ms",
            "TESSERA_ORPHAN_SAFETY_AGE_MS",
            DEV_ORPHAN_MS,
        ),
        (
            "--inventory-interval-ms",
            "TESSERA_INVENTORY_INTERVAL_MS",
            DEV_INVENTORY_MS,
        ),
    ];
    let mut args = Vec::new();
    for (flag, env, dev_value) in settings {
        let value = var(env)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| dev_value.into());
        args.extend([flag.into(), value]);
    }
    args
}

/// Scrub period of dev storage nodes (10 min).
const DEV_SCRUB_PERIOD_MS: &str = "600000";
/// Orphan scan interval and safety age of dev storage nodes (10 min).
const DEV_ORPHAN_MS: &str = "600000";
/// A dev cluster checks every 20 s that each placed shard has its file, so
/// a deleted parity shard is rebuilt soon after.
const DEV_INVENTORY_MS: &str = "20000";

/// A clear error up front beats a child dying with "address in use".
fn check_ports_free(specs: &[ChildSpec]) -> Result<()> {
    let busy: Vec<String> = specs
        .iter()
        .flat_map(|s| {
            [(&s.addr, ""), (&s.admin_addr, " admin")]
                .into_iter()
                .filter(|(a, _)| std::net::TcpListener::bind(a.as_str()).is_err())
                .map(move |(a, what)| format!("{a} ({}{what})", s.name))
        })
        .collect();
    if !busy.is_empty() {
        bail!(
            "port(s) already in use: {}; is another cluster running? Try another --port-base",
            busy.join(", ")
        );
    }
    Ok(())
}

/// Runtime threads of each node of a dev cluster: a dozen processes share
/// the machine, so each gets a quarter of the cores (at least one). On two
/// cores, two workers per process cost about 20% more CPU per request than
/// one (idle workers woken for every task), for the same throughput.
pub fn default_child_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1))
}

fn spawn_child(
    binary: &Path,
    dir: &Path,
    spec: ChildSpec,
    log_level: Option<&str>,
    workers: usize,
    secret: &str,
) -> Result<ChildProc> {
    let log_path = dir.join("logs").join(format!("{}.log", spec.name));
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // Best effort: the disk may be full (the child starts anyway).
    let _ = writeln!(
        log,
        "===== tessera dev: starting {} at unix-ms {} =====",
        spec.name,
        tessera_types::now_millis()
    );
    let mut cmd = Command::new(binary);
    let mut argv = vec![binary.display().to_string()];
    if let Some(level) = log_level {
        cmd.arg("--log-level").arg(level);
        argv.extend(["--log-level".to_string(), level.to_string()]);
    }
    cmd.arg("--worker-threads").arg(workers.to_string());
    argv.extend(["--worker-threads".to_string(), workers.to_string()]);
    argv.extend(spec.args.iter().map(|a| a.to_string_lossy().into_owned()));
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The children get everything on their command line; stray TESSERA_*
    // variables of the caller's shell must not reconfigure them.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TESSERA_") {
            cmd.env_remove(k);
        }
    }
    // By environment, not argv: argv shows in `ps` to every local user.
    cmd.env(crate::config::SECRET_ENV, secret);
    // SAFETY: getpid is async-signal-safe; so are the calls in the hook.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || child_setup(parent));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} ({})", spec.name, binary.display()))?;
    Ok(ChildProc {
        spec,
        started: Instant::now(),
        restarts: 0,
        restart_at: None,
        argv,
        log: log_path,
        child,
        exit: None,
    })
}

/// Wait before a child's restart number `n` (0 = first).
fn restart_backoff(n: u32) -> Duration {
    let (first, most) = RESTART_BACKOFF;
    first.saturating_mul(1u32 << n.min(16)).min(most)
}

/// Runs in the child between fork and exec: only async-signal-safe calls.
fn child_setup(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: setpgid/prctl/getppid are async-signal-safe syscalls.
    unsafe {
        // Own process group: a terminal's Ctrl-C goes to the supervisor only.
        if libc::setpgid(0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[cfg(target_os = "linux")]
        {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
    }
    let _ = parent;
    Ok(())
}

/// Polls raft status on every meta node; `(leader id, addr)` once one of
/// them is leader.
async fn find_leader(client: &MetaClient, addrs: &[String]) -> Option<(u64, String)> {
    for addr in addrs {
        if let Ok(st) = client.raft_status(addr).await {
            if st.leader_id != 0 && st.id == st.leader_id {
                return Some((st.id, addr.clone()));
            }
        }
    }
    None
}

async fn accepts(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Whether every admin address answers `/health/ready` with 200.
async fn all_ready(admin_addrs: &[String]) -> bool {
    for a in admin_addrs {
        match crate::health::probe(a, "/health/ready").await {
            Ok((200, _)) => {}
            _ => return false,
        }
    }
    true
}

async fn accepts_all(addrs: &[String]) -> bool {
    for a in addrs {
        if !accepts(a).await {
            return false;
        }
    }
    true
}

/// How much of a log file [`log_tail`] reads.
const LOG_TAIL_BYTES: u64 = 64 << 10;

/// The last `lines` lines of a log file, from its last [`LOG_TAIL_BYTES`]
/// (a log may be large, and a log that is a device, such as `/dev/full`
/// in a test, reads without end).
fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if len > LOG_TAIL_BYTES {
            file.seek(SeekFrom::Start(len - LOG_TAIL_BYTES))?;
        }
        let mut bytes = Vec::new();
        file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log's tail comes from its end, without reading the whole file,
    /// and a log that reads without end (a device) is read in bounds.
    #[test]
    fn log_tail_reads_the_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, &text).unwrap();
        assert_eq!(log_tail(&path, 2), "line 99998\nline 99999");
        let short = dir.path().join("short.log");
        fs::write(&short, "a\nb\n").unwrap();
        assert_eq!(log_tail(&short, 20), "a\nb");
        let endless = log_tail(Path::new("/dev/zero"), 20);
        assert!(
            endless.len() <= 4 * LOG_TAIL_BYTES as usize,
            "{}",
            endless.len()
        );
    }

    #[test]
    fn background_settings_take_the_callers_variables() {
        let flags = |args: Vec<OsString>| -> Vec<String> {
            args.into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let dev = flags(storage_background_args(|_| None));
        assert_eq!(
            dev,
            [
                "--scrub-period-ms",
                DEV_SCRUB_PERIOD_MS,
                "--orphan-scan-interval-ms",
                DEV_ORPHAN_MS,
                "--orphan-safety-age-ms",
                DEV_ORPHAN_MS,
                "--inventory-interval-ms",
                DEV_INVENTORY_MS,
            ]
        );
        // The children lose every TESSERA_* variable: the caller's value
        // must reach them as the flag (it was dropped, leaving the
        // production default).
        let set = flags(storage_background_args(|k| match k {
            "TESSERA_SCRUB_PERIOD_MS" => Some("86400000".into()),
            "TESSERA_INVENTORY_INTERVAL_MS" => Some("".into()),
            _ => None,
        }));
        assert_eq!(set[..2], ["--scrub-period-ms", "86400000"]);
        assert_eq!(set[6..], ["--inventory-interval-ms", DEV_INVENTORY_MS]);
    }

    #[test]
    fn restart_backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (0..8).map(|n| restart_backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(restart_backoff(u32::MAX), RESTART_BACKOFF.1);
    }

    #[test]
    fn port_ranges_never_collide() {
        for n in [1usize, 6, 9, 60, 400] {
            let base = 9000;
            let mut ports = vec![gateway_port(base), gateway_admin_port(base)];
            ports.extend((1..=META_NODES).map(|i| meta_port(base, i)));
            ports.extend((1..=META_NODES).map(|i| meta_admin_port(base, i)));
            ports.extend((1..=n).map(|i| storage_port(base, i)));
            ports.extend((1..=n).map(|i| storage_admin_port(base, n, i)));
            let mut sorted = ports.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                ports.len(),
                "collision with {n} storage nodes"
            );
        }
        assert_eq!(meta_port(9000, 1), 9011);
        assert_eq!(storage_port(9000, 6), 9026);
        assert_eq!(storage_admin_port(9000, 6, 1), 9027);
        assert_eq!(meta_admin_port(9000, 3), 9018);
    }

    #[test]
    fn options_are_validated() {
        DevOptions::default().validate().unwrap();
        let bad = [
            DevOptions {
                storage_nodes: 5,
                ..DevOptions::default()
            },
            DevOptions {
                zones: 0,
                ..DevOptions::default()
            },
            DevOptions {
                zones: 7,
                ..DevOptions::default()
            },
            DevOptions {
                k: 0,
                ..DevOptions::default()
            },
            DevOptions {
                port_base: 65500,
                storage_nodes: 20,
                ..DevOptions::default()
            },
            DevOptions {
                port_base: 0,
                ..DevOptions::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?} should be rejected");
        }
    }

    #[test]
    fn specs_follow_the_scheme() {
        let o = DevOptions {
            port_base: 12000,
            storage_nodes: 7,
            ..DevOptions::default()
        };
        let specs = child_specs(&o, Path::new("/d"));
        assert_eq!(specs.len(), 3 + 7 + 1);
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[0], "meta-1");
        assert_eq!(names[3], "storage-1");
        assert_eq!(names[10], "gateway-1");
        assert_eq!(specs[1].addr, "127.0.0.1:12012");
        assert_eq!(specs[9].addr, "127.0.0.1:12027");
        assert_eq!(specs[10].addr, "127.0.0.1:12000");
        // Zones round-robin: storage-4 is back in z1.
        let args: Vec<String> = specs[6]
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let zone = args
            .iter()
            .position(|a| a == "--zone")
            .map(|i| args[i + 1].clone());
        assert_eq!(zone.as_deref(), Some("z1"));
        assert!(args.contains(&"/d/storage-4".to_string()));
    }

    #[test]
    fn root_key_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_root_key(dir.path()).unwrap();
        let b = load_or_create_root_key(dir.path()).unwrap();
        assert_eq!(a, b);
        let mode = fs::metadata(dir.path().join("credentials.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        assert!(lock_dir(dir.path()).is_err());
        drop(held);
        lock_dir(dir.path()).unwrap();
    }

    #[test]
    fn cluster_info_debug_hides_the_secret() {
        let info = ClusterInfo {
            s3_endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            access_key: "TKX".into(),
            secret_key: "very-secret".into(),
            nodes: vec![],
            ca_path: None,
            s3_domain: vec![],
        };
        assert!(!format!("{info:?}").contains("very-secret"));
    }
}
