"""The extract run: every video gets a row, commits are atomic, resume is exact, Ray equals in-process."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.runner.run import extract_run

REPO = Path(__file__).resolve().parents[1]


def _config(workers: int, **extra):
    return load_config(None, {"sampling.frames": 4, "output.videos_per_shard": 2, "ray.workers": workers, **extra})


def _run(root: Path, out: Path | str, workers: int = 0, filesystem=None, **kwargs):
    config = _config(workers)
    return extract_run(scan("folder", root, config.dataset), config, str(out), quiet=True,
                       filesystem=filesystem, **kwargs)


def _shard_contents(out: Path) -> dict[str, bytes]:
    """member name → payload over every committed tar (fails on a duplicate member)."""
    members: dict[str, bytes] = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                assert member.name not in members, f"duplicate {member.name}"
                members[member.name] = tar.extractfile(member).read()
    return members


def _check_complete(out: Path, expected_videos: int) -> None:
    """Every video exactly once in videos.parquet, every sample key exactly once, no temporaries."""
    videos = pq.read_table(out / "videos.parquet").to_pylist()
    assert len(videos) == expected_videos and len({v["video_id"] for v in videos}) == expected_videos
    keys = [k for shard in out.glob("*.parquet") if shard.name not in ("videos.parquet", "plan.parquet")
            for k in pq.read_table(shard).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == sum(v["faces_written"] for v in videos)
    assert {n.split(".")[0] for n in _shard_contents(out)} == set(keys)
    assert not list(out.glob("*.tmp"))


def test_every_video_gets_a_row_and_a_status(folder_dataset, tmp_path):
    report = _run(folder_dataset, tmp_path / "out")
    _check_complete(tmp_path / "out", 8)
    rows = {r["video_id"].split("/")[-1]: r for r in pq.read_table(tmp_path / "out/videos.parquet").to_pylist()}
    assert rows["broken"]["status"] in ("unsupported", "decode_error") and rows["broken"]["error"]
    assert rows["empty_room"]["status"] == "no_face"
    assert all(rows[f"clip{i}"]["status"] == "ok" and rows[f"clip{i}"]["faces_written"] == 4 for i in range(3))
    assert report.statuses["ok"] == 6 and report.faces == 24 and report.videos == 8


def test_rerun_does_nothing_and_changed_config_is_refused(folder_dataset, tmp_path):
    out = tmp_path / "out"
    _run(folder_dataset, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    report = _run(folder_dataset, out)
    assert report.units_skipped == report.units_total and report.note.startswith("resuming")
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    other = load_config(None, {"sampling.frames": 3, "ray.workers": 0})
    with pytest.raises(DfprepError, match="different config"):
        extract_run(scan("folder", folder_dataset), other, str(out), quiet=True)
    extract_run(scan("folder", folder_dataset), other, str(out), quiet=True, overwrite=True)
    assert sum(r["faces_written"] for r in pq.read_table(out / "videos.parquet").to_pylist()) == 18


def test_uncommitted_leftovers_are_redone(folder_dataset, tmp_path):
    out = tmp_path / "out"
    _run(folder_dataset, out)
    victim = sorted(out.glob("*_stats.json"))[0].name.replace("_stats.json", "")
    (out / f"{victim}_stats.json").unlink()  # as if killed between the tar rename and the commit marker
    committed = sorted(out.glob("*_stats.json"))[0].name.replace("_stats.json", "")
    (out / f"{committed}.tar.tmp").write_bytes(b"partial")  # a planned shard's temporary: dfprep's own
    (out / "orphan-000009.tar.tmp").write_bytes(b"not planned")  # not a name dfprep planned: never touched
    report = _run(folder_dataset, out)
    assert report.units_skipped == report.units_total - 1
    assert {f"{victim}.tar", f"{committed}.tar.tmp"} <= set(report.removed)
    assert (out / "orphan-000009.tar.tmp").read_bytes() == b"not planned"
    (out / "orphan-000009.tar.tmp").unlink()
    _check_complete(out, 8)


def test_output_through_uri_and_subtree_filesystem(folder_dataset, tmp_path):
    _run(folder_dataset, f"file://{tmp_path}/uri")
    _check_complete(tmp_path / "uri", 8)
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    (tmp_path / "bucket").mkdir()
    _run(folder_dataset, "datasets/ffpp", filesystem=subtree)
    _check_complete(tmp_path / "bucket/datasets/ffpp", 8)


def _landmarks(out: Path) -> dict[str, np.ndarray]:
    return {name: np.load(io.BytesIO(payload)) for name, payload in _shard_contents(out).items()
            if name.endswith(".ldm.npy")}


def test_ray_results_equal_in_process_results(folder_dataset, tmp_path, ray_session):
    _run(folder_dataset, tmp_path / "local", workers=0)
    _run(folder_dataset, tmp_path / "ray", workers=2)
    local, distributed = _landmarks(tmp_path / "local"), _landmarks(tmp_path / "ray")
    assert local.keys() == distributed.keys() and len(local) == 24
    assert all(np.array_equal(local[k], distributed[k]) for k in local)
    _check_complete(tmp_path / "ray", 8)


def test_a_default_run_keeps_every_worker_busy_from_the_first_video(folder_dataset, tmp_path, ray_session):
    config = load_config(None, {"sampling.frames": 2, "ray.workers": 2})  # videos_per_shard unset
    report = extract_run(scan("folder", folder_dataset, config.dataset), config, str(tmp_path / "out"), quiet=True)
    stats = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*_stats.json")]
    assert report.units_total == len(stats) >= 4  # 8 videos, 2 workers: units sized for the workers, not 48
    assert len({s["worker"] for s in stats}) == 2  # both actors did work
    assert {s["worker"] for s in stats}.isdisjoint({f"{socket.gethostname()}:{os.getpid()}"})  # not the driver
    _check_complete(tmp_path / "out", 8)


def test_killed_actor_is_restarted_and_nothing_is_lost(folder_dataset, tmp_path, ray_session, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("DFPREP_FAULT", f"kill:train-000001:0:{marker}")
    report = _run(folder_dataset, tmp_path / "out", workers=2)
    assert marker.exists(), "the fault was never injected"
    _check_complete(tmp_path / "out", 8)
    assert report.videos == 8 and report.faces == 24


def test_killing_the_run_then_rerunning_completes_exactly_once(folder_dataset, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dfprep", "extract", "folder", str(folder_dataset), "-o", str(out),
               "--workers", "1", "--quiet", "--frames", "4", "--videos-per-shard", "1"]
    process = subprocess.Popen(command, start_new_session=True, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_stats.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    committed = len(list(out.glob("*_stats.json")))
    assert committed >= 1, "the run never committed a shard before the kill"
    assert committed < 8, "the run finished before it could be killed"
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    skipped = int(re.search(r"\((\d+) already committed\)", finished.stdout).group(1))
    assert committed <= skipped < 8  # actors may finish one more unit while the dead driver is noticed
    _check_complete(out, 8)
    assert Counter(p.name.split("-")[0] for p in out.glob("*_stats.json")) == Counter({"train": 8})


def test_a_hung_decoder_is_recorded_as_timeout_and_the_run_completes(folder_dataset, tmp_path, ray_session,
                                                                      monkeypatch):
    marker = tmp_path / "hung"
    monkeypatch.setenv("DFPREP_FAULT", f"hang:train-000002:0:{marker}")
    # loaded CI machines: a second is too tight; HOG alone, since the cascade's CNN search of the faceless clip
    # (~1 s on two idle cores) would bring it near the limit too
    config = _config(2, **{"sampling.video_timeout_s": 3.0, "detection.detector": "hog"})
    report = extract_run(scan("folder", folder_dataset, config.dataset), config, str(tmp_path / "out"), quiet=True)
    assert marker.exists(), "the hang was never injected"
    rows = pq.read_table(tmp_path / "out/videos.parquet").to_pylist()
    hung = [r for r in rows if r["status"] == "timeout"]
    assert len(hung) == 1 and "hung the decoder" in hung[0]["error"]
    assert report.statuses["timeout"] == 1 and report.videos == 8
    _check_complete(tmp_path / "out", 8)
    assert not list((tmp_path / "out").glob("_attempts/*"))


# tests/test_interrupts.py interrupts runs 3 times × 3 seeds in-process and on Ray; one seed of this older
# double-kill keeps its cheap whole-process SIGKILL path in the suite. More: DFPREP_KILL_SEEDS="0,1,2,3".
KILL_SEEDS = [int(seed) for seed in os.environ.get("DFPREP_KILL_SEEDS", "0").split(",")]


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_kill_at_random_moments_never_loses_or_duplicates(folder_dataset, tmp_path, seed):
    import random

    out = tmp_path / "out"
    command = [sys.executable, "-m", "dfprep", "extract", "folder", str(folder_dataset), "-o", str(out),
               "--workers", "0", "--quiet", "--frames", "3", "--videos-per-shard", "1"]
    delay = random.Random(seed).uniform(0.5, 4.0)
    for _ in range(2):  # two kills at the same random moment of two successive runs
        process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    _check_complete(out, 8)
