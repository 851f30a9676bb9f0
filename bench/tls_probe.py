"""Benchmark: what TLS 1.3 (``treedrive/transport/secure.py``) costs a loopback transfer.

No node, no protocol: a sender process listens on 127.0.0.1; the receiver (this process) opens
``--conns`` connections to it, asks each for one contiguous range of the payload (16 bytes:
offset, length), and writes what arrives at that offset of a scratch file (``--sink file``, the
default; ``--sink null`` drops it, to see the network and TLS alone), one thread per connection
on each side (as ranged gets do). Modes:

- ``plain``: the sender ``os.sendfile``s; the receiver ``recv_into``s (``MSG_WAITALL``) a 1 MiB
  buffer and ``pwrite``s it (the unencrypted baseline);
- ``splice``: the same sender; the receiver moves the bytes with ``store/splicing.move``
  (splice, no copy through user space), as a node's ranged download does today;
- ``tls``: both ends shake hands with ``secure.connect`` / ``secure.accept`` (the receiver dials,
  as a node fetching does); the sender ``preadv``s ``--buffers`` KiB of the file and ``sendall``s
  it on the SSLSocket; the receiver ``recv_into``s until its buffer of the same size is full,
  then ``pwrite``s it;
- ``bio``: the same handshake, then ``transport/tlsstream.py``: OpenSSL encrypts and decrypts
  in memory (``wrap_bio``) and the socket is read 1 MiB at a time (an ``SSLSocket`` makes two
  ``read`` syscalls per 16 KiB record); the sender reads and encrypts ``--buffers`` KiB at a time.

Each (mode, buffer, conns) case runs ``--repeat`` times, cases interleaved, each run with a fresh
sender process (started before the clock starts). It prints medians: wall seconds from the first
connect to the last byte written, MB/s (10^6), the ratio to ``plain`` with the same ``--conns``,
and CPU seconds per GiB of the receiver and of the sender (``getrusage``: user + system, all
threads), and the CPU seconds the rest of the machine used meanwhile (``/proc/stat``: other
people's work on a shared machine); then the TLS 1.3 suite negotiated. ``--wait-quiet S`` waits
(up to S seconds) before each run for a second in which the machine used under ``--quiet-cpu``
CPU seconds. The received file is compared with the payload
(sha256, outside the clock) after every run.

``--suite`` restricts the sender's TLS 1.3 suites (it is the TLS server, so its list decides)
through an OpenSSL configuration file (``OPENSSL_CONF``): Python 3.11 has no per-context way to
choose TLS 1.3 suites.

    python bench/tls_probe.py                                # 1 GiB, every mode, 3 runs each
    python bench/tls_probe.py --conns 1,2 --repeat 5 --wait-quiet 60
    python bench/tls_probe.py --size 256 --modes tls --buffers 1024 --conns 1,2 --repeat 5
    python bench/tls_probe.py --suite TLS_AES_128_GCM_SHA256 --modes tls

Only 127.0.0.1 is used; each sender process is ended by its PID; the scratch dir is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from transfer import system_busy, wait_for_quiet  # bench/transfer.py, beside this script

from treedrive.store import splicing
from treedrive.transport import secure, tlsstream

MIB = 1024 * 1024
GIB = 1024 * MIB
HEADER = struct.Struct("!QQ")
CONF = """openssl_conf = init
[init]
ssl_conf = ssl
[ssl]
system_default = tls
[tls]
Ciphersuites = {suite}
"""


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


# ---- sender (a child process: python tls_probe.py --serve MODE BUF CONNS PATH; key on stdin)


def send_one(
    conn: socket.socket,
    mode: str,
    node: secure.NodeTLS | None,
    fd: int,
    buf: int,
    peer: bytes,
    out: dict[str, str],
) -> None:
    if node is not None and mode == "bio":
        stream = tlsstream.accept(node, conn, expected_key=peer)
        out["suite"] = str(stream.tls.cipher())
        head = bytearray(HEADER.size)
        stream.recv_exactly(head)
        offset, length = HEADER.unpack(head)
        stream.send_file(lambda v, o: os.preadv(fd, [v], o), offset, length, piece=buf)
        stream.close()
        return
    if node is not None:
        tls, _ = secure.accept(node, conn, expected_key=peer)
        out["suite"] = str(tls.cipher())
        offset, length = HEADER.unpack(recv_exact(tls, HEADER.size))
        view = memoryview(bytearray(buf))
        end = offset + length
        while offset < end:
            n = os.preadv(fd, [view[: min(buf, end - offset)]], offset)
            tls.sendall(view[:n])
            offset += n
        tls.close()
        return
    offset, length = HEADER.unpack(recv_exact(conn, HEADER.size))
    end = offset + length
    while offset < end:
        offset += os.sendfile(conn.fileno(), fd, offset, end - offset)
    conn.close()


def serve(mode: str, buf: int, conns: int, path: str) -> None:
    seeds = json.loads(sys.stdin.readline())
    node = None
    if mode in ("tls", "bio"):
        node = secure.NodeTLS.from_private_key(
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seeds["server"]))
        )
    peer = bytes.fromhex(seeds["client_public"])
    fd = os.open(path, os.O_RDONLY)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(conns)
    print(srv.getsockname()[1], flush=True)
    cpu0, out, threads = cpu(), dict[str, str](), []
    for _ in range(conns):
        conn, _ = srv.accept()
        t = threading.Thread(target=send_one, args=(conn, mode, node, fd, buf, peer, out))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    print(json.dumps({"cpu": cpu() - cpu0, **out}), flush=True)


# ---- receiver (this process)


def receive_one(
    sock: socket.socket,
    mode: str,
    node: secure.NodeTLS | None,
    server_key: bytes,
    fd: int,
    offset: int,
    length: int,
    buf: int,
) -> None:
    if node is not None and mode == "bio":
        receive_stream(tlsstream.connect(node, sock, server_key), fd, offset, length, buf)
        return
    if node is not None:
        sock = secure.connect(node, sock, server_key)
    sock.sendall(HEADER.pack(offset, length))
    end = offset + length
    if mode == "splice":
        while offset < end:
            n = splicing.move(sock.fileno(), fd, offset, end - offset)
            if n == 0:
                raise ConnectionError("closed early")
            offset += n
    else:
        view = memoryview(bytearray(buf))
        while offset < end:
            want = min(buf, end - offset)
            got = 0
            while got < want:
                n = (
                    sock.recv_into(view[got:want])
                    if node is not None
                    else sock.recv_into(view[got:want], 0, socket.MSG_WAITALL)
                )
                if n == 0:
                    raise ConnectionError("closed early")
                got += n
            if fd >= 0:  # else: --sink null
                splicing.write_at(fd, offset, view[:want])
            offset += want
    sock.close()


def receive_stream(
    stream: tlsstream.SecureStream, fd: int, offset: int, length: int, buf: int
) -> None:
    stream.sendall(HEADER.pack(offset, length))
    view = memoryview(bytearray(buf))
    end = offset + length
    while offset < end:
        want = min(buf, end - offset)
        stream.recv_exactly(view[:want])
        if fd >= 0:
            splicing.write_at(fd, offset, view[:want])
        offset += want
    stream.close()


def run(
    args: argparse.Namespace,
    mode: str,
    buf: int,
    conns: int,
    src: Path,
    dst: Path,
    env: dict[str, str],
) -> dict[str, float | str]:
    client, server = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    node = secure.NodeTLS.from_private_key(client) if mode in ("tls", "bio") else None
    sender = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(buf), str(conns), str(src)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert sender.stdin is not None
    assert sender.stdout is not None
    try:
        seeds = {
            "server": server.private_bytes_raw().hex(),
            "client_public": secure.raw_public_key(client).hex(),
        }
        sender.stdin.write(json.dumps(seeds) + "\n")
        sender.stdin.flush()
        port = int(sender.stdout.readline())
        fd = -1
        if args.sink == "file":
            fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, args.size)
        part = args.size // conns
        if args.wait_quiet and not wait_for_quiet([], args.wait_quiet, args.quiet_cpu):
            print(f"(machine not quiet after {args.wait_quiet} s: measuring anyway)", flush=True)
        cpu0, t0, busy0 = cpu(), time.monotonic(), system_busy()
        threads = []
        for i in range(conns):
            length = part if i < conns - 1 else args.size - part * i
            sock = socket.create_connection(("127.0.0.1", port))
            t = threading.Thread(
                target=receive_one,
                args=(sock, mode, node, secure.raw_public_key(server), fd, part * i, length, buf),
            )
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        seconds, rcpu, busy = time.monotonic() - t0, cpu() - cpu0, system_busy() - busy0
        if fd >= 0:
            os.close(fd)
        report = json.loads(sender.stdout.readline())
        others = max(0.0, busy - rcpu - report["cpu"])
        sender.wait(timeout=30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    if args.sink == "file" and sha256(dst) != args.digest:
        raise SystemExit(f"{mode}: received bytes differ from the payload")
    dst.unlink(missing_ok=True)
    gib = args.size / GIB
    return {
        "s": seconds,
        "mbs": args.size / seconds / 1e6,
        "rcpu": rcpu / gib,
        "scpu": report["cpu"] / gib,
        "others": others,
        "suite": report.get("suite", "-"),
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def make_payload(path: Path, size: int) -> None:
    base = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size // MIB):
            f.write(base[i % MIB :] + base[: i % MIB])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    p.add_argument("--modes", default="plain,splice,tls,bio")
    p.add_argument("--buffers", default="256,1024,4096", help="KiB, for tls and bio (plain: 1024)")
    p.add_argument("--conns", default="1,2,4", help="parallel connections")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--suite", default="", help="TLS 1.3 suite(s) the sender allows")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument(
        "--sink",
        choices=["file", "null"],
        default="file",
        help="write what arrives to a file (as a node does), or drop it (network and TLS only)",
    )
    p.add_argument("--wait-quiet", type=float, default=0.0, help="s to wait for a quiet second")
    p.add_argument("--quiet-cpu", type=float, default=0.2, help="CPU s others may use in it")
    args = p.parse_args()
    args.size *= MIB
    if args.sink == "null" and "splice" in args.modes.split(","):
        raise SystemExit("splice needs --sink file")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="tls-probe-") as tmp:
        if args.suite:
            conf = Path(tmp, "openssl.cnf")
            conf.write_text(CONF.format(suite=args.suite))
            env["OPENSSL_CONF"] = str(conf)
        src, dst = Path(tmp, "payload"), Path(tmp, "received")
        make_payload(src, args.size)
        args.digest = sha256(src)  # also puts the payload in the page cache
        cases = [
            (m, b * 1024 if m in ("tls", "bio") else MIB, c)
            for c in map(int, args.conns.split(","))
            for m in args.modes.split(",")
            for b in (map(int, args.buffers.split(",")) if m in ("tls", "bio") else [1024])
        ]
        results: dict[tuple[str, int, int], list[dict[str, float | str]]] = {}
        for _ in range(args.repeat):
            for case in cases:
                r = run(args, *case, src, dst, env)
                results.setdefault(case, []).append(r)
                mode, buf, conns = case
                print(
                    f"  {mode} {buf // 1024} KiB x{conns}: {float(r['mbs']):.0f} MB/s, "
                    f"others {float(r['others']):.2f} CPU s",
                    file=sys.stderr,
                    flush=True,
                )
        print_table(args, cases, results)


def print_table(
    args: argparse.Namespace,
    cases: list[tuple[str, int, int]],
    results: dict[tuple[str, int, int], list[dict[str, float | str]]],
) -> None:
    print(
        f"{args.size // MIB} MiB over 127.0.0.1, medians of {args.repeat} runs "
        f"(cpu: user+sys s per GiB; others: CPU s the rest of the machine used during the run)"
    )
    print(
        f"{'mode':8} {'buf KiB':>7} {'conns':>5} {'s':>6} {'MB/s':>7} {'x plain':>7} "
        f"{'recv cpu':>8} {'send cpu':>8} {'others':>6}  runs MB/s"
    )
    for mode, buf, conns in cases:
        rows = results[(mode, buf, conns)]
        med = {
            k: statistics.median(float(r[k]) for r in rows)
            for k in ("s", "mbs", "rcpu", "scpu", "others")
        }
        base = results.get(("plain", MIB, conns))
        ratio = (med["mbs"] / statistics.median(float(r["mbs"]) for r in base)) if base else 0.0
        runs = " ".join(f"{float(r['mbs']):.0f}" for r in rows)
        print(
            f"{mode:8} {buf // 1024:>7} {conns:>5} {med['s']:>6.2f} {med['mbs']:>7.0f} "
            f"{ratio:>7.2f} {med['rcpu']:>8.2f} {med['scpu']:>8.2f} {med['others']:>6.2f}  {runs}"
        )
    suites = {str(r["suite"]) for rows in results.values() for r in rows} - {"-"}
    print("TLS 1.3 suite negotiated:", ", ".join(sorted(suites)) or "-")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
