"""Access keys and bucket permissions: a bucket belongs to the key that
created it; `tessera admin bucket allow BUCKET KEY --read/--write` lets
another key in; everything else is AccessDenied, and nothing changes."""

import json
import os
import subprocess

import pytest
from botocore.exceptions import ClientError

from conftest import s3_client, tessera_bin


def admin(cluster, *args):
    r = subprocess.run(
        [tessera_bin(), "admin", "--cluster", os.path.join(cluster.data_dir, "cluster.json")] + list(args),
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, f"admin {args}: {r.stdout}{r.stderr}"
    return r.stdout


def denied(fn, *args, **kw):
    with pytest.raises(ClientError) as e:
        fn(*args, **kw)
    assert e.value.response["Error"]["Code"] == "AccessDenied", e.value.response
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_grants_let_another_key_read_then_write(cluster):
    root = s3_client(cluster.info)
    root.create_bucket(Bucket="perm-owned")
    root.put_object(Bucket="perm-owned", Key="a", Body=b"root's data")
    bob_key = json.loads(admin(cluster, "key", "create", "bob"))
    info = dict(cluster.info, access_key=bob_key["access_key"])
    bob = s3_client(info, secret=bob_key["secret_key"], retries=1)

    # No grant: nothing, and nothing changes.
    denied(bob.get_object, Bucket="perm-owned", Key="a")
    denied(bob.list_objects_v2, Bucket="perm-owned")
    denied(bob.put_object, Bucket="perm-owned", Key="b", Body=b"x")
    denied(bob.delete_object, Bucket="perm-owned", Key="a")
    denied(bob.create_multipart_upload, Bucket="perm-owned", Key="m")
    assert [b["Name"] for b in bob.list_buckets()["Buckets"]] == []
    assert root.get_object(Bucket="perm-owned", Key="a")["Body"].read() == b"root's data"
    assert [o["Key"] for o in root.list_objects_v2(Bucket="perm-owned")["Contents"]] == ["a"]

    # Read only.
    admin(cluster, "bucket", "allow", "perm-owned", bob_key["access_key"], "--read")
    assert bob.get_object(Bucket="perm-owned", Key="a")["Body"].read() == b"root's data"
    assert [o["Key"] for o in bob.list_objects_v2(Bucket="perm-owned")["Contents"]] == ["a"]
    denied(bob.put_object, Bucket="perm-owned", Key="b", Body=b"x")
    denied(bob.delete_objects, Bucket="perm-owned", Delete={"Objects": [{"Key": "a"}]})
    # Copying out of a readable bucket into one bob cannot write: refused.
    denied(bob.copy_object, Bucket="perm-owned", Key="c", CopySource={"Bucket": "perm-owned", "Key": "a"})

    # Read and write; the bucket itself stays the owner's.
    admin(cluster, "bucket", "allow", "perm-owned", bob_key["access_key"], "--read", "--write")
    bob.put_object(Bucket="perm-owned", Key="b", Body=b"bob's data")
    assert root.get_object(Bucket="perm-owned", Key="b")["Body"].read() == b"bob's data"
    denied(bob.delete_bucket, Bucket="perm-owned")
    listing = json.loads(admin(cluster, "bucket", "list", "--json"))
    row = next(r for r in listing if r["name"] == "perm-owned")
    assert row["grants"] == {bob_key["access_key"]: "read,write"}

    # Taken back.
    admin(cluster, "bucket", "deny", "perm-owned", bob_key["access_key"])
    denied(bob.get_object, Bucket="perm-owned", Key="b")
    # Bob's own bucket is his alone.
    bob.create_bucket(Bucket="perm-bobs")
    denied(root.list_objects_v2, Bucket="perm-bobs")
    assert "perm-bobs" not in [b["Name"] for b in root.list_buckets()["Buckets"]]
