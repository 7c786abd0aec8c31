#!/usr/bin/env python3
"""CPU per shard of ways to make a shard durable, on the file system of DIR.

Each way writes N shards of SIZE bytes plus a 4 KiB header block with O_DIRECT
(as the storage nodes do) and makes them durable:

  file      O_TMPFILE, fdatasync, linkat, then open, fsync and close the
            directory (what the storage nodes do; 256 fan-out directories)
  filestat  the same after a stat of the name (is the shard there already?),
            as the storage nodes did until session 23
  filefd    the same as file with the 256 directories kept open: O_TMPFILE
            and linkat relative to the directory's descriptor, and its fsync
            (not done: no difference above this VM's noise in session 23)
  file1     O_TMPFILE, linkat, fdatasync (one sync; the name's durability then
            rests on the file system logging it with the inode)
  append    appended to one file, an fdatasync per shard (a segment store)
  append4   appended to one file, an fdatasync per 4 shards (a segment store
            with group commit)

Prints the process's CPU (user + system) and the whole machine's busy time per
shard (which also counts interrupt and kworker time), and the wall time.
Usage: shard_commit.py DIR [N [SIZE [WAY...]]]  (DIR is removed afterwards).

The file ways allocate an inode per shard: on ext4 without a journal, inodes
deleted recently make that allocation scan (`recently_deleted`), so run it on
a fresh directory, then again after deleting many files, to see both costs.
"""
import ctypes
import mmap
import os
import resource
import shutil
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400


def link(fd, name, dir_fd=AT_FDCWD):
    if libc.linkat(AT_FDCWD, b"/proc/self/fd/%d" % fd, dir_fd, name.encode(), AT_SYMLINK_FOLLOW):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def run(d, n, size, way):
    os.makedirs(d)
    subs = [os.path.join(d, "%02x" % i) for i in range(256)]
    for s in subs:
        os.makedirs(s)
    buf = mmap.mmap(-1, 4096 + size)
    buf.write(os.urandom(4096 + size))
    seg = None
    dfds = [os.open(s, os.O_RDONLY | os.O_DIRECTORY) for s in subs] if way == "filefd" else []
    b0, r0, t0 = busy(), resource.getrusage(resource.RUSAGE_SELF), time.time()
    for i in range(n):
        if way.startswith("append"):
            if seg is None:
                seg = os.open(os.path.join(d, "segment"), os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
            os.pwritev(seg, [buf], i * (4096 + size))
            if way == "append" or i % 4 == 3:
                os.fdatasync(seg)
            continue
        sd = subs[(i * 97) % 256]
        if way == "filefd":
            dfd = dfds[(i * 97) % 256]
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_DIRECT, 0o644, dir_fd=dfd)
            os.pwritev(fd, [buf], 0)
            os.fdatasync(fd)
            link(fd, "%d.%d" % (os.getpid(), i), dfd)
            os.fsync(dfd)
            os.close(fd)
            continue
        name = os.path.join(sd, "%d.%d" % (os.getpid(), i))
        if way == "filestat":
            try:
                os.lstat(name)
            except FileNotFoundError:
                pass
        fd = os.open(sd, os.O_TMPFILE | os.O_WRONLY | os.O_DIRECT, 0o644)
        os.pwritev(fd, [buf], 0)
        if way in ("file", "filestat"):
            os.fdatasync(fd)
            link(fd, name)
            dfd = os.open(sd, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
        else:
            link(fd, name)
            os.fdatasync(fd)
        os.close(fd)
    if seg is not None:
        os.fdatasync(seg)
        os.close(seg)
    b1, r1, t1 = busy(), resource.getrusage(resource.RUSAGE_SELF), time.time()
    for dfd in dfds:
        os.close(dfd)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"{way:8} {n} shards of {size} B: process CPU {cpu * 1e6 / n:4.0f} us/shard, "
          f"machine busy {(b1 - b0) * 1e6 / n:4.0f} us/shard, wall {(t1 - t0) * 1e3 / n:.2f} ms/shard")


def main():
    d = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 256 << 10
    ways = sys.argv[4:] or ["file", "filestat", "filefd", "file1", "append", "append4"]
    if os.path.exists(d):
        sys.exit(f"{d} exists; give a new directory")
    for way in ways:
        try:
            run(d, n, size, way)
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
