"""The bulk record layer's framing and keys (transport/bulk.py), pure: no socket, no TLS.

Each test builds the two ends of a connection as the TLS phase leaves them (each side's
:class:`Handover` with the other's secret taken), seals records on one end and opens them on the
other, changed on the way as a node in the middle would change them."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from treedrive.transport import bulk
from treedrive.transport.bulk import FINAL, HEADER, Handover, Opener, RecordError, Sealer

CLIENT_KEY, SERVER_KEY = os.urandom(32), os.urandom(32)


def ends(request: bytes = b"GET", header: bytes = b"HEADER") -> tuple[Handover, Handover]:
    """(client, server), after each sent its secret, then ``request`` / ``header``, in TLS."""
    client = Handover(False, CLIENT_KEY, SERVER_KEY)
    server = Handover(True, SERVER_KEY, CLIENT_KEY)
    for me, peer, said in ((client, server, request), (server, client, header)):
        me.sent(said)
        assert peer.take(memoryview(me.secret + said)) == bulk.SECRET_BYTES
    return client, server


def records(sealer: Sealer, chunks: list[bytes], end: bool = True) -> list[bytes]:
    """Each chunk a record, then the final record."""
    out = [bytes(sealer.seal(chunk)) for chunk in chunks]
    if end:
        out.append(bytes(sealer.end()))
    return out


def read_all(opener: Opener, wire: bytes, piece: int = 1 << 30) -> bytes:
    """What ``opener`` opens from ``wire`` fed ``piece`` bytes at a time, then the end of the
    connection; RecordError as soon as something is wrong."""
    got = bytearray()
    for start in range(0, len(wire), piece):
        opener.feed(wire[start : start + piece])
        while plain := opener.next():
            got += plain
        if opener.ended:
            break
    opener.feed(b"")
    while plain := opener.next():
        got += plain
    return bytes(got)


CHUNKS = [os.urandom(1000), os.urandom(bulk.RECORD), b"x", os.urandom(12345)]


def test_both_ends_derive_the_same_keys_and_the_stream_round_trips() -> None:
    client, server = ends()
    wire = b"".join(records(server.sealer(), CHUNKS))
    assert read_all(client.opener(), wire) == b"".join(CHUNKS)
    wire = b"".join(records(client.sealer(), CHUNKS))
    assert read_all(server.opener(), wire) == b"".join(CHUNKS)


@pytest.mark.parametrize("piece", [1, 3, 4, 5, 1000, 65536])
def test_records_open_however_the_bytes_are_cut(piece: int) -> None:
    client, server = ends()
    chunks = [os.urandom(700), os.urandom(5), os.urandom(3000)]
    wire = b"".join(records(server.sealer(), chunks))
    assert read_all(client.opener(), wire, piece) == b"".join(chunks)


def test_a_reader_of_the_socket_reads_straight_into_the_record() -> None:
    """The blocking path (space / received) and what was fed before it meet in order."""
    client, server = ends()
    wire = b"".join(records(server.sealer(), CHUNKS))
    opener = client.opener()
    opener.feed(wire[:7])  # what TLS left over after the close_notify
    pos, got = 7, bytearray()
    while not opener.ended:
        plain = opener.next()
        if plain is None:
            with opener.space() as space:  # a view of the record buffer: let it go at once
                n = min(len(space), 1000)
                space[:n] = wire[pos : pos + n]
            opener.received(n)
            pos += n
        else:
            got += plain
    assert got == b"".join(CHUNKS)
    assert pos == len(wire)  # nothing read past the final record


def test_the_end_is_the_final_record_and_nothing_after_it_is_taken() -> None:
    client, server = ends()
    wire = b"".join(records(server.sealer(), [b"abc"]))
    opener = client.opener()
    opener.feed(wire)
    plain = opener.next()
    assert plain is not None
    assert bytes(plain) == b"abc"
    end = opener.next()
    assert end is not None
    assert len(end) == 0  # the final record: the end
    assert opener.ended
    opener.feed(b"more")
    with pytest.raises(RecordError, match="after the final"):
        opener.next()


# -- what a node in the middle might do -----------------------------------------------------------
def sealed(chunks: list[bytes] = CHUNKS) -> tuple[Handover, list[bytes]]:
    """The client's end, and the records the server sends it."""
    client, server = ends()
    return client, records(server.sealer(), chunks)


def test_a_changed_byte_anywhere_in_a_record_is_refused() -> None:
    client, wire = sealed([b"0123456789" * 10])
    for at in [0, 3, HEADER.size, HEADER.size + 50, len(wire[0]) - 1]:
        changed = bytearray(wire[0])
        changed[at] ^= 0x01
        with pytest.raises(RecordError):
            read_all(client.opener(), bytes(changed) + wire[1])


