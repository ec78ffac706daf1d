"""snnl.progress.Progress: lines where stderr is not a terminal, a bar (or nothing) on one."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest

import snnl.progress
from snnl.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_at_each_interval_where_stderr_is_not_a_terminal(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(snnl.progress, "PROGRESS_INTERVAL", 0.05)
    with Progress("snnl demo", bar=True, stage="first") as say:
        time.sleep(0.18)
        say("second")
        time.sleep(0.18)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert all(re.fullmatch(r"snnl demo: (first|second) \(\d+ s\)", line) for line in lines)
    assert 4 <= len(lines) <= 9, lines
    assert lines[0].startswith("snnl demo: first") and lines[-1].startswith("snnl demo: second")
    n = len(lines)
    time.sleep(0.12)
    assert len(log.getvalue().splitlines()) == n  # the thread stopped with the block


def test_elapsed_seconds_follow_the_clock(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    ticks = iter(range(1000))

    class Clock:  # each reading 12.5 s after the one before
        @staticmethod
        def monotonic() -> float:
            return 100.0 + 12.5 * next(ticks)

    monkeypatch.setattr(snnl.progress, "time", Clock)
    with Progress("snnl demo", bar=False, interval=0.03):
        time.sleep(0.1)
    lines = log.getvalue().splitlines()
    assert lines[:2] == ["snnl demo: working (12 s)", "snnl demo: working (25 s)"]


def test_a_bar_on_a_terminal_or_nothing_where_the_work_draws_its_own(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with Progress("snnl demo", bar=False, interval=0.01):
        time.sleep(0.05)
    assert term.getvalue() == ""  # the work's own bars show
    with Progress("snnl demo", bar=True, stage="profiling") as say:
        time.sleep(1.2)
        say("done soon")
        time.sleep(1.1)
    shown = term.getvalue()
    assert "\r" in shown and "snnl demo: profiling [00:0" in shown
    assert "snnl demo: done soon" in shown


def test_disabled_shows_nothing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with Progress("snnl demo", bar=True, enabled=False, interval=0.01):
        time.sleep(0.05)
    assert log.getvalue() == ""


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_error_in_the_block_stops_the_thread(monkeypatch, error):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with pytest.raises(error), Progress("snnl demo", bar=False, interval=0.01):
        raise error
    n = len(log.getvalue().splitlines())
    time.sleep(0.05)
    assert len(log.getvalue().splitlines()) == n
