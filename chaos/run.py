#!/usr/bin/env python3
"""Tessera chaos runner: a real multi-process `tessera dev` cluster, a client
workload that records every acknowledged write (SHA-256) and delete, faults
from a seeded random schedule, then checks:

  - every acknowledged object reads back byte-identical, no acknowledged
    delete came back (final read of every key);
  - no read during the run returned wrong bytes or older data than the last
    acknowledged write (single-writer keys, see workload.py);
  - the cluster returns to full redundancy (durability.queued == 0, no stripe
    below k+m) within a bound after the faults stop, and then really is
    redundant: m storage nodes are killed and every object is read again.

Prints one report and exits 1 on any loss, wrong or stale read, or missed
redundancy; 2 when the harness itself failed. See chaos/README.md.
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, free_port_base, privileged, reap_stale, tail  # noqa: E402
import workload as wl  # noqa: E402

MiB = 1 << 20

PROFILES = {
    # CI: fixed seeds, ~2-3 minutes in all on a small machine.
    "short": dict(seeds=[1, 2], duration=35, mean_gap=2.0, outage=(2, 9), meta_outage=(2, 6),
                  gw_outage=(1, 3), disk_full=(4, 10), suspect_ms=1000, down_ms=4000,
                  heal_bound=90, writers=3, deleters=1, readers=2, keys_per_writer=16,
                  max_size=2 * MiB, multipart_p=0.03, scrub_period_ms=10000, tmpfs=768 * MiB, stable=16),
    # On demand: longer, more keys, bigger objects, longer outages.
    "long": dict(seeds=None, duration=600, mean_gap=4.0, outage=(2, 30), meta_outage=(2, 15),
                 gw_outage=(1, 8), disk_full=(5, 40), suspect_ms=2000, down_ms=8000,
                 heal_bound=300, writers=4, deleters=2, readers=3, keys_per_writer=25,
                 max_size=6 * MiB, multipart_p=0.05, scrub_period_ms=30000, tmpfs=4096 * MiB, stable=64),
}

FAULT_WEIGHTS = {
    "kill_storage": 3.0,
    "stop_storage": 2.0,
    "partition_storage": 1.5,
    "kill_meta": 1.5,
    "kill_gateway": 1.0,
    "corrupt_shards": 1.5,
    "delete_shards": 1.0,
    "full_disk": 1.0,
}

STORAGE_OUTAGES = ("kill_storage", "stop_storage", "partition_storage")


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shard_data_span(path):
    """[start, end) of the shard bytes in a shard file (format 1: right
    after the 48-byte header; format 2: after a 4096-byte header block,
    then zero padding), or None if it has no readable header."""
    try:
        with open(path, "rb") as f:
            head = f.read(48)
    except OSError:
        return None
    if len(head) < 48 or head[:4] != b"TSHD" or head[4] not in (1, 2):
        return None
    start = 48 if head[4] == 1 else 4096
    return start, start + int.from_bytes(head[8:16], "little")


def make_schedule(seed, prof, duration, kinds):
    """[(t, kind, duration, pick)]: the seeded fault schedule. `pick` (0..1)
    chooses the target among the eligible ones when the fault starts."""
    rng = random.Random(f"schedule-{seed}")
    weights = [FAULT_WEIGHTS[k] for k in kinds]
    # Every kind once first (in a seeded order), then weighted draws.
    first = list(kinds)
    rng.shuffle(first)
    t, out = 1.0, []
    while True:
        t += rng.expovariate(1.0 / prof["mean_gap"])
        if t >= duration:
            return out
        kind = first.pop(0) if first else rng.choices(kinds, weights)[0]
        span = {"kill_meta": prof["meta_outage"], "kill_gateway": prof["gw_outage"],
                "full_disk": prof["disk_full"]}.get(kind, prof["outage"])
        d = round(rng.uniform(*span), 2) if kind not in ("corrupt_shards", "delete_shards") else 0.0
        pick = rng.random()
        if kind == "kill_meta" and not any(e[1] == "kill_meta" for e in out):
            pick *= 0.5  # the first meta kill takes the leader
        out.append((round(t, 2), kind, d, pick, rng.randint(1, 3)))


class Chaos:
    """One seed: cluster, workload, faults, checks."""

    def __init__(self, args, prof, seed, port_base):
        self.args = args
        self.prof = prof
        self.seed = seed
        self.rng = random.Random(f"targets-{seed}")
        self.dir = os.path.join(args.workdir, f"seed-{seed}")
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        self.cluster = Cluster(self.dir, port_base, storage_nodes=args.storage_nodes, zones=args.zones,
                               k=args.k, m=args.m, suspect_after_ms=prof["suspect_ms"],
                               down_after_ms=prof["down_ms"], log_level=args.log_level)
        self.bridge = None
        self.partition_node = None
        self.disk_node = None
        self.ballast = None
        self.active = []  # [(end time, kind, node)]
        self.injected = {}
        self.skipped = {}
        self.unavailable = {}
        self.damaged = {}  # stripe -> [(index, node, path, inode, how)]
        self.damaged_total = 0
        self.timeline = []
        self.notes = []

    # ---- setup -----------------------------------------------------------

    def setup(self):
        c = self.cluster
        t0 = time.time()
        c.start()
        log(f"seed {self.seed}: tessera dev up in {time.time() - t0:.1f}s at {c.info['s3_endpoint']} ({self.dir})")
        storage = c.storage()
        help_text = c.storage_help()
        # Chaos settings for every storage node, when this build has them: a
        # scrub pass every few seconds (so corrupt shards nobody reads are
        # found within the run) and an orphan scan (so it runs under faults).
        extra = {}
        for flag, value in (("--scrub-period-ms", self.prof["scrub_period_ms"]),
                            ("--orphan-scan-interval-ms", 15000), ("--orphan-safety-age-ms", 60000)):
            if flag in help_text:
                extra[flag] = value
            else:
                self.notes.append(f"`tessera storage` has no {flag}")
        if privileged() and not self.args.no_privileged:
            self.partition_node = storage[-1]
            self.disk_node = storage[-2]
        else:
            self.notes.append("not root with CAP_SYS_ADMIN: no network partition (netns) and no full "
                              "disk (tmpfs) faults")
        restart = [s for s in storage if extra or s in (self.partition_node, self.disk_node)]
        if not restart:
            return
        # Before any client traffic: take the storage nodes we reconfigure
        # under our control (same argv, plus the config file / namespace).
        for s in restart:
            c.kill(s)
            s.overrides = dict(extra)
        if self.disk_node:
            c.move_to_tmpfs(self.disk_node, self.prof["tmpfs"])
        if self.partition_node:
            self._setup_partition(self.partition_node)
        for s in restart:
            c.restart(s)
        took = c.wait_all_storage_up(60)
        if took is None:
            raise RuntimeError("storage nodes not all up after the setup restart: "
                               + json.dumps(c.storage_states()))
        log(f"setup: {len(restart)} storage nodes restarted"
            + (f", {self.partition_node.name} in netns {self.partition_node.netns}" if self.partition_node else "")
            + (f", {self.disk_node.name} on a {self.prof['tmpfs'] >> 20} MiB tmpfs" if self.disk_node else "")
            + (", with " + " ".join(f"{k} {v}" for k, v in extra.items()) if extra else ""))

    def _setup_partition(self, node):
        from netfault import Bridge
        c = self.cluster
        ns = f"tchaos-{os.getpid()}-{self.seed}"
        c.make_netns(ns)
        node.netns = ns
        port = int(node.addr.rsplit(":", 1)[1])
        inbound = [port]
        if node.admin_addr:
            inbound.append(int(node.admin_addr.rsplit(":", 1)[1]))
        outbound = [int(m.addr.rsplit(":", 1)[1]) for m in c.metas()]
        self.bridge = Bridge(ns, inbound, outbound)
        self.bridge.start()
        c.cleanups.append(self.bridge.close)
        node.accept_check = lambda: self.bridge.ns_accepts(port)

    # ---- faults ----------------------------------------------------------

    def impaired(self):
        return {s.name for s in self.cluster.storage() if s.state != "up" or self._partitioned(s)}

    def _partitioned(self, s):
        return s is self.partition_node and self.bridge is not None and self.bridge.partitioned

    def shard_holders(self, stripe):
        """{node name: [paths]} of the files of `stripe` on every node."""
        out = {}
        for p in glob.glob(os.path.join(self.dir, "storage-*", "shards", stripe[:2], stripe + ".*")):
            name = p[len(self.dir) + 1:].split(os.sep)[0]
            out.setdefault(name, []).append(p)
        return out

    def _heal_damage_bookkeeping(self):
        """Drops damaged shards that have been rebuilt (a file of the same
        stripe and index exists that is not our damaged one) or whose stripe
        is gone from every node."""
        for stripe in list(self.damaged):
            holders = self.shard_holders(stripe)
            all_paths = [p for ps in holders.values() for p in ps]
            keep = []
            for (idx, node, path, ino, how) in self.damaged[stripe]:
                if not all_paths:
                    continue
                rebuilt = False
                for p in all_paths:
                    if not p.endswith(f".{idx}"):
                        continue
                    try:
                        st = os.stat(p)
                    except OSError:
                        continue
                    if p != path or st.st_ino != ino:
                        rebuilt = True
                if not rebuilt:
                    keep.append((idx, node, path, ino, how))
            if keep:
                self.damaged[stripe] = keep
            else:
                del self.damaged[stripe]

    def lost_nodes(self, stripe, impaired):
        """Nodes whose shard of `stripe` is unusable: impaired ones holding
        it and the ones holding a damaged shard of it."""
        holders = self.shard_holders(stripe)
        lost = {n for n in holders if n in impaired}
        lost |= {node for (_, node, _, _, _) in self.damaged.get(stripe, [])}
        return lost

    def storage_outage_allowed(self, node, extra=()):
        """At most m storage nodes out at once, and no damaged stripe may
        lose more than m shards in all."""
        imp = self.impaired() | {node.name} | set(extra)
        if len(imp) > self.args.m:
            return False
        self._heal_damage_bookkeeping()
        return all(len(self.lost_nodes(s, imp)) <= self.args.m for s in self.damaged)

    def start_fault(self, kind, dur, pick, count, now):
        c = self.cluster
        storage = c.storage()
        up = [s for s in storage if s.state == "up" and not self._partitioned(s)]

        def choose(cands):
            return cands[int(pick * len(cands)) % len(cands)] if cands else None

        if kind in STORAGE_OUTAGES:
            cands = [s for s in up if self.storage_outage_allowed(s)]
            if kind == "partition_storage":
                cands = [s for s in cands if s is self.partition_node]
            node = choose(cands)
            if node is None:
                return self._skip(kind)
            if kind == "kill_storage":
                c.kill(node)
            elif kind == "stop_storage":
                c.stop(node)
            else:
                self.bridge.partition()
            self.active.append((now + dur, kind, node))
            return self._did(kind, f"{node.name} for {dur:.1f}s")
        if kind == "kill_meta":
            if any(k == "kill_meta" for _, k, _ in self.active):
                return self._skip(kind)
            node = c.leader() if pick < 0.5 else None
            label = "leader"
            if node is None:
                node = choose(c.metas())
                label = "follower" if pick >= 0.5 else "leader unknown, random"
            c.kill(node)
            self.active.append((now + dur, kind, node))
            self.injected["kill_meta_leader" if label == "leader" else "kill_meta_follower"] = \
                self.injected.get("kill_meta_leader" if label == "leader" else "kill_meta_follower", 0) + 1
            return self._did(kind, f"{node.name} ({label}) for {dur:.1f}s")
        if kind == "kill_gateway":
            gw = c.gateway()
            if gw.state != "up":
                return self._skip(kind)
            c.kill(gw)
            self.active.append((now + dur, kind, gw))
            return self._did(kind, f"for {dur:.1f}s")
        if kind in ("corrupt_shards", "delete_shards"):
            return self._damage(kind, up, pick, count)
        if kind == "full_disk":
            node = self.disk_node
            if node is None or self.ballast is not None:
                return self._skip(kind)
            n = self._fill_disk(node)
            self.active.append((now + dur, kind, node))
            return self._did(kind, f"{node.name}: {n >> 20} MiB ballast, disk full for {dur:.1f}s")
        raise ValueError(kind)

    def _damage(self, kind, up, pick, count):
        self._heal_damage_bookkeeping()
        imp = self.impaired()
        cands = [s for s in up if s.state == "up"]
        if not cands:
            return self._skip(kind)
        node = cands[int(pick * len(cands)) % len(cands)]
        files = [p for p in self.stable_files.get(node.name, []) if os.path.exists(p)]
        self.rng.shuffle(files)
        done = []
        for p in files[:400]:
            if len(done) >= count:
                break
            base = os.path.basename(p)
            stripe, _, idx = base.rpartition(".")
            if not idx.isdigit() or stripe in self.damaged:
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            span = shard_data_span(p)
            if span is None or span[0] == span[1]:
                continue  # header only, or not a shard file
            # Never more than m unusable shards in one stripe (the fault
            # model); later outages are checked against this damage too.
            if len(self.lost_nodes(stripe, imp) | {node.name}) > self.args.m:
                continue
            if kind == "corrupt_shards":
                with open(p, "r+b") as f:
                    for _ in range(self.rng.randint(1, 8)):
                        off = self.rng.randrange(*span)
                        f.seek(off)
                        b = f.read(1)
                        f.seek(off)
                        f.write(bytes([b[0] ^ 0xFF]))
                    f.flush()
                    os.fsync(f.fileno())
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
                ino = st.st_ino
            else:
                os.remove(p)
                ino = -1
            self.damaged.setdefault(stripe, []).append((int(idx), node.name, p, ino, kind))
            done.append(base)
        if not done:
            return self._skip(kind)
        self.damaged_total += len(done)
        self.injected[kind + "_files"] = self.injected.get(kind + "_files", 0) + len(done)
        return self._did(kind, f"{node.name}: {', '.join(done)}")

    def _fill_disk(self, node):
        """Writes a ballast file until the node's (tmpfs) disk says ENOSPC."""
        self.ballast = os.path.join(node.data_dir, "chaos-ballast")
        n = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (4 * MiB, 64 << 10, 4096, 512):
                chunk = b"\0" * size
                try:
                    while True:
                        n += os.write(fd, chunk)
                except OSError:
                    pass
        finally:
            os.close(fd)
        return n

    def end_fault(self, kind, node):
        c = self.cluster
        if kind == "kill_storage" or kind == "kill_meta" or kind == "kill_gateway":
            c.restart(node)
        elif kind == "stop_storage":
            c.cont(node)
        elif kind == "partition_storage":
            self.bridge.heal()
        elif kind == "full_disk":
            if self.ballast and os.path.exists(self.ballast):
                os.remove(self.ballast)
            self.ballast = None
        self.timeline.append((time.time() - self.t0, f"end {kind} {node.name}"))

    def _did(self, kind, what):
        self.injected[kind] = self.injected.get(kind, 0) + 1
        self.timeline.append((time.time() - self.t0, f"{kind} {what}"))
        log(f"fault {kind}: {what}")

    def _skip(self, kind):
        self.skipped[kind] = self.skipped.get(kind, 0) + 1

    def heal_all(self):
        for end, kind, node in sorted(self.active, key=lambda a: a[0]):
            try:
                self.end_fault(kind, node)
            except Exception as e:
                self.notes.append(f"healing {kind} on {node.name} failed: {e}")
                raise
        self.active = []

    # ---- the run -----------------------------------------------------------

    def run(self):
        a, p = self.args, self.prof
        c = self.cluster
        duration = a.duration or p["duration"]
        kinds = [k for k in FAULT_WEIGHTS if not (
            (k == "partition_storage" and self.partition_node is None)
            or (k == "full_disk" and self.disk_node is None))]
        for k in FAULT_WEIGHTS:
            if k not in kinds:
                self.unavailable[k] = "needs root with CAP_SYS_ADMIN"
        schedule = make_schedule(self.seed, p, duration, kinds)
        s3 = wl.s3_client(c.info, retries=5)
        bucket = f"chaos-{self.seed}"
        for i in range(50):
            try:
                s3.create_bucket(Bucket=bucket)
                break
            except Exception:
                if i == 49:
                    raise
                time.sleep(0.5)
        self.workload = wl.Workload(c.info, bucket, self.seed, writers=p["writers"], deleters=p["deleters"],
                                    readers=p["readers"], keys_per_writer=p["keys_per_writer"],
                                    max_size=p["max_size"], multipart_p=p["multipart_p"])
        self.workload.put_stable(p["stable"])
        # Their shard files (the only ones on disk yet): what damage faults
        # may hit, since these stripes stay live and must be repaired.
        self.stable_files = {}
        for node in c.storage():
            self.stable_files[node.name] = sorted(glob.glob(os.path.join(node.data_dir, "shards", "*", "*.*")))
        self.workload.start()
        log(f"seed {self.seed}: workload running; {len(schedule)} faults scheduled over {duration}s")
        self.t0 = time.time()
        events = list(schedule)
        while True:
            now = time.time() - self.t0
            for item in sorted([x for x in self.active if x[0] <= now], key=lambda x: x[0]):
                self.active.remove(item)
                self.end_fault(item[1], item[2])
            if now >= duration and not events:
                break
            if events and events[0][0] <= now:
                t, kind, d, pick, count = events.pop(0)
                self.start_fault(kind, d, pick, count, now)
                continue
            nxt = [x[0] for x in self.active] + ([events[0][0]] if events else [duration])
            time.sleep(max(0.01, min(nxt) - (time.time() - self.t0)))
        self.heal_all()
        self.faults_stopped = time.time()
        log("faults stopped; everything healed")
        stuck = self.workload.stop()
        if stuck:
            self.notes.append(f"workload threads still blocked after stop: {stuck}")
        self.run_seconds = time.time() - self.t0

    def check(self):
        c, p, w = self.cluster, self.prof, self.workload
        r = {"seed": self.seed}
        up = c.wait_all_storage_up(60)
        r["storage_up_after_heal_s"] = up
        # Reads recorded during the run.
        bad = wl.check_reads(w.history, w.reads)
        r["reads_checked"] = len(w.reads)
        r["read_errors"] = w.read_errors
        r["wrong_reads"] = sum(1 for k, _ in bad if k == "wrong-bytes")
        r["stale_reads"] = sum(1 for k, _ in bad if k == "stale")
        r["read_problems"] = [f"{k} {rd.key} by {rd.who}: {wl.describe(w.history[rd.key], rd)}" for k, rd in bad[:10]]
        ops = [op for ops in w.history.values() for op in ops]
        r["puts_acked"] = sum(1 for op in ops if op.kind == "put" and op.ok)
        r["multipart_acked"] = sum(1 for op in ops if op.kind == "multipart" and op.ok)
        r["deletes_acked"] = sum(1 for op in ops if op.kind == "delete" and op.ok)
        r["ops_failed"] = dict(w.errors)
        r["bytes_acked"] = sum(op.size for op in ops if op.ok and op.kind != "delete")
        r["error_samples"] = w.error_samples[:8]
        # Every key, once, after the faults.
        log("final read of every key")
        r["final"] = wl.final_verify(w.history, c.info, w.bucket, deadline_s=120)
        # Back to full redundancy.
        r["redundancy"] = self.wait_redundancy(p["heal_bound"])
        # Proof of redundancy: m storage nodes down, every object still reads.
        r["proof"] = self.proof() if r["redundancy"].get("reached") else {"skipped": "redundancy not reached"}
        self._heal_damage_bookkeeping()
        r["damaged_shards"] = self.damaged_total
        r["damaged_not_rebuilt"] = sum(len(v) for v in self.damaged.values())
        r["injected"] = dict(sorted(self.injected.items()))
        r["skipped"] = dict(sorted(self.skipped.items()))
        r["unavailable"] = self.unavailable
        r["notes"] = self.notes
        r["run_seconds"] = round(self.run_seconds, 1)
        return r

    def wait_redundancy(self, bound):
        """Polls `admin status --json` until durability.queued == 0 and no
        stripe is below k+m, at most `bound` seconds after the faults
        stopped."""
        c = self.cluster
        width = self.args.k + self.args.m
        deadline = self.faults_stopped + bound
        last, seen, why = None, False, None
        last_log = time.time()
        while True:
            st = c.status()
            d = (st or {}).get("durability")
            if d is not None:
                seen = True
                below = [pair for pair in d.get("queued_by_surviving") or [] if pair[0] < width and pair[1] > 0]
                last = {k: d.get(k) for k in ("stripes", "queued", "leased", "queued_by_surviving",
                                               "at_risk_unreadable", "repaired_stripes", "repaired_bytes",
                                               "gc_items", "gc_stripes")}
                states = {s["addr"]: s["state"] for s in st.get("storage") or []}
                all_up = all(states.get(s.addr) == "up" for s in c.storage())
                self._heal_damage_bookkeeping()
                if d.get("queued") == 0 and not below and all_up and not self.damaged:
                    return {"reached": True, "seconds": round(time.time() - self.faults_stopped, 1),
                            "bound": bound, "durability": last}
                if d.get("queued") or below:
                    why = "repair queue not empty"
                elif not all_up:
                    why = "storage nodes not all up: %s" % states
                else:
                    left = [f"{how} {stripe}.{idx} on {node} ({'data' if idx < self.args.k else 'parity'})"
                            for stripe, v in self.damaged.items() for (idx, node, _, _, how) in v]
                    why = ("queue empty, but damaged shard files were never rebuilt (nothing found them): "
                           + "; ".join(left[:6]))
            elif st is None:
                why = "`tessera admin status --json` failed"
            if why and time.time() - last_log >= 10:
                last_log = time.time()
                log(f"waiting for full redundancy ({time.time() - self.faults_stopped:.0f}s): {why}; {last}")
            if time.time() > deadline:
                if not seen:
                    why = ("`tessera admin status --json` has no durability object (repair status not "
                           "available in this build)")
                return {"reached": False, "bound": bound, "why": why, "durability": last}
            time.sleep(1)

    def proof(self):
        c = self.cluster
        storage = c.storage()
        order = list(storage)
        random.Random(f"proof-{self.seed}").shuffle(order)
        chosen = []
        for s in order:
            if len(chosen) == self.args.m:
                break
            if self.storage_outage_allowed(s, extra=[x.name for x in chosen]):
                chosen.append(s)
        for s in chosen:
            c.kill(s)
        log(f"proof: killed {[s.name for s in chosen]}; reading every key again")
        out = wl.final_verify(self.workload.history, c.info, self.workload.bucket, deadline_s=60)
        for s in chosen:
            c.restart(s)
        out["killed"] = [s.name for s in chosen]
        return out

    def close(self):
        self.cluster.close()


