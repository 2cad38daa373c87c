"""Fault injection for reliability tests: kill a worker once at a chosen video of a chosen unit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

ENV = "DFPREP_FAULT"  # "<unit>:<position>:<marker file>", e.g. "train-000001:1:/tmp/killed-once"


def fault_hook_from_env() -> Callable[[str, int], None] | None:
    """The hook named by $DFPREP_FAULT, or None (the normal case: no fault injection)."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    unit, position, marker = spec.split(":", 2)
    return lambda name, index: _kill_once(name == unit and index == int(position), Path(marker))


def _kill_once(hit: bool, marker: Path) -> None:
    """Hard-exit this process the first time the fault point is reached (the marker remembers)."""
    if hit and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(137)
