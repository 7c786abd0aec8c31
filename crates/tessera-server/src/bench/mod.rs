//! `tessera bench`: an S3 load generator in the manner of MinIO's warp.
//! It drives any S3 endpoint (path-style, SigV4, plain HTTP) with put, get,
//! stat, list, delete or mixed workloads of fixed or distributed object
//! sizes, from N concurrent workers for a duration or an operation count,
//! and reports ops/s, MiB/s, latency percentiles, errors and, for the
//! server processes it is told about (or finds in a dev cluster's
//! `cluster.json`), the CPU they spent per operation and per MiB.
//!
//! Workloads that need objects first write them in a `prepare` phase,
//! reported on its own. Every object of a run lives under
//! `tessera-bench/<run id>/` and is deleted at the end unless `--keep`.
//!
//! - [`sigv4`]: request signing; [`client`]: the S3 requests over hyper.
//! - [`workload`]: the workers and phases; [`hist`]: latency histogram.
//! - [`cpu`]: server CPU times from `/proc` (per-thread ns, else ticks); [`spec`]: flag parsers.
//! - [`report`]: the JSON report and the human table.

pub mod client;
pub mod cpu;
pub mod hist;
pub mod report;
pub mod sigv4;
pub mod spec;
pub mod workload;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use rand::{RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::dev::ClusterInfo;
use client::S3Client;
use cpu::CpuSample;
use report::{BenchReport, PhaseReport};
use sigv4::Signer;
use spec::{Mix, SizeSpec};
use workload::{run_phase, Stop, Target, Workload};

/// Largest object size the bench writes (the payload buffer is this big).
const MAX_OBJECT_SIZE: u64 = 1 << 30;
/// Objects prepared for get/stat/list/mixed when --objects is not given.
const DEFAULT_OBJECTS: u64 = 1000;
/// Run length when neither --duration nor --count is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// `tessera bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// S3 endpoint, `http://HOST:PORT` (https is not supported).
    /// [default: from --cluster]
    #[arg(long, env = "TESSERA_BENCH_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// Access key id. [default: from --cluster]
    #[arg(long, env = "TESSERA_BENCH_ACCESS_KEY", value_name = "ID")]
    pub access_key: Option<String>,
    /// Secret access key. [default: from --cluster]
    #[arg(
        long,
        env = "TESSERA_BENCH_SECRET_KEY",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret_key: Option<String>,
    /// Region to sign for. [default: from --cluster, else us-east-1]
    #[arg(long)]
    pub region: Option<String>,
    /// A dev cluster's cluster.json: endpoint, credentials, region and the
    /// server pids to measure CPU of.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Server processes whose CPU is measured (summed), comma-separated;
    /// overrides the pids of --cluster.
    #[arg(long, value_name = "PID,...", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// What each operation does.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Put)]
    pub workload: WorkloadArg,
    /// Object size (`64KiB`, `1MiB`, `1MB`, bytes) or a weighted
    /// distribution (`4KiB:70,1MiB:30`).
    #[arg(long, default_value = "1MiB", value_parser = SizeSpec::parse)]
    pub size: SizeSpec,
    /// Requests in flight (one worker each).
    #[arg(long, short = 'c', default_value_t = 8)]
    pub concurrency: usize,
    /// How long the measured phase runs (`30s`, `2m`). [default: 30s
    /// unless --count]
    #[arg(long, value_parser = spec::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Run exactly this many operations instead of a duration.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Run the workload this long before measuring, unreported (not for
    /// delete).
    #[arg(long, value_parser = spec::parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Objects to prepare for get, stat, list, mixed and delete.
    /// [default: --count (at most 1000; delete: --count), else 1000]
    #[arg(long, value_name = "N")]
    pub objects: Option<u64>,
    /// Bucket to use (created if missing).
    #[arg(long, default_value = "tessera-bench")]
    pub bucket: String,
    /// Operation weights of the mixed workload.
    #[arg(long, default_value = "get=45,stat=30,put=15,delete=10", value_parser = Mix::parse)]
    pub mix: Mix,
    /// Timeout of one request (body included).
    #[arg(long, value_parser = spec::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Keep the objects written instead of deleting them at the end.
    #[arg(long)]
    pub keep: bool,
    /// get and stat: read the objects already under this key prefix (up to
    /// --objects, default 1000; e.g. the `prefix` of an earlier `--keep`
    /// run) instead of preparing new ones. They are never deleted.
    #[arg(long, value_name = "PREFIX")]
    pub existing: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The `--workload` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// PUT new objects.
    Put,
    /// GET prepared objects.
    Get,
    /// HEAD prepared objects.
    Stat,
    /// ListObjectsV2 pages of up to 1000 prepared objects.
    List,
    /// DELETE prepared objects, each once.
    Delete,
    /// A weighted mix (see --mix) over objects each worker owns.
    Mixed,
}

