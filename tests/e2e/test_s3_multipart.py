"""Multipart uploads, CopyObject and DeleteObjects end to end: `tessera dev`
driven by the aws cli (v1 uploads files over 8 MiB in 8 MiB parts) and
boto3 (TransferConfig forcing multipart). Own bucket, own cluster (the
cluster fixture is per module)."""

import hashlib
import os

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from conftest import s3_client
from test_v0_cluster import aws, payload, sha

BUCKET = "e2e-multipart"
MIB = 1 << 20


def multipart_etag(data, part_size):
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def test_bucket(cluster):
    aws(cluster.info, "s3api", "create-bucket", "--bucket", BUCKET)


def test_aws_cli_cp_100_mib_roundtrip(cluster, tmp_path):
    info = cluster.info
    data = payload(100 * MIB, "cli-100")
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    aws(info, "s3", "cp", str(src), f"s3://{BUCKET}/cli/big.bin", timeout=600)
    head = s3_client(info).head_object(Bucket=BUCKET, Key="cli/big.bin")
    assert head["ContentLength"] == len(data)
    # The cli splits at 8 MiB: 13 parts, a multipart ETag.
    assert head["ETag"] == multipart_etag(data, 8 * MIB)
    dst = tmp_path / "back.bin"
    aws(info, "s3", "cp", f"s3://{BUCKET}/cli/big.bin", str(dst), timeout=600)
    assert sha(dst.read_bytes()) == sha(data)
    # A ranged read across the part 1 / part 2 boundary.
    body = s3_client(info).get_object(
        Bucket=BUCKET, Key="cli/big.bin", Range=f"bytes={8 * MIB - 100}-{8 * MIB + 99}"
    )["Body"].read()
    assert body == data[8 * MIB - 100 : 8 * MIB + 100]


def test_boto3_upload_download_file_multipart(cluster, tmp_path):
    client = s3_client(cluster.info)
    data = payload(23 * MIB + 5, "boto-file")
    src = tmp_path / "file.bin"
    src.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=4)
    client.upload_file(str(src), BUCKET, "boto/file.bin", Config=config)
    head = client.head_object(Bucket=BUCKET, Key="boto/file.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == multipart_etag(data, 5 * MIB)
    dst = tmp_path / "file.back"
    client.download_file(BUCKET, "boto/file.bin", str(dst), Config=config)
    assert sha(dst.read_bytes()) == sha(data)


def test_boto3_low_level_multipart_list_and_abort(cluster):
    client = s3_client(cluster.info)
    up = client.create_multipart_upload(Bucket=BUCKET, Key="low/obj", ContentType="text/x-parts",
                                        Metadata={"color": "blue"})
    uid = up["UploadId"]
    p1 = payload(5 * MIB, "p1")
    p2 = payload(1000, "p2")
    e1 = client.upload_part(Bucket=BUCKET, Key="low/obj", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
    e2 = client.upload_part(Bucket=BUCKET, Key="low/obj", UploadId=uid, PartNumber=2, Body=p2)["ETag"]
    parts = client.list_parts(Bucket=BUCKET, Key="low/obj", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [(1, e1, len(p1)), (2, e2, len(p2))]
    uploads = client.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("low/obj", uid)]

    # Out of order parts and a wrong ETag are refused.
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(Bucket=BUCKET, Key="low/obj", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    assert e.value.response["Error"]["Code"] == "InvalidPartOrder"
    with pytest.raises(ClientError) as e:
        client.complete_multipart_upload(Bucket=BUCKET, Key="low/obj", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}]})
    assert e.value.response["Error"]["Code"] == "InvalidPart"

    out = client.complete_multipart_upload(Bucket=BUCKET, Key="low/obj", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert out["ETag"].endswith('-2"')
    got = client.get_object(Bucket=BUCKET, Key="low/obj")
    assert got["Body"].read() == p1 + p2
    assert got["ContentType"] == "text/x-parts"
    assert got["Metadata"] == {"color": "blue"}

    # Abort: the upload disappears from the listing and cannot be used.
    uid = client.create_multipart_upload(Bucket=BUCKET, Key="low/aborted")["UploadId"]
    client.upload_part(Bucket=BUCKET, Key="low/aborted", UploadId=uid, PartNumber=1, Body=b"x" * 100)
    assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])] == [uid]
    client.abort_multipart_upload(Bucket=BUCKET, Key="low/aborted", UploadId=uid)
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        client.list_parts(Bucket=BUCKET, Key="low/aborted", UploadId=uid)
    assert e.value.response["Error"]["Code"] == "NoSuchUpload"
    with pytest.raises(ClientError) as e:
        client.head_object(Bucket=BUCKET, Key="low/aborted")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_boto3_copy_object(cluster):
    client = s3_client(cluster.info)
    data = payload(9 * MIB + 17, "copy-src")
    client.put_object(Bucket=BUCKET, Key="copy/src", Body=data, Metadata={"color": "blue"},
                      ContentType="text/x-src")
    out = client.copy_object(Bucket=BUCKET, Key="copy/dst", CopySource={"Bucket": BUCKET, "Key": "copy/src"})
    assert out["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = client.get_object(Bucket=BUCKET, Key="copy/dst")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"color": "blue"}
    # REPLACE, onto itself.
    client.copy_object(Bucket=BUCKET, Key="copy/src", CopySource=f"{BUCKET}/copy/src",
                       MetadataDirective="REPLACE", Metadata={"color": "green"})
    got = client.get_object(Bucket=BUCKET, Key="copy/src")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"color": "green"}
    # Onto itself without REPLACE: InvalidRequest.
    with pytest.raises(ClientError) as e:
        client.copy_object(Bucket=BUCKET, Key="copy/src", CopySource=f"{BUCKET}/copy/src")
    assert e.value.response["Error"]["Code"] == "InvalidRequest"
    # A multipart object copied part-wise with ranges (UploadPartCopy).
    uid = client.create_multipart_upload(Bucket=BUCKET, Key="copy/parts")["UploadId"]
    etags = []
    for n, (a, b) in enumerate([(0, 5 * MIB - 1), (5 * MIB, len(data) - 1)], start=1):
        r = client.upload_part_copy(Bucket=BUCKET, Key="copy/parts", UploadId=uid, PartNumber=n,
                                    CopySource={"Bucket": BUCKET, "Key": "copy/src"},
                                    CopySourceRange=f"bytes={a}-{b}")
        etags.append(r["CopyPartResult"]["ETag"])
    client.complete_multipart_upload(Bucket=BUCKET, Key="copy/parts", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
    assert client.get_object(Bucket=BUCKET, Key="copy/parts")["Body"].read() == data


def test_boto3_delete_objects(cluster):
    client = s3_client(cluster.info)
    keys = [f"del/{i}" for i in range(20)]
    for k in keys:
        client.put_object(Bucket=BUCKET, Key=k, Body=k.encode())
    out = client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[:10] + ["del/missing"]]})
    assert sorted(d["Key"] for d in out["Deleted"]) == sorted(keys[:10] + ["del/missing"])
    assert not out.get("Errors")
    out = client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[10:]], "Quiet": True})
    assert not out.get("Deleted") and not out.get("Errors")
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="del/")
    assert listed.get("KeyCount", 0) == 0
    with pytest.raises(ClientError) as e:
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"k{i}"} for i in range(1001)]})
    assert e.value.response["Error"]["Code"] == "MalformedXML"
