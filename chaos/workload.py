"""The chaos client workload and its checker.

Every key has exactly one writing thread (`w<i>-<j>` belong to writer i,
`d<i>-<j>` to deleter i), so the operations on a key form a sequence and
each read can be judged against it: a single-writer register.

A write or delete is *acknowledged* when S3 answered success; otherwise it
is *uncertain* (it may or may not have taken effect: the answer may have been
lost, or the gateway died after committing). A read that started at ts and
ended at te may legally return:

  - the value of the last acknowledged operation that ended before ts
    (read-after-acknowledged-write: never anything older);
  - the value of any later operation that started before te (concurrent);
  - the value of an uncertain operation that started before te, while
    ts <= its end + UNCERTAIN_GRACE (a request the client gave up on may
    still be applied by the server for a while; after that window, seeing it
    over a later acknowledged value is a lost update).

Anything else is a violation: bytes that match no write of the key ever
("wrong bytes"), or an older value / a deleted object coming back ("stale").
Values are SHA-256 digests; ABSENT is a 404.
"""

import hashlib
import random
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ABSENT = "absent"
UNCERTAIN_GRACE = 60.0
MiB = 1 << 20
PART = 5 * MiB


def s3_client(info, retries=2, read_timeout=30):
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
            read_timeout=read_timeout,
            max_pool_connections=4,
        ),
    )


def body_of(body_seed, size):
    """The bytes a write sent, regenerated from its seed (range checks)."""
    return random.Random(body_seed).randbytes(size)


class Op:
    __slots__ = ("kind", "start", "end", "ok", "sha", "size", "error", "body_seed")

    def __init__(self, kind, start, sha=None, size=0, body_seed=None):
        self.kind = kind  # put | multipart | delete
        self.start = start
        self.end = None
        self.ok = False
        self.sha = sha  # None for a delete
        self.size = size
        self.error = None
        self.body_seed = body_seed

    @property
    def value(self):
        return ABSENT if self.kind == "delete" else self.sha


class Read:
    __slots__ = ("key", "start", "end", "value", "size", "who", "range")

    def __init__(self, key, start, end, value, size, who, rng=None):
        self.key, self.start, self.end, self.value, self.size, self.who = key, start, end, value, size, who
        self.range = rng  # (first, last) byte of a Range GET, inclusive


def range_value(op, first, last):
    """What a Range GET of bytes first..last returns from op's value."""
    if op.kind == "delete":
        return ABSENT
    if first >= op.size:
        return "unsatisfiable"
    return hashlib.sha256(body_of(op.body_seed, op.size)[first:last + 1]).hexdigest()


def get_value(s3, bucket, key, byte_range=None):
    """(sha256 hex or ABSENT, size); raises on any other failure, including
    a body cut short (botocore checks Content-Length). A Range GET past the
    end answers "unsatisfiable"."""
    try:
        if byte_range:
            r = s3.get_object(Bucket=bucket, Key=key, Range="bytes=%d-%d" % byte_range)
        else:
            r = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchKey" or (status == 404 and code in (None, "404", "NotFound")):
            return ABSENT, 0
        if byte_range and (code == "InvalidRange" or status == 416):
            return "unsatisfiable", 0
        raise
    h = hashlib.sha256()
    n = 0
    body = r["Body"]
    try:
        for chunk in body.iter_chunks(1 << 20):
            h.update(chunk)
            n += len(chunk)
    finally:
        body.close()
    return h.hexdigest(), n


