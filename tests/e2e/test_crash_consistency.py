"""Crash consistency: a process killed at each failpoint of the write path
(`TESSERA_FAILPOINTS`, see crates/tessera-observe/src/failpoint.rs) loses
nothing acknowledged, never shows a partial object, and leaves no shard
file that is never collected.

Per failpoint: a dev cluster (6 storage nodes) gets acknowledged objects;
the process(es) that own the failpoint are restarted armed with it; a PUT
(or UploadPart) crashes them; they are restarted unarmed, with storage
nodes scanning for orphans every second (safety age 4 s). Then every
acknowledged object reads back byte-identical, the crashed write is either
absent or (crash after the commit) complete, and the shard files on disk
converge to exactly the shards that meta places on each node.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
import boto3

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "chaos"))
from cluster import Cluster, free_port_base, scrape, tail  # noqa: E402

FAILPOINTS = [
    "storage.put.before_fsync",
    "storage.put.before_rename",
    "gateway.put.after_shards",
    "gateway.put.after_commit",
    "gateway.part.after_shards",
]
SHARD_FILE = re.compile(r"^[0-9a-f]{32}\.\d+$")
ORPHAN_FLAGS = {"--orphan-scan-interval-ms": "1000", "--orphan-safety-age-ms": "4000"}


class ArmedCluster(Cluster):
    """A chaos cluster whose restarted nodes get extra environment."""

    extra_env = {}

    def child_env(self):
        env = super().child_env()
        env.update(self.extra_env)
        return env


def client(info, retries=1):
    return boto3.client(
        "s3",
        endpoint_url=info["s3_endpoint"],
        region_name=info["region"],
        aws_access_key_id=info["access_key"],
        aws_secret_access_key=info["secret_key"],
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=3,
            read_timeout=20,
        ),
    )


def shard_files(c):
    """(node name, file name) of every shard file on the storage nodes,
    plus any temp file left behind."""
    files, temps = set(), []
    for node in c.storage():
        for root, dirs, names in os.walk(node.data_dir):
            if "quarantine" in root:
                continue
            for n in names:
                if SHARD_FILE.match(n):
                    files.add((node.id, n))
                elif n.startswith(".tmp."):
                    temps.append(os.path.join(root, n))
    return files, temps


def placed_shards(c):
    """How many shards live manifests place (meta's node index)."""
    st = c.status()
    return sum(n for _, n in st["durability"]["shards_by_node"])


def read_after_restart(s3, key, attempts=5):
    """GET `key`. Right after every storage node restarted, the gateway's
    first shard reads can fail on connections to the old processes once the
    response has started (an error, never wrong bytes: a known weak spot of
    the read path, which does not retry a shard on a fresh connection);
    retry those."""
    from botocore.exceptions import ResponseStreamingError
    for i in range(attempts):
        try:
            return s3.get_object(Bucket="crash", Key=key)["Body"].read()
        except ResponseStreamingError:
            if i == attempts - 1:
                raise
            time.sleep(1)


def wait_serving(info, timeout=20):
    """Waits until the gateway answers a bucket request; returns the
    errors it gave before (empty when it served at once)."""
    s3 = client(info, retries=1)
    errors = []
    deadline = time.time() + timeout
    while True:
        try:
            s3.head_bucket(Bucket="crash")
            return errors
        except (BotoCoreError, ClientError) as e:
            errors.append(repr(e))
            if time.time() > deadline:
                raise AssertionError(f"gateway not serving {timeout}s after a restart: {errors}")
            time.sleep(0.2)


def restart(c, nodes, env, flags=None):
    c.extra_env = env
    for node in nodes:
        if flags is not None:
            node.overrides = dict(flags)
        c.kill(node)
    for node in nodes:
        c.restart(node)


@contextlib.contextmanager
def crash_cluster(prefix):
    """A started 6-node cluster with bucket `crash`: (data dir, cluster,
    its info, a retrying client). Closed on exit; its files are kept when
    TESSERA_KEEP_DATA is set (a test sets it to keep the logs of a miss)."""
    data_dir = tempfile.mkdtemp(prefix=prefix)
    c = ArmedCluster(data_dir, free_port_base(start=21000), storage_nodes=6, zones=3)
    try:
        info = c.start()
        s3 = client(info, retries=5)
        s3.create_bucket(Bucket="crash")
        yield data_dir, c, info, s3
    finally:
        c.close()
        if not os.environ.get("TESSERA_KEEP_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_crash_at_failpoint_loses_nothing_and_leaves_nothing(failpoint):
    with crash_cluster("tessera-crash-") as (data_dir, c, info, s3):
        acked = {}
        for i in range(4):
            body = os.urandom(300_000 * (i + 1))
            s3.put_object(Bucket="crash", Key=f"before-{i}", Body=body)
            acked[f"before-{i}"] = hashlib.sha256(body).hexdigest()

        role = failpoint.split(".")[0]
        armed_nodes = c.storage() if role == "storage" else [c.gateway()]
        restart(c, armed_nodes, {"TESSERA_FAILPOINTS": f"{failpoint}=abort"},
                ORPHAN_FLAGS if role == "storage" else None)

        # The armed nodes serve before the write that must crash them: an
        # error of theirs would otherwise pass for the crash.
        try:
            early = wait_serving(info)
        except AssertionError as e:
            # Say why the gateway did not come up (seen once, unexplained).
            log = c.gateway().log
            raise AssertionError(f"{e}\nlast lines of {log}:\n{tail(log)}") from None
        if early:
            print(f"\n[crash] {failpoint}: refused before serving: {early}")

        # The write that crashes.
        body = os.urandom(5 * 1024 * 1024 + 12345)
        crashed_key = "crashed"
        s3c = client(info, retries=1)
        upload = None
        if failpoint == "gateway.part.after_shards":
            # Not the crashing call: it must succeed.
            upload = client(info, retries=5).create_multipart_upload(
                Bucket="crash", Key=crashed_key)["UploadId"]
        with pytest.raises((BotoCoreError, ClientError)) as raised:
            if upload is not None:
                s3c.upload_part(Bucket="crash", Key=crashed_key, UploadId=upload,
                                PartNumber=1, Body=body)
            else:
                s3c.put_object(Bucket="crash", Key=crashed_key, Body=body)
        deadline = time.time() + 10
        while time.time() < deadline and any(n.proc.poll() is None for n in armed_nodes):
            time.sleep(0.1)
        died = [n.name or n.role for n in armed_nodes if n.proc.poll() is not None]
        assert died, (f"no process crashed at {failpoint}; the write failed with: "
                      f"{raised.value!r}; last lines of {armed_nodes[0].log}:\n"
                      f"{tail(armed_nodes[0].log)}")
        for n in armed_nodes:
            if n.proc.poll() is not None:
                n.state = "killed"

        # Restart unarmed. Storage nodes restart too (with fast orphan
        # scans), so that a crash of the gateway is also followed by a
        # crash of every storage node.
        c.extra_env = {}
        for n in armed_nodes:
            if n.state != "killed":
                c.kill(n)
            c.restart(n)
        if role == "gateway":
            restart(c, c.storage(), {}, ORPHAN_FLAGS)
        assert c.wait_all_storage_up(timeout=60) is not None, "storage nodes did not come back"

        s3 = client(info, retries=8)
        for key, digest in acked.items():
            got = read_after_restart(s3, key)
            assert hashlib.sha256(got).hexdigest() == digest, f"{key} changed after a crash at {failpoint}"
        try:
            got = s3.get_object(Bucket="crash", Key=crashed_key)["Body"].read()
            assert failpoint == "gateway.put.after_commit", f"{failpoint}: an unacknowledged write is visible"
            assert got == body, "a crashed write is visible but not whole"
        except ClientError as e:
            # Committed before the crash: it must be there.
            if failpoint == "gateway.put.after_commit":
                # Say whether it was a stale read (there a moment later) or
                # a lost write, and keep the logs to find out which.
                time.sleep(2)
                try:
                    later = len(s3.get_object(Bucket="crash", Key=crashed_key)["Body"].read())
                except ClientError as e2:
                    later = e2.response["Error"]["Code"]
                os.environ["TESSERA_KEEP_DATA"] = "1"
                print(f"\n[crash] committed write not readable; 2 s later: {later}; "
                      f"status: {json.dumps(c.status())[:3000]}; logs kept in {data_dir}")
            assert failpoint != "gateway.put.after_commit", \
                f"{failpoint}: a committed write is not readable: {e.response['Error']}"
            assert e.response["Error"]["Code"] == "NoSuchKey", e

        # Nothing left that is never collected: the files on disk converge
        # to exactly the shards meta places.
        deadline = time.time() + 60
        first = None
        while True:
            files, temps = shard_files(c)
            if first is None:
                first = (len(files), len(temps))
            placed = placed_shards(c)
            gc = c.status()["durability"]["gc_items"]
            if len(files) == placed and not temps and gc == 0:
                break
            if time.time() > deadline:
                pytest.fail(f"{failpoint}: {len(files)} shard files, {placed} placed by meta, "
                            f"{len(temps)} temp files, {gc} GC items after 60 s")
            time.sleep(1)
        print(f"\n[crash] {failpoint}: crashed {died}; {len(acked)} acknowledged objects intact; "
              f"{len(files)} shard files == {placed} placed shards "
              f"(at restart: {first[0]} shard files, {first[1]} temp files)")

        # And the cluster still takes writes.
        s3.put_object(Bucket="crash", Key="after", Body=b"x" * 1000)
        assert s3.get_object(Bucket="crash", Key="after")["Body"].read() == b"x" * 1000


def test_a_commit_retried_after_a_lost_answer_keeps_its_shards():
    """The meta client retries a write whose answer was lost. When the
    first try was committed, the retry replaces the manifest with itself:
    the gateway must not schedule the stripes of that 'old' version (its
    own) for deletion. Switch `gateway.commit.lose_answer` sends every
    commit twice; the GC grace is cut to half a second."""
    with crash_cluster("tessera-lost-answer-") as (data_dir, c, info, s3):
        conf = os.path.join(data_dir, "gateway-gc.toml")
        with open(conf, "w") as f:
            f.write("gc-grace-ms = 500\n")
        restart(c, [c.gateway()], {"TESSERA_FAILPOINTS": "gateway.commit.lose_answer=on"},
                {"--config": conf})
        body = os.urandom(3 * 1024 * 1024 + 7)
        s3.put_object(Bucket="crash", Key="retried", Body=body)
        written, _ = shard_files(c)
        assert written, "no shard files written"
        # Well past the grace: deletes it scheduled have run.
        time.sleep(4)
        kept, _ = shard_files(c)
        assert kept == written, f"{len(written - kept)} of {len(written)} shard files deleted"
        assert s3.get_object(Bucket="crash", Key="retried")["Body"].read() == body
        # An overwrite still hands the replaced version's shards to GC.
        s3.put_object(Bucket="crash", Key="retried", Body=body[:2 * 1024 * 1024])
        deadline = time.time() + 20
        while True:
            now, _ = shard_files(c)
            if not now & written:
                break
            assert time.time() < deadline, f"{len(now & written)} replaced shard files left"
            time.sleep(0.5)
        assert s3.get_object(Bucket="crash", Key="retried")["Body"].read() == body[:2 * 1024 * 1024]


def wait_exit(node, timeout=30):
    """The exit status of a node restarted by the test; fails with its
    log's tail if it is still running after `timeout` seconds."""
    try:
        return node.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{node.name} did not exit; last lines of {node.log}:\n"
                             f"{tail(node.log)}") from None


def read_log(node):
    with open(node.log, errors="replace") as f:
        return f.read()


def test_a_meta_node_that_panics_exits_to_be_restarted():
    """A panic in a meta node is a crash-stop: the process says so and
    exits with 75, which supervisors (`tessera dev` too) restart. Armed with
    `meta.apply.put_object=panic`, a follower panics when it applies a
    PutObject: while it replays its log at start (openraft re-applies
    committed entries inside `Raft::new`, on the main thread: without the
    hook the process exited 101, which `tessera dev` does not restart) or
    in openraft's state machine worker (without the hook Raft stopped only
    at the next entry to apply). Restarted unarmed, it catches up from its
    log and carries the group once the leader dies."""
    with crash_cluster("tessera-meta-panic-") as (data_dir, c, info, s3):
        s3.put_object(Bucket="crash", Key="before", Body=b"b" * 1000)
        leader = c.leader()
        assert leader is not None, "no meta leader"
        node = next(n for n in c.metas() if n is not leader)
        c.extra_env = {"TESSERA_FAILPOINTS": "meta.apply.put_object=panic"}
        c.kill(node)
        # It may replay "before" from its log and panic at once.
        c.restart(node, wait=False)

        body = os.urandom(200_000)
        s3.put_object(Bucket="crash", Key="during", Body=body)  # leader + the other follower
        code = wait_exit(node)
        log = read_log(node)
        assert code == 75, f"{node.name} exited with {code}; last lines:\n{tail(node.log)}"
        assert "failpoint meta.apply.put_object: panic" in log, tail(node.log)
        assert "exiting with status 75" in log, tail(node.log)
        node.state = "killed"

        c.extra_env = {}
        c.restart(node)
        # Without the old leader the group needs the restarted node: a
        # write commits only if it is a working voter again.
        c.kill(leader)
        s3 = client(info, retries=10)
        deadline = time.time() + 60
        while True:
            try:
                s3.put_object(Bucket="crash", Key="after", Body=b"a" * 1000)
                break
            except (BotoCoreError, ClientError) as e:
                assert time.time() < deadline, f"no write committed 60 s after the leader died: {e!r}"
                time.sleep(1)
        assert s3.get_object(Bucket="crash", Key="during")["Body"].read() == body
        assert s3.get_object(Bucket="crash", Key="before")["Body"].read() == b"b" * 1000
        assert s3.get_object(Bucket="crash", Key="after")["Body"].read() == b"a" * 1000


def test_a_gateway_fails_a_request_that_panics_and_stops_on_any_other_panic():
    """A panic in a gateway's S3 request handling fails that request with
    500 InternalError and the gateway serves on (one bad request must not
    take the endpoint away from every client); a panic anywhere else (here
    its cluster map refresh, a background task) is a crash-stop: status 75,
    which supervisors restart. Before, a request's panic closed the
    connection without an answer, and a background task's panic left a
    gateway that looked alive with a map that never changed again."""
    with crash_cluster("tessera-gw-panic-") as (data_dir, c, info, s3):
        s3.put_object(Bucket="crash", Key="before", Body=b"b" * 1000)
        gw = c.gateway()
        restart(c, [gw], {"TESSERA_FAILPOINTS": "gateway.put.after_shards=panic"})
        wait_serving(info)
        once = client(info, retries=1)
        with pytest.raises(ClientError) as err:
            once.put_object(Bucket="crash", Key="during", Body=os.urandom(300_000))
        assert err.value.response["Error"]["Code"] == "InternalError", err.value.response
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        # The same process serves on, and counted the panic.
        assert gw.proc.poll() is None, tail(gw.log)
        assert once.get_object(Bucket="crash", Key="before")["Body"].read() == b"b" * 1000
        # (botocore may send the PUT again: one panic and one 500 each.)
        panics = scrape(gw.admin_addr, "tessera_gateway_panics_total")
        log = read_log(gw)
        assert panics and panics >= 1, panics
        assert "failpoint gateway.put.after_shards: panic" in log, tail(gw.log)
        assert log.count("answered 500 InternalError") == panics, tail(gw.log)
        assert "exiting with status" not in log, tail(gw.log)

        # The cluster map refresh runs every 2 s: the first one panics.
        restart(c, [gw], {"TESSERA_FAILPOINTS": "gateway.map.refresh=panic"})
        code = wait_exit(gw)
        log = read_log(gw)
        assert code == 75, f"the gateway exited with {code}; last lines:\n{tail(gw.log)}"
        assert "failpoint gateway.map.refresh: panic" in log, tail(gw.log)
        assert "a panic in the gateway node" in log and "exiting with status 75" in log, tail(gw.log)
        gw.state = "killed"

        c.extra_env = {}
        c.restart(gw)
        wait_serving(info)
        s3 = client(info, retries=5)
        assert s3.get_object(Bucket="crash", Key="before")["Body"].read() == b"b" * 1000
        with pytest.raises(ClientError) as err:
            s3.head_object(Bucket="crash", Key="during")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_a_storage_node_that_panics_exits_to_be_restarted():
    """A panic in a storage node (here while it writes a shard, on its
    blocking pool) is a crash-stop: status 75, which supervisors restart.
    Restarted unarmed, the node serves again and nothing acknowledged is
    lost."""
    with crash_cluster("tessera-st-panic-") as (data_dir, c, info, s3):
        before = os.urandom(1 << 20)
        s3.put_object(Bucket="crash", Key="before", Body=before)
        node = c.storage()[0]
        restart(c, [node], {"TESSERA_FAILPOINTS": "storage.put.before_fsync=panic"})
        # Six storage nodes, RS 4+2: every stripe has a shard on it.
        try:
            client(info, retries=1).put_object(Bucket="crash", Key="during",
                                               Body=os.urandom(1 << 20))
        except (BotoCoreError, ClientError) as e:
            print(f"\n[panic] the PUT during the panic failed: {e!r}")
        code = wait_exit(node)
        log = read_log(node)
        assert code == 75, f"{node.name} exited with {code}; last lines:\n{tail(node.log)}"
        assert "failpoint storage.put.before_fsync: panic" in log, tail(node.log)
        assert "a panic in the storage node" in log and "exiting with status 75" in log, \
            tail(node.log)
        node.state = "killed"

        c.extra_env = {}
        c.restart(node)
        c.wait_all_storage_up(60)
        after = os.urandom(1 << 20)
        s3.put_object(Bucket="crash", Key="after", Body=after)
        assert read_after_restart(s3, "before") == before
        assert read_after_restart(s3, "after") == after
