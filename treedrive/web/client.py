"""The control commands' side of the HTTP API: find the running node, call it.

A node is found from its data dir (``node.json`` says where it listens, ``api-token`` is its
token) or given as ``--node URL``. Every way of not finding it is one line that says where it
looked and what to do; nothing here prints a traceback for a user's mistake.

A push (:meth:`Client.upload`) over plain http goes from the file to the socket with
``sendfile``: this process never copies the bytes (on a small machine the node hashing and
writing them needs the CPU more). Over https, or through a proxy, urllib sends it.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import SplitResult, urlsplit

import click

from treedrive.core.config import default_data_root
from treedrive.core.text import printable

RUN_FILE = "node.json"
TOKEN_FILE = "api-token"  # noqa: S105 (a file name, not a secret)
URL_FORM = "http://127.0.0.1:8280/"
BLOCK = 1 << 20
"""Bytes read at a time for an upload urllib sends."""
STEP = 4 << 20
"""Bytes handed to ``sendfile`` at a time (the progress is told between steps)."""

Progress = Callable[[int], None]
"""Told the number of bytes just sent."""


@dataclass
class Client:
    url: str
    token: str | None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = 30,
    ) -> Any:
        try:
            req = urllib.request.Request(  # noqa: S310 (checked by node_url: http(s) only)
                self.url.rstrip("/") + path, data=body, method=method, headers=headers or {}
            )
        except ValueError:
            raise click.ClickException(bad_url(self.url)) from None
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise refused(exc.code, exc.reason, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self.unreachable(getattr(exc, "reason", exc)) from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.request(method, path, **kwargs) as resp:
            return json.loads(resp.read())

    def unreachable(self, reason: object) -> click.ClickException:
        return click.ClickException(
            printable(f"cannot reach the node at {self.url} ({reason}); is it running?")
        )

    def upload(self, path: Path, query: str, progress: Progress) -> Any:
        """POST the file at ``path`` raw to ``/api/files?{query}``: the node's answer (JSON).
        ``progress`` is told each step's bytes as they go."""
        plain = self.plain()
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            target = f"/api/files?{query}"
            if plain is None:
                body = _blocks(f, progress)
                return self.json("POST", target, body=body, headers=headers, timeout=None)
            return self.send_file(plain, target, headers, f, size, progress)

    def plain(self) -> SplitResult | None:
        """The node's URL if a push can go straight to its socket: plain http, no proxy."""
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 (raises ValueError if it is no port)
        except ValueError:
            raise click.ClickException(bad_url(self.url)) from None
        if parts.scheme != "http" or not parts.hostname:
            return None
        if urllib.request.getproxies().get("http") and not urllib.request.proxy_bypass(
            parts.netloc
        ):
            return None
        return parts

    def send_file(
        self,
        url: SplitResult,
        target: str,
        headers: dict[str, str],
        f: IO[bytes],
        size: int,
        progress: Progress,
    ) -> Any:
        """The request with ``sendfile`` for its body, then the answer as :meth:`request`
        gives it (the node's error on a 4xx/5xx; "cannot reach" when the connection fails)."""
        conn = http.client.HTTPConnection(url.hostname or "", url.port or 80)
        try:
            try:
                conn.putrequest("POST", url.path.rstrip("/") + target)
                for name, value in {**headers, "Connection": "close"}.items():
                    conn.putheader(name, value)
                if self.token:
                    conn.putheader("Authorization", f"Bearer {self.token}")
                conn.endheaders()
            except OSError as exc:
                raise self.unreachable(exc) from None
            # A node that answers before it has the whole body (over its cap) may close the
            # connection as it does: its answer, if it came, says more than the send's error.
            failed = _send(conn, f, size, progress)
            try:
                with conn.getresponse() as resp:
                    status, reason, body = resp.status, resp.reason, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self.unreachable(failed or exc) from None
        finally:
            conn.close()
        if not 200 <= status < 300:
            raise refused(status, reason, body)
        return json.loads(body)


def _blocks(f: IO[bytes], progress: Progress) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        progress(len(block))
        yield block