def test_a_final_flag_set_or_cleared_is_refused() -> None:
    client, wire = sealed([b"abc", b"def"])
    early_end = bytearray(wire[0])
    early_end[0] |= FINAL >> 24  # "the stream ends here": a truncation made to look clean
    with pytest.raises(RecordError, match="authentication"):
        read_all(client.opener(), bytes(early_end))
    no_end = bytearray(wire[-1])
    no_end[0] &= ~(FINAL >> 24) & 0xFF  # the final record, unmarked: an empty non-final one
    with pytest.raises(RecordError):
        read_all(client.opener(), b"".join(wire[:-1]) + bytes(no_end))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda w: w[:1] + w[2:], id="dropped"),
        pytest.param(lambda w: w[:2] + w[1:], id="replayed"),
        pytest.param(lambda w: [w[1], w[0], *w[2:]], id="reordered"),
        pytest.param(lambda w: w[:-1], id="final record cut off"),
        pytest.param(lambda w: [w[0], w[1][:100]], id="cut mid-record"),
        pytest.param(lambda w: [w[0][:2]], id="cut mid-header"),
        pytest.param(lambda w: [], id="nothing at all"),
    ],
)
def test_dropped_replayed_reordered_and_truncated_records_are_refused(change: object) -> None:
    client, wire = sealed()
    assert callable(change)
    with pytest.raises(RecordError):
        read_all(client.opener(), b"".join(change(wire)))


def test_records_of_another_connection_or_direction_are_refused() -> None:
    client, wire = sealed()
    other_client, _ = ends()  # the same request and header, other secrets
    with pytest.raises(RecordError, match="authentication"):
        read_all(other_client.opener(), b"".join(wire))
    # the other direction of the same connection: its own key
    client, _ = ends()
    to_server = b"".join(records(client.sealer(), CHUNKS))
    with pytest.raises(RecordError, match="authentication"):
        read_all(client.opener(), to_server)


def test_the_keys_are_bound_to_what_tls_carried_and_to_both_node_keys() -> None:
    client, server = ends(header=b"range 0-100")
    told_other = Handover(False, CLIENT_KEY, SERVER_KEY)
    told_other.secret = client.secret  # the same secrets, but another header in TLS
    told_other.take(memoryview(server.secret + b"range 0-999"))
    wire = b"".join(records(server.sealer(), [b"abc"]))
    assert read_all(client.opener(), wire) == b"abc"
    with pytest.raises(RecordError, match="authentication"):
        read_all(told_other.opener(), wire)
    keys = [
        bulk.derive_key(client.secret, server.secret, CLIENT_KEY, SERVER_KEY, d, b"t")
        for d in (bulk.CLIENT_TO_SERVER, bulk.SERVER_TO_CLIENT)
    ]
    swapped = bulk.derive_key(client.secret, server.secret, SERVER_KEY, CLIENT_KEY, b"t", b"t")
    assert len(set(keys)) == 2
    assert swapped not in keys


def test_no_records_before_the_peers_secret() -> None:
    lone = Handover(False, CLIENT_KEY, SERVER_KEY)
    assert not lone.ready
    with pytest.raises(RecordError, match="secret"):
        lone.sealer()
    with pytest.raises(RecordError, match="secret"):
        lone.opener()


# -- limits ---------------------------------------------------------------------------------------
def test_a_record_over_the_limit_or_empty_and_not_final_is_refused_at_its_header() -> None:
    client, _ = sealed()
    too_big = client.opener()
    too_big.feed(HEADER.pack(bulk.MAX_RECORD + 1))
    with pytest.raises(RecordError, match="more than"):
        too_big.next()
    empty = client.opener()
    empty.feed(HEADER.pack(0) + os.urandom(bulk.TAG_BYTES))
    with pytest.raises(RecordError, match="empty record"):
        empty.next()


def test_a_record_announced_is_not_buffered_before_its_bytes_come() -> None:
    """A peer that announces a 1 MiB record and sends 10 bytes holds 10 bytes of this node."""
    client, _ = sealed()
    opener = client.opener()
    tracemalloc.start()
    try:
        opener.feed(HEADER.pack(bulk.MAX_RECORD) + b"0123456789")
        assert opener.next() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_the_sealer_keeps_to_the_limits() -> None:
    sealer = Sealer(os.urandom(32))
    with pytest.raises(ValueError, match="record carries"):
        sealer.seal(bytes(bulk.MAX_RECORD + 1))
    with pytest.raises(ValueError, match="record carries"):
        sealer.seal(b"")
    sizes = [len(record) for record in sealer.seal_all(bytes(2 * bulk.RECORD + 1))]
    assert sizes == [HEADER.size + n + bulk.TAG_BYTES for n in (bulk.RECORD, bulk.RECORD, 1)]
    sealer.end()
    with pytest.raises(ValueError, match="ended"):
        sealer.seal(b"x")


def test_records_are_the_same_sealed_into_buffers_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Older ``cryptography`` seals into new objects only: the same records, either way."""
    key = os.urandom(32)
    chunks = [os.urandom(100), os.urandom(bulk.RECORD)]
    into = records(Sealer(key), chunks)
    monkeypatch.setattr(bulk, "_INTO", False)
    assert records(Sealer(key), chunks) == into
    assert read_all(Opener(key), b"".join(into)) == b"".join(chunks)
    changed = bytearray(into[0])
    changed[-1] ^= 1
    with pytest.raises(RecordError, match="authentication"):
        read_all(Opener(key), bytes(changed))