def failed(r):
    f = r["final"]
    reasons = []
    for key in ("wrong_reads", "stale_reads"):
        if r[key]:
            reasons.append(f"{r[key]} {key.replace('_', ' ')}")
    for key in ("lost", "resurrected", "stale", "wrong_bytes"):
        if f[key]:
            reasons.append(f"final read: {f[key]} {key}")
    if not r["redundancy"].get("reached"):
        reasons.append("full redundancy not reached within %ss: %s" % (r["redundancy"]["bound"],
                                                                     r["redundancy"].get("why")))
    pr = r["proof"]
    if "skipped" not in pr:
        for key in ("lost", "resurrected", "stale", "wrong_bytes"):
            if pr[key]:
                reasons.append(f"with {pr['killed']} down: {pr[key]} {key}")
    return reasons


def print_report(args, results, harness_errors):
    line = "=" * 78
    print(line)
    print(f"TESSERA CHAOS REPORT  profile={args.profile}  seeds={[r['seed'] for r in results] or args.seeds}  "
          f"RS({args.k},{args.m}) on {args.storage_nodes} storage nodes / {args.zones} zones")
    total = {"faults": 0, "objects": 0, "verified": 0, "lost": 0, "wrong": 0, "stale": 0}
    for r in results:
        f = r["final"]
        red = r["redundancy"]
        print(line)
        print(f"seed {r['seed']}: {r['run_seconds']}s of faults")
        print(f"  faults injected : " + (", ".join(f"{k}={v}" for k, v in r["injected"].items()) or "none"))
        if r["skipped"]:
            print(f"  skipped (budget): " + ", ".join(f"{k}={v}" for k, v in r["skipped"].items()))
        if r["unavailable"]:
            print(f"  unavailable     : " + ", ".join(f"{k} ({v})" for k, v in r["unavailable"].items()))
        print(f"  writes acked    : {r['puts_acked']} put, {r['multipart_acked']} multipart "
              f"({r['bytes_acked'] / MiB:.1f} MiB), {r['deletes_acked']} deletes; failed ops {r['ops_failed']}")
        print(f"  reads checked   : {r['reads_checked']} (errors {r['read_errors']}); wrong bytes {r['wrong_reads']}, "
              f"stale {r['stale_reads']}")
        print(f"  final read      : {f['keys']} keys, {f['objects_expected']} objects expected, "
              f"verified {f['verified_objects']} + {f['verified_absent']} deleted/absent; lost {f['lost']}, "
              f"resurrected {f['resurrected']}, stale {f['stale']}, wrong bytes {f['wrong_bytes']} "
              f"({f['seconds']}s, {f['retried_reads']} retried, slowest {f['slowest']})")
        if red.get("reached"):
            print(f"  redundancy      : full after {red['seconds']}s (bound {red['bound']}s): {red['durability']}")
        else:
            print(f"  redundancy      : NOT full within {red['bound']}s: {red.get('why')}; last {red.get('durability')}")
        pr = r["proof"]
        if "skipped" in pr:
            print(f"  proof           : skipped ({pr['skipped']})")
        else:
            print(f"  proof           : {pr['killed']} killed: verified {pr['verified_objects']} objects, "
                  f"lost {pr['lost']}, wrong bytes {pr['wrong_bytes']}, stale {pr['stale']}")
        print(f"  damaged shards  : {r['damaged_shards']} (not rebuilt at the end: {r['damaged_not_rebuilt']})")
        for n in r["notes"]:
            print(f"  note            : {n}")
        for e in r["error_samples"][:4]:
            print(f"  failed op e.g.  : {e}")
        for p in (r["read_problems"] + f["problems"] + pr.get("problems", []))[:12]:
            print(f"  problem         : {p}")
        reasons = failed(r)
        print(f"  result          : {'FAIL: ' + '; '.join(reasons) if reasons else 'PASS'}")
        total["faults"] += sum(v for k, v in r["injected"].items() if not k.endswith("_files")
                               and not k.startswith("kill_meta_"))
        total["objects"] += r["puts_acked"] + r["multipart_acked"]
        total["verified"] += f["verified_objects"]
        total["lost"] += f["lost"] + (pr.get("lost") or 0)
        total["wrong"] += r["wrong_reads"] + f["wrong_bytes"] + (pr.get("wrong_bytes") or 0)
        total["stale"] += r["stale_reads"] + f["stale"] + f["resurrected"]
    print(line)
    for e in harness_errors:
        print(f"HARNESS ERROR: {e}")
    ok = not harness_errors and all(not failed(r) for r in results)
    print(f"TOTAL: {total['faults']} faults, {total['objects']} objects written, {total['verified']} verified, "
          f"{total['lost']} lost, {total['wrong']} wrong reads, {total['stale']} stale -> {'PASS' if ok else 'FAIL'}")
    print(line, flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="short")
    ap.add_argument("--seed", dest="seeds", type=int, action="append",
                    help="seed (repeatable); default: the profile's fixed seeds (short) or a random one")
    ap.add_argument("--duration", type=float, help="seconds of faults per seed (default: the profile's)")
    ap.add_argument("--storage-nodes", type=int, default=8)
    ap.add_argument("--zones", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--m", type=int, default=2)
    ap.add_argument("--port-base", type=int, help="default: the first free range from 47000")
    ap.add_argument("--workdir", help="default: a fresh temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the data directories (kept anyway on failure)")
    ap.add_argument("--no-privileged", action="store_true", help="no netns partition, no tmpfs full disk")
    ap.add_argument("--log-level", default=None, help="--log-level for the nodes (default: theirs)")
    ap.add_argument("--json", help="also write the report as JSON to this file")
    args = ap.parse_args()
    prof = PROFILES[args.profile]
    if not args.seeds:
        args.seeds = prof["seeds"] or [random.randrange(1, 1 << 31)]
    args.workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="tessera-chaos-"))
    os.makedirs(args.workdir, exist_ok=True)

    current = {"chaos": None}

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Also SIGINT: a runner started in the background of a script inherits
    # it ignored, and Ctrl-C must still clean up.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    reap_stale(log)
    results, errors = [], []
    try:
        for seed in args.seeds:
            ch = None
            try:
                ch = Chaos(args, prof, seed, args.port_base or free_port_base())
                current["chaos"] = ch
                ch.setup()
                ch.run()
                results.append(ch.check())
            except KeyboardInterrupt:
                raise
            except Exception as e:
                errors.append(f"seed {seed}: {type(e).__name__}: {e}")
                traceback.print_exc()
                for name in ("gateway-1", "meta-1", "storage-1"):
                    lp = os.path.join(ch.dir if ch else "/nonexistent", "logs", f"{name}.log")
                    if os.path.exists(lp):
                        print(f"--- last lines of {lp}:\n{tail(lp, 15)}")
            finally:
                if ch is not None:
                    ch.close()
                current["chaos"] = None
    except KeyboardInterrupt as e:
        errors.append(f"interrupted ({e})")
    finally:
        if current["chaos"] is not None:
            current["chaos"].close()
    ok = print_report(args, results, errors)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ok": ok, "results": results, "errors": errors}, f, indent=2, default=str)
    if ok and not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    else:
        print(f"data and logs kept in {args.workdir}")
    if errors:
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