impl WorkloadArg {
    fn name(self) -> &'static str {
        match self {
            WorkloadArg::Put => "put",
            WorkloadArg::Get => "get",
            WorkloadArg::Stat => "stat",
            WorkloadArg::List => "list",
            WorkloadArg::Delete => "delete",
            WorkloadArg::Mixed => "mixed",
        }
    }
}

/// Endpoint, credentials and pids, after --cluster defaults.
struct Resolved {
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
    pids: Vec<u32>,
    /// pid -> role (meta, storage, gateway) of a dev cluster's processes.
    roles: BTreeMap<u32, String>,
}

fn resolve(args: &BenchArgs) -> Result<Resolved> {
    let info = args.cluster.as_deref().map(ClusterInfo::load).transpose()?;
    let from_info = |f: fn(&ClusterInfo) -> &String| info.as_ref().map(|i| f(i).clone());
    let need = |v: Option<String>, flag: &str| {
        v.with_context(|| format!("{flag} is required (or --cluster FILE)"))
    };
    let roles: BTreeMap<u32, String> = info
        .iter()
        .flat_map(|i| &i.nodes)
        .filter(|n| n.pid > 0)
        .map(|n| (n.pid, n.role.clone()))
        .collect();
    let pids = if !args.server_pids.is_empty() {
        args.server_pids.clone()
    } else {
        roles.keys().copied().collect()
    };
    Ok(Resolved {
        endpoint: need(
            args.endpoint
                .clone()
                .or_else(|| from_info(|i| &i.s3_endpoint)),
            "--endpoint",
        )?,
        access_key: need(
            args.access_key
                .clone()
                .or_else(|| from_info(|i| &i.access_key)),
            "--access-key",
        )?,
        secret_key: need(
            args.secret_key
                .clone()
                .or_else(|| from_info(|i| &i.secret_key)),
            "--secret-key",
        )?,
        region: args
            .region
            .clone()
            .or_else(|| from_info(|i| &i.region))
            .unwrap_or_else(|| "us-east-1".to_string()),
        pids,
        roles,
    })
}

