"""What a cluster run needs from every node, without Ray: the paths its workers must open, the report a node
gives about itself, and the one-line reason a node cannot take part (the Ray calls live in runner.pool).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import dfprep
from dfprep.errors import ModelError
from dfprep.jobs.contract import Needs
from dfprep.vision.models import ResolvedModel, file_sha256, locate


@dataclass(frozen=True)
class NodeReport:
    """What one node's worker says about itself: which dfprep it imports and which needed paths it cannot open."""

    node_id: str
    host: str
    version: str
    python: str
    unreadable: tuple[str, ...] = ()
    unwritable: tuple[str, ...] = ()
    models_missing: tuple[str, ...] = ()  # why a model the driver resolved cannot be used there


def node_report(node_id: str, needs: Needs) -> NodeReport:
    """Run on a node: this worker's dfprep version and the needed paths it cannot open there."""
    unreadable = tuple(path for path in needs.read if not _readable(path))
    unwritable = tuple(path for path in needs.write if not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)))
    missing = tuple(problem for problem in map(_model_problem, needs.models) if problem)
    return NodeReport(node_id, socket.gethostname(), dfprep.__version__, sys.version.split()[0], unreadable,
                      unwritable, missing)


def _model_problem(model: ResolvedModel) -> str | None:
    """Why this machine cannot use a model the driver resolved (None: it finds the very same file)."""
    try:
        here = locate(model)
        if file_sha256(here.path) != model.sha256:
            return f"{model.name} at {here.path} is another file than the driver's (sha256 differs)"
    except (ModelError, OSError) as exc:
        return str(exc)
    return None


def _readable(path: str) -> bool:
    """A file opens for reading, a folder lists."""
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
        return True
    except OSError:
        return False


def node_problem(report: NodeReport, driver_version: str = dfprep.__version__) -> str | None:
    """Why a node cannot take part (None when it can): another dfprep, or a path it cannot open."""
    where = f"node {report.node_id[:12]} ({report.host})"
    if report.version != driver_version:
        return (f"{where} imports dfprep {report.version} but this driver runs {driver_version}: install the "
                f"same version on every node, or pass --ship-code (ray.ship_code: true)")
    if report.unreadable:
        return (f"{where} cannot open {report.unreadable[0]}: the inputs must sit on a path every node sees "
                f"(a shared filesystem)")
    if report.unwritable:
        return f"{where} cannot write to {report.unwritable[0]}: the output folder must be shared by every node"
    if report.models_missing:
        return f"{where}: {report.models_missing[0]}"
    return None


def package_dir() -> str:
    """The folder of the dfprep package this driver runs (what --ship-code uploads)."""
    return str(Path(dfprep.__file__).resolve().parent)
