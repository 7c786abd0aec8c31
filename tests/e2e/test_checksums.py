"""Flexible checksums with boto3's DEFAULT settings (request_checksum_calculation
and response_checksum_validation = when_supported, CRC32 by default) against a
real `tessera dev` cluster, over HTTP and over HTTPS (`tessera dev --tls`).

Over http:// botocore sends the checksum in an `x-amz-checksum-crc32` header;
over https:// it streams the body as aws-chunked with the checksum in a
trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER, Transfer-Encoding: chunked, no
Content-Length). Each test records the requests botocore actually sent, so it
asserts which of the two paths ran, not just that something worked.
"""

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import zlib

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from conftest import s3_client

MIB = 1 << 20


def crc32_b64(data):
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def sha256_b64(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def sha1_b64(data):
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def payload(n, seed):
    # Deterministic, incompressible enough, fast.
    block = hashlib.sha256(bytes([seed])).digest() * 4096
    out = (block * (n // len(block) + 1))[:n]
    return bytes(out)


class Recorder:
    """The headers of every request botocore sends, by operation."""

    def __init__(self, client):
        self.sent = []
        client.meta.events.register("before-send.s3.*", self._record)

    def _record(self, request, **kwargs):
        op = kwargs.get("event_name", "").split(".")[-1]
        headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}
        self.sent.append((op, headers))

    def last(self, op):
        for o, h in reversed(self.sent):
            if o == op:
                return h
        raise AssertionError(f"no {op} request was sent")

    def clear(self):
        self.sent.clear()


@pytest.fixture(scope="module", params=["http", "https"])
def env(request):
    """(cluster, client, recorder, scheme) for each transport."""
    c = request.getfixturevalue("cluster" if request.param == "http" else "tls_cluster")
    assert c.info["s3_endpoint"].startswith(request.param + "://")
    if request.param == "https":
        assert os.path.exists(c.info["ca_path"]), "cluster.json names the dev CA"
    s3 = s3_client(c.info)
    # The defaults this test is about (also the SDK defaults since 2025).
    assert s3.meta.config.request_checksum_calculation == "when_supported"
    assert s3.meta.config.response_checksum_validation == "when_supported"
    bucket = f"checksums-{request.param}"
    s3.create_bucket(Bucket=bucket)
    return c, s3, Recorder(s3), request.param, bucket


def assert_checksum_transport(headers, scheme, algorithm="crc32"):
    """The request carried its checksum the way botocore does on `scheme`."""
    name = f"x-amz-checksum-{algorithm}"
    if scheme == "https":
        assert headers.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", headers
        assert headers.get("x-amz-trailer") == name, headers
        assert "aws-chunked" in headers.get("content-encoding", ""), headers
        assert name not in headers, "the value travels in the trailer"
    else:
        assert name in headers, headers
        assert "x-amz-trailer" not in headers


def test_put_get_head(env):
    _, s3, rec, scheme, bucket = env
    data = payload(300_000, 1)
    r = s3.put_object(Bucket=bucket, Key="small", Body=data)
    assert_checksum_transport(rec.last("PutObject"), scheme)
    assert r["ChecksumCRC32"] == crc32_b64(data)
    assert r.get("ChecksumType") == "FULL_OBJECT"

    # boto3 validates the response checksum itself when one is returned.
    g = s3.get_object(Bucket=bucket, Key="small", ChecksumMode="ENABLED")
    assert g["Body"].read() == data
    assert g["ChecksumCRC32"] == crc32_b64(data)
    assert g["ChecksumType"] == "FULL_OBJECT"

    h = s3.head_object(Bucket=bucket, Key="small", ChecksumMode="ENABLED")
    assert h["ContentLength"] == len(data)
    assert h["ChecksumCRC32"] == crc32_b64(data)
    assert h["ChecksumType"] == "FULL_OBJECT"
    # Not asked for: not answered.
    h = s3.head_object(Bucket=bucket, Key="small")
    assert "ChecksumCRC32" not in h


@pytest.mark.parametrize("algorithm,digest", [("SHA256", sha256_b64), ("SHA1", sha1_b64)])
def test_other_algorithms(env, algorithm, digest):
    """CRC32C and CRC64NVME need awscrt in botocore; the Rust tests cover them."""
    _, s3, rec, scheme, bucket = env
    data = payload(70_000, 2)
    key = f"alg-{algorithm}"
    r = s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm=algorithm)
    assert_checksum_transport(rec.last("PutObject"), scheme, algorithm.lower())
    assert r[f"Checksum{algorithm}"] == digest(data)
    g = s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert g["Body"].read() == data
    assert g[f"Checksum{algorithm}"] == digest(data)


def test_multipart_upload_fileobj(env):
    _, s3, rec, scheme, bucket = env
    data = payload(20 * MIB + 12345, 3)
    rec.clear()
    # Default TransferConfig: 8 MiB threshold and parts -> 3 parts.
    s3.upload_fileobj(io.BytesIO(data), bucket, "big", Config=TransferConfig())
    ops = [o for o, _ in rec.sent]
    assert "CreateMultipartUpload" in ops and ops.count("UploadPart") == 3, ops
    assert rec.last("CreateMultipartUpload").get("x-amz-checksum-algorithm") == "CRC32"
    assert_checksum_transport(rec.last("UploadPart"), scheme)

    h = s3.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    assert h["ContentLength"] == len(data)
    assert h["ETag"].strip('"').endswith("-3")
    # COMPOSITE: the CRC32 of the parts' CRC32s, then "-3".
    parts = [data[i : i + 8 * MIB] for i in range(0, len(data), 8 * MIB)]
    raw = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
    assert h["ChecksumCRC32"] == f"{crc32_b64(raw)}-3"
    assert h["ChecksumType"] == "COMPOSITE"

    out = io.BytesIO()
    s3.download_fileobj(bucket, "big", out)
    assert out.getvalue() == data
    g = s3.get_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    assert g["Body"].read() == data


def test_wrong_checksum_stores_nothing(env):
    _, s3, rec, scheme, bucket = env
    data = payload(200_000, 4)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="wrong", Body=data, ChecksumCRC32=crc32_b64(b"other"))
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="wrong")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    # An existing object is not replaced by a failed overwrite.
    s3.put_object(Bucket=bucket, Key="keep", Body=b"original")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="keep", Body=data, ChecksumSHA256=sha256_b64(b"x"))
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"original"


