"""How commands talk to the terminal: progress bars only on a terminal, TQDM_DISABLE honoured."""

from __future__ import annotations

import os

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def bar_disable(quiet: bool = False) -> bool | None:
    """tqdm's `disable`: True with --quiet or TQDM_DISABLE=1, False with TQDM_DISABLE=0 (bars even into a log
    file), else None (tqdm: off unless stderr is a terminal).

    An explicit `disable=` outranks tqdm's own TQDM_* environment lookup, so TQDM_DISABLE is read here.
    """
    setting = os.environ.get("TQDM_DISABLE", "").strip().lower()
    if quiet or setting in _TRUE:
        return True
    return False if setting in _FALSE else None
