"""One place that turns a missing torch into an install hint instead of a bare ModuleNotFoundError."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "dfprep's torch side needs PyTorch: pip install dfprep[torch]"


def require_torch() -> ModuleType:
    """Import torch, or raise an ImportError that says how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return torch
