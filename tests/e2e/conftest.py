"""Shared fixtures: a real `tessera dev` cluster (the release or debug binary)
started in a temporary directory, and clients pointed at it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import boto3
import pytest
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tessera_bin():
    explicit = os.environ.get("TESSERA_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    for profile in ("debug", "release"):
        path = os.path.join(target, profile, "tessera")
        if os.path.exists(path):
            return path
    raise RuntimeError("tessera binary not found; build it with cargo build")


def free_port_base():
    """A port base whose next 100 ports are free on 127.0.0.1, below the
    kernel's ephemeral range (32768-60999): a node restarted on a port in
    that range can find it taken by some client connection's local end."""
    for base in range(20000, 32000, 100):
        ok = True
        for p in range(base, base + 100):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


class DevCluster:
    def __init__(self, data_dir, port_base, extra_args=()):
        self.data_dir = data_dir
        self.port_base = port_base
        self.extra_args = list(extra_args)
        self.proc = None
        self.info = None
        self.start_seconds = None

    def start(self, timeout=120):
        cluster_json = os.path.join(self.data_dir, "cluster.json")
        if os.path.exists(cluster_json):
            os.remove(cluster_json)
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(os.path.join(self.data_dir, "dev.log"), "ab")
        t0 = time.time()
        self.proc = subprocess.Popen(
            [tessera_bin(), "dev", "--data-dir", self.data_dir, "--port-base", str(self.port_base)]
            + self.extra_args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tessera dev exited with {self.proc.returncode}; see {self.data_dir}/dev.log")
            if os.path.exists(cluster_json):
                try:
                    with open(cluster_json) as f:
                        self.info = json.load(f)
                    break
                except json.JSONDecodeError:
                    pass
            time.sleep(0.2)
        else:
            raise RuntimeError("cluster.json did not appear in time")
        self.start_seconds = time.time() - t0
        return self.info

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Nothing of ours may survive.
        for node in (self.info or {}).get("nodes", []):
            try:
                os.kill(node["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc = None

    def nodes(self, role):
        return [n for n in self.info["nodes"] if n["role"] == role]


def s3_client(info, secret=None, retries=5):
    # An https endpoint (`tessera dev --tls`) is verified against the dev CA.
    return boto3.client(
        "s3",
        endpoint_url=info["s3_endpoint"],
        verify=info.get("ca_path"),
        region_name=info["region"],
        aws_access_key_id=info["access_key"],
        aws_secret_access_key=secret or info["secret_key"],
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def _dev_cluster(extra_args=()):
    data_dir = tempfile.mkdtemp(prefix="tessera-e2e-")
    c = DevCluster(data_dir, free_port_base(), extra_args)
    try:
        c.start()
        print(f"\n[e2e] tessera dev started in {c.start_seconds:.2f}s at {c.info['s3_endpoint']}")
        yield c
    finally:
        c.stop()
        if os.environ.get("TESSERA_KEEP_DATA"):
            print(f"[e2e] data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_cluster():
    """`tessera dev --tls`: S3 over HTTPS with a generated dev CA
    (cluster.json has the https endpoint and `ca_path`)."""
    yield from _dev_cluster(["--tls"])


@pytest.fixture(scope="module")
def cluster():
    data_dir = tempfile.mkdtemp(prefix="tessera-e2e-")
    c = DevCluster(data_dir, free_port_base())
    try:
        c.start()
        print(f"\n[e2e] tessera dev started in {c.start_seconds:.2f}s at {c.info['s3_endpoint']}")
        yield c
    finally:
        c.stop()
        if os.environ.get("TESSERA_KEEP_DATA"):
            print(f"[e2e] data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
