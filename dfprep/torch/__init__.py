"""Streaming dataset, transforms, reference detectors, training and evaluation over dfprep shards.

Everything here needs PyTorch (``pip install dfprep[torch]``). Attributes are resolved lazily so that
``dfprep.torch.commands`` (the click commands) stays importable without torch; touching any torch-backed
name without torch installed raises an ImportError carrying the install hint.
"""

from __future__ import annotations

import importlib
from typing import Any

from dfprep.torch._require import INSTALL_HINT, require_torch

_EXPORTS = {
    "FaceShards": "dfprep.torch.data",
    "ShardError": "dfprep.torch.shardio",
    "UnsafeMemberError": "dfprep.torch.shardio",
    "MapMismatchError": "dfprep.torch.shardio",
    "Compose": "dfprep.torch.transforms",
    "PrimaryRegionErasing": "dfprep.torch.transforms",
    "LandmarkRegionErasing": "dfprep.torch.transforms",
    "RandomHorizontalFlip": "dfprep.torch.transforms",
    "JpegRecompression": "dfprep.torch.transforms",
    "GaussianBlur": "dfprep.torch.transforms",
    "ColorJitter": "dfprep.torch.transforms",
    "Normalize": "dfprep.torch.transforms",
    "build_model": "dfprep.torch.models",
    "train": "dfprep.torch.train",
    "evaluate": "dfprep.torch.evaluate",
}

__all__ = sorted(_EXPORTS) + ["INSTALL_HINT"]


def __getattr__(name: str) -> Any:
    """Import the torch-backed module defining `name` on first use (with the install hint if torch is absent)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dfprep.torch' has no attribute {name!r}")
    require_torch()
    return getattr(importlib.import_module(_EXPORTS[name]), name)
