"""Dataset catalog: one adapter per dataset family, each turning a folder into VideoRecords."""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from dfprep.catalog.base import DatasetAdapter, VideoRecord
from dfprep.config import DatasetConfig, dataset_options
from dfprep.errors import LayoutError

# name → "module:class"; imported on first use so one broken adapter never breaks the others.
ADAPTERS: dict[str, str] = {
    "ffpp": "dfprep.catalog.ffpp:FaceForensicsAdapter",
    "celebdf": "dfprep.catalog.celebdf:CelebDFAdapter",
    "dfdc": "dfprep.catalog.dfdc:DFDCAdapter",
    "dfdcp": "dfprep.catalog.dfdcp:DFDCPreviewAdapter",
    "deeperforensics": "dfprep.catalog.deeperforensics:DeeperForensicsAdapter",
    "folder": "dfprep.catalog.folder:FolderAdapter",
}


def get_adapter(name: str) -> DatasetAdapter:
    """Instantiate the adapter registered under `name`."""
    if name not in ADAPTERS:
        raise LayoutError(f"unknown dataset '{name}' (known: {', '.join(ADAPTERS)})")
    module_name, class_name = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def scan(name: str, root: str | Path, options: DatasetConfig | None = None) -> Iterator[VideoRecord]:
    """Check the root's layout, then stream its records (filtered by compressions/methods)."""
    options = options or DatasetConfig()
    root_path = Path(root)
    if not root_path.exists():
        raise LayoutError(f"{root}: no such file or directory")
    adapter = get_adapter(name)
    own = dataset_options(dataclasses.replace(options, name=name))  # refuses another adapter's keys
    adapter.check_layout(root_path, own)
    seen: set[str] = set()
    for record in adapter.records(root_path, own):
        if options.compressions and record.compression not in options.compressions:
            continue
        seen.add(record.method)
        if options.methods and record.method not in options.methods:
            continue
        yield record
    absent = [m for m in options.methods if m not in seen]
    if absent:  # a typo or a partial download must not shrink the data set silently
        warnings.warn(f"dataset.methods: no {', '.join(absent)} videos under {root} "
                      f"(methods there: {', '.join(sorted(seen)) or 'none'})", stacklevel=2)


def left_out(name: str, root: str | Path, options: DatasetConfig) -> dict[str, int]:
    """Videos per method that dataset.methods leaves out (what a recipe does not take from ROOT)."""
    if not options.methods:
        return {}
    everything = scan(name, root, dataclasses.replace(options, methods=()))
    return dict(sorted(Counter(r.method for r in everything if r.method not in options.methods).items()))


def summarize(records: Iterable[VideoRecord]) -> dict[str, Any]:
    """Counts per split, label, method and status (what `dfprep datasets NAME ROOT` prints)."""
    rows = list(records)
    return {
        "videos": len(rows),
        "by_split": dict(sorted(Counter(r.split for r in rows).items())),
        "by_label": {("real" if k == 0 else "fake"): v for k, v in sorted(Counter(r.label for r in rows).items())},
        "by_method": dict(sorted(Counter(r.method for r in rows).items())),
        "by_method_split": {method: dict(sorted(Counter(r.split for r in rows if r.method == method).items()))
                            for method in sorted({r.method for r in rows})},
        "by_status": dict(sorted(Counter(r.status for r in rows).items())),
    }


__all__ = ["ADAPTERS", "DatasetAdapter", "VideoRecord", "get_adapter", "left_out", "scan", "summarize"]
