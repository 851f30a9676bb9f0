"""The progress line of the control commands (and the shell): bytes, total, rate and ETA."""

from __future__ import annotations

import io

from treedrive.web.progress import (
    LiveLine,
    Meter,
    eta_of,
    human_duration,
    human_size,
    progress_line,
)

MIB = 1 << 20


def test_the_line_has_bytes_total_rate_and_eta() -> None:
    line = progress_line("get notes.bin", 312 * MIB, 600 * MIB, 48.2 * MIB, 6.2)
    assert line == "get notes.bin  312.0 MiB / 600.0 MiB  48.2 MiB/s  ETA 6 s"


def test_what_is_not_known_is_left_out() -> None:
    assert progress_line("push a", 5 * MIB, None, None, None) == "push a  5.0 MiB"
    assert progress_line("push a", 512, 0, 100.0, None) == "push a  512 B  100 B/s"
    assert progress_line("get b", 1024, 2048, None, None) == "get b  1.0 KiB / 2.0 KiB"


def test_a_strangers_name_is_escaped_and_shortened_to_fit() -> None:
    line = progress_line("get \x1b[2Jevil", 0, 10, None, None)
    assert "\x1b" not in line
    assert line.startswith("get \\x1b[2Jevil  ")
    long = progress_line("get " + "n" * 200, 10 * MIB, 20 * MIB, MIB, 10, width=60)
    assert len(long) <= 59
    assert long.endswith("10.0 MiB / 20.0 MiB  1.0 MiB/s  ETA 10 s")
    assert "…" in long
    tiny = progress_line("get name", 1, 2, None, None, width=10)
    assert tiny == "1 B / 2 B"


def test_sizes_durations_and_eta() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 5 * MIB, 3 << 30, 5 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
        "5.0 TiB",
    ]
    assert human_size(None) == "?"
    assert [human_duration(s) for s in (0.4, 59, 60, 125, 3600, 3900)] == [
        "0 s",
        "59 s",
        "1 min 0 s",
        "2 min 5 s",
        "1 h 0 min",
        "1 h 5 min",
    ]
    assert eta_of(300, 600, 100.0) == 3.0
    assert eta_of(300, None, 100.0) is None
    assert eta_of(300, 600, 0.0) is None
    assert eta_of(700, 600, 10.0) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_live_line_waits_redraws_in_place_and_clears() -> None:
    out = io.StringIO()
    clock = Clock()
    line = LiveLine(out, "get x", delay=0.5, every=0.2, clock=clock)
    line.show(10, 100, 5.0, 18.0)
    assert out.getvalue() == ""  # too early: a quick transfer or an error draws nothing
    line.clear()
    assert out.getvalue() == ""
    clock.now += 0.6
    line.show(20, 100, 5.0, 16.0)
    assert out.getvalue() == "\rget x  20 B / 100 B  5 B/s  ETA 16 s\x1b[K"
    clock.now += 0.1
    line.show(30, 100)  # within `every`: not redrawn
    assert out.getvalue().count("\r") == 1
    line.show(30, 100, force=True)
    assert out.getvalue().count("\r") == 2
    assert "\n" not in out.getvalue()
    line.clear()
    assert out.getvalue().endswith("\r\x1b[K")


def test_a_hidden_line_never_draws() -> None:
    out = io.StringIO()
    clock = Clock()
    line = LiveLine(out, "get x", hidden=True, delay=0, clock=clock)
    line.show(1, 2, force=True)
    line.clear()
    assert out.getvalue() == ""


def test_the_meter_measures_from_its_start() -> None:
    clock = Clock()
    meter = Meter(clock)
    assert meter.rate is None
    meter.add(3 * MIB)
    clock.now += 2
    assert meter.rate == 1.5 * MIB
