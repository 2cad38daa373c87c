"""In-process video threads: a default run on a small input keeps every core busy without Ray, writes exactly
what one thread writes, and a crash with several videos in flight is charged to none of them until the
suspects, retried alone, show which one it was."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.io.storage import Storage
from dfprep.runner.guard import Isolation, settle_interrupted
from dfprep.runner.run import extract_run
from tests.helpers.runhelpers import (EXIT_CODES, FRAMES, INTERRUPTED_LINE, REPO, check_output, cli, cli_env,
                                      good_videos, interrupt, staging_left, start, unit_sizes, wait_for,
                                      write_small_dataset)

INPUTS = 5


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Four one-face clips and a faceless one (three units of at most two videos)."""
    return write_small_dataset(tmp_path_factory.mktemp("threads"))


def members(out: Path) -> dict[str, str]:
    """sha256 of every tar member of an output, by member name (shard names aside)."""
    digests = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                digests[member.name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
    return digests


def video_rows(out: Path) -> dict[str, dict]:
    """videos.parquet rows by video id, without the shard name (which depends on the unit size)."""
    return {r["video_id"]: {k: v for k, v in r.items() if k != "shard"}
            for r in pq.read_table(out / "videos.parquet").to_pylist()}


def test_a_default_run_on_two_cpus_uses_two_video_threads_and_writes_what_one_thread_writes(
        folder_dataset, tmp_path, monkeypatch):
    from dfprep.jobs.extract import VideoExtractor

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    decoders: list[int] = []  # FFmpeg threads of each video thread's decoder
    built = VideoExtractor.__init__
    monkeypatch.setattr(VideoExtractor, "__init__",
                        lambda self, *a, **k: built(self, *a, **k) or decoders.append(self.decode_threads))
    default = load_config(None, {"sampling.frames": 3})  # ray.workers unset, as a user runs it
    report = extract_run(scan("folder", folder_dataset, default.dataset), default, str(tmp_path / "two"), quiet=True)
    assert "2 video threads" in report.note
    assert decoders == [1, 1]  # each decoder gets its video thread's share of the 2 cores, not all of them
    threads = {json.loads(p.read_text())["thread"] for p in (tmp_path / "two").glob("*_stats.json")}
    assert threads == {"dfprep-video-0", "dfprep-video-1"}  # both threads committed units
    one = load_config(None, {"sampling.frames": 3, "ray.workers": 0})
    extract_run(scan("folder", folder_dataset, one.dataset), one, str(tmp_path / "one"), quiet=True)
    assert decoders == [1, 1, 0]  # one video thread: FFmpeg's own choice (every core)
    two_members, one_members = members(tmp_path / "two"), members(tmp_path / "one")
    assert len(two_members) > 20 and two_members == one_members  # byte for byte, member for member
    assert video_rows(tmp_path / "two") == video_rows(tmp_path / "one")


def test_each_video_threads_decoder_gets_its_share_of_the_cores():
    from dfprep.jobs.extract_shards import decoder_threads

    assert [decoder_threads(threads, cpus=2) for threads in (1, 2, 3)] == [0, 1, 1]
    assert [decoder_threads(threads, cpus=16) for threads in (1, 2, 4)] == [0, 8, 4]


def test_a_video_that_must_run_alone_waits_for_the_others_and_holds_them_back():
    isolation, events, lock = Isolation(), [], threading.Lock()
    first_in, release_first = threading.Event(), threading.Event()

    def video(name: str, alone: bool, started: threading.Event | None = None,
              release: threading.Event | None = None) -> None:
        with isolation.hold(alone):
            with lock:
                events.append(f"{name} start")
            if started:
                started.set()
            if release:
                release.wait(10)
            with lock:
                events.append(f"{name} end")

    shared = threading.Thread(target=video, args=("a", False, first_in, release_first))
    shared.start()
    assert first_in.wait(10)
    suspect = threading.Thread(target=video, args=("suspect", True))
    suspect.start()
    time.sleep(0.2)
    later = threading.Thread(target=video, args=("b", False))  # arrives while the suspect waits: must wait too
    later.start()
    time.sleep(0.2)
    assert events == ["a start"]  # the suspect waits for a, b waits for the suspect
    release_first.set()
    for thread in (shared, suspect, later):
        thread.join(10)
    assert events == ["a start", "a end", "suspect start", "suspect end", "b start", "b end"]


def _in_progress(storage: Storage, name: str, pid: int, crash_log: str, run: str = "old") -> None:
    import socket

    storage.write_json(f"_attempts/{name}.json", {"in_progress": {
        "run": run, "pid": pid, "host": socket.gethostname(), "node": "", "crash_log": crash_log, "since": 0}})


def test_a_crash_with_two_videos_in_flight_charges_neither_and_a_crash_with_one_charges_it(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    storage.makedirs("_attempts")
    together, alone = tmp_path / "crash-together.log", tmp_path / "crash-alone.log"
    for log in (together, alone):
        log.write_text("Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f (most recent call first):\n")
    _in_progress(storage, "train-000000-00001", 101, str(together))
    _in_progress(storage, "train-000001-00000", 101, str(together))  # the same process: died together
    _in_progress(storage, "train-000002-00000", 202, str(alone))  # alone in its process
    charged = settle_interrupted(storage, "new")
    markers = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out/_attempts").glob("*.json")}
    assert "deaths" not in markers["train-000000-00001"] and "deaths" not in markers["train-000001-00000"]
    assert "Segmentation fault" in markers["train-000000-00001"]["suspect"]
    assert markers["train-000002-00000"]["deaths"] == 1 and "suspect" not in markers["train-000002-00000"]
    assert sum("suspect, retried alone (2 videos" in line for line in charged) == 2
    assert sum("Segmentation fault" in line and "suspect" not in line for line in charged) == 1


def test_a_crash_of_a_threaded_run_with_two_videos_in_flight_loses_nothing_on_the_rerun(small, tmp_path,
                                                                                        tmpdir_short):
    out, log = tmp_path / "out", tmp_path / "run.log"
    (first, _), (second, _) = unit_sizes(small)[:2]
    holds = [tmp_path / "held-a", tmp_path / "held-b"]
    fault = f"hold:{first}:0:{holds[0]};hold:{second}:0:{holds[1]}"  # one video of each unit in flight
    process = start(cli(small, out, 0, "--threads", "2"), cli_env(tmpdir_short, fault), log)
    try:
        pids = {wait_for(marker, process) for marker in holds}
        assert pids == {process.pid}  # two videos in progress in one process
        os.kill(process.pid, signal.SIGSEGV)  # a crash nobody can pin on one of them
        assert process.wait(timeout=60) == -signal.SIGSEGV
    finally:
        if process.poll() is None:
            process.kill()
    rerun = subprocess.run(cli(small, out, 0, "--threads", "2"), cwd=REPO, env=cli_env(tmpdir_short),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("suspect, retried alone (2 videos were in progress") == 2, rerun.stdout
    check_output(out, INPUTS, good_videos(small))  # every good video ok, each face once, nothing charged


@pytest.mark.parametrize("how", ["int", "term", "kill"])
def test_interrupting_a_threaded_run_with_two_videos_in_flight_charges_nothing(small, tmp_path, tmpdir_short, how):
    out, log = tmp_path / "out", tmp_path / "run.log"
    (first, _), (second, _) = unit_sizes(small)[:2]
    holds = [tmp_path / "held-a", tmp_path / "held-b"]
    process = start(cli(small, out, 0, "--threads", "2"),
                    cli_env(tmpdir_short, f"hold:{first}:0:{holds[0]};hold:{second}:0:{holds[1]}"), log)
    for marker in holds:
        wait_for(marker, process)
    assert interrupt(process, how) == EXIT_CODES[how]
    if how != "kill":
        assert INTERRUPTED_LINE in log.read_text() and staging_left(tmpdir_short) == []
    rerun = subprocess.run(cli(small, out, 0, "--threads", "2"), cwd=REPO, env=cli_env(tmpdir_short),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "charged to a video" not in rerun.stdout, rerun.stdout + rerun.stderr
    check_output(out, INPUTS, good_videos(small))


def test_a_poison_video_among_threads_is_charged_only_alone_and_every_other_video_keeps_its_faces(
        small, tmp_path, tmpdir_short):
    out = tmp_path / "out"
    unit, size = next((name, size) for name, size in unit_sizes(small) if size > 1)
    fault = f"crash:{unit}:{size - 1}:{tmp_path / 'crashed'}"
    codes = []
    while not codes or codes[-1].returncode != 0:
        assert len(codes) < 4, [c.returncode for c in codes]
        codes.append(subprocess.run(cli(small, out, 0, "--threads", "2"), cwd=REPO,
                                    env=cli_env(tmpdir_short, fault), capture_output=True, text=True, timeout=600))
        assert codes[-1].returncode in (0, -signal.SIGSEGV), codes[-1].stderr
    rows = {r["video_id"]: r for r in pq.read_table(out / "videos.parquet").to_pylist()}
    poisoned = [r for r in rows.values() if r["status"] == "decode_error"]
    assert len(poisoned) == 1 and "died 2 times" in poisoned[0]["error"], rows
    check_output(out, INPUTS, good_videos(small) - {poisoned[0]["video_id"]})
    assert sum(r["faces_written"] for r in rows.values()) == FRAMES * (len(good_videos(small)) - 1)


@pytest.fixture()
def tmpdir_short():
    """A private, short temp directory for the runs (to see staging leftovers and crash logs)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dvt-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_one_watch_thread_times_every_video_in_flight_and_fires_only_for_the_one_past_its_limit(capfd):
    from dfprep.runner.guard import Watchdog

    fired: list[tuple[int, float]] = []

    class Log:
        def mark_hung(self, position: int, seconds: float) -> None:
            fired.append((position, seconds))

    with Watchdog(Log(), 1, 0.2, "video one", False), Watchdog(Log(), 2, 30.0, "video two", False):
        time.sleep(0.6)  # two videos in flight: only the first passes its limit
    with Watchdog(Log(), 3, 0.2, "video three", False):
        pass  # ended in time: never fires, even once its deadline has passed
    time.sleep(0.5)
    assert fired == [(1, 0.2)]
    assert "video one has run for more than 0.2s" in capfd.readouterr().err
    assert [t.name for t in threading.enumerate()].count("dfprep-watchdog") == 1
