"""Membership changes on a real dev cluster: a node added later gets its
share of the existing stripes (rebalance), a drained node is emptied and
removed, and every object reads back identical throughout."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "chaos"))
from cluster import Cluster, free_port_base, spawn  # noqa: E402

from conftest import s3_client  # noqa: E402


def placed(c):
    st = c.status()
    return {n["id"]: n.get("indexed_shards", 0) for n in st["storage"]}, st


def wait_until(what, fn, timeout=90, c=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(1)
    detail = ""
    if c is not None:
        st = c.status() or {}
        detail = json.dumps({"storage": [(n["addr"], n["state"], n.get("indexed_shards"))
                                         for n in st.get("storage", [])],
                             "durability": st.get("durability")}, indent=1)
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def read_all(s3, objects):
    for key, digest in objects.items():
        body = s3.get_object(Bucket="members", Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, key


def test_added_node_gets_shards_and_a_drained_node_is_emptied():
    data_dir = tempfile.mkdtemp(prefix="tessera-members-")
    c = Cluster(data_dir, free_port_base(start=22000), storage_nodes=7, zones=3)
    extra = None
    try:
        info = c.start()
        s3 = s3_client(info)
        s3.create_bucket(Bucket="members")
        objects = {}
        for i in range(30):
            body = os.urandom(400_000 + i * 10_000)
            s3.put_object(Bucket="members", Key=f"o{i}", Body=body)
            objects[f"o{i}"] = hashlib.sha256(body).hexdigest()
        before, st = placed(c)
        total = sum(before.values())
        assert total > 0

        # Add an 8th storage node, the way an operator would: same meta,
        # same secret, its own data dir and port.
        template = c.storage()[0].argv
        port = c.base + 90
        argv = [template[0], "storage",
                "--listen", f"127.0.0.1:{port}", "--advertise", f"127.0.0.1:{port}",
                "--data-dir", os.path.join(data_dir, "storage-new"), "--zone", "z4",
                "--meta", template[template.index("--meta") + 1]]
        log = open(os.path.join(data_dir, "storage-new.log"), "ab")
        extra = spawn(argv, log, c.child_env())
        new_id = wait_until("the new node in the map", lambda: next(
            (n["id"] for n in (c.status() or {}).get("storage", []) if n["addr"] == f"127.0.0.1:{port}"
             and n["state"] == "up"), None))
        # The leader queues a rebalance pass; workers move shards to it.
        moved = wait_until("shards on the new node", lambda: placed(c)[0].get(new_id, 0) > 0 and
                           placed(c)[1]["durability"]["queued"] == 0, c=c)
        after, st = placed(c)
        assert sum(after.values()) == total, "a move keeps the shard count"
        assert 0 < after[new_id] < total
        print(f"\n[members] rebalance moved {after[new_id]} of {total} shards to the new node")
        read_all(s3, objects)

        # Drain storage-1: its shards move off, then it can be removed.
        victim = next(n["id"] for n in c.status()["storage"] if n["addr"] == c.storage()[0].addr)
        r = c.admin("node", "drain", victim)
        assert r.returncode == 0, r.stderr
        r = c.admin("repair", "--wait", "--timeout", "120", timeout=150)
        assert r.returncode == 0, r.stderr
        drained = wait_until("an empty drained node", lambda: placed(c)[0].get(victim) == 0)
        assert drained
        # Stop it, then remove it (a running node would register again).
        c.kill(c.storage()[0])
        r = c.admin("node", "remove", victim)
        assert r.returncode == 0, r.stdout + r.stderr
        assert victim not in placed(c)[0]
        read_all(s3, objects)
        final, st = placed(c)
        assert sum(final.values()) == total
        assert st["durability"]["queued"] == 0
    finally:
        if extra is not None:
            extra.kill()
            extra.wait()
        c.close()
        if not os.environ.get("TESSERA_KEEP_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)
