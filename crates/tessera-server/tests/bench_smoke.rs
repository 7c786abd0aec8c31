//! `tessera bench` against a real dev cluster: put, get (after its prepare
//! phase), mixed, and a size distribution that crosses the inline
//! threshold into erasure-coded stripes. Checks correctness of the
//! counts and that the server CPU fields are measured, never speed.
//!
//! The cluster is owned by a `DevCluster`, whose Drop kills its children
//! if a test fails half-way.

mod common;

use common::free_port_base;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tessera_server::bench::report::{BenchReport, PhaseReport};
use tessera_server::dev::{DevCluster, DevOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const COUNT: u64 = 40;

/// Runs `tessera bench --cluster FILE ARGS --json` and parses its report.
fn bench(cluster_file: &Path, args: &[&str]) -> BenchReport {
    let out = Command::new(BIN)
        .arg("bench")
        .arg("--cluster")
        .arg(cluster_file)
        .args(args)
        .arg("--json")
        .env_remove("TESSERA_BENCH_ENDPOINT")
        .env_remove("TESSERA_BENCH_ACCESS_KEY")
        .env_remove("TESSERA_BENCH_SECRET_KEY")
        .output()
        .expect("run tessera bench");
    assert!(
        out.status.success(),
        "tessera bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench {args:?} printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn phase<'a>(report: &'a BenchReport, name: &str) -> &'a PhaseReport {
    report
        .phases
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no {name} phase in {report:?}"))
}

/// A phase that did exactly `ops` operations without an error, with every
/// figure filled in.
fn check_phase(p: &PhaseReport, ops: u64) {
    assert_eq!(p.errors, 0, "{}: {:?}", p.name, p.error_samples);
    assert_eq!(p.ops, ops, "{p:?}");
    assert!(!p.interrupted);
    assert!(p.ops_s > 0.0, "{p:?}");
    for (field, v) in [
        ("p50_ms", p.p50_ms),
        ("p90_ms", p.p90_ms),
        ("p99_ms", p.p99_ms),
        ("max_ms", p.max_ms),
    ] {
        assert!(v.is_some_and(|v| v > 0.0), "{}: {field} = {v:?}", p.name);
    }
    assert!(p.p50_ms <= p.p99_ms && p.p99_ms <= p.max_ms, "{p:?}");
    let cpu_op = p.server_cpu_ms_per_op.expect("server_cpu_ms_per_op");
    assert!(cpu_op > 0.0, "{p:?}");
    // The split by role covers every process of the dev cluster.
    let roles: Vec<&str> = p
        .server_cpu_ms_per_op_by_role
        .keys()
        .map(|r| r.as_str())
        .collect();
    assert_eq!(roles, ["gateway", "meta", "storage"], "{p:?}");
    let sum: f64 = p.server_cpu_ms_per_op_by_role.values().sum();
    assert!(
        (sum - cpu_op).abs() <= 0.01 + cpu_op * 0.01,
        "{sum} vs {cpu_op}: {p:?}"
    );
    assert_eq!(p.by_op.values().map(|o| o.ops).sum::<u64>(), ops);
}

/// Server CPU per MiB is there whenever bytes moved.
fn check_bytes(p: &PhaseReport, bytes: u64) {
    assert_eq!(p.bytes, bytes, "{p:?}");
    assert!(p.mb_s > 0.0, "{p:?}");
    let per_mib = p.server_cpu_ms_per_mib.expect("server_cpu_ms_per_mib");
    assert!(per_mib > 0.0, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_put_get_mixed_against_a_dev_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let base = free_port_base(6);
    let cluster = DevCluster::start(DevOptions {
        data_dir: dir.clone(),
        port_base: base,
        binary: Some(PathBuf::from(BIN)),
        ready_timeout: Duration::from_secs(90),
        ..DevOptions::default()
    })
    .await
    .unwrap();
    let file = cluster.cluster_file();
    let nodes = cluster.info().nodes.len();
    let count = COUNT.to_string();
    let common = ["--size", "64KiB", "--concurrency", "4", "--count", &count];
    const SIZE: u64 = 64 << 10;

    let put = bench(&file, &[&["--workload", "put"][..], &common].concat());
    assert_eq!(put.workload, "put");
    assert_eq!(put.server_pids.len(), nodes, "every node's CPU is summed");
    assert_eq!(put.phases.len(), 1, "put has no prepare phase: {put:?}");
    let p = phase(&put, "put");
    check_phase(p, COUNT);
    check_bytes(p, COUNT * SIZE);
    assert_eq!(p.by_op["put"].ops, COUNT);

    let get = bench(&file, &[&["--workload", "get"][..], &common].concat());
    let prepare = phase(&get, "prepare");
    check_phase(prepare, COUNT);
    check_bytes(prepare, COUNT * SIZE);
    let p = phase(&get, "get");
    check_phase(p, COUNT);
    check_bytes(p, COUNT * SIZE);
    assert_eq!(p.by_op["get"].ops, COUNT);

    let mixed = bench(&file, &[&["--workload", "mixed"][..], &common].concat());
    check_phase(phase(&mixed, "prepare"), COUNT);
    let p = phase(&mixed, "mixed");
    check_phase(p, COUNT);
    // The default mix (get 45, stat 30, put 15, delete 10) over 40 draws.
    assert!(p.by_op.len() >= 2, "{:?}", p.by_op);
    let moved = p.by_op.get("get").map_or(0, |o| o.ops) + p.by_op.get("put").map_or(0, |o| o.ops);
    assert_eq!(p.bytes, moved * SIZE, "{p:?}");

    // --keep leaves a run's objects; --existing reads them back (no
    // prepare phase) and never deletes them: a second run finds them too.
    let kept = bench(
        &file,
        &[&["--workload", "put", "--keep"][..], &common].concat(),
    );
    for _ in 0..2 {
        let again = bench(
            &file,
            &[
                &["--workload", "get", "--existing", &kept.prefix][..],
                &common,
            ]
            .concat(),
        );
        assert_eq!(again.phases.len(), 1, "no prepare phase: {again:?}");
        let p = phase(&again, "get");
        check_phase(p, COUNT);
        check_bytes(p, COUNT * SIZE);
    }
    let out = Command::new(BIN)
        .args(["bench", "--cluster"])
        .arg(&file)
        .args([
            "--workload",
            "get",
            "--existing",
            "no-such-prefix/",
            "-n",
            "1",
        ])
        .output()
        .expect("run tessera bench");
    assert!(!out.status.success(), "nothing under the prefix");

    // Objects past the inline threshold go through the erasure coder.
    let dist = bench(
        &file,
        &[
            "--workload",
            "put",
            "--size",
            "4KiB:50,300KiB:50",
            "--concurrency",
            "4",
            "--count",
            "20",
        ],
    );
    assert_eq!(dist.size, "4KiB:50,300KiB:50");
    let p = phase(&dist, "put");
    check_phase(p, 20);
    assert!(p.bytes >= 20 * 4096 && p.bytes <= 20 * 300 * 1024, "{p:?}");
    assert_eq!(
        (p.bytes - 20 * 4096) % (296 * 1024),
        0,
        "every object is one of the two sizes: {p:?}"
    );

    cluster.stop().await.unwrap();
}

#[test]
fn bench_refuses_bad_flags() {
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("bench")
            .args(args)
            .env_remove("TESSERA_BENCH_ENDPOINT")
            .env_remove("TESSERA_BENCH_ACCESS_KEY")
            .env_remove("TESSERA_BENCH_SECRET_KEY")
            .output()
            .expect("run tessera bench")
    };
    let out = run(&["--access-key", "a", "--secret-key", "b"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--endpoint is required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--size", "4XB"]);
    assert!(!out.status.success());
    let out = run(&["--count", "5", "--duration", "1s"]);
    assert!(!out.status.success(), "--count and --duration conflict");
    let out = run(&[
        "--endpoint",
        "https://127.0.0.1:1",
        "--access-key",
        "a",
        "--secret-key",
        "b",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http only"));
}
