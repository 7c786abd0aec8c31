//! The report: per phase ops, bytes, errors, throughput, latency
//! percentiles and server CPU per operation and per MiB, as JSON or as a
//! table. Throughput is in MiB (2^20 bytes) per second (`mb_s`).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::workload::{OpStats, PhaseOutcome};

const MIB: f64 = (1u64 << 20) as f64;

/// What `tessera bench --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub endpoint: String,
    pub bucket: String,
    /// Whether the run created the bucket.
    pub bucket_created: bool,
    /// Key prefix of every object of the run.
    pub prefix: String,
    pub workload: String,
    /// The --size value, normalized.
    pub size: String,
    pub concurrency: usize,
    /// Processes whose CPU the `server_cpu_*` fields sum.
    pub server_pids: Vec<u32>,
    /// `prepare` (when the workload needs objects), then the workload.
    pub phases: Vec<PhaseReport>,
}

/// One phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseReport {
    /// `prepare`, or the workload's name.
    pub name: String,
    pub duration_s: f64,
    /// Successful operations.
    pub ops: u64,
    /// Object bytes sent (put) or received (get; list: response bytes).
    pub bytes: u64,
    /// Failed operations (not in `ops`, nor in the latencies).
    pub errors: u64,
    pub ops_s: f64,
    /// MiB per second.
    pub mb_s: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// CPU time of the server processes during the phase (null without
    /// server pids).
    pub server_cpu_ms: Option<f64>,
    pub server_cpu_ms_per_op: Option<f64>,
    /// Null when no bytes moved.
    pub server_cpu_ms_per_mib: Option<f64>,
    /// CPU time of the bench itself per operation.
    pub client_cpu_ms_per_op: Option<f64>,
    /// Server CPU per operation by role (meta, storage, gateway), when the
    /// pids come from a dev cluster's cluster.json.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_cpu_ms_per_op_by_role: BTreeMap<String, f64>,
    /// The same per MiB moved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_cpu_ms_per_mib_by_role: BTreeMap<String, f64>,
    /// The same figures per operation type (mixed runs have several).
    pub by_op: BTreeMap<String, OpReport>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Cut short by Ctrl-C.
    pub interrupted: bool,
}

/// One operation type of a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpReport {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub ops_s: f64,
    pub mb_s: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

fn r3(v: Option<f64>) -> Option<f64> {
    v.map(|v| round(v, 3))
}

impl OpReport {
    fn new(s: &OpStats, secs: f64) -> Self {
        let q = |p| r3(s.latency.quantile_ms(p));
        OpReport {
            ops: s.ops,
            bytes: s.bytes,
            errors: s.errors,
            ops_s: round(s.ops as f64 / secs, 2),
            mb_s: round(s.bytes as f64 / MIB / secs, 3),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            max_ms: r3(s.latency.max_ms()),
        }
    }
}

impl PhaseReport {
    /// Figures of `out`; `server_cpu_ms` and `client_cpu_ms` are the CPU
    /// times measured around it.
    pub fn new(
        name: &str,
        out: &PhaseOutcome,
        server_cpu_ms: Option<f64>,
        client_cpu_ms: Option<f64>,
        server_cpu_ms_by_role: BTreeMap<String, f64>,
    ) -> Self {
        let secs = out.elapsed.as_secs_f64().max(1e-9);
        let total = out.total();
        let t = OpReport::new(&total, secs);
        let per_op = |cpu: Option<f64>| cpu.filter(|_| total.ops > 0).map(|c| c / total.ops as f64);
        let mib = total.bytes as f64 / MIB;
        PhaseReport {
            name: name.to_string(),
            duration_s: round(secs, 3),
            ops: t.ops,
            bytes: t.bytes,
            errors: t.errors,
            ops_s: t.ops_s,
            mb_s: t.mb_s,
            p50_ms: t.p50_ms,
            p90_ms: t.p90_ms,
            p99_ms: t.p99_ms,
            max_ms: t.max_ms,
            server_cpu_ms: r3(server_cpu_ms),
            server_cpu_ms_per_op: r3(per_op(server_cpu_ms)),
            server_cpu_ms_per_mib: r3(server_cpu_ms.filter(|_| mib > 0.0).map(|c| c / mib)),
            client_cpu_ms_per_op: r3(per_op(client_cpu_ms)),
            server_cpu_ms_per_op_by_role: server_cpu_ms_by_role
                .iter()
                .filter_map(|(r, &ms)| Some((r.clone(), r3(per_op(Some(ms)))?)))
                .collect(),
            server_cpu_ms_per_mib_by_role: server_cpu_ms_by_role
                .iter()
                .filter(|_| mib > 0.0)
                .map(|(r, &ms)| (r.clone(), round(ms / mib, 3)))
                .collect(),
            by_op: out
                .by_kind
                .iter()
                .map(|(k, s)| (k.as_str().to_string(), OpReport::new(s, secs)))
                .collect(),
            error_samples: out.error_samples.clone(),
            interrupted: out.interrupted,
        }
    }
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".to_string(),
    }
}

impl BenchReport {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tessera bench: {} {} x{} -> {} (bucket {}), CPU of {} server processes",
            self.workload,
            self.size,
            self.concurrency,
            self.endpoint,
            self.bucket,
            self.server_pids.len()
        );
        let _ = writeln!(
            s,
            "{:<12} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>12} {:>11}",
            "phase",
            "ops",
            "errors",
            "ops/s",
            "MiB/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "srv ms/op",
            "srv ms/MiB",
            "cli ms/op"
        );
        for p in &self.phases {
            let _ = writeln!(
                s,
                "{:<12} {:>8} {:>6} {:>9.1} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>11} {:>12} {:>11}",
                p.name,
                p.ops,
                p.errors,
                p.ops_s,
                p.mb_s,
                cell(p.p50_ms),
                cell(p.p90_ms),
                cell(p.p99_ms),
                cell(p.max_ms),
                cell(p.server_cpu_ms_per_op),
                cell(p.server_cpu_ms_per_mib),
                cell(p.client_cpu_ms_per_op),
            );
            if !p.server_cpu_ms_per_op_by_role.is_empty() {
                let roles: Vec<String> = p
                    .server_cpu_ms_per_op_by_role
                    .iter()
                    .map(|(r, ms)| match p.server_cpu_ms_per_mib_by_role.get(r) {
                        Some(m) => {
                            format!("{r} {} ms/op {} ms/MiB", cell(Some(*ms)), cell(Some(*m)))
                        }
                        None => format!("{r} {} ms/op", cell(Some(*ms))),
                    })
                    .collect();
                let _ = writeln!(s, "  server CPU by role: {}", roles.join(", "));
            }
            if p.by_op.len() > 1 {
                for (op, o) in &p.by_op {
                    let _ = writeln!(
                        s,
                        "  {:<10} {:>8} {:>6} {:>9.1} {:>8.1} {:>8} {:>8} {:>8} {:>8}",
                        op,
                        o.ops,
                        o.errors,
                        o.ops_s,
                        o.mb_s,
                        cell(o.p50_ms),
                        cell(o.p90_ms),
                        cell(o.p99_ms),
                        cell(o.max_ms),
                    );
                }
            }
        }
        s
    }
}
