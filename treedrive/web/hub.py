"""The event hub: fans committed events and notices out to the event-stream clients and samples
the throughput."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from treedrive.core.events import Event, Notice, TransferFinished
from treedrive.core.node import Node
from treedrive.web import views


class EventHub:
    """Fans committed events and transient notices (progress, refusals) out to the event-stream
    clients; keeps a throughput history."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.clients: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.throughput: deque[dict[str, float]] = deque(maxlen=300)
        self._last: dict[int, int] = {}
        self._finished = {"in": 0, "out": 0}
        self._sampled = time.monotonic()

    def publish(self, data: dict[str, Any]) -> None:
        for queue in list(self.clients):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                # A client that fell behind (a burst of thousands of records) skips what it
                # missed and is told to reload its view instead.
                self._flush(queue, {"type": "Resync", "time": time.time()})

    @staticmethod
    def _flush(queue: asyncio.Queue[dict[str, Any] | None], last: dict[str, Any] | None) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(last)

    def on_event(self, event: Event) -> None:
        if isinstance(event, TransferFinished):
            # Bytes moved since the last sample still count in the next one.
            t = event.transfer
            start = self._last.pop(t.transfer_id, t.bytes_at_start)
            self._finished[t.direction] += max(0, t.bytes_done - start)
        if self.clients:
            self.publish(views.event_json(self.node, event))

    def on_notice(self, notice: Notice) -> None:
        if self.clients:
            self.publish(views.event_json(self.node, notice))

    def sample(self) -> dict[str, float]:
        """Bytes per second moved since the last sample, per direction."""
        now = time.monotonic()
        moved = dict(self._finished)
        self._finished = {"in": 0, "out": 0}
        seen = {}
        for tid, t in self.node.active_transfers.items():
            # A transfer not seen before counts from where this run began: the bytes a resumed
            # download found on disk did not move now (they made a false spike on the chart).
            moved[t.direction] += max(0, t.bytes_done - self._last.get(tid, t.bytes_at_start))
            seen[tid] = t.bytes_done
        self._last = seen
        elapsed = max(1e-3, now - self._sampled)
        self._sampled = now
        point = {
            "t": time.time(),
            "in": moved["in"] / elapsed,  # bytes per second
            "out": moved["out"] / elapsed,
            "in_bytes": moved["in"],  # bytes since the previous sample
            "out_bytes": moved["out"],
        }
        self.throughput.append(point)
        return point

    async def run_sampler(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            point = self.sample()
            if self.clients:
                self.publish({"type": "Throughput", **point})

    def close(self) -> None:
        for queue in list(self.clients):
            self._flush(queue, None)
        self.clients.clear()
