"""The chaos checker judges reads correctly (pure logic, no cluster):
pytest chaos/test_checker.py"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hashlib  # noqa: E402

from workload import ABSENT, UNCERTAIN_GRACE, Op, Read, body_of, classify, legal_values  # noqa: E402


def op(kind, start, end, ok, sha=None, size=0, seed=None):
    o = Op(kind, start, sha, size, seed)
    o.end, o.ok = end, ok
    return o


def rd(start, end, value):
    return Read("k", start, end, value, 0, "t")


def test_nothing_written_reads_absent():
    assert classify([], rd(1, 2, ABSENT)) is None
    assert classify([], rd(1, 2, "aa")) == "wrong-bytes"


def test_read_after_acknowledged_write_sees_it():
    ops = [op("put", 1, 2, True, "a"), op("put", 3, 4, True, "b")]
    assert classify(ops, rd(5, 6, "b")) is None
    assert classify(ops, rd(5, 6, "a")) == "stale"
    assert classify(ops, rd(5, 6, ABSENT)) == "stale"
    assert classify(ops, rd(5, 6, "zz")) == "wrong-bytes"


def test_concurrent_write_may_or_may_not_be_seen():
    ops = [op("put", 1, 2, True, "a"), op("put", 3, 6, True, "b")]
    assert legal_values(ops, 4, 5) == {"a", "b"}
    # A write that started after the read ended cannot be seen.
    assert classify(ops, rd(2.5, 2.9, "b")) == "stale"


def test_acknowledged_delete_stays_deleted():
    ops = [op("put", 1, 2, True, "a"), op("delete", 3, 4, True)]
    assert classify(ops, rd(5, 6, ABSENT)) is None
    assert classify(ops, rd(5, 6, "a")) == "stale"


def test_failed_write_is_uncertain_for_a_while():
    ops = [op("put", 1, 2, True, "a"), op("put", 3, 4, False, "b"), op("put", 5, 6, True, "c")]
    # Right after: the failed write may still land, even after "c".
    assert classify(ops, rd(7, 8, "b")) is None
    assert classify(ops, rd(7, 8, "c")) is None
    assert classify(ops, rd(7, 8, "a")) == "stale"
    # Long after, it overwriting an acknowledged later write is a lost update.
    late = 4 + UNCERTAIN_GRACE + 1
    assert classify(ops, rd(late, late + 1, "b")) == "stale"
    # The failed write as the last operation: either value is fine.
    ops2 = ops[:2]
    assert legal_values(ops2, 100, 101) == {"a", "b"}


def test_failed_delete_is_uncertain():
    ops = [op("put", 1, 2, True, "a"), op("delete", 3, 4, False)]
    assert legal_values(ops, 10, 11) == {"a", ABSENT}


def test_range_reads_are_judged_against_the_bytes_written():
    a = op("put", 1, 2, True, "a", 1000, "seed-a")
    b = op("put", 3, 4, True, "b", 10, "seed-b")
    ops = [a, b]

    def rd_range(first, last, data, start=5):
        r = Read("k", start, start + 1, hashlib.sha256(data).hexdigest(), len(data), "t", (first, last))
        return r
    assert classify(ops, rd_range(2, 5, body_of("seed-b", 10)[2:6])) is None
    # Past the end: what S3 does (the bytes up to the end).
    assert classify(ops, rd_range(8, 500, body_of("seed-b", 10)[8:])) is None
    # The older version's bytes are stale, other bytes are wrong.
    assert classify(ops, rd_range(2, 5, body_of("seed-a", 1000)[2:6])) == "stale"
    assert classify(ops, rd_range(2, 5, b"\0\0\0\0")) == "wrong-bytes"
    # Unsatisfiable only when the range starts past the end.
    r = Read("k", 5, 6, "unsatisfiable", 0, "t", (20, 30))
    assert classify(ops, r) is None
    r = Read("k", 5, 6, "unsatisfiable", 0, "t", (2, 30))
    assert classify(ops, r) == "stale"
