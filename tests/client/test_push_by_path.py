"""Push by path (``POST /api/v1/pushes``, ``Client.push`` to a node on 127.0.0.1): the node reads
the file itself and the bytes it pushes are the file's; it reads nothing for another machine,
another user, through a proxy or with the dashboard's cookie; a file it cannot see (its own
mount namespace, as in a container) or sees as another file is sent as bytes instead, by the
client, without a word; bad paths are 400s that keep nothing; the progress is the node's."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_client import client_of as in_process_client
from tests.client.test_client import run
from tests.client.test_push import content, started
from tests.conftest import NODE_PROCESS_WARNINGS, NodeProcess
from treedrive.client import Client
from treedrive.core import localfile
from treedrive.core.node import Node

pytestmark = [pytest.mark.timeout(90), *NODE_PROCESS_WARNINGS]

Factory = Callable[..., NodeProcess]
MiB = 1 << 20


def path_client(node: NodeProcess) -> Client:
    """A client that may push by path only (an upload would fail the test)."""
    client = Client(str(node.info()["http"]), (node.data_dir / "api-token").read_text().strip())

    def no_upload(*args: Any) -> Any:
        raise AssertionError("the bytes were uploaded")

    client.transport.post_file = no_upload  # type: ignore[method-assign]
    return client


def ask(node: NodeProcess, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST ``body`` (JSON) to the node's /api/v1/pushes: the status and the JSON answer."""
    token = (node.data_dir / "api-token").read_text().strip()
    given = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(  # noqa: S310 (a test node on loopback)
        str(node.info()["http"]) + "api/v1/pushes",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={**given, **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.e2e
def test_the_node_reads_the_file_itself_and_pushes_its_very_bytes(
    node_process: Factory, tmp_path: Path
) -> None:
    node = started(node_process("alice"))
    client = path_client(node)
    src = tmp_path / "big.bin"
    data = os.urandom(3 * MiB + 5)
    src.write_bytes(data)
    told: list[int] = []
    answer = client.push(src, name="shared.bin", progress=told.append)
    assert (answer["display_name"], answer["size_bytes"], answer["existing"]) == (
        "shared.bin",
        len(data),
        False,
    )
    assert sum(told) == len(data)
    assert content(client, answer["file_id"]) == data
    assert list((node.data_dir / "partial").iterdir()) == []

    again = client.push(src)  # a relative path, the file's own name: the same bytes
    assert (again["file_id"], again["existing"]) == (answer["file_id"], True)

    # the command as typed: the same line as ever
    done = subprocess.run(
        [sys.executable, "-m", "treedrive", "push", "--data-dir", str(node.data_dir), "big.bin"],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"big.bin is already shared as {answer['file_id'][:12]} (named shared.bin) "
        "(use --force to push it anew)"
    )


@pytest.mark.e2e
def test_bad_paths_are_refused_and_keep_nothing(node_process: Factory, tmp_path: Path) -> None:
    node = started(node_process("alice", "--max-upload", "1"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # its open would wait for a writer: it is never opened
    small = tmp_path / "small.bin"
    small.write_bytes(b"small")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * MiB))
    for body, status, message in (
        ({"path": "small.bin"}, 400, "path must be an absolute path"),
        ({"path": str(fifo)}, 400, f"{fifo} is not a regular file"),
        ({"path": str(tmp_path)}, 400, f"{tmp_path} is not a regular file"),
        ({"path": str(small), "force": "yes"}, 400, "force must be true or false"),
        ({"path": str(small), "id": "../x"}, 400, "id must be 1-64 letters, digits, - or _"),
        ({"path": str(small), "expect": {"size": 5}}, 400, "expect must be"),
        (b"not json", 400, "the body is not JSON"),
        ({"path": str(big)}, 413, "upload of 2097152 bytes is over the cap (1048576)"),
        ({"path": str(tmp_path / "missing")}, 422, "No such file or directory"),
    ):
        got = ask(node, body)
        assert got[0] == status, (body, got)
        assert message in got[1]["error"], (body, got)
    assert list((node.data_dir / "partial").iterdir()) == []
    assert ask(node, {"path": str(small)})[0] == 201


@pytest.mark.e2e
def test_the_node_reads_nothing_for_a_proxy_a_cookie_or_another_user(
    node_process: Factory, tmp_path: Path
) -> None:
    node = started(node_process("alice"))
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 100)
    src.chmod(0o644)
    token = (node.data_dir / "api-token").read_text().strip()
    proxied = ask(node, {"path": str(src)}, {"X-Forwarded-For": "192.0.2.9"})
    assert proxied == (403, {"error": proxied[1]["error"], "status": 403})
    assert "not taken through a proxy" in proxied[1]["error"]
    cookie = ask(
        node, {"path": str(src)}, {"Authorization": "", "Cookie": f"treedrive_token={token}"}
    )
    assert cookie[0] == 403
    assert "Authorization header" in cookie[1]["error"]

    curl, setpriv = shutil.which("curl"), shutil.which("setpriv")
    if os.geteuid() != 0 or curl is None or setpriv is None:
        pytest.skip("another user's request needs root, setpriv and curl")
    other = subprocess.run(
        [
            setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", curl, "-s",
            "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
            "--data", json.dumps({"path": str(src)}), str(node.info()["http"]) + "api/v1/pushes",
        ],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert json.loads(other.stdout) == {
        "error": "a push by path is taken only from the node's own user (send the bytes)",
        "status": 403,
    }
    assert list((node.data_dir / "partial").iterdir()) == []
    assert Client(str(node.info()["http"])).files() == []


def outside_address() -> str | None:
    """This machine's address on its way out (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent
        except OSError:
            return None
        found = str(s.getsockname()[0])
    return None if ipaddress.ip_address(found).is_loopback else found


@pytest.mark.e2e
def test_a_client_on_another_address_sends_the_bytes(node_process: Factory, tmp_path: Path) -> None:
    outside = outside_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback")
    node = started(node_process("alice", "--http-host", "0.0.0.0"))
    port = str(node.info()["http"]).rstrip("/").rsplit(":", 1)[1]
    token = (node.data_dir / "api-token").read_text().strip()
    src = tmp_path / "x.bin"
    data = os.urandom(1000)
    src.write_bytes(data)
    req = urllib.request.Request(
        f"http://{outside}:{port}/api/v1/pushes",
        data=json.dumps({"path": str(src)}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)  # noqa: S310
    assert refused.value.code == 403
    assert b"taken only from this machine" in refused.value.read()

    remote = Client(f"http://{outside}:{port}/", token)
    assert not remote.transport.local()
    assert content(remote, remote.push(src)["file_id"]) == data  # uploaded


def namespace() -> list[str] | None:
    """``unshare`` with a mount namespace of its own (and a user namespace unless root)."""
    cmd = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run([*cmd, "true"], capture_output=True, check=False, timeout=30)
    return cmd if probe.returncode == 0 else None


CLIENT = r"""
import json, sys
from treedrive.client import CannotReadThere, Client
url, token, path = sys.argv[1:4]
client = Client(url, token)
try:
    client.push_path(path)
except CannotReadThere as exc:
    print(exc.message, file=sys.stderr)
else:
    sys.exit("the node read a file it cannot see")
print(json.dumps(client.push(path)))
"""


@pytest.mark.e2e
@pytest.mark.parametrize("there", ["nothing", "another file"])
def test_a_file_the_node_cannot_see_is_sent_as_bytes(
    node_process: Factory, tmp_path: Path, there: str
) -> None:
    unshare = namespace()
    if unshare is None:
        pytest.skip("needs unshare and a mount namespace")
    node = started(node_process("alice"))
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    if there == "another file":
        (hidden / "f.bin").write_bytes(b"what the node sees at that path")
    src = tmp_path / "src.bin"
    data = os.urandom(MiB + 3)
    src.write_bytes(data)
    token = (node.data_dir / "api-token").read_text().strip()
    # the client in a mount namespace of its own: a tmpfs over hidden/ holds its file, which the
    # node (outside) cannot see
    script = 'mount -t tmpfs tmpfs "$1" && cp "$2" "$1/f.bin" && '
    script += 'exec "$3" -c "$4" "$5" "$6" "$1/f.bin"'
    done = subprocess.run(
        [
            *unshare, "sh", "-c", script, "sh", str(hidden), str(src), sys.executable, CLIENT,
            str(node.info()["http"]), token,
        ],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    why = "No such file or directory" if there == "nothing" else "is not the one meant"
    assert why in done.stderr
    pushed = json.loads(done.stdout)
    assert (pushed["display_name"], pushed["size_bytes"]) == ("f.bin", len(data))
    assert content(Client(str(node.info()["http"])), pushed["file_id"]) == data


@contextmanager
def node_from_before() -> Iterator[tuple[str, list[str]]]:
    """A stand-in for a node from before pushes by path: 404 on /api/v1/pushes, an upload
    taken at /api/v1/files (its size answered). Yields its URL and the paths asked."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(self.path.split("?")[0])
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/api/v1/pushes"):
                self.answer(404, {"error": "Not Found", "status": 404})
            else:
                self.answer(201, {"size_bytes": len(body), "existing": False})

        def answer(self, status: int, data: dict[str, Any]) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    worker = threading.Thread(target=server.serve_forever, daemon=True)
    worker.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_node_from_before_gets_the_bytes(tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 1234)
    with node_from_before() as (url, asked):
        assert Client(url, "t").push(src)["size_bytes"] == 1234
    assert asked == ["/api/v1/pushes", "/api/v1/files"]


async def test_the_progress_is_the_nodes_reading(
    start_node: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node: Node = await start_node("alice", http_port=0)
    client = in_process_client(node)
    src = tmp_path / "big.bin"
    data = os.urandom(4 * MiB)
    src.write_bytes(data)
    halfway = threading.Event()
    go_on = threading.Event()
    copy = localfile.Source.copy_into

    def held(self: localfile.Source, sink: Any, progress: Any = None, stopped: Any = None) -> None:
        def told(done: int) -> None:  # the node's reading stops a while after its first MiB
            progress(done)
            if done >= MiB and not go_on.is_set():
                halfway.set()
                go_on.wait(30)

        copy(self, sink, told, stopped)

    monkeypatch.setattr(localfile.Source, "copy_into", held)
    told: list[int] = []
    heard = threading.Event()

    def tell(n: int) -> None:
        told.append(n)
        heard.set()

    pushing = asyncio.ensure_future(run(client.push, src, progress=tell))
    assert await run(halfway.wait, 30)
    assert await run(heard.wait, 30)  # the client asked how far the node got
    assert 0 < sum(told) < len(data)
    go_on.set()
    answer = await pushing
    assert sum(told) == len(data)
    assert await run(content, client, answer["file_id"]) == data


async def test_a_push_whose_client_went_away_stops_and_keeps_nothing(
    start_node: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node: Node = await start_node("alice", http_port=0)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 * MiB))
    halfway = threading.Event()
    go_on = threading.Event()
    copy = localfile.Source.copy_into

    read: list[int] = []

    def held(self: localfile.Source, sink: Any, progress: Any = None, stopped: Any = None) -> None:
        def told(done: int) -> None:
            progress(done)
            read.append(done)
            if done >= MiB and not go_on.is_set():
                halfway.set()
                go_on.wait(30)

        copy(self, sink, told, stopped)

    monkeypatch.setattr(localfile.Source, "copy_into", held)
    token = in_process_client(node).token
    body = json.dumps({"path": str(src)}).encode()
    assert node.http_url is not None
    host, port = node.http_url.rstrip("/").rsplit("/", 1)[1].rsplit(":", 1)
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /api/v1/pushes HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    assert await run(halfway.wait, 30)
    writer.close()  # Ctrl-C: the client is gone
    await writer.wait_closed()
    await asyncio.sleep(0.2)  # the node sees the connection end
    go_on.set()
    partial = node.config.data_dir / "partial"
    for _ in range(200):
        if not list(partial.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert list(partial.iterdir()) == []
    assert node.files() == []
    assert max(read) < 4 * MiB  # it stopped reading
