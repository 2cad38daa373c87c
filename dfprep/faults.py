"""Fault injection for reliability tests: kill a worker once at a chosen video of a chosen unit."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

ENV = "DFPREP_FAULT"  # "<kill|hang|crash>:<unit>:<position>:<marker file>", e.g. "kill:train-000001:1:/tmp/once"


def fault_hook_from_env() -> Callable[[str, int], None] | None:
    """The hook named by $DFPREP_FAULT, or None (the normal case: no fault injection)."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    kind, unit, position, marker = spec.split(":", 3)
    action = {"kill": _kill_once, "hang": _hang_once, "crash": _crash_always}[kind]
    return lambda name, index: action(name == unit and index == int(position), Path(marker))


def _crash_always(hit: bool, marker: Path) -> None:
    """A poison video: the worker dies every time it reaches it (like a codec segfault)."""
    if hit:
        marker.write_text(str(os.getpid()))
        os._exit(139)


def _hang_once(hit: bool, marker: Path) -> None:
    """Block like a decoder stuck in C code (sleep does not return for the watchdog's exceptions)."""
    if hit and not marker.exists():
        marker.write_text(str(os.getpid()))
        while True:
            time.sleep(3600)


def _kill_once(hit: bool, marker: Path) -> None:
    """Hard-exit this process the first time the fault point is reached (the marker remembers)."""
    if hit and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(137)
