"""Control commands: drive a running node from another terminal through its HTTP API.

``treedrive push FILE``, ``get FILE_ID [-o PATH]``, ``delete FILE_ID``, ``list [SCOPE]``,
``peers``, ``status``. The node is found from its data dir (``node.json`` and ``api-token``) or
given with ``--node URL`` (and ``--token``). Human tables by default, ``--json`` for scripts.
Peer ids, hosts, names and owners come from strangers: what is printed for humans has its control
characters escaped (``--json`` escapes them anyway).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click

from treedrive.core.config import default_data_root
from treedrive.core.text import printable
from treedrive.shell import human_size, table

CHUNK = 1 << 20


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
        req = urllib.request.Request(  # noqa: S310 (the node's own http:// URL)
            self.url.rstrip("/") + path, data=body, method=method, headers=headers or {}
        )
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                message = f"{exc.code} {exc.reason}"
            raise click.ClickException(printable(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise click.ClickException(
                f"cannot reach the node at {self.url} ({reason}); is it running?"
            ) from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.request(method, path, **kwargs) as resp:
            return json.loads(resp.read())


def find_node(
    data_dir: Path | None, peer_id: str | None, node: str | None, token: str | None
) -> Client:
    if node is not None:
        if token is None and data_dir is not None:
            token = _read_token(data_dir)
        return Client(node, token)
    base = data_dir or default_data_root() / (peer_id or "default")
    run_file = base / "node.json"
    try:
        info = json.loads(run_file.read_text())
    except FileNotFoundError:
        raise click.ClickException(
            f"no node is running on {base} (start one with 'treedrive run', "
            "or give --data-dir, --peer-id or --node)"
        ) from None
    if not info.get("http"):
        raise click.ClickException(f"the node on {base} runs without its web API (--http-port)")
    return Client(str(info["http"]), token or _read_token(base))


def _read_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / "api-token").read_text().strip() or None
    except OSError:
        return None


def common(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)
    f = click.option(
        "--token",
        envvar="TREEDRIVE_TOKEN",
        show_envvar=True,
        help="The node's API token (default: read from its data dir).",
    )(f)
    f = click.option(
        "--node",
        "node_url",
        envvar="TREEDRIVE_NODE",
        show_envvar=True,
        metavar="URL",
        help="The node's HTTP address, e.g. http://127.0.0.1:8280/",
    )(f)
    f = click.option(
        "--peer-id",
        envvar="TREEDRIVE_PEER_ID",
        show_envvar=True,
        help="Find the node by peer id (its default data dir).",
    )(f)
    return click.option(
        "--data-dir",
        envvar="TREEDRIVE_DATA_DIR",
        show_envvar=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="The running node's data dir.",
    )(f)


def _client(
    data_dir: Path | None, peer_id: str | None, node_url: str | None, token: str | None
) -> Client:
    return find_node(data_dir, peer_id, node_url, token)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _files_table(files: list[dict[str, Any]]) -> str:
    rows = [
        [
            f["file_id"],
            f["display_name"],
            human_size(
                f["size_bytes"] if f["size_bytes"] is not None else f["file_size"] * 1024 * 1024
            ),
            f["file_owner"],
            "yes" if f["has_copy"] else "no",
            ",".join(f["holders"]) or "-",
        ]
        for f in files
    ]
    return table(["file_id", "name", "size", "owner", "local", "peers"], rows)


@click.command()
@common
def status(
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Show the running node: id, addresses, uptime, totals."""
    data = _client(data_dir, peer_id, node_url, token).json("GET", "/api/status")
    if as_json:
        return _emit(data)
    click.echo(status_lines(data))


def status_lines(data: dict[str, Any]) -> str:
    """The human form of ``/api/status`` (escaped: the peer id and host may be anyone's)."""
    c = data["counts"]
    peer, host, http = (printable(data[k]) for k in ("peer_id", "host", "http"))
    return (
        f"peer {peer}  p2p {host}:{data['port']}  http {http}\n"
        f"up {data['uptime']:.0f} s  peers {c['peers']}  files {c['files']} "
        f"({c['local']} local, {c['remote']} remote)  transfers {data['transfers']}"
    )


