"""The event hub: fans committed events and notices out to the event-stream clients, keeps the
latest of them for clients that come back (``Last-Event-ID``), and samples the throughput.

Every event the stream sends gets an id, increasing by one per event over the node's run. The
first id of a run is the time it started in microseconds, so the ids of a run are larger than
those of the runs before it: a ``Last-Event-ID`` from an earlier run is simply too old."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from treedrive.core.events import Event, Notice, TransferFinished
from treedrive.core.node import Node
from treedrive.web import views

REPLAY = 2048
"""Events kept for clients that reconnect with a ``Last-Event-ID``."""


@dataclass(frozen=True, slots=True)
class Sent:
    """One event as the stream sends it: its id (None: not kept, not resumable), its type and
    its JSON payload (written out only when a client takes it)."""

    id: int | None
    type: str
    data: dict[str, Any]

    def frame(self) -> bytes:
        head = f"id: {self.id}\n" if self.id is not None else ""
        return f"{head}event: {self.type}\ndata: {json.dumps(self.data)}\n\n".encode()


def control(data: dict[str, Any]) -> Sent:
    """An event for one client only (Hello, Resync): no id, so its last id stays what it was."""
    return Sent(None, str(data["type"]), data)


Queue = asyncio.Queue[Sent | None]


class EventHub:
    """Fans committed events and transient notices (progress, refusals) out to the event-stream
    clients; keeps the last :data:`REPLAY` of them and a throughput history."""

    def __init__(self, node: Node, replay: int = REPLAY) -> None:
        self.node = node
        self.clients: set[Queue] = set()
        self.recent: deque[Sent] = deque(maxlen=replay)
        self.next_id = time.time_ns() // 1000
        self.throughput: deque[dict[str, float]] = deque(maxlen=300)
        self._last: dict[int, int] = {}
        self._finished = {"in": 0, "out": 0}
        self._sampled = time.monotonic()

    def publish(self, data: dict[str, Any]) -> None:
        sent = Sent(self.next_id, str(data["type"]), data)
        self.next_id += 1
        self.recent.append(sent)
        for queue in list(self.clients):
            try:
                queue.put_nowait(sent)
            except asyncio.QueueFull:
                # A client that fell behind (a burst of thousands of records) skips what it
                # missed and is told to reload its view instead.
                self._flush(queue, control({"type": "Resync", "time": time.time()}))

    def since(self, last_id: int) -> list[Sent] | None:
        """The events kept after ``last_id``; None if some after it are no longer kept (or the
        id is not one of this run's)."""
        if last_id >= self.next_id:
            return None  # not an id this run gave
        if last_id == self.next_id - 1:
            return []
        if not self.recent or self.recent[0].id is None or last_id < self.recent[0].id - 1:
            return None
        first = self.recent[0].id
        return list(self.recent)[last_id + 1 - first :]

    @staticmethod
    def _flush(queue: Queue, last: Sent | None) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(last)

    def on_event(self, event: Event) -> None:
        if isinstance(event, TransferFinished):
            # Bytes moved since the last sample still count in the next one.
            t = event.transfer
            start = self._last.pop(t.transfer_id, t.bytes_at_start)
            self._finished[t.direction] += max(0, t.bytes_done - start)
        self.publish(views.event_json(self.node, event))

    def on_notice(self, notice: Notice) -> None:
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
            if self.clients:  # a chart point: for the pages open now, not kept for replay
                self._send_all(control({"type": "Throughput", **point}))

    def _send_all(self, sent: Sent) -> None:
        for queue in list(self.clients):
            if not queue.full():
                queue.put_nowait(sent)

    def close(self) -> None:
        for queue in list(self.clients):
            self._flush(queue, None)
        self.clients.clear()
