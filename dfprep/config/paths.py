"""Locate the project's resource folders (pipelines.yaml, pipelines/, landmarks/)."""

from __future__ import annotations

import os
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # dfprep/config/paths.py → the checkout


def project_root() -> Path:
    """Folder holding pipelines.yaml: $DFPREP_HOME, else the source checkout dfprep runs from."""
    env = os.environ.get("DFPREP_HOME")
    return Path(env).resolve() if env else _SOURCE_ROOT


def defaults_file() -> Path:
    """The defaults every command starts from."""
    return project_root() / "pipelines.yaml"


def recipes_dir() -> Path:
    """Named recipes (`--pipeline NAME`)."""
    return project_root() / "pipelines"


def landmarks_dir() -> Path:
    """The landmark-model manifest and drop-in folder: $DFPREP_LANDMARKS or <project>/landmarks."""
    env = os.environ.get("DFPREP_LANDMARKS")
    return Path(env).resolve() if env else project_root() / "landmarks"