@click.command()
@common
def peers(
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """List the peers the node tracks."""
    data = _client(data_dir, peer_id, node_url, token).json("GET", "/api/peers")
    if as_json:
        return _emit(data)
    click.echo(_peers_table(data["peers"], time.time()) if data["peers"] else "no peers")


def _peers_table(peers: list[dict[str, Any]], now: float) -> str:
    rows = [
        [
            p["peer_id"],
            f"{p['host']}:{p['port']}",
            f"{max(0, now - p['last_seen']):.0f} s ago",
            "treedrive" if p["treedrive"] else "classic",
        ]
        for p in peers
    ]
    return table(["peer", "address", "last seen", "kind"], rows)


@click.command("list")
@click.argument("scope", type=click.Choice(["local", "remote", "both"]), default="both")
@common
def list_files(
    scope: str,
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """List the files in the node's catalogue."""
    client = _client(data_dir, peer_id, node_url, token)
    files: list[dict[str, Any]] = []
    while True:
        query = urlencode({"scope": scope, "offset": len(files), "limit": 500})
        page = client.json("GET", f"/api/files?{query}")
        files.extend(page["files"])
        if not page["files"] or len(files) >= page["total"]:
            break
    if as_json:
        return _emit({"scope": scope, "total": len(files), "files": files})
    click.echo(_files_table(files) if files else "no files")


def _chunks(path: Path, bar: Any) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            bar.update(len(block))
            yield block


def _bar(total: int | None, label: str, hidden: bool) -> Any:
    return click.progressbar(
        length=total or 0,
        label=printable(label),
        file=sys.stderr,
        show_eta=True,
        show_percent=True,
        hidden=hidden,
    )


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Name to share it under (default: the file's name).")
@common
def push(
    file: Path,
    name: str | None,
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Push FILE into the network through the running node."""
    client = _client(data_dir, peer_id, node_url, token)
    size = file.stat().st_size
    query = urlencode({"name": name or file.name})
    with _bar(size, f"push {file.name}", as_json or not sys.stderr.isatty()) as bar:
        data = client.json(
            "POST",
            f"/api/files?{query}",
            body=_chunks(file, bar),
            timeout=None,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    if as_json:
        return _emit(data)
    click.echo(printable(f"pushed {data['display_name']} as {data['file_id']}"))


@click.command()
@click.argument("file_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=True, path_type=Path),
    help="Also save the bytes here (a file, or a folder to save into).",
)
@common
def get(
    file_id: str,
    output: Path | None,
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Fetch FILE_ID from the network into the node (and save it with -o)."""
    client = _client(data_dir, peer_id, node_url, token)
    hidden = as_json or not sys.stderr.isatty()
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def fetch() -> None:
        try:
            result.update(client.json("POST", f"/api/files/{quote(file_id)}/fetch", timeout=None))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    with _bar(None, f"get {file_id[:12]}", hidden) as bar:
        while worker.is_alive():
            worker.join(0.3)
            for t in client.json("GET", "/api/transfers")["active"]:
                if t["file_id"] == file_id:
                    bar.length = t["bytes_total"] or bar.length
                    bar.update(t["bytes_done"] - bar.pos)
    if failure:
        raise failure[0]
    if output is not None:
        target = output / result["display_name"] if output.is_dir() else output
        _download(client, file_id, target, hidden)
        result["saved_to"] = str(target)
    if as_json:
        return _emit(result)
    click.echo(
        printable(
            f"got {result['display_name']} ({human_size(result['size_bytes'])})"
            + (f", saved to {result['saved_to']}" if "saved_to" in result else "")
        )
    )


def _download(client: Client, file_id: str, target: Path, hidden: bool) -> None:
    """Stream the bytes to a temp file beside ``target`` and rename it: never a partial file."""
    tmp = target.with_name(f".{target.name}.part")
    with client.request("GET", f"/api/files/{quote(file_id)}/content", timeout=None) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        try:
            with tmp.open("wb") as f, _bar(total, f"save {target.name}", hidden) as bar:
                while block := resp.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)


@click.command()
@click.argument("file_id")
@common
def delete(
    file_id: str,
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Delete FILE_ID (one the node owns) everywhere."""
    data = _client(data_dir, peer_id, node_url, token).json(
        "DELETE", f"/api/files/{quote(file_id)}"
    )
    if as_json:
        return _emit(data)
    click.echo(printable(f"deleted {file_id}"))


COMMANDS: list[click.Command] = [status, peers, list_files, push, get, delete]
