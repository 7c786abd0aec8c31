"""v0 end to end: `tessera dev` driven by the aws cli and boto3, then node
kills. Tests run in file order against one cluster (module fixture)."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from conftest import s3_client, tessera_bin

BUCKET = "e2e-bucket"
SIZES = {"empty": 0, "one": 1, "four-k": 4096, "one-mib-plus": (1 << 20) + 1, "fifty-mib": 50 << 20}
# Every object the tests wrote and must read back: key -> sha256.
WRITTEN = {}


def aws_bin():
    for candidate in (os.path.join(os.path.dirname(sys.executable), "aws"), shutil.which("aws")):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.fail("aws cli not installed")


def aws(info, *args, secret=None, check=True, timeout=300):
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=info["access_key"],
        AWS_SECRET_ACCESS_KEY=secret or info["secret_key"],
        AWS_DEFAULT_REGION=info["region"],
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    cmd = [aws_bin(), "--endpoint-url", info["s3_endpoint"], *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


def payload(size, seed):
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def sha(b):
    return hashlib.sha256(b).hexdigest()


def read_all(client, keys):
    for key in keys:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert sha(body) == WRITTEN[key], f"{key}: bytes differ ({len(body)} bytes read)"


def test_create_bucket_and_list(cluster, tmp_path):
    info = cluster.info
    aws(info, "s3api", "create-bucket", "--bucket", BUCKET)
    out = json.loads(aws(info, "s3api", "list-buckets").stdout)
    assert BUCKET in [b["Name"] for b in out["Buckets"]]
    aws(info, "s3api", "head-bucket", "--bucket", BUCKET)


def test_put_and_get_sizes_with_aws_cli(cluster, tmp_path):
    info = cluster.info
    for name, size in SIZES.items():
        data = payload(size, name)
        src = tmp_path / f"{name}.bin"
        src.write_bytes(data)
        t0 = time.time()
        out = json.loads(aws(info, "s3api", "put-object", "--bucket", BUCKET, "--key", f"obj/{name}", "--body", str(src)).stdout)
        put_s = time.time() - t0
        assert out["ETag"].strip('"') == hashlib.md5(data).hexdigest()
        WRITTEN[f"obj/{name}"] = sha(data)
        dst = tmp_path / f"{name}.out"
        t0 = time.time()
        head = json.loads(aws(info, "s3api", "get-object", "--bucket", BUCKET, "--key", f"obj/{name}", str(dst)).stdout)
        get_s = time.time() - t0
        assert head["ContentLength"] == size
        assert dst.read_bytes() == data, f"{name}: bytes differ"
        print(f"[e2e] aws cli {name} ({size} B): put {put_s:.2f}s get {get_s:.2f}s")


def test_boto3_roundtrip_and_metadata(cluster):
    c = s3_client(cluster.info)
    data = payload(3 * (4 << 20) + 12345, "boto")  # several stripes, short last one
    c.put_object(Bucket=BUCKET, Key="boto/multi-stripe", Body=data, ContentType="application/x-test", Metadata={"color": "blue"})
    WRITTEN["boto/multi-stripe"] = sha(data)
    head = c.head_object(Bucket=BUCKET, Key="boto/multi-stripe")
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"] == {"color": "blue"}
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert c.get_object(Bucket=BUCKET, Key="boto/multi-stripe")["Body"].read() == data


def test_ranged_gets(cluster, tmp_path):
    info = cluster.info
    c = s3_client(info)
    data = payload(SIZES["fifty-mib"], "fifty-mib")
    size = len(data)
    cases = [(0, 0), (0, 99), (4 << 20, (4 << 20) + 10), ((4 << 20) - 5, (4 << 20) + 5), (size - 100, size - 1), (12345, 9 << 20)]
    for a, b in cases:
        got = c.get_object(Bucket=BUCKET, Key="obj/fifty-mib", Range=f"bytes={a}-{b}")["Body"].read()
        assert got == data[a : b + 1], f"range {a}-{b}"
    assert c.get_object(Bucket=BUCKET, Key="obj/fifty-mib", Range="bytes=-100")["Body"].read() == data[-100:]
    assert c.get_object(Bucket=BUCKET, Key="obj/fifty-mib", Range=f"bytes={size - 10}-")["Body"].read() == data[-10:]
    # The aws cli too.
    dst = tmp_path / "range.out"
    aws(info, "s3api", "get-object", "--bucket", BUCKET, "--key", "obj/one-mib-plus", "--range", "bytes=1048570-1048576", str(dst))
    assert dst.read_bytes() == payload(SIZES["one-mib-plus"], "one-mib-plus")[1048570:]
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key="obj/one", Range="bytes=5-10")
    assert e.value.response["Error"]["Code"] == "InvalidRange"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_list_prefix_delimiter_and_pages(cluster):
    info = cluster.info
    c = s3_client(info)
    keys = [f"tree/{d}/{i:03}" for d in ("a", "b", "c") for i in range(5)] + ["tree/top-1", "tree/top-2"]
    for k in keys:
        c.put_object(Bucket=BUCKET, Key=k, Body=k.encode())
        WRITTEN[k] = sha(k.encode())
    out = json.loads(aws(info, "s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", "tree/", "--delimiter", "/").stdout)
    assert [p["Prefix"] for p in out["CommonPrefixes"]] == ["tree/a/", "tree/b/", "tree/c/"]
    assert [o["Key"] for o in out["Contents"]] == ["tree/top-1", "tree/top-2"]
    out = json.loads(aws(info, "s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", "tree/b/").stdout)
    assert [o["Key"] for o in out["Contents"]] == [f"tree/b/{i:03}" for i in range(5)]
    # Pagination with max-keys and continuation tokens.
    seen, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": "tree/", "MaxKeys": 4}
        if token:
            kw["ContinuationToken"] = token
        page = c.list_objects_v2(**kw)
        seen += [o["Key"] for o in page.get("Contents", [])]
        assert page["KeyCount"] <= 4
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(keys)


def test_delete(cluster):
    c = s3_client(cluster.info)
    c.put_object(Bucket=BUCKET, Key="doomed", Body=b"x" * 300000)
    c.delete_object(Bucket=BUCKET, Key="doomed")
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=BUCKET, Key="doomed")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    listed = [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix="doomed").get("Contents", [])]
    assert listed == []
    c.delete_object(Bucket=BUCKET, Key="doomed")  # idempotent
    with pytest.raises(ClientError) as e:
        c.delete_bucket(Bucket=BUCKET)
    assert e.value.response["Error"]["Code"] == "BucketNotEmpty"


def test_wrong_secret_and_anonymous_get_403(cluster, tmp_path):
    info = cluster.info
    bad = s3_client(info, secret="not-the-secret-key-at-all-0123456789abcd", retries=1)
    for op in (lambda: bad.list_buckets(), lambda: bad.get_object(Bucket=BUCKET, Key="obj/one"), lambda: bad.put_object(Bucket=BUCKET, Key="forged", Body=b"evil")):
        with pytest.raises(ClientError) as e:
            op()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    r = aws(info, "s3api", "list-buckets", secret="wrong-secret", check=False)
    assert r.returncode != 0 and "SignatureDoesNotMatch" in r.stderr
    # No signature at all: 403 with the S3 error XML.
    for method, url in (("GET", f"{info['s3_endpoint']}/{BUCKET}/obj/one"), ("PUT", f"{info['s3_endpoint']}/{BUCKET}/anon")):
        req = urllib.request.Request(url, method=method, data=b"x" if method == "PUT" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403
        body = e.value.read().decode()
        assert "<Error>" in body and "<Code>AccessDenied</Code>" in body
    good = s3_client(info)
    for key in ("forged", "anon"):
        with pytest.raises(ClientError) as e:
            good.head_object(Bucket=BUCKET, Key=key)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_reads_survive_two_storage_nodes_killed(cluster):
    storage = cluster.nodes("storage")
    assert len(storage) == 6
    for node in storage[:2]:
        os.kill(node["pid"], signal.SIGKILL)
    c = s3_client(cluster.info)
    t0 = time.time()
    read_all(c, list(WRITTEN))
    print(f"[e2e] read {len(WRITTEN)} objects back with 2 of 6 storage nodes dead in {time.time() - t0:.2f}s")
    # Writes go on at once, before the meta leader has marked the nodes
    # down: stripes narrow to the 4 live nodes and keep 2 parity shards.
    data = payload(9 << 20, "while-down")
    t0 = time.time()
    c.put_object(Bucket=BUCKET, Key="while-down", Body=data)
    print(f"[e2e] 9 MiB put right after the kills took {time.time() - t0:.2f}s")
    WRITTEN["while-down"] = sha(data)
    read_all(c, ["while-down"])


def admin_status(cluster):
    out = subprocess.run(
        [tessera_bin(), "admin", "status", "--json", "--cluster", os.path.join(cluster.data_dir, "cluster.json")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def find_leader_id(status):
    leader = status.get("leader")
    if isinstance(leader, dict):
        leader = leader.get("id")
    return None if leader is None else str(leader)


def test_writes_and_reads_continue_after_meta_leader_killed(cluster):
    leader = find_leader_id(admin_status(cluster))
    assert leader is not None
    victim = next(n for n in cluster.nodes("meta") if str(n["id"]) == leader)
    os.kill(victim["pid"], signal.SIGKILL)
    c = s3_client(cluster.info, retries=1)
    t0 = time.time()
    while True:
        try:
            c.put_object(Bucket=BUCKET, Key="after-meta-kill", Body=b"still here")
            break
        except Exception:  # noqa: BLE001 - any failure while the group re-elects
            if time.time() - t0 > 20:
                raise
            time.sleep(0.2)
    print(f"[e2e] first put after killing the meta leader succeeded in {time.time() - t0:.2f}s")
    WRITTEN["after-meta-kill"] = sha(b"still here")
    c = s3_client(cluster.info)
    # Objects larger than the inline threshold still need write quorum on
    # the 4 live storage nodes.
    data = payload(5 << 20, "post-kill")
    c.put_object(Bucket=BUCKET, Key="after-meta-kill-big", Body=data)
    WRITTEN["after-meta-kill-big"] = sha(data)
    read_all(c, list(WRITTEN))
    status = admin_status(cluster)
    new_leader = find_leader_id(status)
    assert new_leader is not None and new_leader != leader


def test_restart_on_same_dir_brings_back_everything(cluster):
    cluster.stop()
    info = cluster.start()
    c = s3_client(info)
    read_all(c, list(WRITTEN))
