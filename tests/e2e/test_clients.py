"""Real S3 clients against a real `tessera dev` cluster (issue 3, "Real clients
in CI"): the aws cli v1 (PyPI, in the venv), the aws cli v2 (Debian package,
/usr/bin/aws), boto3 with its default checksum settings, rclone and s3cmd
(Debian packages; scripts/test.sh installs them).

Each client gets its own bucket and runs the same scripted workload as far as
the client can express it: bucket create and list; a 100 MiB file up and down
(multipart); a tree of 1,000 small files synced up and back, then changed and
synced with delete both ways; ranged and conditional gets; server-side copy;
multi-object delete; presigned GET (and PUT with boto3) through curl, plus an
expired and a tampered URL (403). Everything read back is compared byte for
byte, and `rclone check` compares the local tree with each synced bucket.

Every client runs in a scrubbed environment: no AWS_* / RCLONE_* variables from
the caller, HOME in a temporary directory, and its configuration written from
cluster.json (endpoint, keys, region, path-style addressing).
"""

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import s3_client

MIB = 1 << 20
BIG_SIZE = 100 * MIB
TREE_FILES = 1000

AWS_V1 = os.path.join(os.path.dirname(sys.executable), "aws")  # the venv's aws cli v1
AWS_V2 = "/usr/bin/aws"  # Debian's awscli (v2)

# Keys a real tree has: spaces, '+', '=', '&', '%', '~', non-ASCII.
ODD_NAMES = [
    "odd/with space.txt",
    "odd/plus+sign.txt",
    "odd/eq=and&amp.txt",
    "odd/percent%41.txt",
    "odd/tilde~dash-under_score.txt",
    "odd/ünïcødé-日本.txt",
    "odd/paren (1).txt",
]

TIMINGS = {}


# ---------------------------------------------------------------- helpers


class Timer:
    def __init__(self, client):
        self.client = client

    def __enter__(self):
        self.t0 = time.time()
        return self

    def __exit__(self, *exc):
        TIMINGS[self.client] = TIMINGS.get(self.client, 0.0) + time.time() - self.t0


class Steps:
    """Runs a client's workload step by step and keeps going after a failed
    step, so one run reports every incompatibility; `check()` fails the test
    with all of them."""

    def __init__(self, client):
        self.client = client
        self.failed = []

    def __call__(self, name):
        return _Step(self, name)

    def check(self):
        if self.failed:
            msg = "\n\n".join(f"[{self.client}] step '{n}' failed:\n{e}" for n, e in self.failed)
            pytest.fail(f"{len(self.failed)} step(s) failed\n{msg}", pytrace=False)


class _Step:
    def __init__(self, steps, name):
        self.steps, self.name = steps, name

    def __enter__(self):
        self.t0 = time.time()
        return self

    def __exit__(self, typ, value, tb):
        print(f"\n[clients] {self.steps.client}: {self.name}: {time.time() - self.t0:.1f}s", end="")
        if typ is not None and issubclass(typ, (AssertionError, ClientError, subprocess.SubprocessError)):
            print(f"\n[clients] {self.steps.client}: step '{self.name}' FAILED: {str(value)[:2000]}")
            self.steps.failed.append((self.name, f"{typ.__name__}: {value}"))
            return True
        return False


def run(cmd, env, check=True, timeout=600, cwd=None):
    """Runs a client command; on failure the assertion shows what it said."""
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
        )
    return p


def curl(url, method="GET", upload=None, out=None):
    """(status, body bytes) of a plain request; no credentials of any kind."""
    cmd = ["curl", "-sS", "-g", "-X", method, "-w", "%{http_code}", "-o", out or "-"]
    if upload is not None:
        cmd += ["--data-binary", f"@{upload}", "-H", "Content-Type:"]
    cmd.append(url)
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    if out:
        return int(p.stdout.decode()), None
    return int(p.stdout[-3:].decode()), p.stdout[:-3]