class Workload:
    """Writers, deleters and readers against one bucket until stop()."""

    def __init__(self, info, bucket, seed, writers=3, deleters=1, readers=2, keys_per_writer=12,
                 max_size=4 * MiB, multipart_p=0.04, read_after_write_p=0.5, pace=0.0):
        self.info = info
        self.bucket = bucket
        self.seed = seed
        self.n_writers, self.n_deleters, self.n_readers = writers, deleters, readers
        self.keys_per_writer = keys_per_writer
        self.max_size = max_size
        self.multipart_p = multipart_p
        self.raw_p = read_after_write_p
        self.pace = pace
        self.history = {}  # key -> [Op]; appended only by the key's owner
        self.reads = []  # [Read]
        self.read_errors = 0
        self.errors = {}  # kind -> count of failed ops, for the report
        self.error_samples = []
        self.stop_event = threading.Event()
        self.threads = []
        self.lock = threading.Lock()
        self.keys = []
        for i in range(writers):
            self.keys += [f"w{i}-{j}" for j in range(keys_per_writer)]
        for i in range(deleters):
            self.keys += [f"d{i}-{j}" for j in range(max(2, keys_per_writer // 3))]
        for k in self.keys:
            self.history[k] = []

    # ---- running ---------------------------------------------------------

    def put_stable(self, n, min_size=64 << 10, max_size=MiB):
        """Writes `n` objects (`s-<j>`) that nobody overwrites or deletes:
        their stripes stay live for the whole run, so damage done to their
        shard files must be repaired. Readers read them too."""
        rng = random.Random(f"{self.seed}-stable")
        s3 = s3_client(self.info, retries=5)
        for j in range(n):
            key = f"s-{j}"
            self.history[key] = []
            self.keys.append(key)
            for _ in range(5):
                if self._put(s3, key, rng.randint(min_size, max_size), False).ok:
                    break
                time.sleep(1)
            else:
                raise RuntimeError(f"could not write {key} before any fault")

    def start(self):
        for i in range(self.n_writers):
            self._spawn(self._writer, i)
        for i in range(self.n_deleters):
            self._spawn(self._deleter, i)
        for i in range(self.n_readers):
            self._spawn(self._reader, i)

    def _spawn(self, fn, i):
        t = threading.Thread(target=self._guard, args=(fn, i), name=f"{fn.__name__}-{i}", daemon=True)
        t.start()
        self.threads.append(t)

    def _guard(self, fn, i):
        try:
            fn(i)
        except Exception as e:  # a bug in the harness must not pass silently
            with self.lock:
                self.errors["harness"] = self.errors.get("harness", 0) + 1
                self.error_samples.append(f"{fn.__name__}-{i} crashed: {e!r}")

    def stop(self, timeout=90):
        self.stop_event.set()
        deadline = time.time() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.time()))
        return [t.name for t in self.threads if t.is_alive()]

    def _fail(self, op, e):
        # Back off a little: a dead gateway must not turn into thousands of
        # instant failures.
        self.stop_event.wait(0.25)
        op.error = f"{type(e).__name__}: {e}"[:300]
        with self.lock:
            self.errors[op.kind] = self.errors.get(op.kind, 0) + 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"{op.kind}: {op.error}")

    def _size(self, rng):
        r = rng.random()
        if r < 0.10:
            return 0
        if r < 0.40:
            return rng.randint(1, 8 << 10)
        if r < 0.70:
            return rng.randint(8 << 10, 256 << 10)
        if r < 0.90:
            return rng.randint(256 << 10, min(MiB, self.max_size))
        return rng.randint(MiB, self.max_size)

    def _put(self, s3, key, size, multipart):
        body_seed = f"{self.seed}/{key}/{len(self.history[key])}"
        body = body_of(body_seed, size)
        sha = hashlib.sha256(body).hexdigest()
        op = Op("multipart" if multipart else "put", time.time(), sha, len(body), body_seed)
        self.history[key].append(op)
        try:
            if multipart:
                up = s3.create_multipart_upload(Bucket=self.bucket, Key=key)
                uid = up["UploadId"]
                parts = []
                try:
                    for n, off in enumerate(range(0, len(body), PART), start=1):
                        r = s3.upload_part(Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=n,
                                           Body=body[off:off + PART])
                        parts.append({"PartNumber": n, "ETag": r["ETag"]})
                    s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=uid,
                                                 MultipartUpload={"Parts": parts})
                except Exception:
                    try:
                        s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=uid)
                    except Exception:
                        pass
                    raise
            else:
                s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            op.ok = True
        except Exception as e:
            self._fail(op, e)
        op.end = time.time()
        return op

    def _delete(self, s3, keys):
        ops = []
        t = time.time()
        for k in keys:
            op = Op("delete", t)
            self.history[k].append(op)
            ops.append(op)
        try:
            if len(keys) == 1:
                s3.delete_object(Bucket=self.bucket, Key=keys[0])
                ok = set(keys)
            else:
                r = s3.delete_objects(Bucket=self.bucket,
                                      Delete={"Objects": [{"Key": k} for k in keys], "Quiet": False})
                ok = {d["Key"] for d in r.get("Deleted", [])}
            end = time.time()
            for k, op in zip(keys, ops):
                op.ok = k in ok
                op.end = end
                if not op.ok:
                    self._fail(op, RuntimeError("not in Deleted of DeleteObjects"))
        except Exception as e:
            end = time.time()
            for op in ops:
                op.end = end
                self._fail(op, e)
        return ops

    def _read(self, s3, key, who, byte_range=None):
        t0 = time.time()
        try:
            v, n = get_value(s3, self.bucket, key, byte_range)
        except Exception:
            with self.lock:
                self.read_errors += 1
            self.stop_event.wait(0.25)
            return None
        rd = Read(key, t0, time.time(), v, n, who, byte_range)
        self.reads.append(rd)
        return rd

    def _writer(self, i):
        rng = random.Random(f"{self.seed}-writer-{i}")
        s3 = s3_client(self.info)
        mine = [f"w{i}-{j}" for j in range(self.keys_per_writer)]
        while not self.stop_event.is_set():
            key = rng.choice(mine)
            last = self.history[key][-1] if self.history[key] else None
            r = rng.random()
            if last is not None and last.kind != "delete" and r < 0.12:
                self._delete(s3, [key])
            elif r < 0.16:
                batch = rng.sample(mine, rng.randint(2, 3))
                self._delete(s3, batch)
            else:
                multipart = rng.random() < self.multipart_p
                size = PART + rng.randint(1, MiB) if multipart else self._size(rng)
                op = self._put(s3, key, size, multipart)
                if op.ok and rng.random() < self.raw_p:
                    self._read(s3, key, f"writer-{i}")
            if self.pace:
                time.sleep(self.pace)

    def _deleter(self, i):
        """Create, read, delete, read: a deleted key must stay deleted."""
        rng = random.Random(f"{self.seed}-deleter-{i}")
        s3 = s3_client(self.info)
        mine = [k for k in self.keys if k.startswith(f"d{i}-")]
        while not self.stop_event.is_set():
            key = rng.choice(mine)
            op = self._put(s3, key, rng.randint(0, 300 << 10), False)
            if op.ok:
                self._read(s3, key, f"deleter-{i}")
            self._delete(s3, [key])
            self._read(s3, key, f"deleter-{i}")
            if self.pace:
                time.sleep(self.pace)

    def _reader(self, i):
        rng = random.Random(f"{self.seed}-reader-{i}")
        s3 = s3_client(self.info)
        while not self.stop_event.is_set():
            byte_range = None
            if rng.random() < 0.3:
                # Ranges across stripe boundaries as well as inside one.
                first = rng.choice([0, rng.randint(0, 64 << 10), rng.randint(0, self.max_size)])
                byte_range = (first, first + rng.choice([0, 1, rng.randint(1, 2 * MiB)]))
            self._read(s3, rng.choice(self.keys), f"reader-{i}", byte_range)
            if self.pace:
                time.sleep(self.pace)


