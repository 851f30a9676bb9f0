"""The membership and catalogue-sync messages (:mod:`treedrive.core.swim`,
:mod:`treedrive.core.deltas`) as classic messages with a ``treedrive.swim`` key: pure, no I/O,
no JSON text (the transport writes the objects; the simulator measures their encoded size).

A :class:`~treedrive.core.swim.Ping`, :class:`~treedrive.core.swim.PingReq` or
:class:`~treedrive.core.swim.Push` is a GOSSIP (a classic peer would track the sender; TreeDrive
receivers answer a ping with an :class:`~treedrive.core.swim.Ack`, which is a GOSSIP_REPLY with
``files: []``, and forward none of them). Lists are arrays, not objects, to keep them small.

:func:`decode` reads what a peer sent as claims with limits (THREATS.md): at most
:data:`MAX_WIRE_NEWS` news and catalogue changes per message,
:data:`~treedrive.core.deltas.MAX_CHANGES` changes in a sync and
:data:`~treedrive.core.swim.MAX_MEMBERS` members; peer ids and hosts of bounded length, ports,
numbers and incarnations in range. A malformed item is skipped; a
malformed message reads as None. :func:`guarded` keeps an ack's catalogue answer and member list
from going anywhere but back to where its ping came from.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from treedrive.core.deltas import MAX_CHANGES, Change, Sync
from treedrive.core.identity import decode_key, decode_signature, encode_b64
from treedrive.core.model import DeleteSignature, FileMeta, Seal
from treedrive.core.replies import same_host, source_ip
from treedrive.core.swimtypes import (
    MAX_MEMBERS,
    Ack,
    Address,
    Message,
    News,
    Out,
    Ping,
    PingReq,
    Push,
    Status,
)
from treedrive.core.text import label

KEY: Final = "swim"
MAX_WIRE_NEWS: Final = 64
"""News, and catalogue changes, read from one message (the rest are ignored)."""
MAX_ID: Final = 256
MAX_HOST: Final = 255
MAX_NUMBER: Final = 2**53
MAX_TIMESTAMP: Final = 2**40
HOST: Final = re.compile(r"[A-Za-z0-9._:%-]{1,255}")
FILE_ID: Final = re.compile(r"[0-9a-f]{64}")
_KINDS: Final = {Ping: "ping", Ack: "ack", PingReq: "req", Push: "push"}


def _news(n: News) -> list[object]:
    return [n.peer_id, n.address[0], n.address[1], n.incarnation, int(n.status), n.head]


def _record(meta: FileMeta) -> dict[str, object]:
    """A record with its owner's seal (PROTOCOL.md 2.8) under ``treedrive``, if it has one."""
    if meta.seal is None:
        return meta.wire()
    seal = {"ok": encode_b64(meta.seal.owner_key), "seal": encode_b64(meta.seal.signature)}
    return {**meta.wire(), "treedrive": seal}


def _change(c: Change) -> list[object]:
    if c.meta is not None:
        return [c.origin, c.seq, c.file_id, _record(c.meta)]
    if c.signed is None:
        return [c.origin, c.seq, c.file_id, None]
    return [c.origin, c.seq, c.file_id, None, [c.signed.ts, encode_b64(c.signed.signature)]]


def _sync(s: Sync) -> dict[str, object]:
    return {
        "o": s.origin,
        "f": s.since,
        "u": s.upto,
        "hd": s.head,
        "snap": s.snapshot,
        "ch": [_change(c) for c in s.changes],
    }


def fields(msg: Message) -> dict[str, Any]:
    """The value of the ``swim`` key that carries ``msg`` (in the ``treedrive`` object)."""
    swim: dict[str, Any] = {"k": _KINDS[type(msg)], "n": msg.incarnation, "h": msg.head}
    if msg.news:
        swim["news"] = [_news(n) for n in msg.news]
    if msg.changes:
        swim["ch"] = [_change(c) for c in msg.changes]
    if msg.heads:
        swim["hx"] = [[origin, head] for origin, head in msg.heads]
    if isinstance(msg, Ping | Ack | PingReq):
        swim["s"] = msg.seq
    if isinstance(msg, Ping):
        swim["have"] = msg.have
        if msg.asof is not None and msg.asof != msg.have:
            swim["asof"] = msg.asof
        if msg.join:
            swim["join"] = True
    elif isinstance(msg, PingReq):
        swim["t"] = msg.target
        swim["ta"] = list(msg.target_address)
    elif isinstance(msg, Ack):
        swim["of"] = msg.of
        swim["oi"] = msg.of_incarnation
        if msg.sync is not None:
            swim["sync"] = _sync(msg.sync)
        if msg.members:
            swim["m"] = [_news(n) for n in msg.members]
    return swim


