"""``/api/health`` and ``/metrics`` (issue 13), over real HTTP against in-process nodes: health
needs no token and no database (it answers while another connection holds a write transaction,
and runs no SQL at all); ``/metrics`` parses with Prometheus' own text parser and its counters
move when a file is pushed and fetched."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from tests.conftest import wait_for
from tests.web.test_api import Starter, auth, holder_and_fetcher, url, web_node
from treedrive.core.node import Node
from treedrive.web import api as web_api
from treedrive.web import monitor, views

pytestmark = pytest.mark.timeout(60)
QUIET = {"gossip_interval": 3600.0, "cleanup_interval": 3600.0, "join_delay": 3600.0}
"""Timers long enough that the node reads nothing of its store on its own during a test."""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:  # no cookie, no token
        yield session


class SqlCount:
    """Statements the node's store runs, counted on the store's real engine."""

    def __init__(self, node: Node) -> None:
        self.engine = node.store.engine  # type: ignore[attr-defined]
        self.n = 0
        event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, *args: Any) -> None:
        self.n += 1

    async def quiet(self, for_s: float = 0.3) -> None:
        """Wait until the node has run no SQL for ``for_s`` (its first gossip round is done),
        then count from zero."""
        while True:
            n = self.n
            await asyncio.sleep(for_s)
            if self.n == n:
                self.n = 0
                return

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


async def test_health_needs_no_token_and_no_database(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice", **QUIET)
    db = sqlite3.connect(node.config.data_dir / "treedrive.db", isolation_level=None, timeout=0.1)
    sql = SqlCount(node)
    await sql.quiet()
    try:
        db.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
        other = sqlite3.connect(node.config.data_dir / "treedrive.db", timeout=0.1)
        with closing(other), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")  # the lock is real: no other writer gets it
        for path in ("/api/health", "/api/v1/health"):
            start = time.monotonic()
            async with http.get(url(node, path)) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            assert time.monotonic() - start < 1.0
            assert body["status"] == "ok"
            assert body["peer_id"] == "alice"
            assert body["version"] == monitor.VERSION
            assert 0 <= body["uptime_s"] < 60
        assert sql.n == 0, "health ran SQL"
        # the counter sees what touches the store: the status does
        async with http.get(url(node, "/api/v1/status")) as resp:
            assert resp.status == 200
        assert sql.n > 0
    finally:
        sql.close()
        db.execute("ROLLBACK")
        db.close()


async def test_health_says_when_the_node_is_stopping(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice", **QUIET)
    node.ctx.stopping.set()  # what stop() sets first, before the server goes
    async with http.get(url(node, "/api/v1/health")) as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "stopping"


def scrape_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by (sample name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


async def scrape(
    http: aiohttp.ClientSession, node: Node
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(url(node, "/metrics")) as resp:  # no token
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return scrape_text(await resp.text())


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


async def test_metrics_parse_and_count_a_fetch_and_a_push(
    start_node: Starter, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    data = b"metrics!" * 4096
    alice, bob, file_id = await holder_and_fetcher(start_node, tmp_path, data, "m.bin")
    a0, b0 = await scrape(http, alice), await scrape(http, bob)
    assert value(a0, "treedrive_build_info", version=monitor.VERSION) == 1
    assert value(b0, "treedrive_peers", kind="treedrive") == 1
    assert value(b0, "treedrive_peers", kind="classic") == 0
    assert value(b0, "treedrive_files", scope="remote") == 1
    assert value(b0, "treedrive_files", scope="local") == 0
    assert value(b0, "treedrive_gossip_sent_total", type="GOSSIP") >= 1
    assert value(a0, "treedrive_gossip_received_total", type="GOSSIP") >= 1
    assert value(b0, "treedrive_transfers_active", direction="in") == 0
    for reason in ("peer_other_key", "bytes", "p2p_connection_cap", "http_connection_cap"):
        assert value(b0, "treedrive_refusals_total", reason=reason) == 0
    for reason in ("outbox_full", "invalid_message", "unexpected", "swim_malformed"):
        assert value(b0, "treedrive_drops_total", reason=reason) == 0

    # bob fetches alice's file
    async with http.post(url(bob, f"/api/v1/files/{file_id}/fetch"), headers=auth(bob)) as r:
        assert r.status == 200, await r.text()
    a1, b1 = await scrape(http, alice), await scrape(http, bob)
    assert value(b1, "treedrive_transfer_bytes_total", direction="in") - value(
        b0, "treedrive_transfer_bytes_total", direction="in"
    ) == len(data)
    assert value(b1, "treedrive_transfers_total", direction="in", result="ok") == (
        value(b0, "treedrive_transfers_total", direction="in", result="ok") + 1
    )
    assert value(b1, "treedrive_files", scope="local") == 1
    assert value(b1, "treedrive_files", scope="remote") == 0
    await wait_for(lambda: not alice.active_transfers)  # its upload may end a moment later
    a1 = await scrape(http, alice)
    assert value(a1, "treedrive_transfer_bytes_total", direction="out") - value(
        a0, "treedrive_transfer_bytes_total", direction="out"
    ) == len(data)
    assert value(a1, "treedrive_transfers_total", direction="out", result="ok") >= 1

    # alice pushes a new file: it goes to bob (her only peer), and is announced
    pushed = b"pushed" * 1000
    async with http.post(
        url(alice, "/api/v1/files?name=p.bin"), data=pushed, headers=auth(alice)
    ) as r:
        assert r.status == 201, await r.text()
        pushed_id = (await r.json())["file_id"]
    await wait_for(lambda: (e := bob.file(pushed_id)) is not None and e.has_copy)
    await wait_for(lambda: not alice.active_transfers and not bob.active_transfers)
    a2, b2 = await scrape(http, alice), await scrape(http, bob)
    out = "treedrive_transfer_bytes_total"
    assert value(a2, out, direction="out") - value(a1, out, direction="out") == len(pushed)
    assert value(b2, out, direction="in") - value(b1, out, direction="in") == len(pushed)
    assert value(b2, "treedrive_files", scope="local") == 2
    assert value(a2, "treedrive_gossip_sent_total", type="ANNOUNCE") > value(
        a1, "treedrive_gossip_sent_total", type="ANNOUNCE"
    )
    assert value(a2, "treedrive_files", scope="local") == 2


async def test_metrics_count_refused_gossip(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    """The gate's refusal counts show as ``peer_<code>`` reasons."""
    node = await web_node(start_node, "alice", **QUIET)
    before = await scrape(http, node)
    node.gate.refused["unsigned"] += 2  # as the gate counts a refusal
    after = await scrape(http, node)
    delta = value(after, "treedrive_refusals_total", reason="peer_unsigned") - value(
        before, "treedrive_refusals_total", reason="peer_unsigned"
    )
    assert delta == 2


async def test_stats_json_built_page_by_page_is_the_whole_catalogue(
    start_node: Starter, tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    """``/stats.json`` is read and written out a page at a time: with pages of 2 entries, the
    answer is still every entry once, in the order of one snapshot."""
    monkeypatch.setattr(web_api, "STATS_PAGE", 2)
    node = await web_node(start_node, "alice", **QUIET)
    for i in range(5):
        src = tmp_path / f"f{i}.txt"
        src.write_bytes(b"page %d" % i)
        await node.push(src)
    async with http.get(url(node, "/stats.json")) as resp:
        assert resp.status == 200
        text = await resp.text()
    assert json.loads(text) == views.stats_json(node)
    assert len(json.loads(text)["files"]) == 5