# ---- checking ---------------------------------------------------------------

def legal_values(ops, start, end):
    """Values a read over [start, end] may return, given the key's ops."""
    return {ABSENT if op is None else op.value for op in legal_ops(ops, start, end)}


def legal_ops(ops, start, end):
    """The operations whose value a read over [start, end] may return (None
    stands for the initial absent state)."""
    last = -1
    for i, op in enumerate(ops):
        if op.ok and op.end is not None and op.end < start:
            last = i
    out = [None if last < 0 else ops[last]]
    out += [op for op in ops[last + 1:] if op.start <= end]
    out += [op for op in ops[:max(last, 0)]
            if not op.ok and op.start <= end and op.end is not None and start <= op.end + UNCERTAIN_GRACE]
    return out


def classify(ops, rd):
    """None when legal, else 'wrong-bytes' or 'stale'."""
    if rd.range is not None:
        first, last = rd.range
        legal = {ABSENT if op is None else range_value(op, first, last) for op in legal_ops(ops, rd.start, rd.end)}
        if rd.value in legal:
            return None
        if rd.value in (ABSENT, "unsatisfiable"):
            return "stale"
        ever = {range_value(op, first, last) for op in ops}
        return "stale" if rd.value in ever else "wrong-bytes"
    if rd.value in legal_values(ops, rd.start, rd.end):
        return None
    if rd.value != ABSENT and all(op.value != rd.value for op in ops):
        return "wrong-bytes"
    return "stale"


