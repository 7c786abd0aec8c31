#!/usr/bin/env python3
"""Repair benchmark (the acceptance measurement of issue 6): on
`tessera dev --storage-nodes 8`, write objects until the storage nodes hold
>= 2 GiB of shards, measure client GET p99 under a light steady load, kill -9
one storage node, wait until meta marks it down and repair runs, and measure
the time back to full redundancy, the repair rate (MB/s of rebuilt shard data,
from durability.repaired_bytes) and client p99 during the repair. Then kill
two more storage nodes and check that every object reads back identical.

Not in CI (it takes minutes). See chaos/README.md.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, free_port_base, scrape  # noqa: E402
import workload as wl  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shard_bytes(cluster, nodes=None):
    total = 0
    for s in nodes or cluster.storage():
        for dirpath, _, files in os.walk(os.path.join(s.data_dir, "shards")):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
    return total


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


class Prober:
    """Light steady GET load on small objects; latencies tagged by phase."""

    def __init__(self, info, bucket, keys, rate=20.0):
        self.s3 = wl.s3_client(info, retries=1, read_timeout=30)
        self.bucket, self.keys, self.gap = bucket, keys, 1.0 / rate
        self.phase = "idle"
        self.samples = {}  # phase -> [seconds]
        self.errors = {}
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        rng = random.Random(7)
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            t0 = time.perf_counter()
            phase = self.phase
            try:
                r = self.s3.get_object(Bucket=self.bucket, Key=key)
                r["Body"].read()
                self.samples.setdefault(phase, []).append(time.perf_counter() - t0)
            except Exception:
                self.errors[phase] = self.errors.get(phase, 0) + 1
            time.sleep(max(0.0, self.gap - (time.perf_counter() - t0)))

    def summary(self, phase):
        xs = self.samples.get(phase, [])
        return {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1000, 1), "p99_ms": round(pct(xs, 99) * 1000, 1),
                "max_ms": round(max(xs) * 1000, 1) if xs else None, "errors": self.errors.get(phase, 0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage-nodes", type=int, default=8)
    ap.add_argument("--zones", type=int, default=None, help="default: tessera dev's")
    ap.add_argument("--shard-gib", type=float, default=2.0, help="shards to hold before the kill (GiB)")
    ap.add_argument("--down-after-ms", type=int, default=10000,
                    help="meta's down timeout for the run (the meta default is 60000)")
    ap.add_argument("--object-mib", type=float, default=8.0, help="largest object written (MiB)")
    ap.add_argument("--writers", type=int, default=6)
    ap.add_argument("--probe-rate", type=float, default=20.0, help="GETs per second of the latency probe")
    ap.add_argument("--baseline-secs", type=float, default=20.0)
    ap.add_argument("--bound", type=float, default=1800.0, help="give up waiting for repair after this long")
    ap.add_argument("--repair-rate", help="run `tessera admin repair --rate X` first, e.g. 400MiB/s, 0 = unlimited")
    ap.add_argument("--repair-concurrency", type=int, help="run `tessera admin repair --concurrency N` first")
    ap.add_argument("--port-base", type=int)
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="tessera-repair-bench-"))
    c = Cluster(os.path.join(workdir, "cluster"), args.port_base or free_port_base(),
                storage_nodes=args.storage_nodes, zones=args.zones or 3, k=4, m=2,
                down_after_ms=args.down_after_ms, suspect_after_ms=min(3000, args.down_after_ms))
    figures = {}
    ok = False
    try:
        t0 = time.time()
        c.start()
        log(f"tessera dev up in {time.time() - t0:.1f}s ({c.bin}); data in {c.dir}")
        settings = []
        if args.repair_rate:
            settings += ["--rate", args.repair_rate]
        if args.repair_concurrency:
            settings += ["--concurrency", str(args.repair_concurrency)]
        if settings:
            r = c.admin("repair", *settings)
            log(f"admin repair {' '.join(settings)}: rc {r.returncode} {r.stdout.strip()} {r.stderr.strip()}")
            if r.returncode != 0:
                raise RuntimeError("tessera admin repair refused the settings")
        s3 = wl.s3_client(c.info, retries=5)
        bucket = "bench"
        s3.create_bucket(Bucket=bucket)

        # 1. Fill: probe objects (256 KiB) and bulk objects up to the target.
        pool = random.Random(1).randbytes(int(args.object_mib * MiB) + 4096)
        hashes = {}
        lock = threading.Lock()

        def put(key, size, off):
            body = key.encode().ljust(64, b".") + pool[off:off + max(0, size - 64)]
            body = body[:size]
            cli = getattr(tls, "s3", None)
            if cli is None:
                cli = tls.s3 = wl.s3_client(c.info, retries=5)
            for attempt in range(5):
                try:
                    cli.put_object(Bucket=bucket, Key=key, Body=body)
                    break
                except Exception:
                    if attempt == 4:
                        raise
                    time.sleep(1)
            with lock:
                hashes[key] = (hashlib.sha256(body).hexdigest(), len(body))

        tls = threading.local()
        rng = random.Random(2)
        probe_keys = [f"probe/{i}" for i in range(100)]
        with concurrent.futures.ThreadPoolExecutor(args.writers) as ex:
            list(ex.map(lambda k: put(k, 256 << 10, rng.randrange(4096)), probe_keys))
        target = int(args.shard_gib * GiB)
        t_fill = time.time()
        written, i = 0, 0
        with concurrent.futures.ThreadPoolExecutor(args.writers) as ex:
            while True:
                have = shard_bytes(c)
                if have >= target:
                    break
                batch = []
                for _ in range(args.writers * 4):
                    size = rng.randint(MiB, int(args.object_mib * MiB))
                    batch.append(ex.submit(put, f"bulk/{i:06d}", size, rng.randrange(4096)))
                    written += size
                    i += 1
                for f in batch:
                    f.result()
                log(f"fill: {i} objects, {written / GiB:.2f} GiB written, shards on disk {have / GiB:.2f} GiB")
        fill_s = time.time() - t_fill
        have = shard_bytes(c)
        figures["objects"] = len(hashes)
        figures["object_bytes"] = sum(n for _, n in hashes.values())
        figures["shard_bytes_before"] = have
        figures["fill_MBps"] = round(written / fill_s / 1e6, 1)
        log(f"filled: {len(hashes)} objects, {figures['object_bytes'] / GiB:.2f} GiB of objects, "
            f"{have / GiB:.2f} GiB of shards, {figures['fill_MBps']} MB/s client writes")

        # 2. Baseline latency.
        prober = Prober(c.info, bucket, probe_keys, rate=args.probe_rate)
        prober.phase = "before"
        prober.t.start()
        scrub0 = {s.name: scrape(s.admin_addr, "tessera_storage_scrub_bytes_total") for s in c.storage()}
        t_scrub0 = time.time()
        time.sleep(args.baseline_secs)

        # 3. Kill one storage node.
        victim = c.storage()[0]
        victim_bytes = shard_bytes(c, [victim])
        st = c.status() or {}
        d0 = (st.get("durability") or {})
        rep0 = d0.get("repaired_bytes", 0)
        prober.phase = "detecting"
        t_kill = time.time()
        c.kill(victim)
        log(f"killed {victim.name} ({victim.addr}) holding {victim_bytes / GiB:.2f} GiB of shards")
        t_down = None
        while time.time() - t_kill < args.bound:
            if c.storage_states().get(victim.addr) == "down":
                t_down = time.time()
                break
            time.sleep(0.5)
        if t_down is None:
            raise RuntimeError(f"{victim.name} never marked down")
        figures["detect_s"] = round(t_down - t_kill, 1)
        log(f"{victim.name} marked down after {figures['detect_s']}s; repair should run now")
        prober.phase = "repair"

        # 4. Repair until full redundancy.
        width = 6
        timeline = []
        t_first = None
        t_full = None
        last_print = 0
        while time.time() - t_down < args.bound:
            st = c.status() or {}
            d = st.get("durability")
            if d is None:
                raise RuntimeError("`tessera admin status --json` has no durability object: repair status "
                                   "is not in this build")
            now = time.time()
            rb = d.get("repaired_bytes", 0) - rep0
            timeline.append((now - t_down, rb, d.get("queued"), d.get("leased")))
            if t_first is None and rb > 0:
                t_first = now
            below = [p for p in d.get("queued_by_surviving") or [] if p[0] < width and p[1] > 0]
            if d.get("queued") == 0 and not below and rb > 0:
                t_full = now
                break
            if now - last_print > 5:
                last_print = now
                log(f"repair: +{rb / 1e6:.0f} MB rebuilt, queued {d.get('queued')} {d.get('queued_by_surviving')}, "
                    f"leased {d.get('leased')}")
            time.sleep(0.5)
        prober.phase = "after"
        if t_full is None:
            raise RuntimeError(f"not back to full redundancy {args.bound}s after the node was marked down")
        d_end = (c.status() or {}).get("durability") or {}
        rebuilt = d_end.get("repaired_bytes", 0) - rep0
        figures["rebuilt_bytes"] = rebuilt
        figures["repair_s_from_down"] = round(t_full - t_down, 1)
        figures["full_redundancy_s_from_kill"] = round(t_full - t_kill, 1)
        figures["repair_MBps"] = round(rebuilt / max(0.001, t_full - t_down) / 1e6, 1)
        figures["repair_config"] = d_end.get("config")
        # Peak over 2 s windows.
        peak = 0.0
        for j, (t, b, _, _) in enumerate(timeline):
            for t2, b2, _, _ in timeline[j + 1:]:
                if t2 - t >= 2:
                    peak = max(peak, (b2 - b) / (t2 - t))
                    break
        figures["repair_peak_MBps_2s"] = round(peak / 1e6, 1)
        time.sleep(min(10.0, args.baseline_secs))
        prober.stop.set()
        prober.t.join(10)
        scrub1 = {s.name: scrape(s.admin_addr, "tessera_storage_scrub_bytes_total") for s in c.storage()
                  if s is not victim}
        scrub_s = time.time() - t_scrub0
        figures["p_before"] = prober.summary("before")
        figures["p_detecting"] = prober.summary("detecting")
        figures["p_repair"] = prober.summary("repair")
        figures["p_after"] = prober.summary("after")
        # Scrub rate while a pass runs: on a node that has completed exactly
        # one pass (dev: the first starts 30 s after the node, the next one
        # 10 min later), the bytes it re-hashed over that pass's duration.
        rates = []
        for s in c.storage():
            if s is victim:
                continue
            passes = scrape(s.admin_addr, "tessera_storage_scrub_passes_total")
            secs = scrape(s.admin_addr, "tessera_storage_scrub_last_pass_seconds")
            done = scrape(s.admin_addr, "tessera_storage_scrub_bytes_total")
            if passes == 1 and secs and done:
                rates.append(done / secs / 1e6)
        if rates:
            figures["scrub_pass_MBps"] = {"nodes": len(rates), "min": round(min(rates), 1),
                                          "max": round(max(rates), 1)}
        deltas = [v - scrub0[k] for k, v in scrub1.items() if v is not None and scrub0.get(k) is not None]
        if deltas:
            figures["scrub"] = {"nodes": len(deltas), "seconds": round(scrub_s, 1),
                                "MBps_per_node_avg": round(sum(deltas) / len(deltas) / scrub_s / 1e6, 1),
                                "MBps_per_node_max": round(max(deltas) / scrub_s / 1e6, 1),
                                "MB_total": round(sum(deltas) / 1e6, 1)}

        # 5. Two more nodes down: every object must still read back identical.
        more = c.storage()[1:3]
        for s in more:
            c.kill(s)
        log(f"killed {[s.name for s in more]} too; reading back {len(hashes)} objects")
        bad = []
        t_v = time.time()

        def verify(key):
            cli = getattr(tls, "s3v", None)
            if cli is None:
                cli = tls.s3v = wl.s3_client(c.info, retries=3, read_timeout=120)
            want = hashes[key]
            for attempt in range(3):
                try:
                    got = wl.get_value(cli, bucket, key)
                    break
                except Exception as e:
                    got = ("error", str(e)[:100])
                    time.sleep(1)
            if got != want:
                bad.append((key, want, got))

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(ex.map(verify, sorted(hashes)))
        figures["verify_s"] = round(time.time() - t_v, 1)
        figures["verified"] = len(hashes) - len(bad)
        figures["bad"] = len(bad)
        figures["bad_examples"] = bad[:5]
        ok = not bad
    except KeyboardInterrupt:
        log("interrupted")
    except Exception as e:
        log(f"FAILED: {type(e).__name__}: {e}")
    finally:
        c.close()

    f = figures
    print("=" * 78)
    print(f"load average at the end: {os.getloadavg()} on {os.cpu_count()} CPUs")
    print("TESSERA REPAIR BENCHMARK  RS(4,2), %d storage nodes, down-after %d ms, binary %s"
          % (args.storage_nodes, args.down_after_ms, c.bin))
    if "objects" in f:
        print(f"  data            : {f['objects']} objects, {f['object_bytes'] / GiB:.2f} GiB; "
              f"{f['shard_bytes_before'] / GiB:.2f} GiB of shards on 8 nodes; fill {f['fill_MBps']} MB/s")
    if "detect_s" in f:
        print(f"  kill -> down    : {f['detect_s']} s")
    if "repair_MBps" in f:
        print(f"  repair          : {f['rebuilt_bytes'] / 1e6:.0f} MB rebuilt in {f['repair_s_from_down']} s after down; "
              f"{f['repair_MBps']} MB/s average, {f['repair_peak_MBps_2s']} MB/s peak (2 s)")
        print(f"  full redundancy : {f['full_redundancy_s_from_kill']} s after the kill")
    for ph in ("before", "detecting", "repair", "after"):
        if f"p_{ph}" in f:
            print(f"  GET 256 KiB {ph:9s}: {f['p_' + ph]}")
    if "repair_config" in f:
        print(f"  repair config   : {f['repair_config']}")
    if "scrub_pass_MBps" in f:
        sp = f["scrub_pass_MBps"]
        print(f"  scrub pass rate : {sp['min']}-{sp['max']} MB/s per node (bytes re-hashed in the first pass / "
              f"its duration, {sp['nodes']} nodes; configured limit 64 MiB/s)")
    if "scrub" in f:
        sc = f["scrub"]
        print(f"  scrub           : {sc['MB_total']} MB re-hashed on {sc['nodes']} nodes in {sc['seconds']} s "
              f"(tessera_storage_scrub_bytes_total): {sc['MBps_per_node_avg']} MB/s per node on average, "
              f"{sc['MBps_per_node_max']} max (includes idle time between passes)")
    if "verified" in f:
        print(f"  3 nodes down    : {f['verified']} objects identical, {f['bad']} bad {f['bad_examples']}")
    print(f"  result          : {'PASS' if ok else 'FAIL'}")
    print("=" * 78, flush=True)
    with open(os.path.join(workdir, "repair-bench.json"), "w") as fh:
        json.dump(f, fh, indent=2, default=str)
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"data and logs kept in {workdir}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
