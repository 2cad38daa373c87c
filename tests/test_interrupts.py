"""Interrupting a run is never a video's fault: kill -9, Ctrl-C, SIGTERM (in-process and on Ray), then rerun.

Only a worker death observed while a video was processed is charged to it (a Ray actor that died, an
in-process crash recorded by faulthandler); a poison video at any position is skipped after two deaths
and the videos before it keep their faces. A hung decoder never ends the caller's process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.runner.run import extract_run
from tests.helpers.runhelpers import (EXIT_CODES, FRAMES, INTERRUPTED_LINE, PER_SHARD, REPO, check_output, cli, cli_env,
                        good_videos, interrupt, library_config, staging_left, start, unit_sizes, wait_for, when_reached,
                        write_small_dataset)

INPUTS = 5  # four face clips and a faceless one


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Four one-face clips and a faceless clip, in the `folder` layout."""
    return write_small_dataset(tmp_path_factory.mktemp("small"))


@pytest.fixture()
def tmpdir_short():
    """A private, short temp directory for the runs (Ray's socket paths must stay short)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="d11-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_module():
    """One local Ray instance for this module's Ray tests (Ray start-up is the expensive part)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def interruption_points(root: Path, seed: int) -> list[tuple[str, int]]:
    """Three fault points: two inside one unit (maybe the same video twice), the third in a later unit."""
    rng = random.Random(seed)
    units = unit_sizes(root)
    first = rng.randrange(len(units) - 1)
    later = rng.randrange(first + 1, len(units))
    name, size = units[first]
    return [(name, rng.randrange(size)), (name, rng.randrange(size)), (units[later][0], rng.randrange(units[later][1]))]


@pytest.mark.parametrize("seed", range(3))
def test_interrupting_in_process_three_times_never_charges_a_video(small, tmp_path, tmpdir_short, seed):
    out = tmp_path / "out"
    kinds = random.Random(seed).sample(["kill", "int", "term"], 3)
    for attempt, (kind, (unit, position)) in enumerate(zip(kinds, interruption_points(small, seed))):
        marker = tmp_path / f"paused-{attempt}"
        env = cli_env(tmpdir_short, f"pause:{unit}:{position}:{marker}")
        process = start(cli(small, out), env, tmp_path / f"run-{attempt}.log")
        wait_for(marker, process)
        assert interrupt(process, kind) == EXIT_CODES[kind], (tmp_path / f"run-{attempt}.log").read_text()
        if kind != "kill":  # a clean interrupt: one line, nothing staged, the folder unlocked
            log = (tmp_path / f"run-{attempt}.log").read_text().strip().splitlines()
            assert log[-1] == INTERRUPTED_LINE and "Traceback" not in "\n".join(log)
            assert staging_left(tmpdir_short) == [] and not (out / "_dfprep.lock").exists()
    finished = subprocess.run(cli(small, out), cwd=REPO, env=cli_env(tmpdir_short), capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "charged" not in finished.stdout
    check_output(out, INPUTS, good_videos(small))
    assert staging_left(tmpdir_short) == []  # a killed run's staging folder and crash log are gone too


def test_a_staging_folder_whose_process_dies_during_the_rerun_is_gone_when_the_rerun_ends(
        small, tmp_path, monkeypatch):
    """A killed run's Ray worker can outlive its driver for a moment: its staging folder is still owned by a live
    process when the rerun starts, so the rerun removes it once that process is gone, at its end."""
    import tempfile
    import time

    from dfprep.runner import run

    dying = subprocess.Popen(["sleep", "600"])  # stands in for the killed run's lingering worker
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    leftover = tmp_path / f"dfprep-{dying.pid}-lingering"
    (leftover / "unit").mkdir(parents=True)
    ours = tmp_path / "dfprep-notes-by-someone"  # not a dfprep-<pid>- name: never touched
    ours.mkdir()
    real = run.run_in_process

    def worker_dies_meanwhile(*args, **kwargs):
        assert leftover.exists()  # the start of the run left it: its owner still ran
        dying.kill()
        dying.wait()
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "run_in_process", worker_dies_meanwhile)
    config = library_config(small)
    extract_run(scan("folder", small, config.dataset), config, str(tmp_path / "out"), quiet=True)
    assert not leftover.exists() and ours.is_dir()
    check_output(tmp_path / "out", INPUTS, good_videos(small))


