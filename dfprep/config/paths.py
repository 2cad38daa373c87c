"""Where dfprep's resources live: the packaged defaults, recipes and landmark registry, plus the user's folders.

The packaged files (dfprep/config/resources/, installed with the wheel) are found with importlib.resources, so
an installed dfprep runs from any folder. User folders come first, highest precedence first:

1. `$DFPREP_LANDMARKS` (landmark models only): a folder of drop-in models, may hold its own models.yaml;
2. `$DFPREP_HOME`: `pipelines/*.yaml` (recipes) and `landmarks/` (drop-ins, models.yaml);
3. `$XDG_CONFIG_HOME/dfprep` (default `~/.config/dfprep`): the same two folders;
4. the package: `pipelines/`, `landmarks/` (in a source checkout also reachable as ./pipelines, ./landmarks).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; only the annotation needs it
    from importlib.resources.abc import Traversable

RESOURCES = "resources"  # the folder inside dfprep/config that the wheel carries as package data


def packaged() -> Traversable:
    """The packaged resources folder (a real folder for wheel and editable installs alike)."""
    return files("dfprep.config") / RESOURCES


def user_homes() -> list[Path]:
    """User folders that may hold pipelines/ and landmarks/, highest precedence first."""
    homes = []
    if os.environ.get("DFPREP_HOME"):
        homes.append(Path(os.environ["DFPREP_HOME"]).expanduser().resolve())
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    if not config_home.startswith("~"):  # no home folder (a bare container user): no user folder either
        homes.append(Path(config_home).resolve() / "dfprep")
    return homes


def defaults_file() -> Traversable:
    """The commented reference of every key and its default (the dataclasses in schema.py are the source)."""
    return packaged() / "pipelines.yaml"


def recipe_dirs() -> list[Traversable]:
    """Folders searched for `--pipeline NAME` (NAME.yaml), highest precedence first; the package's last."""
    return [*(home / "pipelines" for home in user_homes()), packaged() / "pipelines"]


def landmark_dirs() -> list[Path]:
    """Folders searched for landmark models and models.yaml, highest precedence first; the package's last."""
    folders = []
    if os.environ.get("DFPREP_LANDMARKS"):
        folders.append(Path(os.environ["DFPREP_LANDMARKS"]).expanduser().resolve())
    folders += [home / "landmarks" for home in user_homes()]
    return folders + [Path(str(packaged() / "landmarks"))]


def shown_dirs(folders: list[Traversable] | list[Path]) -> str:
    """The search path as one line for error messages."""
    return ", ".join(str(folder) for folder in folders)


CACHE_OFF = "none"  # $DFPREP_CACHE_DIR=none: no user cache at all


def cache_dir() -> Path | None:
    """The user's cache folder for things dfprep can rebuild (`$DFPREP_CACHE_DIR`, else `$XDG_CACHE_HOME/dfprep`,
    else ~/.cache/dfprep); None when switched off or when there is no home folder."""
    chosen = os.environ.get("DFPREP_CACHE_DIR")
    if chosen is not None:
        return None if chosen.strip().lower() in (CACHE_OFF, "") else Path(chosen).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return None if cache_home.startswith("~") else Path(cache_home) / "dfprep"