def fit(msg: Message, limit: int) -> dict[str, Any]:
    """:func:`fields` of ``msg``, its catalogue changes (then its news) halved until the JSON
    takes at most ``limit`` bytes (a GOSSIP is bounded: it could be forwarded)."""
    while True:
        swim = fields(msg)
        if len(json.dumps(swim)) <= limit or not (msg.changes or msg.news):
            return swim
        if msg.changes:
            msg = replace(msg, changes=msg.changes[: len(msg.changes) // 2])
        else:
            msg = replace(msg, news=msg.news[: len(msg.news) // 2])


def encode(msg: Message, base: Mapping[str, Any], gossip_id: str = "") -> dict[str, Any]:
    """``msg`` as a classic message; ``base`` is the rest of the ``treedrive`` object (version,
    features, proof) and ``gossip_id`` the GOSSIP's ``id``."""
    ext = {**base, KEY: fields(msg)}
    host, port = msg.address
    if isinstance(msg, Ack):
        return {
            "type": "GOSSIP_REPLY",
            "host": host,
            "port": port,
            "peerId": msg.sender,
            "files": [],
            "treedrive": ext,
        }
    return {
        "type": "GOSSIP",
        "host": host,
        "port": port,
        "id": gossip_id,
        "peerId": msg.sender,
        "treedrive": ext,
    }


def guarded(outs: list[Out], msg: Message, source: str) -> list[Out]:
    """An ack's catalogue answer, member list and news go back only to the IP the ping came
    from: to another address named in the ping, the ack says only that this node is alive (no
    reply much larger than what asked for it, THREATS.md)."""
    if same_host(msg.address[0], source_ip(source)):
        return outs
    return [
        (a, replace(m, sync=None, members=(), news=(), changes=(), heads=()))
        if isinstance(m, Ack) and a == msg.address
        else (a, m)
        for a, m in outs
    ]


# ---------------------------------------------------------------------------- decoding


class _Bad(Exception):
    pass


def _int(v: object, low: int = 0, high: int = MAX_NUMBER) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise _Bad
    return v


def _str(v: object, limit: int = MAX_ID) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= limit or not v.isprintable():
        raise _Bad
    return v


def _address(host: object, port: object) -> Address:
    if not isinstance(host, str) or not HOST.fullmatch(host):
        raise _Bad
    return host, _int(port, 1, 65535)


def _list(v: object, limit: int) -> Sequence[object]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise _Bad
    return v[:limit]


def _items(v: object, limit: int, read: Any) -> tuple[Any, ...]:
    out = []
    for item in _list(v, limit):
        try:
            out.append(read(item))
        except _Bad:
            continue
    return tuple(out)


def _read_news(v: object) -> News:
    if not isinstance(v, list) or len(v) != 6:
        raise _Bad
    status = _int(v[4], 0, max(Status))
    head = v[5] if v[5] == -1 else _int(v[5])
    return News(_str(v[0]), _address(v[1], v[2]), _int(v[3]), Status(status), head)


def _read_meta(v: object) -> FileMeta:
    if not isinstance(v, Mapping):
        raise _Bad
    fid = v.get("file_id")
    if not isinstance(fid, str) or not FILE_ID.fullmatch(fid):
        raise _Bad
    size, ts = v.get("file_size"), v.get("file_timestamp")
    if isinstance(size, bool) or not isinstance(size, int | float) or not 0 <= size <= 2**50:
        raise _Bad
    if isinstance(ts, bool) or not isinstance(ts, int | float | str) or len(str(ts)) > 32:
        raise _Bad
    if isinstance(ts, str) and not ts.isprintable():
        raise _Bad
    if not isinstance(ts, str) and not (math.isfinite(ts) and 0 <= ts <= MAX_TIMESTAMP):
        raise _Bad
    name = v.get("file_name")
    if not isinstance(name, str):
        raise _Bad
    seal = _read_seal(v.get("treedrive"))
    return FileMeta(fid, label(name), float(size), _str(v.get("file_owner")), ts, seal=seal)


def _read_seal(v: object) -> Seal | None:
    """A record's seal; a malformed one makes the record malformed (a TreeDrive sender wrote
    it: nothing to be lenient about)."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise _Bad
    key, sig = decode_key(v.get("ok")), decode_signature(v.get("seal"))
    if key is None or sig is None:
        raise _Bad
    return Seal(key, sig)


def _read_signed(v: object) -> DeleteSignature:
    if not isinstance(v, list) or len(v) != 2:
        raise _Bad
    sig = decode_signature(v[1])
    if sig is None:
        raise _Bad
    return DeleteSignature(_int(v[0], 0, MAX_TIMESTAMP), sig)


def _read_change(v: object) -> Change:
    if not isinstance(v, list) or len(v) not in (4, 5):
        raise _Bad
    fid = v[2]
    if not isinstance(fid, str) or not FILE_ID.fullmatch(fid):
        raise _Bad
    meta = None if v[3] is None else _read_meta(v[3])
    if meta is not None and meta.file_id != fid:
        raise _Bad
    signed = _read_signed(v[4]) if len(v) == 5 and meta is None else None
    return Change(_str(v[0]), _int(v[1], 1), fid, meta, signed)


def _read_head(v: object) -> tuple[str, int]:
    if not isinstance(v, list) or len(v) != 2:
        raise _Bad
    return _str(v[0]), _int(v[1])


def _read_sync(v: object, sender: str) -> Sync | None:
    if v is None:
        return None
    if not isinstance(v, Mapping) or v.get("o") != sender:
        raise _Bad
    changes = _items(v.get("ch"), MAX_CHANGES, _read_change)
    if any(c.origin != sender for c in changes):
        raise _Bad
    snap = v.get("snap") is True
    return Sync(sender, _int(v.get("f")), _int(v.get("u")), _int(v.get("hd")), changes, snap)


def read(peer_id: str, host: str, port: int, swim: object) -> Message | None:
    """The membership message of a GOSSIP or GOSSIP_REPLY whose classic fields the transport
    already checked, ``swim`` being its ``treedrive.swim`` value (None: malformed)."""
    obj = {"peerId": peer_id, "host": host, "port": port, "treedrive": {KEY: swim}}
    return decode(obj)


def decode(obj: Mapping[str, Any]) -> Message | None:
    """The membership message a classic message carries (None: none, or malformed)."""
    ext = obj.get("treedrive")
    swim = ext.get(KEY) if isinstance(ext, Mapping) else None
    if not isinstance(swim, Mapping):
        return None
    try:
        return _decode(obj, swim)
    except _Bad:
        return None


def _decode(obj: Mapping[str, Any], swim: Mapping[str, Any]) -> Message:
    sender = _str(obj.get("peerId"))
    common: dict[str, Any] = {
        "sender": sender,
        "address": _address(obj.get("host"), obj.get("port")),
        "incarnation": _int(swim.get("n")),
        "head": _int(swim.get("h")),
        "news": _items(swim.get("news"), MAX_WIRE_NEWS, _read_news),
        "changes": _items(swim.get("ch"), MAX_WIRE_NEWS, _read_change),
        "heads": _items(swim.get("hx"), MAX_WIRE_NEWS, _read_head),
    }
    kind = swim.get("k")
    if kind == "push":
        return Push(**common)
    seq = _int(swim.get("s"))
    if kind == "ping":
        have = swim.get("have")
        have = have if have is None or have == -1 else _int(have)
        asof = swim.get("asof")
        asof = None if asof is None else _int(asof)
        return Ping(**common, seq=seq, have=have, asof=asof, join=swim.get("join") is True)
    if kind == "req":
        ta = _list(swim.get("ta"), 2)
        if len(ta) != 2:
            raise _Bad
        return PingReq(**common, seq=seq, target=_str(swim.get("t")), target_address=_address(*ta))
    if kind == "ack":
        sync = _read_sync(swim.get("sync"), sender)
        members = _items(swim.get("m"), MAX_MEMBERS, _read_news)
        of = _str(swim.get("of"))
        return Ack(
            **common,
            seq=seq,
            of=of,
            of_incarnation=_int(swim.get("oi")),
            sync=sync,
            members=members,
        )
    raise _Bad


INCARNATION_AHEAD = 2**20
"""How far ahead of the wall clock (in seconds) an incarnation may be. A node starts at the
clock's seconds and adds one per refute; a claim far ahead (2**53 about another member) would
win over everything that member says of itself until it is forgotten."""


def too_far_ahead(msg: Message, now: float) -> bool:
    """Whether ``msg`` claims an incarnation, its sender's or in its news, beyond
    :data:`INCARNATION_AHEAD` of the wall clock ``now``."""
    limit = int(now) + INCARNATION_AHEAD
    members = msg.members if isinstance(msg, Ack) else ()
    return msg.incarnation > limit or any(n.incarnation > limit for n in (*msg.news, *members))