def _interrupt_self(kind: str, actor_pid: int) -> None:
    """What the watcher thread does: signal this (driver) process, or SIGKILL the paused Ray actor."""
    if kind == "actor":
        os.kill(actor_pid, signal.SIGKILL)
    else:
        os.kill(os.getpid(), signal.SIGINT if kind == "int" else signal.SIGTERM)


@pytest.fixture()
def cli_signal_handlers():
    """The CLI's SIGINT/SIGTERM handlers in this process (as `dfprep extract` installs them), restored after."""
    from dfprep.cli.app import _on_signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield lambda: [signal.signal(s, _on_signal) for s in saved]
    for number, handler in saved.items():
        signal.signal(number, handler)


def _ray_config(root: Path):
    return library_config(root, workers=1)


@pytest.mark.parametrize("seed", range(3))
def test_interrupting_a_ray_run_three_times_never_charges_a_video(small, tmp_path, ray_module, monkeypatch,
                                                                   cli_signal_handlers, seed):
    out, config = tmp_path / "out", _ray_config(small)
    points = interruption_points(small, seed)
    kinds = random.Random(seed).sample(["int", "term", "int"], 3)
    for attempt, (kind, (unit, position)) in enumerate(zip(kinds, points)):
        cli_signal_handlers()  # (again: the first signal switches them to "stop now")
        marker = tmp_path / f"paused-{attempt}"
        spec = f"pause:{unit}:{position}:{marker}"
        if attempt == 1:  # first the actor dies on this very video (Ray redoes the unit), then the interrupt
            killed = tmp_path / "actor-killed"
            spec = f"pause:{unit}:{position}:{killed};{spec}"
            when_reached(killed, lambda pid: _interrupt_self("actor", pid))
        monkeypatch.setenv("DFPREP_FAULT", spec)
        when_reached(marker, lambda pid, kind=kind: _interrupt_self(kind, pid))
        with pytest.raises(KeyboardInterrupt):
            extract_run(scan("folder", small, config.dataset), config, str(out), quiet=True)
        assert not (out / "_dfprep.lock").exists()
        if attempt == 1:  # the actor's death was observed and charged once; the interrupts charged nothing
            assert killed.exists(), "the actor was never killed"
            charged = json.loads((out / "_attempts" / f"{unit}-{position:05d}.json").read_text())
            assert charged["deaths"] == 1 and "died while processing it" in charged["last_death"]
    monkeypatch.delenv("DFPREP_FAULT")
    finishing = library_config(small, workers=0)  # the same output hash; in-process reads Ray's markers too
    report = extract_run(scan("folder", small, finishing.dataset), finishing, str(out), quiet=True)
    assert report.charged == []
    rows = check_output(out, INPUTS, good_videos(small))
    assert sum(r["faces_written"] for r in rows) == FRAMES * len(good_videos(small))


def test_a_video_that_crashes_its_process_every_time_is_skipped_and_earlier_videos_keep_their_faces(
        small, tmp_path, tmpdir_short):
    out = tmp_path / "out"
    unit, size = next((name, size) for name, size in unit_sizes(small) if size > 1)
    fault = f"crash:{unit}:{size - 1}:{tmp_path / 'crashed'}"  # the last video of a unit: position > 0
    codes = [subprocess.run(cli(small, out), cwd=REPO, env=cli_env(tmpdir_short, fault), capture_output=True,
                            text=True, timeout=600) for _ in range(3)]
    assert [c.returncode for c in codes] == [-signal.SIGSEGV, -signal.SIGSEGV, 0], codes[-1].stderr
    assert "charged to a video" in codes[1].stdout + codes[2].stdout
    rows = {r["video_id"]: r for r in pq.read_table(out / "videos.parquet").to_pylist()}
    poisoned = [r for r in rows.values() if r["status"] == "decode_error"]
    assert len(poisoned) == 1 and "died 2 times" in poisoned[0]["error"] and "Segmentation fault" in poisoned[0]["error"]
    check_output(out, INPUTS, good_videos(small) - {poisoned[0]["video_id"]})
    unit_rows = [r for r in rows.values() if r["shard"] == unit]
    assert len(unit_rows) == size - 1 and all(r["faces_written"] == FRAMES for r in unit_rows)
    assert staging_left(tmpdir_short) == []


