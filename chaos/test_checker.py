"""The chaos checker judges reads correctly (pure logic, no cluster):
pytest chaos/test_checker.py"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workload import ABSENT, UNCERTAIN_GRACE, Op, Read, classify, legal_values  # noqa: E402


def op(kind, start, end, ok, sha=None):
    o = Op(kind, start, sha)
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
