"""How commands talk to the terminal: progress bars only on a terminal, TQDM_DISABLE honoured."""

from __future__ import annotations

import os

_TRUE = ("1", "true", "yes", "on")


def bar_disable(quiet: bool = False) -> bool | None:
    """tqdm's `disable`: True with --quiet or TQDM_DISABLE=1, else None (tqdm: off unless stderr is a terminal).

    An explicit `disable=` outranks tqdm's own TQDM_* environment lookup, so TQDM_DISABLE is read here.
    """
    if quiet or os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE:
        return True
    return None
