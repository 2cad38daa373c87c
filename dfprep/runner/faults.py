"""Fault injection for reliability tests: kill, crash, hang or pause a worker at a chosen video of a unit.

$DFPREP_FAULT is "<kind>:<unit>:<position>:<marker file>", e.g. "kill:train-000001:1:/tmp/once", or several
such points separated by ";". The marker file receives the pid of the process that reached the fault point
(tests wait for it, or signal that pid). The runner calls `reached` once per video, inside its watchdog; the
pool passes $DFPREP_FAULT on to Ray actors. Position -1 (UNIT_START) is reached by a Ray worker as it takes a
unit, in any job (extract or maps); `hold` waits there until the test creates `<marker>.release`. Without the
variable nothing happens.
"""

from __future__ import annotations

import os
import signal
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

ENV = "DFPREP_FAULT"
UNIT_START = -1  # the position of the fault point a Ray worker reaches as it takes a unit, before any video
PAUSE_S = 60.0  # long enough for a test to signal the paused process, short enough never to hang a suite


def reached(unit: str, position: int) -> None:
    """A worker is about to extract video `position` of `unit`: act if $DFPREP_FAULT names this point."""
    spec = os.environ.get(ENV)
    if spec:
        for hook in _hooks(spec):
            hook(unit, position)


@lru_cache(maxsize=4)
def _hooks(spec: str) -> tuple[Callable[[str, int], None], ...]:
    """The fault points of a spec, parsed once per process."""
    return tuple(_hook(part) for part in spec.split(";") if part)


def _hook(spec: str) -> Callable[[str, int], None]:
    """One fault point: `kind:unit:position:marker`."""
    kind, unit, position, marker = spec.split(":", 3)
    action = {"kill": _kill_once, "hang": _hang_once, "crash": _crash_always, "pause": _pause_once,
              "hold": _hold_once}[kind]
    return lambda name, index: action(name == unit and index == int(position), Path(marker))


def _record(marker: Path) -> None:
    """Say which process reached the fault point (written whole, then renamed: readers never see half)."""
    temporary = marker.with_name(f"{marker.name}.tmp")
    temporary.write_text(str(os.getpid()))
    temporary.rename(marker)


def _crash_always(hit: bool, marker: Path) -> None:
    """A poison video: the process segfaults every time it reaches it (like a crash inside a codec)."""
    if hit:
        _record(marker)
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(PAUSE_S)  # the signal is delivered at once; never continue past a crash


def _hang_once(hit: bool, marker: Path) -> None:
    """Block like a decoder stuck in C code (sleep does not return for the watchdog's exceptions)."""
    if hit and not marker.exists():
        _record(marker)
        while True:
            time.sleep(3600)


def _kill_once(hit: bool, marker: Path) -> None:
    """SIGKILL this process the first time the fault point is reached (as the OOM killer or kill -9 would)."""
    if hit and not marker.exists():
        _record(marker)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(PAUSE_S)


def _pause_once(hit: bool, marker: Path) -> None:
    """Stop in the middle of a video the first time, so a test can interrupt the run right there."""
    if hit and not marker.exists():
        _record(marker)
        time.sleep(PAUSE_S)


def release_file(marker: Path) -> Path:
    """The file a test creates to let a held worker go on."""
    return marker.with_name(f"{marker.name}.release")


def _hold_once(hit: bool, marker: Path) -> None:
    """Stop the first time until the test creates the release file (so it can act on a worker holding a unit,
    e.g. remove its node), at most PAUSE_S."""
    if hit and not marker.exists():
        _record(marker)
        deadline = time.monotonic() + PAUSE_S
        while not release_file(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
