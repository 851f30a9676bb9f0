"""End to end: the dashboard in headless Chromium against real ``treedrive run`` processes.

One scenario, one browser: node A's page (opened with its token URL) sees node B join without a
reload, pushes a file through its file input (B gets it), shows a fetch of a 150 MiB file from B as
a progress bar that goes away when the file is here, deletes a file A owns, and shows the
lost-connection state when A stops. A second, token-less browser context gets the read-only view.

Screenshots go to ``$TREEDRIVE_ARTIFACTS`` (if set) or the test's ``tmp_path``; the path is
printed. The test is skipped only when Debian's Chromium (/usr/bin/chromium) is missing.

Also here (in-process nodes, no browser): the throughput chart's samples must add up to the bytes
a fetch moved.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    NODE_PROCESS_WARNINGS,
    NodeProcess,
    address,
    free_port,
    marked,
    wait_for,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BIG_MIB = 150
MS = 1000  # playwright timeouts are in milliseconds
SEED_HAS_COPY = """id => fetch('/stats.json').then((r) => r.json())
  .then((stats) => stats.files.find((f) => f.file_id === id))
  .then((file) => file.has_copy ? 'Yes' : 'No')"""
"""What the seed's own page shows in its "has copy" column, on the JSON this node serves."""
ARRIVING = """id => {
  const transfer = document.querySelector('#transfers .transfer');
  const row = document.querySelector(`tr[data-file="${id}"]`);
  if (!transfer || !row) return null;
  return {
    text: transfer.textContent,
    fetch: !!row.querySelector('[data-act="fetch"]'),
    arriving: !!row.querySelector('[data-act="arriving"]'),
  };
}"""
"""The first frame that shows a transfer: what it says, and what the file's row offers then."""

DASHBOARD_E2E = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's Chromium (/usr/bin/chromium) is not installed"
    ),
    *NODE_PROCESS_WARNINGS,
]