def _send(
    conn: http.client.HTTPConnection, f: IO[bytes], size: int, progress: Progress
) -> OSError | None:
    """``size`` bytes of ``f`` to the connection's socket, ``STEP`` at a time; the error that
    stopped it, if one did."""
    sock = conn.sock
    done = 0
    try:
        while done < size:
            sent = sock.sendfile(f, done, min(STEP, size - done))
            if not sent:
                name = getattr(f, "name", "the file")
                raise click.ClickException(
                    printable(f"{name} got shorter while it was pushed; push it again")
                )
            done += sent
            progress(sent)
    except OSError as exc:
        return exc
    return None


def refused(code: int, reason: str, body: bytes) -> click.ClickException:
    """The node's answer to a request it refused: its JSON ``error``, else the status."""
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = f"{code} {reason}"
    return click.ClickException(printable(message))


def bad_url(given: str) -> str:
    return printable(
        f"--node {given.strip()[:200]!r} is not a node's address: give its HTTP URL, "
        f"e.g. {URL_FORM} (or host:port)"
    )


def node_url(given: str) -> str:
    """``--node``'s value as a URL: ``http://host:port/``, ``https://…``, or ``host:port``
    (http assumed). Anything else: one line saying the form expected."""
    text = given.strip()
    if "://" not in text:
        # host:port without a scheme; a bare word ("nonsense") is no address.
        host, sep, digits = text.rstrip("/").rpartition(":")
        if not sep or not host or not digits.isdigit():
            raise click.ClickException(bad_url(given))
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise click.ClickException(bad_url(given)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.ClickException(bad_url(given))
    if port is not None and not 0 < port < 65536:
        raise click.ClickException(bad_url(given))
    return text


def read_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    except OSError:
        return False
    return True


def run_info(data_dir: Path) -> dict[str, Any] | None:
    """What ``node.json`` in ``data_dir`` says, if a node whose process is alive wrote it."""
    try:
        info = json.loads((data_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not pid_alive(info.get("pid")):
        return None
    return info


def running_nodes(root: Path | None = None) -> list[tuple[Path, str]]:
    """The nodes running under the data root: (data dir, peer id), by folder name."""
    root = root or default_data_root()
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    found = []
    for folder in folders:
        info = run_info(folder)
        if info is not None:
            found.append((folder, str(info.get("peer_id") or folder.name)))
    return found


def how_to_reach(data_dir: Path, peer_id: str, root: Path) -> str:
    """The option that finds this node: ``--peer-id`` when it lives in the default place."""
    if data_dir == root / peer_id:
        return f"--peer-id {peer_id}"
    return f"--data-dir {data_dir}"


def shown(path: Path) -> str:
    """``path`` with the home folder as ``~``."""
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def not_running(base: Path, gone: bool) -> str:
    root = default_data_root()
    others = [(d, p) for d, p in running_nodes(root) if d != base]
    where = f"no node is running on {shown(base)}"
    if gone:
        where += " (the node that wrote its node.json has stopped)"
    if others:
        listed = ", ".join(f"{p} ({how_to_reach(d, p, root)})" for d, p in others)
        return printable(f"{where}; running: {listed}")
    return printable(
        f"{where}, nor under {shown(root)} (start one with 'treedrive run', "
        "or give --data-dir, --peer-id or --node)"
    )


def find_node(
    data_dir: Path | None, peer_id: str | None, node: str | None, token: str | None
) -> Client:
    if node is not None:
        url = node_url(node)
        if token is None and data_dir is not None:
            token = read_token(data_dir)
        return Client(url, token)
    base = data_dir or default_data_root() / (peer_id or "default")
    try:
        written = json.loads((base / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise click.ClickException(not_running(base, gone=False)) from None
    info = run_info(base)
    if info is None:
        raise click.ClickException(not_running(base, gone=isinstance(written, dict)))
    if not info.get("http"):
        raise click.ClickException(
            f"the node on {shown(base)} runs without its web API (start it with --http-port)"
        )
    return Client(str(info["http"]), token or read_token(base))
