"""Helpers for the interrupt, ownership and chaos tests: a small dataset, the CLI as a user runs it, checks.

The checks read an output the way a careful user would: one `videos.parquet` row per input, every good
video `ok` with all its faces, each sample key once, and every committed tar agreeing with its parquet
index and its commit marker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip

REPO = Path(__file__).resolve().parents[1]
FRAMES = 2  # faces per good video (one face per planned frame)
PER_SHARD = 2
INTERRUPTED_LINE = "dfprep: interrupted: rerun the same command to continue"
EXIT_CODES = {"kill": -signal.SIGKILL, "int": 130, "term": 143}


def write_small_dataset(root: Path, faces: int = 4) -> Path:
    """`folder` layout: `faces` small clips with one face each, half real, half fake, plus a faceless clip."""
    for index in range(faces):
        label = ("real", "fake")[index % 2]
        motion = linear_motion(FacePlacement(10 + 15 * index, 10, 0.8), FacePlacement(100, 50, 0.85))
        write_clip(root / label / f"clip{index}.mp4", 320, 240, 10, motion, gop=5, seed=index)
    write_clip(root / "real" / "blank_room.mp4", 160, 120, 6, lambda i, n: [], gop=3)  # planned before clip*
    return root


def good_videos(root: Path) -> set[str]:
    """video_ids of the clips that hold a face (the folder adapter's ids)."""
    return {f"folder/{p.parent.name}/raw/{p.stem}" for p in root.rglob("clip*.mp4")}


def unit_sizes(root: Path, per_shard: int = PER_SHARD) -> list[tuple[str, int]]:
    """(unit name, videos) of the plan dfprep makes for this dataset (the same function the run uses)."""
    from dfprep.catalog import scan
    from dfprep.jobs.plan import build_units

    return [(unit.name, len(unit.records)) for unit in build_units(scan("folder", root), per_shard)]


def cli(root: Path, out: Path, workers: int = 0, *extra: str, frames: int = FRAMES) -> list[str]:
    """The extract command a user types (small frames count so runs stay short)."""
    return [sys.executable, "-m", "dfprep", "extract", "folder", str(root), "-o", str(out), "--workers",
            str(workers), "--quiet", "--frames", str(frames), "--videos-per-shard", str(PER_SHARD), *extra]


def library_config(root: Path, workers: int = 0, **extra: object):
    """The config `cli(root, …)` builds, for runs driven from this process (same output hash)."""
    from dfprep.config import load_config

    return load_config(None, {"dataset.name": "folder", "dataset.root": str(root), "sampling.frames": FRAMES,
                              "output.videos_per_shard": PER_SHARD, "ray.workers": workers, **extra})


def cli_env(tmpdir: Path, fault: str | None = None) -> dict[str, str]:
    """The environment of a run: a private temp directory (to see staging leftovers), an optional fault."""
    env = {k: v for k, v in os.environ.items() if k != "DFPREP_FAULT"}
    env["TMPDIR"] = str(tmpdir)
    if fault:
        env["DFPREP_FAULT"] = fault
    return env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a run in its own process group (so kill -9 can take the whole group), output to a log file."""
    handle = open(log, "wb")
    return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=handle,
                            stderr=subprocess.STDOUT)


def wait_for(marker: Path, process: subprocess.Popen | None = None, timeout: float = 240.0) -> int:
    """Wait until a fault point wrote its marker; returns the pid written there."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (code {process.returncode}) before reaching the fault point")
        if time.monotonic() > deadline:
            raise AssertionError(f"the fault point {marker} was never reached")
        time.sleep(0.02)
    return int(marker.read_text())


def interrupt(process: subprocess.Popen, how: str) -> int:
    """kill -9 of the process group, Ctrl-C (SIGINT) or SIGTERM; returns the exit code."""
    if how == "kill":
        os.killpg(process.pid, signal.SIGKILL)
    else:
        os.kill(process.pid, signal.SIGINT if how == "int" else signal.SIGTERM)
    try:
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def when_reached(marker: Path, action: Callable[[int], None]) -> threading.Thread:
    """In this process: run `action(pid)` from a thread as soon as a fault point writes its marker."""

    def watch() -> None:
        try:
            pid = wait_for(marker, timeout=240.0)
        except AssertionError:
            return
        action(pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def staging_left(tmpdir: Path) -> list[str]:
    """dfprep's staging folders and crash logs left in a temp directory."""
    return sorted(p.name for p in tmpdir.glob("dfprep-*"))


def tar_keys(path: Path) -> list[str]:
    """Sample keys in tar order (members of one key are contiguous)."""
    keys: list[str] = []
    with tarfile.open(path) as tar:
        for name in tar.getnames():
            key = name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def check_output(out: Path, inputs: int, good: set[str], faces: int = FRAMES) -> list[dict]:
    """One row per input, every good video ok with all its faces, each key once, tars = indexes = markers."""
    rows = pq.read_table(out / "videos.parquet").to_pylist()
    ids = [row["video_id"] for row in rows]
    assert len(ids) == len(set(ids)) == inputs, sorted(ids)
    by_id = {row["video_id"]: row for row in rows}
    for video in good:
        assert (by_id[video]["status"], by_id[video]["faces_written"]) == ("ok", faces), by_id[video]
    keys: list[str] = []
    for marker in sorted(out.glob("*_stats.json")):
        stats = json.loads(marker.read_text())
        assert sum(row["faces_written"] for row in stats["videos"]) == stats["samples"]
        if stats["samples"]:
            index = pq.read_table(out / f"{stats['shard']}.parquet").column("key").to_pylist()
            assert tar_keys(out / f"{stats['shard']}.tar") == index and len(index) == stats["samples"]
            keys += index
    assert len(keys) == len(set(keys)) == sum(row["faces_written"] for row in rows)
    assert json.loads((out / "dataset.json").read_text())["complete"] is True
    leftovers = [p.name for p in out.rglob("*.tmp")] + [p.name for p in out.glob("_attempts")]
    assert not leftovers and not (out / "_dfprep.lock").exists(), leftovers
    return rows