# -- the node's HTTP API, from the test ----------------------------------------------------------
class Api:
    """A running node's JSON API (``node.json``'s "http" and the token in ``api-token``)."""

    def __init__(self, node: NodeProcess) -> None:
        self.base = str(node.info()["http"]).rstrip("/")
        self.token = (node.data_dir / "api-token").read_text().strip()

    @property
    def token_url(self) -> str:
        return f"{self.base}/?token={self.token}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Any:
        request = urllib.request.Request(  # noqa: S310 (http://127.0.0.1 only)
            self.base + path,
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", **(headers or {})},
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return json.loads(resp.read())

    def push(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as body:
            result: dict[str, Any] = self.call(
                "POST",
                f"/api/files?name={urllib.parse.quote(path.name)}",
                body,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(path.stat().st_size),
                },
            )
        return result

    def files(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/api/files?limit=500")["files"])

    def file(self, file_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.call("GET", f"/api/files/{file_id}"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what}")
        time.sleep(0.1)


def big_file(path: Path, mib: int) -> Path:
    block = secrets.token_bytes(1 << 20)
    with path.open("wb") as f:
        for i in range(mib):
            f.write(i.to_bytes(8, "big") + block[8:])
    return path


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    where = os.environ.get("TREEDRIVE_ARTIFACTS")
    folder = Path(where) if where else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {folder}")
    return folder


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@marked(DASHBOARD_E2E)
def test_dashboard_live_against_real_nodes(
    node_process: Callable[..., NodeProcess], browser: Any, artifacts: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    # B first runs alone and takes the big file in: pushed while B knows no peer, it stays on B
    # only (a push sends FILE_DATA to one tracked peer), so A will have to fetch it.
    big = big_file(tmp_path / "big.bin", BIG_MIB)
    alone = node_process("B", "--download-limit", "0").start()
    big_id = Api(alone).push(big)["file_id"]
    b_key = Api(alone).call("GET", "/api/status")["fingerprint"]
    assert alone.stop() == 0

    a = node_process("A", "--download-limit", "0").start()
    api_a = Api(a)
    # C joins through a host where nothing listens: its page must say so (checked at the end).
    nobody = f"127.0.0.1:{free_port()}"
    c = node_process("C", "--bootstrap", nobody).start()

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.goto(api_a.token_url)
    assert "token" not in page.url  # traded for a cookie and dropped from the address bar
    expect(page.locator("#conn")).to_have_text("live", timeout=10 * MS)
    expect(page.locator("#peer-id")).to_have_text("A")
    # The node's key, as its status says it (peers pin A's peer id to it).
    a_key = api_a.call("GET", "/api/status")["fingerprint"]
    expect(page.locator("#fingerprint")).to_have_text(f"key {a_key}")
    assert a_key != b_key
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#no-peers")).to_be_visible()

    # B joins through A: its row appears without a reload, and so does the file B holds.
    b = node_process("B", "--bootstrap", a.address, "--download-limit", "0").start()
    api_b = Api(b)
    assert api_b.call("GET", "/api/status")["fingerprint"] == b_key  # kept across the restart
    expect(page.locator('tr[data-peer="B"]')).to_be_visible(timeout=15 * MS)
    expect(page.locator("#no-peers")).to_be_hidden()
    big_row = page.locator(f'tr[data-file="{big_id}"]')
    expect(big_row).to_be_visible(timeout=15 * MS)
    expect(big_row.locator("td").nth(5)).to_have_text("no")
    expect(big_row.locator('button[data-act="fetch"]')).to_be_enabled()
    assert page.evaluate(SEED_HAS_COPY, big_id) == "No"  # a JSON boolean: false shows "No"

    # A file pushed through the page's file input reaches B's catalogue.
    small = tmp_path / "hello from the page.txt"
    small.write_bytes(b"pushed through the dashboard " + secrets.token_bytes(2048))
    page.set_input_files("#push-input", str(small))
    small_row = page.locator("#files tbody tr", has_text=small.name)
    expect(small_row).to_be_visible(timeout=15 * MS)
    small_id = small_row.get_attribute("data-file")
    assert small_id
    expect(small_row.locator("td").nth(5)).to_have_text("yes")
    expect(page.locator("#transfers .transfer")).to_have_count(0, timeout=15 * MS)
    wait_until(
        lambda: any(f["file_id"] == small_id for f in api_b.files()),
        15,
        "the page's upload in B's catalogue",
    )
    # The same bytes pushed again: not a second file; the page says it is already shared.
    page.set_input_files("#push-input", str(small))
    expect(page.locator(".toast", has_text="already shared")).to_contain_text(
        f"{small.name} is already shared as {small_id[:12]}", timeout=15 * MS
    )
    assert [f["file_id"] for f in api_a.files() if f["display_name"] == small.name] == [small_id]
    record = api_a.file(small_id)
    assert record is not None
    assert record["mine"]
    assert record["file_size"] * 1048576 == pytest.approx(small.stat().st_size)
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    # Fetch the big file from B: a progress bar shows while it moves, then goes.
    big_row.locator('button[data-act="fetch"]').click()
    # While its bytes arrive, the file offers no Fetch: it says "arriving…"; the transfer shows
    # bytes of the total, the rate and the ETA.
    seen = page.wait_for_function(ARRIVING, arg=big_id, timeout=15 * MS).json_value()
    assert (seen["fetch"], seen["arriving"]) == (False, True), seen
    assert big.name in seen["text"]
    assert f"/ {BIG_MIB}.0 MiB" in seen["text"]
    assert "/s" in seen["text"]
    assert "ETA" in seen["text"]
    transfer = page.locator("#transfers .transfer", has_text=big.name)
    expect(transfer).to_be_visible(timeout=15 * MS)
    expect(transfer.locator(".bar > div")).to_be_attached()
    page.screenshot(path=str(artifacts / "transfer.png"), full_page=True)
    expect(page.locator("#transfers .transfer")).to_have_count(0, timeout=40 * MS)
    expect(page.locator("#no-transfers")).to_be_visible()
    expect(big_row.locator("td").nth(5)).to_have_text("yes", timeout=10 * MS)
    expect(big_row.locator('a[data-act="download"]')).to_be_visible()
    fetched = api_a.file(big_id)
    assert fetched is not None
    assert fetched["has_copy"]
    assert fetched["size_bytes"] == BIG_MIB << 20
    assert page.evaluate(SEED_HAS_COPY, big_id) == "Yes"

    # Delete the file A owns from the page (the confirm dialog is accepted): gone here and on B.
    small_row.locator('button[data-act="delete"]').click()
    expect(page.locator(f'tr[data-file="{small_id}"]')).to_have_count(0, timeout=10 * MS)
    assert dialogs
    assert small.name in dialogs[-1]
    assert api_a.file(small_id) is None
    wait_until(lambda: api_b.file(small_id) is None, 10, "B dropped the deleted file")

    # Without the token the page is read-only and says so; the API refuses changes.
    reader = browser.new_context(viewport={"width": 1400, "height": 1000})
    ro = reader.new_page()
    ro.on("pageerror", lambda exc: errors.append(f"read-only page: {exc}"))
    ro.goto(api_a.base + "/")
    expect(ro.locator("#conn")).to_have_text("live", timeout=10 * MS)
    expect(ro.locator("#banner")).to_be_visible()
    expect(ro.locator("#banner")).to_contain_text("Read-only")
    expect(ro.locator("#push-input")).to_be_disabled()
    expect(ro.locator(f'tr[data-file="{big_id}"] a[data-act="download"]')).to_be_visible()
    refused = ro.evaluate(
        "id => fetch(`/api/files/${id}`, {method: 'DELETE'}).then(r => r.status)", big_id
    )
    assert refused == 401
    ro.screenshot(path=str(artifacts / "readonly.png"), full_page=True)

    # C has no peer: its page shows why, as a warning, until it joins.
    ro.goto(Api(c).base + "/")
    expect(ro.locator("#problem")).to_be_visible(timeout=15 * MS)
    expect(ro.locator("#problem")).to_contain_text(nobody)
    ro.screenshot(path=str(artifacts / "bootstrap.png"), full_page=True)
    reader.close()

    # A stops: the open page shows that it lost the node, without a reload.
    assert a.stop() == 0
    expect(page.locator("#conn")).to_contain_text("lost", timeout=10 * MS)
    page.screenshot(path=str(artifacts / "lost.png"), full_page=True)
    context.close()

    assert not errors, f"uncaught errors in the page: {errors}"


# -- the throughput chart's numbers --------------------------------------------------------------
async def test_throughput_samples_count_every_byte_of_a_fetch(
    start_node: Callable[..., Any], tmp_path: Path
) -> None:
    """The chart's samples (``/api/throughput``) must add up to the bytes that moved: a fetch of
    4 MiB is 4 MiB "in" on the fetching node and 4 MiB "out" on the serving one."""
    import aiohttp

    size = 4 << 20
    payload = tmp_path / "payload.bin"
    payload.write_bytes(secrets.token_bytes(size))
    alice = await start_node("alice", http_port=0, download_limit=0)
    meta = await alice.push(payload)  # alice knows no peer yet: the file stays on alice
    bob = await start_node("bob", http_port=0, download_limit=0, bootstrap=(address(alice),))
    await wait_for(lambda: bob.file(meta.file_id) is not None, 10)
    entry = await bob.get(meta.file_id)
    assert entry.has_copy
    done = time.time()

    async def samples(http: aiohttp.ClientSession, node: Any) -> list[dict[str, float]]:
        while True:  # until the sampler (one sample a second) has sampled after the fetch
            async with http.get(f"{node.http_url}api/throughput") as resp:
                assert resp.status == 200
                got = list((await resp.json())["samples"])
            if got and got[-1]["t"] > done + 0.05:
                return got
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        moved_in = sum(s["in_bytes"] for s in await samples(http, bob))
        moved_out = sum(s["out_bytes"] for s in await samples(http, alice))
    assert (moved_in, moved_out) == (size, size)
