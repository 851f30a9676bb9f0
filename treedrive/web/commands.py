"""Control commands: drive a running node from another terminal through its HTTP API.

``treedrive push FILE``, ``get FILE_ID [-o PATH]``, ``delete FILE_ID``, ``list [SCOPE]``,
``peers``, ``status``. The node is found from its data dir (``node.json`` and ``api-token``) or
given with ``--node URL`` (and ``--token``); they talk to it through :mod:`treedrive.client`. A
file id may be a unique prefix of 8 or more hex characters; tables show 12. Human tables by
default, ``--json`` (full ids) for scripts. Peer ids, hosts, names and owners come from
strangers: what is printed for humans has its control characters escaped (``--json`` escapes
them anyway).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import click

from treedrive.client import Client, FileRecord, Scope, Status
from treedrive.client.background import meanwhile
from treedrive.client.http import no_progress
from treedrive.core.text import human_size, printable, table
from treedrive.web.options import _client, _emit, common
from treedrive.web.peer_commands import peers
from treedrive.web.progress import LiveLine, Meter, eta_of

POLL = 0.3
SHORT = 12


def short(file_id: str) -> str:
    return file_id[:SHORT]


def _size(f: FileRecord) -> int:
    return int(f["size_bytes"] if f["size_bytes"] is not None else f["file_size"] * 1024 * 1024)


def _files_table(files: list[FileRecord]) -> str:
    rows = [
        [
            short(f["file_id"]),
            f["display_name"],
            human_size(_size(f)),
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
    data = _client(data_dir, peer_id, node_url, token).status()
    if as_json:
        return _emit(data)
    click.echo(status_lines(data))


def status_lines(data: Status) -> str:
    """The human form of ``/api/status`` (escaped: the peer id and host may be anyone's)."""
    c = data["counts"]
    peer, host, http = (printable(data[k]) for k in ("peer_id", "host", "http"))
    lines = (
        f"peer {peer}  p2p {host}:{data['port']}  http {http}\n"
        f"up {data['uptime']:.0f} s  peers {c['peers']}  files {c['files']} "
        f"({c['local']} local, {c['remote']} remote)  transfers {data['transfers']}"
    )
    if data.get("fingerprint"):  # a node from before keys says none
        lines += f"\nkey {printable(data['fingerprint'])}"
    problem = data.get("bootstrap_problem")
    if problem:
        lines += f"\nwarning: {printable(problem)}"
    return lines


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
    files = _client(data_dir, peer_id, node_url, token).files(cast(Scope, scope))
    if as_json:
        return _emit({"scope": scope, "total": len(files), "files": files})
    click.echo(_files_table(files) if files else "no files")


def _line(label: str, hidden: bool) -> LiveLine:
    return LiveLine(sys.stderr, label, hidden=hidden or not sys.stderr.isatty())


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Name to share it under (default: the file's name).")
@click.option("--force", is_flag=True, help="Push it even if the node already shares it.")
@common
def push(
    file: Path,
    name: str | None,
    force: bool,
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Push FILE into the network through the running node."""
    client = _client(data_dir, peer_id, node_url, token)
    size = file.stat().st_size
    shared_as = name or file.name
    line = _line(f"push {file.name}", as_json)
    meter = Meter()

    def sent(n: int) -> None:
        meter.add(n)
        line.show(meter.done, size, meter.rate, eta_of(meter.done, size, meter.rate))

    try:
        data = client.push(
            file, name=shared_as, force=force, progress=no_progress if line.hidden else sent
        )
    finally:
        line.clear()
    if as_json:
        return _emit(data)
    if data["existing"]:
        named = "" if data["display_name"] == shared_as else f" (named {data['display_name']})"
        click.echo(
            printable(
                f"{shared_as} is already shared as {short(data['file_id'])}{named} "
                "(use --force to push it anew)"
            )
        )
    else:
        click.echo(printable(f"pushed {data['display_name']} as {short(data['file_id'])}"))


def _target(output: Path | None) -> Path | None:
    """Check ``-o`` before anything moves: a folder to save into, or a file in a folder that
    exists (one line saying what to do otherwise)."""
    if output is None or output.is_dir():
        return output
    folder = output.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise click.ClickException(
            printable(
                f"cannot save to {output}: the folder {folder} {what}; create it or choose another"
            )
        )
    return output


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
    """Fetch FILE_ID (or a unique prefix of it) into the node (and save it with -o)."""
    output = _target(output)
    client = _client(data_dir, peer_id, node_url, token)
    # The record first: it resolves a prefix, and a file already here needs no fetch (no line).
    record = client.file(file_id)
    full = record["file_id"]
    already = bool(record["has_copy"])
    result = record if already else _fetch(client, full, record, as_json)
    shown: dict[str, Any] = dict(result)
    if output is not None:
        target = output / result["display_name"] if output.is_dir() else output
        _download(client, result, target, as_json)
        shown["saved_to"] = str(target)
    if as_json:
        return _emit({**shown, "already_here": already})
    size = human_size(_size(result))
    saved = f", saved to {shown['saved_to']}" if "saved_to" in shown else ""
    name = result["display_name"]
    text = f"{name} is already here ({size}){saved}" if already else f"got {name} ({size}){saved}"
    click.echo(printable(text))


def _fetch(client: Client, file_id: str, record: FileRecord, hidden: bool) -> FileRecord:
    """POST the fetch in a thread; meanwhile draw the node's progress of it (from
    ``/api/transfers``: rate and ETA of this run, a resume's bytes on disk not counted)."""
    line = _line(f"get {record['display_name']}", hidden)

    def draw() -> None:
        if line.hidden:
            return
        mine = [
            t
            for t in client.transfers()["active"]
            if t["file_id"] == file_id and t["direction"] == "in"
        ]
        done = sum(t["bytes_done"] for t in mine)
        if done <= 0:
            return  # nothing has arrived yet: no line (an error may come first)
        total = max((t["bytes_total"] or 0 for t in mine), default=0) or None
        rate = sum(t["rate"] or 0 for t in mine)
        line.show(done, total, rate, eta_of(done, total, rate))

    try:
        return meanwhile(lambda: client.get(file_id), draw, POLL)
    finally:
        line.clear()


def _download(client: Client, record: FileRecord, target: Path, hidden: bool) -> None:
    """Save the bytes as ``target`` (never a partial file: see :meth:`Client.download`)."""
    line = _line(f"save {target.name}", hidden)
    total = record["size_bytes"] or None
    meter = Meter()

    def written(n: int) -> None:
        meter.add(n)
        line.show(meter.done, total, meter.rate, eta_of(meter.done, total, meter.rate))

    try:
        client.download(record["file_id"], target, progress=written)
    finally:
        line.clear()


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
    """Delete FILE_ID (or a unique prefix of it; one the node owns) everywhere."""
    data = _client(data_dir, peer_id, node_url, token).delete(file_id)
    if as_json:
        return _emit(data)
    click.echo(printable(f"deleted {short(data['deleted'])}"))


COMMANDS: list[click.Command] = [status, peers, list_files, push, get, delete]
