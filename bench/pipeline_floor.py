"""Benchmark: the fastest a verified, durable loopback transfer can be in Python on this machine.

No node, no protocol, no store: a sender process ``sendfile``s a payload over one loopback TCP
socket; the receiver ``recv_into``s a 1 MiB buffer (``MSG_WAITALL``) and ``pwrite``s it, as a
node's ranged download does, and then does one of:

- ``plain``: nothing more (no hash), one ``fsync`` at the end;
- ``thread``: a second thread hashes the file with sha256 in order, following the bytes as they
  land (``preadv`` of what is on disk), as ``core/download.py`` does;
- ``inline``: the receiving thread hashes each buffer itself before reading the next.

``--sync-every`` adds an ``fdatasync`` every that many bytes in a third thread (in the
background, as a node does). Each mode runs ``--repeat`` times, alternating; the file written is
deleted after each run. It prints the wall time from the sender's start to the verified, synced
file, MB/s, and the receiver's CPU seconds.

This is the floor a node's ranged download is measured against in ``bench/README.md``: the same
bytes, the same syscalls, none of the node's work (store, events, API, several ranges).

    python bench/pipeline_floor.py                 # 1 GiB, every mode, 3 times
    python bench/pipeline_floor.py --size 256 --modes thread --repeat 5

Only 127.0.0.1 is used; the sender process is ended by its PID; the scratch dir is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1024 * 1024
BUFFER = MIB
HASH_BLOCK = 4 * MIB

SENDER = r"""
import os, socket, sys
path, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
fd = os.open(path, os.O_RDONLY)
sent = 0
while sent < size:
    sent += os.sendfile(s.fileno(), fd, sent, size - sent)
s.close()
"""


def make_payload(path: Path, size: int) -> None:
    base = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size // MIB):
            f.write(base[i % MIB :] + base[: i % MIB])
    os.sync()


def receive(src: Path, dst: Path, size: int, mode: str, sync_every: int) -> tuple[float, float]:
    """One transfer; returns (seconds, receiver CPU seconds)."""
    cpu0 = sum(os.times()[:2])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    t0 = time.monotonic()
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(src), str(srv.getsockname()[1]), str(size)]
    )
    try:
        conn, _ = srv.accept()
        fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, size)
        have = 0
        cond = threading.Condition()
        digest = hashlib.sha256()

        def hasher() -> None:
            buf = bytearray(HASH_BLOCK)
            view = memoryview(buf)
            pos = 0
            while pos < size:
                with cond:
                    while have <= pos:
                        cond.wait()
                    ready = have - pos
                n = os.preadv(fd, [view[: min(ready, HASH_BLOCK)]], pos)
                digest.update(view[:n])
                pos += n

        syncing: list[threading.Thread] = []
        threads = [threading.Thread(target=hasher)] if mode == "thread" else []
        for t in threads:
            t.start()
        buf = bytearray(BUFFER)
        view = memoryview(buf)
        got = synced = 0
        while got < size:
            n = conn.recv_into(view, min(BUFFER, size - got), socket.MSG_WAITALL)
            if not n:
                raise RuntimeError(f"the sender stopped after {got} bytes")
            os.pwrite(fd, view[:n], got)
            if mode == "inline":
                digest.update(view[:n])
            got += n
            if mode == "thread":
                with cond:
                    have = got
                    cond.notify()
            if sync_every and got - synced >= sync_every and not any(t.is_alive() for t in syncing):
                synced = got
                syncing = [threading.Thread(target=os.fdatasync, args=(fd,))]
                syncing[0].start()
        for t in threads + syncing:
            t.join()
        os.fsync(fd)
        seconds = time.monotonic() - t0
        os.close(fd)
        conn.close()
    finally:
        srv.close()
        if sender.poll() is None:
            sender.wait(30)
    dst.unlink()
    if mode != "plain" and digest.hexdigest() != sha256_of(src):
        raise RuntimeError("the hash does not match the payload")
    return seconds, sum(os.times()[:2]) - cpu0


_sums: dict[Path, str] = {}


def sha256_of(path: Path) -> str:
    if path not in _sums:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(HASH_BLOCK):
                h.update(block)
        _sums[path] = h.hexdigest()
    return _sums[path]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    p.add_argument("--modes", default="plain,thread,inline", help="plain,thread,inline")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--sync-every", type=int, default=32, help="MiB between background syncs (0: none)"
    )
    p.add_argument("--tmp-dir", default=None)
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if set(modes) - {"plain", "thread", "inline"}:
        p.error("--modes: plain, thread, inline")
    size = args.size * MIB
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        src = Path(tmp) / "payload.bin"
        make_payload(src, size)
        sha256_of(src)
        results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        print(
            f"pipeline floor: {args.size} MiB, sync every {args.sync_every} MiB, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
            flush=True,
        )
        for _ in range(args.repeat):
            for mode in modes:
                seconds, cpu = receive(
                    src, Path(tmp) / "dst.bin", size, mode, args.sync_every * MIB
                )
                results[mode].append((seconds, cpu))
                print(
                    f"  {mode:6}  {seconds:6.3f} s  {size / 1e6 / seconds:7.1f} MB/s  "
                    f"receiver CPU {cpu:.2f} s",
                    flush=True,
                )
        print("median:")
        for mode, runs in results.items():
            s = statistics.median(r[0] for r in runs)
            print(f"  {mode:6}  {size / 1e6 / s:7.1f} MB/s  ({s:.3f} s)")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"senders' CPU in all: {children.ru_utime + children.ru_stime:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