def files_of(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            full = os.path.join(d, n)
            out[os.path.relpath(full, root)] = full
    return out


def assert_same_tree(expected_dir, actual_dir):
    exp, act = files_of(expected_dir), files_of(actual_dir)
    assert sorted(exp) == sorted(act), (
        f"missing {sorted(set(exp) - set(act))[:10]}, extra {sorted(set(act) - set(exp))[:10]}"
    )
    for rel, path in exp.items():
        with open(path, "rb") as a, open(act[rel], "rb") as b:
            assert a.read() == b.read(), f"{rel} differs"


def assert_same_file(a, b):
    assert os.path.getsize(a) == os.path.getsize(b), (a, b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            assert x == y, f"{a} and {b} differ"
            if not x:
                break


def change_tree(root, seed):
    """Overwrites 5 files with new sizes, deletes 5, adds 3: what a sync must carry."""
    r = random.Random(seed)
    rels = sorted(files_of(root))
    picked = r.sample(rels, 10)
    for rel in picked[:5]:
        with open(os.path.join(root, rel), "wb") as f:
            f.write(r.randbytes(9000 + r.randrange(1000)))  # sizes no original has
    for rel in picked[5:]:
        os.remove(os.path.join(root, rel))
    for i in range(3):
        os.makedirs(os.path.join(root, "added"), exist_ok=True)
        with open(os.path.join(root, "added", f"new-{seed}-{i}.bin"), "wb") as f:
            f.write(r.randbytes(500 + i))
    return picked


def tamper_signature(url):
    """The same URL with one hex digit of its SigV4 (or one char of its SigV2) signature changed."""
    parts = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    out = []
    for k, v in q:
        if k in ("X-Amz-Signature", "Signature"):
            v = ("0" if v[0] != "0" else "1") + v[1:]
        out.append((k, v))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(out)))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The shared local data: a 100 MiB file and a tree of 1,000 small files."""
    root = tmp_path_factory.mktemp("clients-data")
    r = random.Random(20261129)
    big = root / "big.bin"
    with open(big, "wb") as f:
        block = r.randbytes(MIB)
        for i in range(BIG_SIZE // MIB):
            # Every MiB different, cheaply.
            f.write(i.to_bytes(8, "big") + block[8:])
    tree = root / "tree"
    for i in range(TREE_FILES - len(ODD_NAMES)):
        d = tree / f"d{i % 10}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04}.bin").write_bytes(r.randbytes(r.randint(1, 8 * 1024)))
    for name in ODD_NAMES:
        p = tree / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(r.randbytes(r.randint(1, 4096)))
    assert len(files_of(tree)) == TREE_FILES
    return {"root": root, "big": str(big), "tree": str(tree)}


@pytest.fixture(scope="module")
def info(cluster):
    yield cluster.info
    if TIMINGS:
        print("\n[clients] runtime per client: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def env(info, tmp_path_factory):
    """A scrubbed environment for the client processes, configured from cluster.json."""
    home = tmp_path_factory.mktemp("clients-home")
    e = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "RCLONE_", "BOTO_", "S3CMD")) and k not in ("HOME",)
    }
    e["HOME"] = str(home)
    e["AWS_ACCESS_KEY_ID"] = info["access_key"]
    e["AWS_SECRET_ACCESS_KEY"] = info["secret_key"]
    e["AWS_DEFAULT_REGION"] = info["region"]
    e["AWS_REGION"] = info["region"]
    cfg = home / "aws-config"
    cfg.write_text(f"[default]\nregion = {info['region']}\ns3 =\n  addressing_style = path\n")
    e["AWS_CONFIG_FILE"] = str(cfg)
    e["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "no-credentials")
    e["AWS_PAGER"] = ""
    # rclone: a remote named "tessera" entirely from the environment.
    e["RCLONE_CONFIG"] = str(home / "rclone.conf")
    (home / "rclone.conf").write_text("")
    e.update(
        {
            "RCLONE_CONFIG_TESSERA_TYPE": "s3",
            "RCLONE_CONFIG_TESSERA_PROVIDER": "Other",
            "RCLONE_CONFIG_TESSERA_ENV_AUTH": "false",
            "RCLONE_CONFIG_TESSERA_ACCESS_KEY_ID": info["access_key"],
            "RCLONE_CONFIG_TESSERA_SECRET_ACCESS_KEY": info["secret_key"],
            "RCLONE_CONFIG_TESSERA_ENDPOINT": info["s3_endpoint"],
            "RCLONE_CONFIG_TESSERA_REGION": info["region"],
            "RCLONE_CONFIG_TESSERA_FORCE_PATH_STYLE": "true",
        }
    )
    # s3cmd: path-style (host_bucket without %(bucket)s), SigV4.
    ep = urllib.parse.urlsplit(info["s3_endpoint"])
    s3cfg = home / "s3cfg"
    s3cfg.write_text(
        "[default]\n"
        f"access_key = {info['access_key']}\n"
        f"secret_key = {info['secret_key']}\n"
        f"host_base = {ep.netloc}\n"
        f"host_bucket = {ep.netloc}\n"
        f"bucket_location = {info['region']}\n"
        f"use_https = {'True' if ep.scheme == 'https' else 'False'}\n"
        "signature_v2 = False\n"
        "progress_meter = False\n"
    )
    e["S3CMD_CONFIG_PATH"] = str(s3cfg)
    return e


# ---------------------------------------------------------------- aws cli v1 and v2


@pytest.fixture(params=["aws-cli-v1", "aws-cli-v2"])
def aws(request, info, env):
    path = AWS_V1 if request.param == "aws-cli-v1" else AWS_V2
    assert os.path.exists(path), f"{path} is missing (scripts/test.sh installs it)"
    version = run([path, "--version"], env).stdout.strip() or run([path, "--version"], env).stderr.strip()
    expect = "aws-cli/1." if request.param == "aws-cli-v1" else "aws-cli/2."
    assert version.startswith(expect), version
    print(f"\n[clients] {request.param}: {version}")

    def call(*args, check=True):
        return run([path, "--endpoint-url", info["s3_endpoint"], *args], env, check=check)

    call.name = request.param
    return call


def test_aws_cli(aws, data, tmp_path, env, info):
    name = aws.name
    bucket = f"clients-{name}"
    s3 = f"s3://{bucket}"
    step = Steps(name)
    work, back, out = tmp_path / "work", tmp_path / "back", tmp_path / "out"
    shutil.copytree(data["tree"], work)
    with Timer(name):
        with step("bucket create and list"):
            aws("s3", "mb", s3)
            assert bucket in aws("s3", "ls").stdout
            listed = json.loads(aws("s3api", "list-buckets", "--output", "json").stdout)["Buckets"]
            assert bucket in [b["Name"] for b in listed]

        with step("100 MiB cp up and down (multipart)"):
            aws("s3", "cp", data["big"], f"{s3}/big.bin", "--only-show-errors")
            head = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key", "big.bin").stdout)
            assert head["ContentLength"] == BIG_SIZE
            assert head["ETag"].strip('"').endswith("-13"), head["ETag"]  # 8 MiB parts
            aws("s3", "cp", f"{s3}/big.bin", str(tmp_path / "big.back"), "--only-show-errors")
            assert_same_file(data["big"], tmp_path / "big.back")
            os.remove(tmp_path / "big.back")

        with step("100 MiB server-side cp (multipart copy), default --copy-props"):
            # The cli v2 copies tags too: HeadObject + GetObjectTagging, then UploadPartCopy.
            aws("s3", "cp", f"{s3}/big.bin", f"{s3}/big-copy.bin", "--only-show-errors")
            aws("s3", "cp", f"{s3}/big-copy.bin", str(tmp_path / "big.copy"), "--only-show-errors")
            assert_same_file(data["big"], tmp_path / "big.copy")
            os.remove(tmp_path / "big.copy")

        if name == "aws-cli-v2":
            # Without tags: what a v2 user can do until GetObjectTagging works.
            with step("100 MiB server-side cp (multipart copy), --copy-props metadata-directive"):
                aws(
                    "s3", "cp", f"{s3}/big.bin", f"{s3}/big-copy2.bin", "--only-show-errors",
                    "--copy-props", "metadata-directive",
                )
                head = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key", "big-copy2.bin").stdout)
                assert head["ETag"].strip('"').endswith("-13"), head["ETag"]
                aws("s3", "cp", f"{s3}/big-copy2.bin", str(tmp_path / "big.copy"), "--only-show-errors")
                assert_same_file(data["big"], tmp_path / "big.copy")
                os.remove(tmp_path / "big.copy")

        with step("sync 1,000 files up and back"):
            aws("s3", "sync", str(work), f"{s3}/tree", "--only-show-errors")
            aws("s3", "sync", f"{s3}/tree", str(back), "--only-show-errors")
            assert_same_tree(work, back)
            rclone_check(env, work, f"{bucket}/tree")

        with step("change locally, sync --delete up, then down"):
            change_tree(work, seed=1)
            aws("s3", "sync", str(work), f"{s3}/tree", "--delete", "--only-show-errors")
            keys = list_keys_cli(aws, bucket, "tree/")
            assert sorted(keys) == sorted("tree/" + r for r in files_of(work))
            aws("s3", "sync", f"{s3}/tree", str(back), "--delete", "--only-show-errors")
            assert_same_tree(work, back)
            rclone_check(env, work, f"{bucket}/tree")

        with step("change in the bucket, sync --delete down"):
            (tmp_path / "remote.bin").write_bytes(b"made in the bucket\n" * 100)
            aws("s3", "cp", str(tmp_path / "remote.bin"), f"{s3}/tree/remote/remote.bin", "--only-show-errors")
            gone = sorted(files_of(work))[0]
            aws("s3", "rm", f"{s3}/tree/{gone}", "--only-show-errors")
            aws("s3", "sync", f"{s3}/tree", str(work), "--delete", "--only-show-errors")
            assert not (work / gone).exists()
            assert (work / "remote" / "remote.bin").read_bytes() == b"made in the bucket\n" * 100
            rclone_check(env, work, f"{bucket}/tree")

        # One small object for the rest (uploaded here, so it does not depend on the syncs).
        local = random.Random(7).randbytes(5000)
        key = "dir/object one.bin"
        (tmp_path / "one.bin").write_bytes(local)
        aws("s3", "cp", str(tmp_path / "one.bin"), f"{s3}/{key}", "--only-show-errors")

        with step("ranged gets"):
            r = json.loads(aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--range", "bytes=3-10", str(out)).stdout)
            assert out.read_bytes() == local[3:11]
            assert r["ContentRange"] == f"bytes 3-10/{len(local)}"
            aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--range", "bytes=-5", str(out))
            assert out.read_bytes() == local[-5:]
            aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--range", "bytes=4990-", str(out))
            assert out.read_bytes() == local[4990:]

        with step("conditional gets"):
            etag = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key", key).stdout)["ETag"]
            aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--if-match", etag, str(out))
            assert out.read_bytes() == local
            p = aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--if-none-match", etag, str(out), check=False)
            assert p.returncode != 0 and ("304" in p.stderr or "Not Modified" in p.stderr), p.stderr
            p = aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--if-match", '"0000"', str(out), check=False)
            assert p.returncode != 0 and "PreconditionFailed" in p.stderr, p.stderr

        with step("copy-object"):
            aws("s3api", "copy-object", "--bucket", bucket, "--key", "copied/one", "--copy-source", f"{bucket}/{key}")
            aws("s3api", "get-object", "--bucket", bucket, "--key", "copied/one", str(out))
            assert out.read_bytes() == local
            aws("s3", "cp", f"{s3}/{key}", f"{s3}/copied/two", "--only-show-errors")
            aws("s3", "cp", f"{s3}/copied/two", str(out), "--only-show-errors")
            assert out.read_bytes() == local

        with step("delete-objects"):
            doomed_dir = tmp_path / "doomed"
            doomed_dir.mkdir()
            for i in range(20):
                (doomed_dir / f"{i:02}").write_bytes(b"x" * i)
            aws("s3", "cp", "--recursive", str(doomed_dir), f"{s3}/doomed", "--only-show-errors")
            doomed = list_keys_cli(aws, bucket, "doomed/")
            assert len(doomed) == 20
            req = json.dumps({"Objects": [{"Key": k} for k in doomed] + [{"Key": "doomed/never"}], "Quiet": False})
            res = json.loads(aws("s3api", "delete-objects", "--bucket", bucket, "--delete", req).stdout)
            assert sorted(d["Key"] for d in res["Deleted"]) == sorted(doomed + ["doomed/never"])
            assert not res.get("Errors")
            assert list_keys_cli(aws, bucket, "doomed/") == []

        with step("presigned GET (aws s3 presign) through curl; tampered and expired -> 403"):
            # v1 presigns with SigV2 query auth (AWSAccessKeyId/Signature/Expires), v2 with SigV4.
            url = aws("s3", "presign", f"{s3}/{key}", "--expires-in", "300").stdout.strip()
            assert ("X-Amz-Signature=" in url) == (name == "aws-cli-v2"), url
            status, body = curl(url)
            assert (status, body) == (200, local), (status, body[:300])
            status, body = curl(tamper_signature(url))
            assert status == 403, body
            other = url.replace(urllib.parse.quote(key), "copied/one", 1)
            assert other != url
            status, body = curl(other)
            assert status == 403, body
            status, body = curl(url, method="PUT", upload=str(out))
            assert status == 403, body
            expiring = aws("s3", "presign", f"{s3}/{key}", "--expires-in", "1").stdout.strip()
            time.sleep(2.1)
            status, body = curl(expiring)
            assert status == 403 and b"expired" in body, body
    step.check()


def list_keys_cli(aws, bucket, prefix):
    # The cli pages through list-objects-v2 itself; a small page size makes it paginate.
    out = aws(
        "s3api", "list-objects-v2", "--bucket", bucket, "--prefix", prefix, "--page-size", "200", "--output", "json"
    ).stdout
    return [o["Key"] for o in (json.loads(out) if out.strip() else {}).get("Contents", [])]


# ---------------------------------------------------------------- rclone


def rclone_check(env, local, remote_path):
    """`rclone check`: sizes and MD5s (ETags) of every file, both directions."""
    p = run(["rclone", "check", str(local), f"tessera:{remote_path}"], env, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "0 differences found" in p.stderr, p.stderr[-3000:]


def test_rclone(data, tmp_path, env):
    bucket = "clients-rclone"
    rc = lambda *a, check=True: run(["rclone", *a], env, check=check)  # noqa: E731
    print(f"\n[clients] {rc('version').stdout.splitlines()[0]}")
    step = Steps("rclone")
    work, back = tmp_path / "work", tmp_path / "back"
    shutil.copytree(data["tree"], work)
    with Timer("rclone"):
        with step("mkdir and lsd"):
            rc("mkdir", f"tessera:{bucket}")
            assert bucket in rc("lsd", "tessera:").stdout

        with step("100 MiB up (multipart, 16 MiB chunks) and down, check"):
            rc("copyto", data["big"], f"tessera:{bucket}/big.bin", "--s3-upload-cutoff", "16M", "--s3-chunk-size", "16M")
            rc("copyto", f"tessera:{bucket}/big.bin", str(tmp_path / "big.back"))
            assert_same_file(data["big"], tmp_path / "big.back")
            os.remove(tmp_path / "big.back")
            # For a multipart object rclone checks the MD5 it stored in the metadata.
            rc("check", os.path.dirname(data["big"]), f"tessera:{bucket}", "--include", "big.bin")

        with step("sync 1,000 files up, check, back down"):
            rc("sync", str(work), f"tessera:{bucket}/tree", "--transfers", "16", "--checkers", "16")
            rclone_check(env, work, f"{bucket}/tree")
            rc("sync", f"tessera:{bucket}/tree", str(back), "--transfers", "16")
            assert_same_tree(work, back)

        with step("change, sync (deletes) up and down, check"):
            change_tree(work, seed=2)
            rc("sync", str(work), f"tessera:{bucket}/tree", "--transfers", "16")
            rclone_check(env, work, f"{bucket}/tree")
            rc("sync", f"tessera:{bucket}/tree", str(back), "--transfers", "16")
            assert_same_tree(work, back)

        local = random.Random(8).randbytes(5000)
        (tmp_path / "one.bin").write_bytes(local)
        rc("copyto", str(tmp_path / "one.bin"), f"tessera:{bucket}/dir/object one.bin")

        with step("ranged read (cat --offset --count)"):
            target = tmp_path / "ranged"
            with open(target, "wb") as f:
                subprocess.run(
                    ["rclone", "cat", "--offset", "2", "--count", "7", f"tessera:{bucket}/dir/object one.bin"],
                    env=env, stdout=f, check=True, timeout=60,
                )
            assert target.read_bytes() == local[2:9]

        with step("server-side copy and delete"):
            rc("copyto", f"tessera:{bucket}/dir/object one.bin", f"tessera:{bucket}/copied/one")
            rc("copyto", f"tessera:{bucket}/copied/one", str(tmp_path / "one.back"))
            assert (tmp_path / "one.back").read_bytes() == local
            rc("deletefile", f"tessera:{bucket}/copied/one")
            assert rc("lsf", f"tessera:{bucket}/copied/").stdout.strip() == ""

        with step("presigned link through curl; tampered -> 403"):
            link = rc("link", f"tessera:{bucket}/dir/object one.bin", "--expire", "5m").stdout.strip()
            assert curl(link) == (200, local)
            assert curl(tamper_signature(link))[0] == 403
    step.check()


# ---------------------------------------------------------------- s3cmd


def test_s3cmd(data, tmp_path, env):
    bucket = "clients-s3cmd"
    cfg = env["S3CMD_CONFIG_PATH"]
    s3c = lambda *a, check=True: run(["s3cmd", "-c", cfg, *a], env, check=check)  # noqa: E731
    print(f"\n[clients] {s3c('--version').stdout.strip()}")
    step = Steps("s3cmd")
    work, back = tmp_path / "work", tmp_path / "back"
    shutil.copytree(data["tree"], work)
    with Timer("s3cmd"):
        with step("mb and ls"):
            s3c("mb", f"s3://{bucket}")
            assert f"s3://{bucket}" in s3c("ls").stdout

        with step("100 MiB put (multipart, 15 MiB chunks), ls, get"):
            s3c("put", data["big"], f"s3://{bucket}/big.bin", "-q")
            ls = s3c("ls", f"s3://{bucket}/").stdout
            assert f"{BIG_SIZE}" in ls and f"s3://{bucket}/big.bin" in ls, ls
            s3c("get", f"s3://{bucket}/big.bin", str(tmp_path / "big.back"), "-q")
            assert_same_file(data["big"], tmp_path / "big.back")
            os.remove(tmp_path / "big.back")

        with step("sync 1,000 files up, check, back down"):
            s3c("sync", "-q", f"{work}/", f"s3://{bucket}/tree/")
            rclone_check(env, work, f"{bucket}/tree")
            s3c("sync", "-q", f"s3://{bucket}/tree/", f"{back}/")
            assert_same_tree(work, back)

        with step("change, sync --delete-removed up and down"):
            change_tree(work, seed=3)
            s3c("sync", "-q", "--delete-removed", f"{work}/", f"s3://{bucket}/tree/")
            rclone_check(env, work, f"{bucket}/tree")
            s3c("sync", "-q", "--delete-removed", f"s3://{bucket}/tree/", f"{back}/")
            assert_same_tree(work, back)

        local = random.Random(9).randbytes(5000)
        (tmp_path / "one.bin").write_bytes(local)
        s3c("put", str(tmp_path / "one.bin"), f"s3://{bucket}/dir/object one.bin", "-q")

        with step("cp, get, del"):
            s3c("cp", f"s3://{bucket}/dir/object one.bin", f"s3://{bucket}/copied/one")
            s3c("get", f"s3://{bucket}/copied/one", str(tmp_path / "one.back"), "-q")
            assert (tmp_path / "one.back").read_bytes() == local
            s3c("del", f"s3://{bucket}/copied/one", f"s3://{bucket}/big.bin")
            assert s3c("ls", f"s3://{bucket}/copied/").stdout.strip() == ""

        with step("signurl (SigV2 query auth) through curl; tampered -> 403"):
            url = s3c("signurl", f"s3://{bucket}/dir/object one.bin", "+300").stdout.strip()
            assert curl(url) == (200, local)
            assert curl(tamper_signature(url))[0] == 403
    step.check()


# ---------------------------------------------------------------- boto3


def test_boto3(info, data, tmp_path):
    s3 = s3_client(info)
    # The defaults (flexible checksums, since 2025) are what this test is about.
    assert s3.meta.config.request_checksum_calculation == "when_supported"
    assert s3.meta.config.response_checksum_validation == "when_supported"
    bucket = "clients-boto3"
    step = Steps("boto3")
    with Timer("boto3"):
        with step("create and list buckets"):
            s3.create_bucket(Bucket=bucket)
            assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]

        with step("100 MiB upload_file / download_file (multipart, 8 MiB parts)"):
            s3.upload_file(data["big"], bucket, "big.bin", Config=TransferConfig())
            h = s3.head_object(Bucket=bucket, Key="big.bin", ChecksumMode="ENABLED")
            assert h["ContentLength"] == BIG_SIZE and h["ETag"].strip('"').endswith("-13"), h
            assert h.get("ChecksumCRC32", "").endswith("-13"), h
            s3.download_file(bucket, "big.bin", str(tmp_path / "big.back"))
            assert_same_file(data["big"], tmp_path / "big.back")
            os.remove(tmp_path / "big.back")

        local = {}
        for rel, path in files_of(data["tree"]).items():
            with open(path, "rb") as f:
                local["tree/" + rel] = f.read()

        with step("1,000 puts, paginated list, 1,000 gets"):

            def put(kv):
                s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1])

            def get(k):
                return k, s3.get_object(Bucket=bucket, Key=k, ChecksumMode="ENABLED")["Body"].read()

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(put, local.items()))
                pages = list(
                    s3.get_paginator("list_objects_v2").paginate(
                        Bucket=bucket, Prefix="tree/", PaginationConfig={"PageSize": 250}
                    )
                )
                assert len(pages) == 4
                listed = [o["Key"] for p in pages for o in p.get("Contents", [])]
                assert listed == sorted(local, key=lambda k: k.encode()), "listing is in UTF-8 byte order"
                back = dict(pool.map(get, listed))
            assert back == local

        key = "dir/object one.bin"
        body = random.Random(10).randbytes(5000)
        s3.put_object(Bucket=bucket, Key=key, Body=body)

        with step("ranged gets"):
            for rng, want in [("bytes=0-9", body[:10]), ("bytes=10-", body[10:]), ("bytes=-7", body[-7:])]:
                g = s3.get_object(Bucket=bucket, Key=key, Range=rng)
                assert g["Body"].read() == want, rng
                assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
            with pytest.raises(ClientError) as e:
                s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={len(body) + 10}-")
            assert e.value.response["Error"]["Code"] == "InvalidRange"

        with step("conditional gets"):
            h = s3.head_object(Bucket=bucket, Key=key)
            etag, lm = h["ETag"], h["LastModified"]
            assert s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"].read() == body
            cases = [
                ({"IfNoneMatch": etag}, 304),
                ({"IfMatch": '"0123"'}, 412),
                ({"IfModifiedSince": lm + timedelta(hours=1)}, 304),
                ({"IfUnmodifiedSince": lm - timedelta(hours=1)}, 412),
            ]
            for kw, status in cases:
                with pytest.raises(ClientError) as e:
                    s3.get_object(Bucket=bucket, Key=key, **kw)
                assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status, kw
            got = s3.get_object(Bucket=bucket, Key=key, IfModifiedSince=lm - timedelta(hours=1))
            assert got["Body"].read() == body

        with step("copy_object"):
            s3.copy_object(Bucket=bucket, Key="copied/one", CopySource={"Bucket": bucket, "Key": key})
            assert s3.get_object(Bucket=bucket, Key="copied/one")["Body"].read() == body

        src = tmp_path / "presigned.bin"
        src.write_bytes(os.urandom(70_000))
        other = tmp_path / "other.bin"
        other.write_bytes(b"not this")

        # boto3's default presigner (SigV2 query auth for this endpoint) and an explicit SigV4 one.
        sigv4 = boto3.client(
            "s3",
            endpoint_url=info["s3_endpoint"],
            region_name=info["region"],
            aws_access_key_id=info["access_key"],
            aws_secret_access_key=info["secret_key"],
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        for label, client in [("default", s3), ("s3v4", sigv4)]:
            put_url = client.generate_presigned_url(
                "put_object", Params={"Bucket": bucket, "Key": "presigned/put.bin"}, ExpiresIn=300
            )
            get_url = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": "presigned/put.bin"}, ExpiresIn=300
            )
            if label == "s3v4":
                assert "X-Amz-Signature=" in put_url and "X-Amz-Signature=" in get_url, (put_url, get_url)

            with step(f"presigned PUT and GET through curl ({label})"):
                assert curl(put_url, method="PUT", upload=str(src))[0] == 200
                assert s3.get_object(Bucket=bucket, Key="presigned/put.bin")["Body"].read() == src.read_bytes()
                assert curl(get_url) == (200, src.read_bytes())

            with step(f"tampered presigned URLs -> 403, nothing written ({label})"):
                assert curl(tamper_signature(get_url))[0] == 403
                assert curl(get_url.replace("presigned/put.bin", "copied/one"))[0] == 403
                assert curl(get_url, method="PUT", upload=str(other))[0] == 403
                if "X-Amz-Expires=300" in get_url:
                    assert curl(get_url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000"))[0] == 403
                assert curl(tamper_signature(put_url), method="PUT", upload=str(other))[0] == 403
                elsewhere = put_url.replace("presigned/put.bin", "presigned/elsewhere")
                assert curl(elsewhere, method="PUT", upload=str(other))[0] == 403
                assert s3.get_object(Bucket=bucket, Key="presigned/put.bin")["Body"].read() == src.read_bytes()
                with pytest.raises(ClientError):
                    s3.head_object(Bucket=bucket, Key="presigned/elsewhere")

            with step(f"expired presigned URLs -> 403 ({label})"):
                short = client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": "presigned/put.bin"}, ExpiresIn=1
                )
                short_put = client.generate_presigned_url(
                    "put_object", Params={"Bucket": bucket, "Key": "presigned/late.bin"}, ExpiresIn=1
                )
                time.sleep(2.1)
                status, resp = curl(short)
                assert status == 403 and b"expired" in resp, resp
                assert curl(short_put, method="PUT", upload=str(other))[0] == 403
                with pytest.raises(ClientError):
                    s3.head_object(Bucket=bucket, Key="presigned/late.bin")

        with step("delete_objects: 1,000 keys (the maximum), quiet; then verbose"):
            keys = sorted(local)
            r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
            assert not r.get("Errors") and not r.get("Deleted"), r
            assert s3.list_objects_v2(Bucket=bucket, Prefix="tree/")["KeyCount"] == 0
            r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "copied/one"}, {"Key": "never-there"}]})
            assert sorted(d["Key"] for d in r["Deleted"]) == ["copied/one", "never-there"]
    step.check()


# ---------------------------------------------------------------- over HTTPS (h2)


def test_rclone_and_curl_over_https_h2(tls_cluster, data, tmp_path, env):
    """rclone (Go) and curl negotiate HTTP/2 over TLS. A HEAD answered with an
    error (404 for a key rclone is about to upload, 403 for an anonymous
    curl) must carry no body: DATA on a HEAD stream is a protocol error."""
    info = tls_cluster.info
    assert info["s3_endpoint"].startswith("https://")
    ca = info["ca_path"]
    e = dict(env)
    e.update(
        {
            "RCLONE_CONFIG_TESSERA_ENDPOINT": info["s3_endpoint"],
            "RCLONE_CONFIG_TESSERA_ACCESS_KEY_ID": info["access_key"],
            "RCLONE_CONFIG_TESSERA_SECRET_ACCESS_KEY": info["secret_key"],
            "RCLONE_CA_CERT": ca,
        }
    )
    step = Steps("rclone-https")
    bucket = "clients-rclone-tls"
    with Timer("rclone-https"):
        with step("anonymous HEAD over h2 -> 403 without a protocol error"):
            for path in ("/", f"/{bucket}/missing"):
                p = subprocess.run(
                    ["curl", "-sS", "--http2", "--cacert", ca, "-I", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                     info["s3_endpoint"] + path],
                    capture_output=True, text=True, timeout=60,
                )
                assert p.returncode == 0 and p.stdout[:3] in ("2 4", "2 5"), (
                    path, p.returncode, p.stdout, p.stderr,
                )
                if path != "/":
                    assert p.stdout == "2 403", (path, p.stdout)

        with step("rclone: mkdir, copy new objects (HEAD 404 first), sync, check"):
            run(["rclone", "mkdir", f"tessera:{bucket}"], e)
            work = tmp_path / "work"
            os.makedirs(work / "sub")
            r = random.Random(11)
            for i in range(50):
                (work / "sub" / f"{i:02}.bin").write_bytes(r.randbytes(r.randint(1, 4096)))
            p = run(["rclone", "copyto", data["tree"] + "/" + ODD_NAMES[0], f"tessera:{bucket}/one.txt", "-v"], e)
            assert "protocol error" not in p.stderr, p.stderr[-2000:]
            p = run(["rclone", "sync", str(work), f"tessera:{bucket}/tree", "--transfers", "8"], e)
            assert "protocol error" not in p.stderr, p.stderr[-2000:]
            rclone_check(e, work, f"{bucket}/tree")
            back = tmp_path / "back"
            run(["rclone", "sync", f"tessera:{bucket}/tree", str(back)], e)
            assert_same_tree(work, back)
    step.check()
