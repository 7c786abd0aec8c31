//! The real `tessera` binary run as a dev cluster: cluster.json, `admin
//! status --json`, access keys, a stop and a restart on the same
//! directory, and children dying with a SIGKILLed supervisor.
//!
//! Every cluster is owned by a `DevCluster`, whose Drop kills its children
//! if a test fails half-way.

mod common;

use common::free_port_base;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera_server::admin::{CreatedKey, StatusReport};
use tessera_server::dev::{ClusterInfo, DevCluster, DevOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// Dev clusters are heavy (ten processes each): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(dir: &Path, base: u16) -> DevOptions {
    DevOptions {
        data_dir: dir.to_path_buf(),
        port_base: base,
        binary: Some(PathBuf::from(BIN)),
        ready_timeout: Duration::from_secs(90),
        ..DevOptions::default()
    }
}

fn admin_unchecked(cluster_file: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("admin")
        .args(args)
        .arg("--cluster")
        .arg(cluster_file)
        .env_remove("TESSERA_META")
        .env_remove("TESSERA_SECRET_KEY")
        .output()
        .expect("run tessera admin")
}

fn admin(cluster_file: &Path, args: &[&str]) -> std::process::Output {
    let out = admin_unchecked(cluster_file, args);
    assert!(
        out.status.success(),
        "tessera admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn health(addr: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["health", "--addr", addr, "--timeout-ms", "3000"])
        .output()
        .expect("run tessera health")
}

fn status(cluster_file: &Path) -> StatusReport {
    let out = admin(cluster_file, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("status --json parses")
}

/// Polls `admin status` until all `n` storage nodes are up (a restarted
/// cluster may take a heartbeat or two to agree).
fn wait_status(cluster_file: &Path, n: usize) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(cluster_file);
        let up = s.storage.iter().filter(|n| n.state == "up").count();
        if (s.healthy && up >= n) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn check_cluster_json(cluster: &DevCluster, base: u16) -> ClusterInfo {
    let path = cluster.cluster_file();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "cluster.json holds a secret");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["s3_endpoint", "region", "access_key", "secret_key", "nodes"] {
        assert!(raw.get(key).is_some(), "cluster.json lacks {key}");
    }
    let info = ClusterInfo::load(&path).unwrap();
    assert_eq!(&info, cluster.info());
    assert_eq!(info.s3_endpoint, format!("http://127.0.0.1:{base}"));
    assert_eq!(info.region, "us-east-1");
    assert!(info.access_key.starts_with("TK"), "{}", info.access_key);
    assert_eq!(info.secret_key.len(), 40);

    let of = |role: &str| -> Vec<_> { info.nodes.iter().filter(|n| n.role == role).collect() };
    let meta = of("meta");
    let storage = of("storage");
    let gateway = of("gateway");
    assert_eq!(meta.len(), 3);
    assert_eq!(storage.len(), 6);
    assert_eq!(gateway.len(), 1);
    assert_eq!(
        meta.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    assert_eq!(meta[0].addr, format!("127.0.0.1:{}", base + 11));
    assert_eq!(storage[5].addr, format!("127.0.0.1:{}", base + 26));
    assert_eq!(gateway[0].id, "gw-1");
    assert_eq!(gateway[0].addr, format!("127.0.0.1:{base}"));
    let ids: BTreeSet<_> = storage.iter().map(|n| n.id.clone()).collect();
    assert_eq!(ids.len(), 6, "storage ids are distinct");
    assert!(ids.iter().all(|id| !id.is_empty()));
    assert!(info.nodes.iter().all(|n| n.pid > 0));
    for n in &info.nodes {
        // Huge pages off (see `no_transparent_huge_pages` in main.rs).
        let status = std::fs::read_to_string(format!("/proc/{}/status", n.pid)).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
            "{} {} runs with transparent huge pages on",
            n.role,
            n.id
        );
    }
    info
}

fn check_status(s: &StatusReport, info: &ClusterInfo) {
    assert!(s.healthy, "{s:?}");
    assert_eq!(s.meta.len(), 3, "{s:?}");
    assert!(s.meta.iter().all(|m| m.reachable), "{s:?}");
    let leader = s.leader.as_ref().expect("a leader");
    assert!(info.meta_addrs().contains(&leader.addr));
    assert_eq!(s.storage.len(), 6, "{s:?}");
    assert!(s.storage.iter().all(|n| n.state == "up"), "{s:?}");
    let listed: BTreeSet<_> = s.storage.iter().map(|n| n.id.clone()).collect();
    let known: BTreeSet<_> = info
        .nodes
        .iter()
        .filter(|n| n.role == "storage")
        .map(|n| n.id.clone())
        .collect();
    assert_eq!(listed, known);
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` on the body of GET `path` until it holds (20 s).
fn wait_for(addr: &str, path: &str, check: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(addr, path);
        if check(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {addr}{path}: {status}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node serves /health/live, /health/ready and /metrics on its admin
/// port, and the gateway counts requests, refused ones included.
fn check_admin_ports(info: &ClusterInfo) {
    for n in &info.nodes {
        assert!(!n.admin_addr.is_empty(), "{n:?}");
        assert_eq!(http_get(&n.admin_addr, "/health/live").0, 200, "{n:?}");
        wait_for(&n.admin_addr, "/health/ready", |st, _| st == 200);
        // The container health probe agrees.
        let probe = health(&n.admin_addr);
        assert!(probe.status.success(), "tessera health {n:?}: {probe:?}");
        let want: &[&str] = match n.role.as_str() {
            "meta" => &[
                "tessera_meta_raft_term ",
                "tessera_meta_raft_leader_id ",
                "tessera_meta_raft_applied_index ",
                "tessera_meta_storage_nodes{state=\"up\"} 6",
                "tessera_meta_gc_backlog_items ",
            ],
            "storage" => &[
                "tessera_storage_capacity_bytes ",
                "tessera_storage_used_bytes ",
                "# TYPE tessera_storage_shard_reads_total counter",
                "# TYPE tessera_storage_checksum_failures_total counter",
            ],
            _ => &["# TYPE tessera_gateway_s3_requests_total counter"],
        };
        wait_for(&n.admin_addr, "/metrics", |st, body| {
            st == 200 && want.iter().all(|w| body.contains(w))
        });
        assert_eq!(http_get(&n.admin_addr, "/nope").0, 404);
    }
    // Nothing listens on the S3 port's neighbour below the admin ports.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let probe = health(&closed_addr);
    assert!(!probe.status.success(), "health of a closed port succeeded");
    assert!(!probe.stderr.is_empty(), "a failing probe says why");
    let gw = info.nodes.iter().find(|n| n.role == "gateway").unwrap();
    let series = "tessera_gateway_s3_requests_total{op=\"ListBuckets\",status=\"403\"}";
    let before = sample(&http_get(&gw.admin_addr, "/metrics").1, series).unwrap_or(0.0);
    // An anonymous request: refused, and still counted.
    let s3 = info.s3_endpoint.trim_start_matches("http://");
    assert_eq!(http_get(s3, "/").0, 403);
    let body = http_get(&gw.admin_addr, "/metrics").1;
    assert_eq!(sample(&body, series), Some(before + 1.0), "{body}");
    assert!(body.contains("tessera_gateway_s3_request_duration_seconds_count{op=\"ListBuckets\"}"));
    assert!(sample(&body, "tessera_gateway_s3_sent_bytes_total").unwrap_or(0.0) > 0.0);
}

/// The internode secret is private to the owner and never on a command line.
fn check_secret_handling(dir: &Path, info: &ClusterInfo) {
    let file = dir.join("cluster-secret");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(secret.len() >= 32);
    let json = std::fs::read_to_string(dir.join("cluster.json")).unwrap();
    assert!(
        !json.contains(&secret),
        "cluster.json holds the internode secret"
    );
    for n in &info.nodes {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", n.pid)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&secret),
            "{} has the secret on its command line",
            n.role
        );
        // cluster.json records the exact command line, so a harness can
        // restart a node it killed.
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(argv, n.argv, "{} {}: argv in cluster.json", n.role, n.id);
        assert_eq!(n.env, ["TESSERA_CLUSTER_SECRET"]);
        assert!(n.log.ends_with(".log"), "{}", n.log);
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by whoever adopted it) is dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_starts_reports_and_restarts_with_its_data() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let base = free_port_base(6);

    let cluster = DevCluster::start(options(&dir, base)).await.unwrap();
    eprintln!("dev cluster ready in {:?}", cluster.started_in());
    let info = check_cluster_json(&cluster, base);
    let file = cluster.cluster_file();
    check_status(&status(&file), &info);
    check_admin_ports(&info);
    check_secret_handling(&dir, &info);

    // Meta state that must survive the restart.
    let out = admin(&file, &["key", "create", "alice"]);
    let alice: CreatedKey = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(alice.name, "alice");
    // `--if-not-exists` makes an init job safe to re-run, and still refuses
    // a different secret for the same key id.
    let fixed = [
        "key",
        "create",
        "ops",
        "--access-key",
        "OPSKEY0001",
        "--secret-key",
        "ops-secret-0123456789abcdef0123456789",
        "--if-not-exists",
    ];
    let first: CreatedKey = serde_json::from_slice(&admin(&file, &fixed).stdout).unwrap();
    assert_eq!(first.access_key, "OPSKEY0001");
    let again: serde_json::Value = serde_json::from_slice(&admin(&file, &fixed).stdout).unwrap();
    assert_eq!(again["existed"], true, "{again}");
    assert!(
        again.get("secret_key").is_none(),
        "secret printed again: {again}"
    );
    let mut other = fixed;
    other[6] = "another-secret-0123456789abcdef012345678";
    let out = admin_unchecked(&file, &other);
    assert!(!out.status.success(), "a different secret was accepted");
    let out = admin_unchecked(&file, &fixed[..7]);
    assert!(
        !out.status.success(),
        "a second create without --if-not-exists succeeded"
    );

    let pids: Vec<u32> = info.nodes.iter().map(|n| n.pid).collect();
    cluster.stop().await.unwrap();
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "every child is gone after stop"
    );

    let cluster = DevCluster::start(options(&dir, base)).await.unwrap();
    eprintln!("dev cluster restarted in {:?}", cluster.started_in());
    let again = check_cluster_json(&cluster, base);
    assert_eq!(again.access_key, info.access_key, "same root key");
    assert_eq!(again.secret_key, info.secret_key);
    let ids = |i: &ClusterInfo| -> Vec<(String, String)> {
        i.nodes
            .iter()
            .map(|n| (n.id.clone(), n.addr.clone()))
            .collect()
    };
    assert_eq!(ids(&again), ids(&info), "same ids on the same ports");
    check_status(&wait_status(&file, 6), &again);
    let out = admin(&file, &["key", "list", "--json"]);
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeSet<_> = keys
        .iter()
        .filter_map(|k| k["access_key"].as_str().map(str::to_string))
        .collect();
    assert!(names.contains(&alice.access_key), "{names:?}");
    assert!(names.contains(&info.access_key), "{names:?}");
    cluster.stop().await.unwrap();
}

/// Nodes whose log cannot be written keep serving. Their log files are
/// `/dev/full`, where every write fails with ENOSPC, as on a full disk. The
/// logger used to report each failed write with `eprintln!`, which panics
/// when stderr cannot be written: the gateway dropped every request it
/// logged about without an answer (S3 clients saw closed connections
/// instead of the 503 a full disk gets), and a meta node could abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_log_cannot_be_written_keep_serving() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for name in ["gateway-1", "meta-1", "meta-2", "meta-3", "storage-1"] {
        std::os::unix::fs::symlink("/dev/full", logs.join(format!("{name}.log"))).unwrap();
    }
    let base = free_port_base(6);
    let mut opts = options(&dir, base);
    // Every node logs all the time.
    opts.log_level = Some("debug".into());
    let cluster = DevCluster::start(opts).await.unwrap();
    let info = cluster.info().clone();

    // Writes and reads through every role, small (inline) and large.
    let out = Command::new(BIN)
        .args(["bench", "--cluster"])
        .arg(cluster.cluster_file())
        .args(["--workload", "mixed", "--size", "4KiB:50,1MiB:50"])
        .args(["-c", "4", "-n", "60", "--json"])
        .env_remove("TESSERA_BENCH_ENDPOINT")
        .env_remove("TESSERA_BENCH_ACCESS_KEY")
        .env_remove("TESSERA_BENCH_SECRET_KEY")
        .output()
        .expect("run tessera bench");
    let report: tessera_server::bench::report::BenchReport = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| {
            panic!(
                "bench printed no report ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(!report.phases.is_empty());
    for p in &report.phases {
        assert_eq!(p.errors, 0, "{}: {:?}", p.name, p.error_samples);
        assert!(p.ops > 0, "{p:?}");
    }
    // A refused request, which the gateway logs, gets its S3 error.
    let s3 = info.s3_endpoint.trim_start_matches("http://");
    let (status, body) = http_get(s3, "/");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    for n in &info.nodes {
        assert!(alive(n.pid), "{} exited", n.id);
    }
    cluster.stop().await.unwrap();
}

/// A node that panics exits with status 75 (`tessera_observe::crash`), and
/// the supervisor restarts it, whatever its role (before, only meta nodes
/// were). storage-1's first start runs armed with a panic where it writes
/// a shard, through a wrapper binary (`tessera dev` passes no `TESSERA_*`
/// variable on); a bench's PUTs set it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_a_node_that_panicked() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let wrapper = tmp.path().join("tessera-armed");
    let armed_once = tmp.path().join("armed-once");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" storage \"*/storage-1\" \"*)\n  if [ ! -e {mark} ]; then\n    : > {mark}\n    export TESSERA_FAILPOINTS=storage.put.before_fsync=panic\n  fi;;\nesac\nexec {BIN} \"$@\"\n",
            mark = armed_once.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = free_port_base(6);
    let mut opts = options(&dir, base);
    opts.binary = Some(wrapper);
    let mut cluster = DevCluster::start(opts).await.unwrap();
    assert!(armed_once.exists(), "the wrapper did not arm storage-1");
    let file = cluster.cluster_file();
    let storage_1 = |info: &ClusterInfo| {
        info.nodes
            .iter()
            .find(|n| n.role == "storage" && n.argv.iter().any(|a| a.ends_with("/storage-1")))
            .map(|n| (n.pid, n.admin_addr.clone()))
            .unwrap()
    };
    let (first, admin_addr) = storage_1(&ClusterInfo::load(&file).unwrap());

    let stop = tokio_util::sync::CancellationToken::new();
    let supervising = {
        let stop = stop.clone();
        tokio::spawn(async move {
            cluster.supervise(&stop).await;
            cluster
        })
    };
    // Every 1 MiB object has a shard on each of the six nodes, once the
    // gateway's map has all six up: PUT until the armed node has gone.
    // The bench's errors are expected; only the restart matters here.
    let log_of = |name: &str| {
        std::fs::read_to_string(dir.join("logs").join(format!("{name}.log"))).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut bench_said = String::new();
    let restarted = loop {
        let (pid, _) = storage_1(&ClusterInfo::load(&file).unwrap());
        if pid != first && alive(pid) && health(&admin_addr).status.success() {
            break pid;
        }
        if alive(first) {
            let out = tokio::process::Command::new(BIN)
                .args(["bench", "--cluster"])
                .arg(&file)
                .args(["--workload", "put", "--size", "1MiB", "-n", "2", "--json"])
                .output()
                .await
                .expect("run tessera bench");
            bench_said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "storage-1 was not restarted; the last bench said:\n{bench_said}\nstorage-1's log:\n{}\ngateway's log:\n{}",
            log_of("storage-1"),
            log_of("gateway-1")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!alive(first));
    let log = log_of("storage-1");
    assert!(
        log.contains("failpoint storage.put.before_fsync: panic")
            && log.contains("a panic in the storage node")
            && log.contains("exiting with status 75"),
        "{log}"
    );
    stop.cancel();
    let cluster = supervising.await.unwrap();
    let (pid, _) = storage_1(&ClusterInfo::load(&file).unwrap());
    assert_eq!(pid, restarted, "restarted more than once");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_the_same_dir_is_refused() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let base = free_port_base(6);
    let cluster = DevCluster::start(options(&dir, base)).await.unwrap();
    let err = DevCluster::start(options(&dir, base))
        .await
        .err()
        .expect("second start must fail");
    assert!(err.to_string().contains("already running"), "{err:#}");
    cluster.stop().await.unwrap();
}

#[test]
fn children_die_with_a_killed_supervisor() {
    let _serial = SERIAL.blocking_lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let base = free_port_base(6);
    let mut dev = Command::new(BIN)
        .args(["dev", "--port-base", &base.to_string(), "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kills the supervisor even if an assertion below fails.
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut dev);

    let file = dir.join("cluster.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !file.exists() {
        assert!(Instant::now() < deadline, "dev never became ready");
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "dev exited early; see {}",
            dir.join("logs").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let info = ClusterInfo::load(&file).unwrap();
    let pids: Vec<u32> = info.nodes.iter().map(|n| n.pid).collect();
    assert!(pids.iter().all(|p| alive(*p)));

    drop(guard); // SIGKILL, no chance to clean up
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "children outlived the supervisor: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