/// Runs `tessera bench` and prints its report.
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> Result<ExitCode> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.size.max() > MAX_OBJECT_SIZE {
        bail!("--size: objects of at most 1GiB");
    }
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    if args.existing.is_some() && !matches!(args.workload, WorkloadArg::Get | WorkloadArg::Stat) {
        bail!("--existing is for the get and stat workloads");
    }
    let r = resolve(&args)?;
    let signer = Signer::new(&r.access_key, &r.secret_key, &r.region);
    let client = S3Client::new(&r.endpoint, signer, args.timeout, args.concurrency)
        .map_err(anyhow::Error::msg)?;
    let created = client
        .ensure_bucket(&args.bucket)
        .await
        .with_context(|| format!("bucket {} at {}", args.bucket, r.endpoint))?;
    let start = CpuSample::take(&r.pids);
    let missing = start.missing(&r.pids);
    if !missing.is_empty() {
        eprintln!("tessera bench: cannot read the CPU time of pids {missing:?}; left out");
    }

    let run_id = run_id();
    let target = Arc::new(Target {
        client,
        bucket: args.bucket.clone(),
        sizes: args.size.clone(),
        payload: payload(args.size.max() as usize, run_id),
        concurrency: args.concurrency,
        prefix: format!("tessera-bench/{run_id:016x}/"),
    });
    let stop = match (args.count, args.duration) {
        (Some(n), _) => Stop::Count(n),
        (None, Some(d)) => Stop::After(d),
        (None, None) => Stop::After(DEFAULT_DURATION),
    };
    let workload = match args.workload {
        WorkloadArg::Put => Workload::Put,
        WorkloadArg::Get => Workload::Get,
        WorkloadArg::Stat => Workload::Stat,
        WorkloadArg::List => Workload::List,
        WorkloadArg::Delete => Workload::Delete,
        WorkloadArg::Mixed => Workload::Mixed(Arc::new(args.mix.clone())),
    };
    let mut report = BenchReport {
        endpoint: r.endpoint.clone(),
        bucket: args.bucket.clone(),
        bucket_created: created,
        prefix: target.prefix.clone(),
        workload: args.workload.name().to_string(),
        size: args.size.to_string(),
        concurrency: args.concurrency,
        server_pids: r.pids.clone(),
        phases: Vec::new(),
    };
    let mut live: Vec<String> = Vec::new();
    // Objects of --existing: read, never deleted.
    let mut existing: Vec<String> = Vec::new();

    if let Some(prefix) = args.existing.as_deref() {
        let max = args.objects.unwrap_or(DEFAULT_OBJECTS) as usize;
        existing = target
            .client
            .list_keys(&args.bucket, prefix, max)
            .await
            .with_context(|| format!("listing {}/{prefix}", args.bucket))?;
        if existing.is_empty() {
            bail!("--existing: no object under {}/{prefix}", args.bucket);
        }
        live = existing.clone();
    } else if args.workload != WorkloadArg::Put {
        let n = args.objects.unwrap_or(match (args.workload, args.count) {
            (WorkloadArg::Delete, Some(c)) => c,
            (_, Some(c)) => c.min(DEFAULT_OBJECTS),
            (_, None) => DEFAULT_OBJECTS,
        });
        let phase = measured(
            &target,
            "prepare",
            &Workload::Put,
            &mut live,
            Stop::Count(n),
            &r,
            &shutdown,
        )
        .await;
        let failed = phase.errors;
        report.phases.push(phase);
        if live.is_empty() && !shutdown.is_cancelled() {
            print_errors(&report);
            bail!("prepare: no object could be written ({failed} errors)");
        }
    }
    if !args.warmup.is_zero() && args.workload != WorkloadArg::Delete && !shutdown.is_cancelled() {
        run_phase(
            &target,
            "warmup",
            &workload,
            &mut live,
            Stop::After(args.warmup),
            &shutdown,
        )
        .await;
    }
    if !shutdown.is_cancelled() {
        let phase = measured(
            &target,
            args.workload.name(),
            &workload,
            &mut live,
            stop,
            &r,
            &shutdown,
        )
        .await;
        report.phases.push(phase);
    }
    if !existing.is_empty() {
        let theirs: std::collections::HashSet<String> = existing.drain(..).collect();
        live.retain(|k| !theirs.contains(k));
    }
    if !args.keep && !live.is_empty() {
        // A second Ctrl-C is not waited for: the cleanup gets its own token.
        let n = live.len() as u64;
        let out = run_phase(
            &target,
            "cleanup",
            &Workload::Delete,
            &mut live,
            Stop::Count(n),
            &CancellationToken::new(),
        )
        .await;
        let errors = out.total().errors;
        if errors > 0 {
            eprintln!(
                "tessera bench: cleanup: {errors} of {n} objects not deleted (under {}{})",
                args.bucket, target.prefix
            );
        }
    }

    print_errors(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a phase between two CPU samples of the servers.
async fn measured(
    target: &Arc<Target>,
    name: &str,
    workload: &Workload,
    live: &mut Vec<String>,
    stop: Stop,
    servers: &Resolved,
    shutdown: &CancellationToken,
) -> PhaseReport {
    let before = CpuSample::take(&servers.pids);
    let out = run_phase(target, name, workload, live, stop, shutdown).await;
    let after = CpuSample::take(&servers.pids);
    PhaseReport::new(
        name,
        &out,
        after.servers_ms_since(&before),
        after.own_ms_since(&before),
        after.ms_by_group_since(&before, &servers.roles),
    )
}

fn print_errors(report: &BenchReport) {
    for p in &report.phases {
        if p.errors > 0 {
            eprintln!("tessera bench: {}: {} errors, e.g.:", p.name, p.errors);
            for e in &p.error_samples {
                eprintln!("  {e}");
            }
        }
        if p.interrupted && std::io::stderr().is_terminal() {
            eprintln!("tessera bench: {}: interrupted", p.name);
        }
    }
}

/// A run id unique enough to keep concurrent runs' keys apart.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// `len` random bytes (incompressible, not deduplicable across runs).
fn payload(len: usize, seed: u64) -> Bytes {
    let mut buf = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    Bytes::from(buf)
}
