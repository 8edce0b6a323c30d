"""Where a run's seconds go: a clock of named phases, reported as ``timing.phases``.

A run (``imrec.fit``, or a trainer built directly) opens a :func:`run_clock`; the code it
calls marks its phases with :func:`phase`, wherever they are (data loading in the API,
the model build and the training loop in the engine, evaluation and figures in the task).
Time is given to the innermost open phase, so nested phases never count twice, and the
phases of a run add up to its wall time. The first run of a process also gets the seconds
from the process's start (Python, imports, argument parsing) as ``startup``.

Example:
    >>> with run_clock() as clock:
    ...     with phase("data_load"):
    ...         with phase("report"):  # nested: the report's time is not the data's too
    ...             pass
    >>> sorted(clock.summary()["phases"]) == ["data_load", "report"]
    True
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

# The order report.md lists them in, with their names for a person.
PHASES = {
    "startup": "start-up (Python, imports)",
    "data_load": "data load",
    "model_build": "model build",
    "warm_up": "first step",
    "training": "training",
    "evaluation": "evaluation",
    "report": "report and figures",
}


def _process_start() -> float | None:
    """The wall-clock time this process started (Linux ``/proc``), else None."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        stat = Path("/proc/self/stat").read_text()
        start = int(stat.rsplit(")", 1)[1].split()[19]) / ticks  # seconds after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - start)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


PROCESS_START = _process_start()
_current: ContextVar[PhaseClock | None] = ContextVar("imrec_run_clock", default=None)
_first_run = [True]


class PhaseClock:
    """Seconds per phase of one run; the innermost open phase gets the time."""

    def __init__(self, startup: float | None = None):
        self.seconds: dict[str, float] = {}
        self.stack: list[str] = []
        self.started = time.perf_counter()
        self.mark = self.started
        if startup is not None:
            self.seconds["startup"] = startup

    def _charge(self) -> None:
        now = time.perf_counter()
        if self.stack:
            name = self.stack[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self.mark
        self.mark = now

    def enter(self, name: str) -> None:
        self._charge()
        self.stack.append(name)

    def leave(self) -> None:
        self._charge()
        self.stack.pop()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the block's time to ``name`` (nested phases take their share from it)."""
        self.enter(name)
        try:
            yield
        finally:
            self.leave()

    def summary(self) -> dict:
        """``{"phases": {name: s}, "other": s, "total": s}``: ``total`` from the clock's start
        (plus ``startup``), ``other`` what no phase claimed."""
        self._charge()
        elapsed = time.perf_counter() - self.started
        phases = {k: round(v, 3) for k, v in self.seconds.items()}
        claimed = sum(v for k, v in self.seconds.items() if k != "startup")
        total = elapsed + self.seconds.get("startup", 0.0)
        return {"phases": phases, "other": round(max(0.0, elapsed - claimed), 3),
                "total": round(total, 3)}  # fmt: skip


def new_clock() -> PhaseClock:
    """A clock for a run starting now; the process's first also counts its start-up."""
    startup = None
    if _first_run[0] and PROCESS_START is not None:
        startup = max(0.0, time.time() - PROCESS_START)
    _first_run[0] = False
    return PhaseClock(startup)


@contextmanager
def using(clock: PhaseClock) -> Iterator[PhaseClock]:
    """Make ``clock`` the current run's clock for the block."""
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)


@contextmanager
def run_clock() -> Iterator[PhaseClock]:
    """The clock of one run, current until the block ends; a clock already running (an outer
    call made one) is kept."""
    existing = _current.get()
    if existing is not None:
        yield existing
        return
    with using(new_clock()) as clock:
        yield clock


def current() -> PhaseClock | None:
    return _current.get()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's time to ``name`` in the current run's clock (if any)."""
    clock = _current.get()
    if clock is None:
        yield
        return
    with clock.phase(name):
        yield


def summary() -> dict | None:
    """The current run's phases so far (None outside a run)."""
    clock = _current.get()
    return None if clock is None else clock.summary()


def describe(timing: dict) -> str:
    """One line for report.md.

    Example:
        >>> describe({"phases": {"startup": 1.2, "training": 12.04}, "other": 0.1, "total": 13.4})
        'start-up (Python, imports) 1.2 s · training 12.0 s · other 0.1 s · total 13.4 s'
    """
    phases = timing.get("phases") or {}
    parts = [f"{PHASES.get(k, k)} {phases[k]:.1f} s" for k in PHASES if k in phases]
    parts += [f"{k} {v:.1f} s" for k, v in phases.items() if k not in PHASES]
    if timing.get("other", 0) >= 0.05:
        parts.append(f"other {timing['other']:.1f} s")
    parts.append(f"total {timing.get('total', 0):.1f} s")
    return " · ".join(parts)