def check_reads(history, reads):
    bad = []
    for rd in reads:
        kind = classify(history[rd.key], rd)
        if kind:
            bad.append((kind, rd))
    return bad


def final_verify(history, info, bucket, deadline_s=180, threads=4):
    """Reads every key once (retrying failures until the deadline) and judges
    it. Returns a dict of counts and example problems."""
    keys = sorted(history)
    out = {"keys": len(keys), "objects_expected": 0, "verified_objects": 0, "verified_absent": 0,
           "lost": 0, "resurrected": 0, "stale": 0, "wrong_bytes": 0, "unreadable": 0, "problems": [],
           "retried_reads": 0, "slowest": (0.0, None)}
    t_start = time.time()
    lock = threading.Lock()
    t_end = time.time() + deadline_s
    queue = list(keys)

    def work():
        s3 = s3_client(info, retries=3, read_timeout=60)
        while True:
            with lock:
                if not queue:
                    return
                key = queue.pop()
            ops = history[key]
            last_ok = next((op for op in reversed(ops) if op.ok), None)
            expect_obj = last_ok is not None and last_ok.kind != "delete"
            result, err = None, None
            t_key = time.time()
            while True:
                t0 = time.time()
                try:
                    v, n = get_value(s3, bucket, key)
                    result = Read(key, t0, time.time(), v, n, "final")
                    break
                except Exception as e:
                    err = f"{type(e).__name__}: {e}"[:200]
                    with lock:
                        out["retried_reads"] += 1
                    if time.time() > t_end:
                        break
                    time.sleep(1)
            with lock:
                took = time.time() - t_key
                if took > out["slowest"][0]:
                    out["slowest"] = (round(took, 2), f"{key} ({err or 'ok'})")
                if expect_obj:
                    out["objects_expected"] += 1
                if result is None:
                    out["unreadable"] += 1
                    if expect_obj:
                        out["lost"] += 1
                    out["problems"].append(f"{key}: unreadable ({err})")
                    continue
                kind = classify(ops, result)
                if kind is None:
                    if result.value == ABSENT:
                        out["verified_absent"] += 1
                    else:
                        out["verified_objects"] += 1
                    continue
                if kind == "wrong-bytes":
                    out["wrong_bytes"] += 1
                elif result.value == ABSENT:
                    out["lost"] += 1
                elif last_ok is not None and last_ok.kind == "delete":
                    out["resurrected"] += 1
                else:
                    out["stale"] += 1
                out["problems"].append(f"{key}: final read {kind} ({describe(ops, result)})")

    ts = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out["seconds"] = round(time.time() - t_start, 1)
    return out


def describe(ops, rd):
    where = [i for i, op in enumerate(ops) if op.value == rd.value]
    tail = ", ".join(f"#{i} {op.kind} {'ok' if op.ok else 'failed'} {op.end - op.start if op.end else 0:.1f}s"
                     for i, op in list(enumerate(ops))[-4:])
    return (f"got {rd.value[:12]} ({rd.size} B) = op {where or 'none'} of {len(ops)}; "
            f"read {rd.start:.2f}-{rd.end:.2f}; last ops: {tail}")
