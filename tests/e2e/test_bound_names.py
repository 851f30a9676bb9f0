"""Issue 11's "done when" for bound names, with real ``treedrive run`` processes on 127.0.0.1: a
second node that claims a running node's peer id with another key (its own data dir) is refused
by the others. The real node's address and files stay as they were, and the refusal is in the
log (``node.log``), in ``GET /api/status`` and on the dashboard (headless Chromium). A user who
means it accepts the new key with ``treedrive peers forget-key``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import FAST, NodeProcess, free_port, marked, node_args
from tests.web.test_dashboard import (  # noqa: F401 (the browser and artifacts fixtures)
    DASHBOARD_E2E,
    MS,
    Api,
    artifacts,
    browser,
    wait_until,
)

SETTLE = 10 * FAST["gossip_interval"]
"""Seconds the impostor is given to do harm (ten gossip rounds)."""


def impostor_of(real: NodeProcess, tmp_path: Path, *bootstrap: NodeProcess) -> NodeProcess:
    """A node process with ``real``'s peer id, another port and its own data dir (another
    key), bootstrapped through ``bootstrap``; not started."""
    data_dir = tmp_path / "impostor" / real.peer_id
    port = free_port()
    args = node_args(real.peer_id, port, data_dir)
    for node in bootstrap:
        args += ["--bootstrap", node.address]
    return NodeProcess(real.peer_id, data_dir, port, args)


def peer_addresses(api: Api) -> dict[str, str]:
    return {
        p["peer_id"]: f"{p['host']}:{p['port']}" for p in api.call("GET", "/api/peers")["peers"]
    }


def holders(api: Api, file_id: str) -> list[str] | None:
    record = api.file(file_id)
    return None if record is None else list(record["holders"])


@marked(DASHBOARD_E2E)
def test_a_second_node_with_a_running_nodes_peer_id_is_refused(
    node_process: Callable[..., NodeProcess],
    browser: Any,  # noqa: F811 (the fixture imported above)
    artifacts: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    a = node_process("A").start()
    b = node_process("B", "--bootstrap", a.address).start()
    c = node_process("C", "--bootstrap", a.address).start()
    api_a, api_b, api_c = Api(a), Api(b), Api(c)
    src = tmp_path / "owned-by-A.txt"
    src.write_bytes(b"A's own file, pushed before the impostor comes " * 100)
    file_id = api_a.push(src)["file_id"]
    others = {"B": api_b, "C": api_c}
    for name, api in others.items():
        wait_until(lambda api=api: peer_addresses(api).get("A") == a.address, 20, f"{name} knows A")
        wait_until(
            lambda api=api: "A" in (holders(api, file_id) or []), 20, f"{name} lists A's file"
        )
    a_key = api_a.call("GET", "/api/status")["fingerprint"]

    # B's dashboard, open before the impostor comes
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(api_b.token_url)
    expect(page.locator("#conn")).to_have_text("live", timeout=10 * MS)
    expect(page.locator('tr[data-peer="A"]')).to_be_visible(timeout=10 * MS)
    expect(page.locator("#refused")).to_be_hidden()

    impostor = impostor_of(a, tmp_path, b, c)
    try:
        impostor.start()
        fake = Api(impostor)
        fake_key = fake.call("GET", "/api/status")["fingerprint"]
        assert fake_key != a_key
        for name, api in others.items():
            wait_until(
                lambda api=api: api.call("GET", "/api/status")["refused_peers"]["other_key"] > 0,
                20,
                f"{name} refuses the impostor",
            )
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:  # ten rounds of the impostor's gossip change nothing
            for name, api in others.items():
                assert peer_addresses(api).get("A") == a.address, name
                assert "A" in (holders(api, file_id) or []), name
            time.sleep(0.2)

        for api in others.values():
            status = api.call("GET", "/api/status")
            last = status["last_refused_peer"]
            assert last["peer_id"] == "A"
            assert last["code"] == "other_key"
            assert fake_key in last["reason"]
            assert a_key in last["reason"]
            assert "treedrive peers forget-key A" in last["reason"]
            record = api.file(file_id)
            assert record is not None
            assert record["file_owner"] == "A"
        # in the log of each node that refused it
        for node in (b, c):
            log = (node.data_dir / "node.log").read_text(errors="replace")
            assert "refused a message from peer A" in log, node.peer_id
            assert fake_key in log
        # the impostor joined nobody: nobody answered it
        assert fake.call("GET", "/api/peers")["peers"] == []

        # and on B's dashboard: the banner with the count and the reason
        refused = page.locator("#refused")
        expect(refused).to_be_visible(timeout=15 * MS)
        expect(refused).to_contain_text("other key")
        expect(refused).to_contain_text("peers forget-key A")
        expect(page.locator('tr[data-peer="A"] td').nth(1)).to_have_text(a.address)
        page.screenshot(path=str(artifacts / "refused-impostor.png"), full_page=True)
        assert errors == []
    finally:
        impostor.kill()
