"""dfprep owns what it writes and deletes: ownership, input/output overlap, catalog drift, the output lock,
config-stamped commits, atomic markers and one-line output errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.catalog import scan
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.io.layout import LOCK_FILE
from dfprep.io.lock import OutputLock, process_start
from dfprep.config.schema import RayConfig
from dfprep.jobs.maps import MapRun, MapSettings
from dfprep.runner.run import maps_run
from dfprep.io.layout import OWNERSHIP_FILE
from dfprep.runner.run import extract_run
from dfprep.io.storage import Storage
from tests.helpers.faulty_fs import FaultyHandler
from tests.helpers.runhelpers import FRAMES, PER_SHARD, REPO, check_output, cli as cli_command, good_videos, write_small_dataset

INPUTS = 5


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_small_dataset(tmp_path_factory.mktemp("small"))


def _config(**extra):
    return load_config(None, {"sampling.frames": FRAMES, "output.videos_per_shard": PER_SHARD, "ray.workers": 0,
                              **extra})


def _extract(root: Path, out: Path | str, filesystem=None, **kwargs):
    config = _config(**{"dataset.name": "folder", "dataset.root": str(root)})
    return extract_run(scan("folder", root, config.dataset), config, str(out), quiet=True, filesystem=filesystem,
                       **kwargs)


@pytest.fixture(scope="module")
def extracted(small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extracted") / "out"
    _extract(small, out)
    return out


@pytest.fixture()
def out(extracted, tmp_path) -> Path:
    """A private copy of a complete output."""
    return Path(shutil.copytree(extracted, tmp_path / "out"))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output.strip()


# ------------------------------------------------------------------------- item 2: dfprep owns what it touches


def test_an_output_inside_or_around_the_dataset_is_refused_and_the_dataset_untouched(small, tmp_path):
    before = _tree(small)
    for output in (small, small / "real", small / "out"):
        code, message = _run_cli("extract", "folder", str(small), "-o", str(output), "--workers", "0")
        assert code == 2 and len(message.splitlines()) == 1 and "inside the input root" in message, message
    parent = small.parent
    code, message = _run_cli("extract", "folder", str(small), "-o", str(parent), "--workers", "0")
    assert code == 2 and "is inside the output" in message, message
    assert _tree(small) == before


def test_a_folder_dfprep_did_not_write_is_refused_even_with_overwrite(small, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train-000000.tar").write_bytes(b"the user's own shard")
    (folder / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        code, message = _run_cli("extract", "folder", str(small), "-o", str(folder), "--workers", "0", *extra)
        assert code == 2 and "not written by dfprep" in message and len(message.splitlines()) == 1, message
    assert _tree(folder) == {"train-000000.tar": b"the user's own shard", "notes.txt": b"keep me"}


def test_overwrite_deletes_only_files_the_plan_names_as_dfprep_s(small, out):
    users = {"train-000099.tar": b"not planned", "notes.txt": b"mine", "_attempts/mine.json": b"not json",
             "_attempts/train-000000-notes.txt": b"mine too", "sub/train-000000.tar": b"deeper"}
    for name, payload in users.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(payload)
    report = _extract(small, out, overwrite=True)
    assert report.units_skipped == 0 and not any(name in users for name in report.removed)
    assert all((out / name).read_bytes() == payload for name, payload in users.items())
    for name in users:
        (out / name).unlink()
    shutil.rmtree(out / "sub")
    shutil.rmtree(out / "_attempts")
    check_output(out, INPUTS, good_videos(small))


def test_the_ownership_file_is_written_before_anything_else(small, tmp_path):
    written: list[str] = []

    class Recording(FaultyHandler):
        def open_output_stream(self, path, metadata):
            written.append(Path(path).name)
            return super().open_output_stream(path, metadata)

    (tmp_path / "bucket").mkdir()
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.PyFileSystem(Recording()))
    _extract(small, "out", filesystem=subtree)
    assert written[:2] == [f"{LOCK_FILE}.tmp", f"{OWNERSHIP_FILE}.tmp"], written[:4]
    check_output(tmp_path / "bucket" / "out", INPUTS, good_videos(small))


def test_an_output_written_before_ownership_files_existed_is_still_resumed(small, out):
    (out / OWNERSHIP_FILE).unlink()
    report = _extract(small, out)
    assert report.units_skipped == report.units_total and (out / OWNERSHIP_FILE).is_file()


def test_maps_refuse_a_folder_of_someone_else_s_files_and_overwrite_only_their_own(out):
    foreign = out / "maps" / "landmarks"
    foreign.mkdir(parents=True)
    (foreign / "train-000000.tar").write_bytes(b"someone else's")
    with pytest.raises(DfprepError, match="not written by dfprep"):
        maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True, overwrite=True))
    assert (foreign / "train-000000.tar").read_bytes() == b"someone else's"
    maps_run(str(out), MapRun(MapSettings(name="mine"), RayConfig(workers=0), quiet=True))
    (out / "maps" / "mine" / "notes.txt").write_text("keep me")
    (out / "maps" / "mine" / "train-000077.tar").write_bytes(b"not a face shard's name")
    sharper = MapSettings(name="mine", blur_sigma=0.0)
    report = maps_run(str(out), MapRun(sharper, RayConfig(workers=0), quiet=True, overwrite=True))
    assert report.maps_written == report.maps_total == 8  # four face clips, two faces each
    assert (out / "maps" / "mine" / "notes.txt").read_text() == "keep me"
    assert (out / "maps" / "mine" / "train-000077.tar").read_bytes() == b"not a face shard's name"


# ------------------------------------------------------------------------- item 3: the catalog against the plan


def test_new_and_vanished_videos_are_reported_and_another_root_is_refused(small, tmp_path):
    root = Path(shutil.copytree(small, tmp_path / "root"))
    out = tmp_path / "out"
    _extract(root, out)
    shutil.copy(root / "real" / "clip0.mp4", root / "real" / "clip9.mp4")
    (root / "fake" / "clip1.mp4").unlink()
    code, message = _run_cli("extract", "folder", str(root), "-o", str(out), "--workers", "0", "--frames",
                             str(FRAMES), "--videos-per-shard", str(PER_SHARD))
    assert code == 0, message
    assert "warning: 1 video(s) found under" in message and "--extend" in message and "clip9" in message
    assert "warning: 1 planned video(s) are no longer found" in message and "rows are kept" in message
    rows = {r["video_id"] for r in pq.read_table(out / "videos.parquet").to_pylist()}
    assert "folder/fake/raw/clip1" in rows and "folder/real/raw/clip9" not in rows
    code, message = _run_cli("extract", "folder", str(root), "-o", str(out), "--workers", "0", "--frames",
                             str(FRAMES), "--videos-per-shard", str(PER_SHARD), "--extend")
    assert code == 0 and "1 new videos" in message and "not in this output's plan" not in message, message
    other = Path(shutil.copytree(small, tmp_path / "other"))
    code, message = _run_cli("extract", "folder", str(other), "-o", str(out), "--workers", "0", "--frames",
                             str(FRAMES), "--videos-per-shard", str(PER_SHARD))
    assert code == 2 and "was planned from folder" in message and str(other) in message, message
    assert len(message.splitlines()) == 1


# ------------------------------------------------------------------------- item 4: one run per output folder


def _lock_record(pid: int, host: str | None = None) -> dict:
    return {"owner": "someone", "pid": pid, "host": host or socket.gethostname(), "command": "extract",
            "run": "r" * 16, "started": "2030-01-01T00:00:00", "process_start": process_start(pid)}


def test_a_live_lock_is_refused_a_stale_one_taken_over(small, out):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps(_lock_record(holder.pid)))
        with pytest.raises(DfprepError, match=rf"in use by another dfprep run \(extract, pid {holder.pid}"):
            _extract(small, out)
        with pytest.raises(DfprepError, match="in use by another dfprep run"):
            maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
        (out / LOCK_FILE).write_text(json.dumps(_lock_record(holder.pid, host="elsewhere")))
        with pytest.raises(DfprepError, match=rf"on elsewhere.*delete .*{LOCK_FILE}"):
            _extract(small, out)
    finally:
        holder.kill()
        holder.wait()
    (out / LOCK_FILE).write_text(json.dumps(_lock_record(holder.pid)))  # its process is gone: stale
    report = _extract(small, out)
    assert report.units_skipped == report.units_total and not (out / LOCK_FILE).exists()
    (out / LOCK_FILE).write_bytes(b"")  # an unreadable lock, long past: junk
    os.utime(out / LOCK_FILE, (0, 0))
    _extract(small, out)
    assert not (out / LOCK_FILE).exists()


def test_a_lock_is_exclusive_and_re_entered_only_by_its_own_run(tmp_path):
    storage = Storage(str(tmp_path / "o"))
    with OutputLock(storage, "extract") as first:
        record = json.loads((tmp_path / "o" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["run"] == first.run_id and record["host"]
        with OutputLock(Storage(str(tmp_path / "o")), "maps") as nested:  # extract's inline maps
            assert nested.run_id == first.run_id
        assert (tmp_path / "o" / LOCK_FILE).exists()
        code = subprocess.run([sys.executable, "-c", "import sys; from dfprep.io.lock import OutputLock; "
                               "from dfprep.io.storage import Storage\ntry:\n with OutputLock(Storage(sys.argv[1]), 'x'):"
                               " pass\nexcept Exception as e: print(e); sys.exit(3)", str(tmp_path / "o")],
                              capture_output=True, text=True)
        assert code.returncode == 3 and f"pid {os.getpid()}" in code.stdout
    assert not (tmp_path / "o" / LOCK_FILE).exists()


def test_two_terminals_at_once_never_mix_two_configs(small, tmp_path):
    out = tmp_path / "out"
    runs = [subprocess.Popen(cli_command(small, out, 0, frames=frames), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for frames in (2, 3)]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    winners = [index for index, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    loser = results[1 - winners[0]]
    assert loser[0] == 2 and ("in use by another dfprep run" in loser[1] or "different config" in loser[1]), loser
    dataset = json.loads((out / "dataset.json").read_text())
    frames = (2, 3)[winners[0]]
    assert dataset["config"]["sampling"]["frames"] == frames
    assert {json.loads(p.read_text())["config_hash"] for p in out.glob("*_stats.json")} == {dataset["config_hash"]}
    check_output(out, INPUTS, good_videos(small), faces=frames)


def test_a_commit_marker_of_another_config_is_not_a_commit(small, out):
    marker, older = sorted(out.glob("*_stats.json"))[:2]
    stats = json.loads(marker.read_text())
    marker.write_text(json.dumps({**stats, "config_hash": "0" * 64}))
    unstamped = {k: v for k, v in json.loads(older.read_text()).items() if k != "config_hash"}
    older.write_text(json.dumps(unstamped))  # written before markers were stamped: still a commit
    report = _extract(small, out)
    assert report.units_skipped == report.units_total - 1 and marker.name in report.removed
    assert json.loads(older.read_text()) == unstamped
    check_output(out, INPUTS, good_videos(small))


def test_a_map_marker_of_other_settings_is_redone(out):
    maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    marker = sorted((out / "maps" / "landmarks").glob("*_stats.json"))[0]
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "settings_hash": "other"}))
    report = maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    assert report.units_skipped == report.units_total - 1 and json.loads(marker.read_text())["settings_hash"] != "other"


# ------------------------------------------------------------------------- item 7: markers are never half-written


@pytest.mark.parametrize("name", ["train-000000_stats.json", "dataset.json", "_attempts/train-000001-00000.json",
                                  "maps/landmarks/manifest.json", "maps/landmarks/train-000000_stats.json"])
def test_an_empty_marker_is_treated_as_absent_everywhere(small, out, name):
    maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(b"")
    for command in (["stats", str(out)], ["maps", str(out), "--workers", "0", "--quiet"],
                    ["extract", "folder", str(small), "-o", str(out), "--workers", "0", "--quiet", "--frames",
                     str(FRAMES), "--videos-per-shard", str(PER_SHARD)], ["stats", str(out)]):
        code, message = _run_cli(*command)
        assert code == 0 and "Traceback" not in message and "JSONDecodeError" not in message, (command, message)
    check_output(out, INPUTS, good_videos(small))
    assert json.loads((out / "maps" / "landmarks" / "manifest.json").read_text())["complete"] is True


def test_torch_shard_lists_skip_an_empty_marker(out):
    from dfprep.torch.shardlist import resolve_shards

    names = {s.name for s in resolve_shards(str(out))}
    victim = sorted(out.glob("*.tar"))[0].stem
    (out / f"{victim}_stats.json").write_bytes(b"")
    assert {s.name for s in resolve_shards(str(out))} == names - {victim}
    assert resolve_shards(str(out / f"{victim}.tar"))[0].samples is None


@pytest.mark.parametrize("budget", [6_000, 60_000])
def test_a_full_disk_never_leaves_a_half_written_marker_or_index(small, tmp_path, budget):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DfprepError, match="writing to .* failed .*No space left"):
        _extract(small, out, filesystem=pafs.PyFileSystem(FaultyHandler(byte_budget=budget)))
    for path in out.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())  # never an empty or truncated JSON under a final name
        elif path.suffix == ".parquet":
            pq.read_table(path)
    _extract(small, out)
    _extract(small, out)  # and the rerun after that does nothing
    check_output(out, INPUTS, good_videos(small))


# ------------------------------------------------------------------------- item 12: output errors in one line


@pytest.mark.parametrize("output", ["", "{file}", "/proc/dfprep-cannot-exist", "foo://bucket/x"])
def test_an_unusable_output_is_a_one_line_error(small, tmp_path, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    code, message = _run_cli("extract", "folder", str(small), "-o", output.format(file=tmp_path / "a-file"),
                             "--workers", "0")
    assert code == 2 and message.startswith("dfprep: error:") and len(message.splitlines()) == 1, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_s3_without_credentials_is_a_one_line_error(small, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    code, message = _run_cli("extract", "folder", str(small), "-o", "s3://dfprep-no-such-bucket-11a/x",
                             "--workers", "0")
    assert code == 2 and message.startswith("dfprep: error:") and len(message.splitlines()) == 1, message