def test_on_ray_a_poison_video_is_skipped_after_two_actor_deaths_in_one_run(small, tmp_path, ray_module,
                                                                             monkeypatch):
    unit, size = next((name, size) for name, size in unit_sizes(small) if size > 1)
    monkeypatch.setenv("DFPREP_FAULT", f"crash:{unit}:{size - 1}:{tmp_path / 'crashed'}")
    config = _ray_config(small)
    report = extract_run(scan("folder", small, config.dataset), config, str(tmp_path / "out"), quiet=True)
    assert report.statuses["decode_error"] == 1 and report.videos == INPUTS
    rows = check_output(tmp_path / "out", INPUTS, good_videos(small) - {
        r["video_id"] for r in pq.read_table(tmp_path / "out/videos.parquet").to_pylist()
        if r["status"] == "decode_error"})
    assert sum(r["faces_written"] for r in rows if r["shard"] == unit) == FRAMES * (size - 1)


def test_a_hung_decoder_in_process_never_ends_the_callers_process(small, tmp_path, monkeypatch, capfd):
    config = load_config(None, {"sampling.frames": FRAMES, "output.videos_per_shard": PER_SHARD,
                                "ray.workers": 0, "sampling.video_timeout_s": 3.0})
    unit, size = unit_sizes(small)[0]
    monkeypatch.setenv("DFPREP_FAULT", f"hang:{unit}:0:{tmp_path / 'hung'}")
    attempt = tmp_path / "out" / "_attempts" / f"{unit}-00000.json"
    # this pytest process is the caller: it must survive the watchdog; Ctrl-C once it reported the hang
    when_reached(tmp_path / "hung", lambda pid: _wait_then_interrupt(attempt))
    with pytest.raises(KeyboardInterrupt):
        extract_run(scan("folder", small, config.dataset), config, str(tmp_path / "out"), quiet=True)
    assert "an in-process run cannot stop it" in capfd.readouterr().err.lower()
    monkeypatch.delenv("DFPREP_FAULT")
    report = extract_run(scan("folder", small, config.dataset), config, str(tmp_path / "out"), quiet=True)
    rows = pq.read_table(tmp_path / "out/videos.parquet").to_pylist()
    hung = [r for r in rows if r["status"] == "timeout"]
    assert len(hung) == 1 and "hung the decoder" in hung[0]["error"] and report.videos == INPUTS