def test_wrong_trailer_stores_nothing(env):
    """A trailer whose value does not match the body (corrupted in flight):
    the body is botocore's own aws-chunked stream with its trailer value
    swapped, so the trailer path itself is what refuses it."""
    _, s3, _, scheme, bucket = env
    if scheme != "https":
        pytest.skip("botocore sends trailers only over https")
    data = payload(150_000, 5)
    good = crc32_b64(data).encode()
    bad = crc32_b64(b"corrupted").encode()
    seen = {}

    def tamper(request, **kwargs):
        body = request.body.read() if hasattr(request.body, "read") else request.body
        assert b"x-amz-checksum-crc32:" + good in body
        seen["tampered"] = True
        request.body = body.replace(b"x-amz-checksum-crc32:" + good, b"x-amz-checksum-crc32:" + bad)
        request.headers.pop("Transfer-Encoding", None)
        request.headers["Content-Length"] = str(len(request.body))

    s3.meta.events.register_first("before-send.s3.PutObject", tamper)
    try:
        with pytest.raises(ClientError) as e:
            s3.put_object(Bucket=bucket, Key="tampered", Body=data)
    finally:
        s3.meta.events.unregister("before-send.s3.PutObject", tamper)
    assert seen.get("tampered")
    assert e.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="tampered")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def crc32c_b64(data):
    """CRC32C (Castagnoli), table-driven; botocore needs awscrt for it."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return base64.b64encode((crc ^ 0xFFFFFFFF).to_bytes(4, "big")).decode()


def aws_cli_v2():
    """The aws cli v2 (the Debian package), if installed."""
    for path in ("/usr/bin/aws", shutil.which("aws")):
        if not path or not os.path.exists(path):
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True)
        if (out.stdout + out.stderr).startswith("aws-cli/2."):
            return path
    return None


def test_aws_cli_v2_crc32c_trailer(tls_cluster, tmp_path):
    """A second real client on the trailer path: the aws cli v2 sends
    --checksum-algorithm CRC32C (computed by awscrt) as an aws-chunked
    trailer over https; the cli then validates it on get-object."""
    aws = aws_cli_v2()
    if aws is None:
        pytest.skip("aws cli v2 not installed")
    info = tls_cluster.info
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=info["access_key"],
        AWS_SECRET_ACCESS_KEY=info["secret_key"],
        AWS_DEFAULT_REGION=info["region"],
        AWS_CA_BUNDLE=info["ca_path"],
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
    )
    ep = ["--endpoint-url", info["s3_endpoint"]]
    data = payload(3 * MIB + 17, 6)
    src = tmp_path / "src.bin"
    src.write_bytes(data)

    def run(*args):
        r = subprocess.run([aws, *ep, *args], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    run("s3api", "create-bucket", "--bucket", "cli-v2")
    r = run("s3api", "put-object", "--bucket", "cli-v2", "--key", "k", "--body", str(src),
            "--checksum-algorithm", "CRC32C", "--debug")
    assert "x-amz-trailer:x-amz-checksum-crc32c" in r.stderr, "the cli did not send a trailer"
    assert "STREAMING-UNSIGNED-PAYLOAD-TRAILER" in r.stderr
    assert json.loads(r.stdout)["ChecksumCRC32C"] == crc32c_b64(data)
    out = tmp_path / "out.bin"
    r = run("s3api", "get-object", "--bucket", "cli-v2", "--key", "k", "--checksum-mode", "ENABLED", str(out))
    assert json.loads(r.stdout)["ChecksumCRC32C"] == crc32c_b64(data)
    assert out.read_bytes() == data
