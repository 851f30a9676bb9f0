"""The test lab itself (tests/netlab.py): its hosts know each other's hardware addresses for good,
so a lab larger than the kernel's ARP table (shared by every namespace: 1,024 learned entries by
default, about 32 hosts talking to each other) still reaches every host. Needs root (skips
elsewhere)."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.netlab import Lab


def neighbours(lab: Lab, ns: str) -> dict[str, tuple[str, str]]:
    out = subprocess.run(
        ["ip", "-n", ns, "neigh", "show"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    rows = [line.split() for line in out.splitlines() if "lladdr" in line]
    return {r[0]: (r[r.index("lladdr") + 1], r[-1]) for r in rows}


def test_every_host_knows_every_other_for_good_also_when_added_later(lab: Lab) -> None:
    first = lab.add(3)
    later = lab.add(2)
    hosts = [*first, *later]
    assert len({h.mac for h in hosts}) == len(hosts)
    for host in hosts:
        want = {h.ip: (h.mac, "PERMANENT") for h in hosts if h is not host}
        assert neighbours(lab, host.ns) == want


def test_a_host_reaches_another_by_tcp(lab: Lab) -> None:
    a, b = lab.add(2)
    server = lab.popen(
        b,
        [sys.executable, "-c", f"import socket; s = socket.create_server(('{b.ip}', 9000)); "
         "print('up', flush=True); c, _ = s.accept(); c.sendall(b'hello'); c.close()"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"up\n"
        got = subprocess.run(
            ["ip", "netns", "exec", a.ns, sys.executable, "-c",
             f"import socket; print(socket.create_connection(('{b.ip}', 9000), 5).recv(5))"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        assert got.stdout.strip() == "b'hello'"
    finally:
        server.kill()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()


def test_a_message_costs_the_framing_the_simulator_counts(lab: Lab) -> None:
    """One message a connection, as the nodes send them: the sender's and the receiver's bytes
    on the lab's links besides the message are ``bench/simnet.py``'s ``SENDER_FRAMING`` and
    ``RECEIVER_FRAMING`` (so the simulator's wire bytes and ``bench/network.py``'s agree)."""
    from bench.simnet import RECEIVER_FRAMING, SENDER_FRAMING

    a, b = lab.add(2)
    server = lab.popen(
        b,
        [sys.executable, "-c", f"import socket; s = socket.create_server(('{b.ip}', 9000)); "
         "print('up', flush=True)\nwhile True:\n c, _ = s.accept()\n while c.recv(65536): pass\n"
         " c.close()"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    n, size = 40, 700
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"up\n"
        a0, b0 = lab.counters(a)["sent_bytes"], lab.counters(b)["sent_bytes"]
        subprocess.run(
            ["ip", "netns", "exec", a.ns, sys.executable, "-c",
             f"import socket\nfor _ in range({n}):\n c = socket.create_connection(('{b.ip}', "
             f"9000), 5); c.sendall(b'x' * {size}); c.shutdown(socket.SHUT_WR); c.recv(1); "
             "c.close()"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        time.sleep(0.3)  # the last FIN's ACK
        sent = (lab.counters(a)["sent_bytes"] - a0) / n
        answered = (lab.counters(b)["sent_bytes"] - b0) / n
    finally:
        server.kill()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    assert abs(sent - size - SENDER_FRAMING) <= 8
    assert abs(answered - RECEIVER_FRAMING) <= 8