def _wait_then_interrupt(attempt: Path) -> None:
    """Wait for the watchdog to record the hang (the process lives on), then Ctrl-C this process."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (attempt.exists() and json.loads(attempt.read_text()).get("hung")):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)


# ------------------------------------------------------------------------------------------------ chaos


def _uncommitted_point(root: Path, out: Path, rng: random.Random) -> tuple[str, int]:
    """A random video of a unit not committed yet, never the last unit while others remain: every episode
    then stops before the run ends, and the last unit (two faces, ~50 KB) always outgrows a full disk."""
    left = [(name, size) for name, size in unit_sizes(root) if not (out / f"{name}_stats.json").exists()]
    name, size = rng.choice(left[:-1] or left)
    return name, rng.randrange(size)


def _episode_cli(root: Path, out: Path, tmp: Path, tmpdir: Path, how: str, point: tuple[str, int],
                 workers: int = 0) -> None:
    """A user's `dfprep extract` (in-process, or on Ray with one actor) stopped by kill -9 of its group, Ctrl-C
    or SIGTERM while a video is in progress; a clean stop is one line and leaves no staging folder."""
    marker = tmp / f"cli-{how}-{workers}-{len(list(tmp.iterdir()))}"
    log = tmp / f"{marker.name}.log"
    process = start(cli(root, out, workers), cli_env(tmpdir, f"pause:{point[0]}:{point[1]}:{marker}"), log)
    pid = wait_for(marker, process)
    assert list(tmpdir.glob(f"dfprep-{pid}-*")), "the paused process stages its shard in TMPDIR"
    assert interrupt(process, how) == EXIT_CODES[how], log.read_text()
    if how != "kill":
        lines = log.read_text().strip().splitlines()
        assert lines[-1] == INTERRUPTED_LINE and "Traceback" not in "\n".join(lines), lines
        # (a Ray actor killed with its driver in an earlier episode may outlive the next run's sweep for a
        # moment: the final run removes its folder, checked at the end)
        assert not list(tmpdir.glob(f"dfprep-{pid}-*")) and not (out / "_dfprep.lock").exists()


def _episode_ray(root: Path, out: Path, tmp: Path, monkeypatch, how: str, point: tuple[str, int],
                 kill_actor_first: bool) -> None:
    """A Ray run (this process is the driver) stopped by SIGINT or SIGTERM, maybe after an actor was killed."""
    config = _ray_config(root)
    marker = tmp / f"ray-{how}-{len(list(tmp.iterdir()))}"
    spec = f"pause:{point[0]}:{point[1]}:{marker}"
    if kill_actor_first:
        killed = tmp / f"{marker.name}-actor"
        spec = f"pause:{point[0]}:{point[1]}:{killed};{spec}"
        when_reached(killed, lambda pid: _interrupt_self("actor", pid))
    monkeypatch.setenv("DFPREP_FAULT", spec)
    when_reached(marker, lambda pid: _interrupt_self(how, pid))
    with pytest.raises(KeyboardInterrupt):
        extract_run(scan("folder", root, config.dataset), config, str(out), quiet=True)
    monkeypatch.delenv("DFPREP_FAULT")


def _episode_full_disk(root: Path, out: Path, budget: int) -> None:
    """The output disk is full: the run stops with one line; the user reruns (disk still full) as told."""
    import pyarrow.fs as pafs

    from dfprep.errors import DfprepError
    from tests.helpers.faulty_fs import FaultyHandler

    config = library_config(root)
    for _ in range(2):
        with pytest.raises(DfprepError, match="rerun the same command"):
            extract_run(scan("folder", root, config.dataset), config, str(out), quiet=True,
                        filesystem=pafs.PyFileSystem(FaultyHandler(byte_budget=budget)))


CHAOS_SEEDS = [int(seed) for seed in os.environ.get("DFPREP_CHAOS_SEEDS", "0").split(",")]  # more: "0,1,2,3"


@pytest.mark.parametrize("seed", CHAOS_SEEDS)
def test_chaos_then_a_rerun_completes_exactly_once(small, tmp_path, tmpdir_short, ray_module, monkeypatch,
                                                   cli_signal_handlers, seed):
    """kill -9 of the driver, Ctrl-C, SIGTERM of `dfprep extract` on Ray, an actor kill followed by a driver
    interrupt, and a full disk twice, in a seeded order at seeded videos; then one rerun: every input one row,
    every good video ok with all its faces, every key once, every tar equal to its index and marker,
    nothing charged, nothing left in the temp directory."""
    rng = random.Random(seed)
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    episodes = ["driver-kill", "int", "term", "actor-kill", "full-disk"]
    rng.shuffle(episodes)
    for episode in episodes:
        cli_signal_handlers()
        point = _uncommitted_point(small, out, rng)
        if episode == "full-disk":
            _episode_full_disk(small, out, rng.randrange(1_000, 30_000))
        elif episode == "driver-kill":
            _episode_cli(small, out, work, tmpdir_short, "kill", point, workers=rng.choice([0, 1]))
        elif episode == "term":  # `dfprep extract` on Ray: the killed actor's staging folder must go too
            _episode_cli(small, out, work, tmpdir_short, "term", point, workers=1)
        elif episode == "actor-kill":
            _episode_ray(small, out, work, monkeypatch, "int", point, kill_actor_first=True)
        elif rng.random() < 0.5:
            _episode_cli(small, out, work, tmpdir_short, "int", point)
        else:
            _episode_ray(small, out, work, monkeypatch, "int", point, kill_actor_first=False)
    finished = subprocess.run(cli(small, out), cwd=REPO, env=cli_env(tmpdir_short), capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "charged" not in finished.stdout and "warning" not in finished.stdout
    check_output(out, INPUTS, good_videos(small))
    assert staging_left(tmpdir_short) == []


def test_a_ray_failure_reports_the_worker_s_own_exception(ray_module):
    from dfprep.runner.pool import unit_failure

    @ray_module.remote
    def fails(kind: str) -> None:
        if kind == "os":
            raise OSError(28, "No space left on device")
        raise ValueError("a frame the aligner cannot take\nsecond line")

    errors = {}
    for kind in ("os", "value"):
        with pytest.raises(Exception) as caught:
            ray_module.get(fails.remote(kind))
        errors[kind] = caught.value
    assert "RayTaskError" in type(errors["value"]).__name__  # what Ray raises on the driver
    assert unit_failure(errors["value"]) == "ValueError: a frame the aligner cannot take"
    with pytest.raises(OSError, match=r"\[Errno 28\] No space left on device"):  # the output failed: stop the run
        unit_failure(errors["os"])
