"""One runner for every sharded job: extract and maps run on it with the user's Ray settings, and a third job
needs only the contract (plan, worker, marker check, finalize, report) to get locking, skipping, cleanup,
progress and the report."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import pyarrow.parquet as pq
import pytest

from dfprep.catalog import scan
from dfprep.catalog.base import VideoRecord
from dfprep.config.schema import RayConfig
from dfprep.io.layout import (MAP_INDEX_SCHEMA, PLAN_SCHEMA, STATUSES, VideoStatus, sample_index_schema,
                              videos_schema)
from dfprep.io.shards import Sample, ShardWriter
from dfprep.io.storage import Storage
from dfprep.jobs.contract import Bar, Needs, Outcome, Plan
from dfprep.jobs.extract_shards import ExtractUnitWorker
from dfprep.jobs.maps import MapUnitWorker
from dfprep.runner import run as runner
from dfprep.runner.run import extract_run, run_job
from tests.helpers.runhelpers import library_config, write_small_dataset


class RecordingPool:
    """Stands in for the Ray ActorPool: records what each job asked for, runs the actor body in this process."""

    seen: list[dict[str, Any]] = []

    def __init__(self, worker: type, args: tuple[Any, ...], count: int, config: Any, resources: Any = None,
                 needs: Any = None):
        factory = args[0]
        RecordingPool.seen.append({"worker": factory.func, "ray": config.ray, "count": count})
        self.actor = worker(*args)

    def __enter__(self) -> "RecordingPool":
        return self

    def node_losses(self) -> list[str]:
        return []

    def __exit__(self, *exc: Any) -> None:
        pass

    def run(self, units: list[Any], task_args: tuple[Any, ...], on_message: Any, build: Any) -> dict[str, str]:
        queue = SimpleNamespace(put_nowait=SimpleNamespace(remote=on_message))
        for unit in units:
            self.actor.run_unit(build(unit), *task_args, queue)
        return {}


@pytest.fixture()
def recording_pool(monkeypatch):
    RecordingPool.seen = []
    monkeypatch.setattr(runner, "ActorPool", RecordingPool)
    monkeypatch.setattr(runner, "connect", lambda config, workers: None)
    monkeypatch.setattr(runner, "cluster_gpus", lambda: 0.0)
    threads = cv2.getNumThreads()
    yield RecordingPool
    cv2.setNumThreads(threads)  # the actor body sets one thread, as in a real actor


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return write_small_dataset(tmp_path_factory.mktemp("runner_dataset"), faces=2)


def test_extract_and_its_inline_maps_both_run_under_the_pipelines_ray_settings(small_root, tmp_path, recording_pool):
    config = library_config(small_root, workers=2, **{"ray.task_retries": 7, "ray.actor_restarts": 5,
                                                       "ray.in_flight_per_worker": 3, "ray.decode_threads": 2,
                                                       "output.maps": ["landmarks"]})
    report = extract_run(scan("folder", small_root, config.dataset), config, str(tmp_path / "out"), quiet=True)

    jobs = [(seen["worker"], seen["ray"], seen["count"]) for seen in recording_pool.seen]
    assert jobs == [(ExtractUnitWorker.on_node, config.ray, 2), (MapUnitWorker.from_digests, config.ray, 2)]
    assert config.ray.task_retries == 7 and config.ray.actor_restarts == 5 and config.ray.in_flight_per_worker == 3
    maps = json.loads((tmp_path / "out" / "maps" / "landmarks" / "manifest.json").read_text())
    assert report.faces > 0 and maps["complete"] and maps["maps"] == report.faces
    assert report.maps == [f"landmarks maps: {report.faces} in {tmp_path / 'out' / 'maps' / 'landmarks'}"]


def test_the_maps_command_builds_its_ray_settings_from_workers_and_address(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from dfprep.cli import cli

    calls = []
    monkeypatch.setattr(runner, "maps_run", lambda output, run, filesystem=None: calls.append(run) or _no_maps())
    result = CliRunner().invoke(cli, ["maps", str(tmp_path), "--workers", "3", "--address", "auto", "--overwrite",
                                      "--quiet", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    (run,) = calls
    assert (run.ray.workers, run.ray.address, run.overwrite, run.quiet) == (3, "auto", True, True)
    assert run.ray == dataclasses.replace(RayConfig(), workers=3, address="auto")
    assert run.settings.batch_size == 8 and run.settings.method == "landmarks"


def _no_maps():
    from dfprep.jobs.maps import MapReport

    return MapReport("out/maps/landmarks", "landmarks", "landmarks", 0, 0)


# ---------------------------------------------------------------- a third job: only the contract


@dataclasses.dataclass(frozen=True)
class Letters:
    name: str
    letters: str


class LetterWorker:
    def __init__(self, storage: Storage):
        self.storage = storage

    ran: list[str] = []  # units in the order any LetterWorker ran them

    def run_unit(self, unit: Letters, guard: Any, announce: Any) -> dict[str, Any]:
        LetterWorker.ran.append(unit.name)
        writer = ShardWriter(self.storage, unit.name)
        for position, letter in enumerate(unit.letters):
            writer.add(Sample(f"{unit.name}-{position}", {"txt": letter.encode()}, {}))
            announce(unit.name, position + 1, position + 1)
        return writer.commit({"stamp": "v1"})


class LetterJob:
    """A job of the test's own: each unit's letters become one shard; its index lists the shards."""

    kind, guarded, threads, temporaries = "letters", False, False, ("letters.json",)
    marker_keys = frozenset({"stamp"})
    bar = Bar("letters", "letter", "letters_per_s", faces=False)

    def __init__(self, storage: Storage, units: list[Letters]):
        self.output = self.shards = storage
        self.ray = RayConfig(workers=0)
        self.units = units
        self.calls: list[str] = []

    def check(self) -> None:
        self.calls.append("check")

    def claim(self) -> list[str]:
        self.calls.append("claim")
        return []

    def expected_items(self) -> int | None:
        return None

    def plan(self, workers: int) -> Plan[Letters]:
        return Plan(self.units, "letters")

    def is_committed(self, stats: dict[str, Any]) -> bool:
        return stats.get("stamp") == "v1"

    def stale(self, unit: str, stats: dict[str, Any], units: dict[str, Letters]) -> str | None:
        return None if unit in units and stats["samples"] == len(units[unit].letters) else "changed"

    def size(self, unit: Letters) -> int:
        return len(unit.letters)

    def cost(self, unit: Letters) -> float:
        return float(len(unit.letters))

    def load(self, unit: Letters) -> Letters:
        return unit

    def worker(self, in_process: bool, threads: int = 1) -> Any:
        return partial(LetterWorker, self.shards)

    def actors(self, workers: int, gpus: float) -> tuple[int, None]:
        return workers, None

    def needs(self) -> Needs:
        return Needs()

    def finalize(self, units: list[Letters], committed: dict[str, Any]) -> None:
        self.output.write_json("letters.json", {"shards": sorted(committed)})

    def report(self, outcome: Outcome[Letters]) -> Outcome[Letters]:
        return outcome


def test_a_third_job_gets_skipping_cleanup_and_finalize_from_the_runner(tmp_path):
    storage = Storage(str(tmp_path))
    units = [Letters("train-000000", "abc"), Letters("train-000001", "de"), Letters("val-000000", "f")]
    first = run_job(LetterJob(storage, units), quiet=True)
    assert first.done == [u.name for u in units] and first.skipped == 0
    assert json.loads((tmp_path / "letters.json").read_text()) == {"shards": [u.name for u in units]}

    marker = tmp_path / "train-000001_stats.json"  # another stamp: not a commit of this job
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "stamp": "v0"}))
    (tmp_path / "val-000000.tar.tmp").write_bytes(b"partial")  # an interrupted commit's leftover
    (tmp_path / "letters.json.tmp").write_bytes(b"{")  # an interrupted index write
    (tmp_path / "notes.txt").write_text("the user's own file")
    units[0] = Letters("train-000000", "abcd")  # its input changed: the commit is stale
    job = LetterJob(storage, units)
    second = run_job(job, quiet=True)

    assert job.calls == ["check", "claim"]
    assert second.done == ["train-000000", "train-000001"] and second.skipped == 1
    assert set(second.removed) >= {"train-000000_stats.json", "train-000001_stats.json", "val-000000.tar.tmp",
                                   "letters.json.tmp"}
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"
    assert second.committed["train-000000"]["samples"] == 4
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "_dfprep.lock").exists()


def test_the_runner_hands_out_the_costliest_units_first_and_keeps_the_plans_names(tmp_path, monkeypatch):
    monkeypatch.setattr(LetterWorker, "ran", [])
    storage = Storage(str(tmp_path))
    units = [Letters("train-000000", "a"), Letters("train-000001", "abcd"), Letters("train-000002", "xy"),
             Letters("val-000000", "pq")]
    outcome = run_job(LetterJob(storage, units), quiet=True)
    assert LetterWorker.ran == ["train-000001", "train-000002", "val-000000", "train-000000"]  # ties: plan order
    assert json.loads((tmp_path / "letters.json").read_text()) == {"shards": sorted(u.name for u in units)}
    assert {name: stats["samples"] for name, stats in outcome.committed.items()} == \
        {"train-000000": 1, "train-000001": 4, "train-000002": 2, "val-000000": 2}


# ---------------------------------------------------------------- the output contract's schemas and statuses


def test_every_table_extract_and_maps_write_has_the_contracts_schema(small_root, tmp_path):
    from dfprep.jobs.maps import MapRun, MapSettings
    from dfprep.runner.run import maps_run

    config = library_config(small_root, workers=0)
    out = tmp_path / "out"
    extract_run(scan("folder", small_root, config.dataset), config, str(out), quiet=True)
    maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))

    videos = pq.read_table(out / "videos.parquet")
    assert videos.schema == videos_schema([])
    assert set(videos.column("status").to_pylist()) <= set(STATUSES)
    assert {"ok", "no_face"} <= set(videos.column("status").to_pylist())
    assert pq.read_table(out / "plan.parquet").schema == PLAN_SCHEMA
    shards = sorted(out.glob("*-0*.parquet"))
    assert shards and all(pq.read_table(s).schema == sample_index_schema(False) for s in shards)
    map_indexes = sorted((out / "maps" / "landmarks").glob("*.parquet"))
    assert map_indexes and all(pq.read_table(m).schema == MAP_INDEX_SCHEMA for m in map_indexes)


def test_the_record_columns_of_the_contract_are_the_catalogs_record_fields():
    from dfprep.io.layout import RECORD_FIELDS

    assert [name for name, _ in RECORD_FIELDS] == [f.name for f in dataclasses.fields(VideoRecord)]


def test_a_column_outside_the_contract_is_refused_not_dropped(tmp_path):
    with pytest.raises(ValueError, match=r"columns \['surprise'\] are not in the output contract"):
        videos_schema(["video_id", "surprise"])
    writer = ShardWriter(Storage(str(tmp_path)), "train-000000")
    writer.add(Sample("a", {"txt": b"x"}, {"video_id": "v", "surprise": 1}))
    with pytest.raises(ValueError, match="train-000000.parquet: columns"):
        writer.commit({}, sample_index_schema(False))
    assert not list(tmp_path.iterdir())  # nothing published


def test_statuses_compare_and_serialise_as_their_plain_values():
    assert VideoStatus.PARTIAL == "partial" and {"partial": 1}[VideoStatus.PARTIAL] == 1
    assert json.dumps({"status": VideoStatus.NO_FACE}) == '{"status": "no_face"}'
    assert [str(s) for s in STATUSES] == ["ok", "partial", "no_face", "missing", "unsupported", "decode_error",
                                          "timeout", "internal_error"]


def test_progress_counts_a_unit_that_ray_redoes_once():
    from dfprep.runner.progress import Progress

    progress = Progress(5, quiet=True, bar=Bar("extract", "video", "faces_per_s", faces=True))
    for unit, done, faces in [("a", 1, 2), ("a", 2, 3), ("a", 1, 2), ("a", 2, 3), ("a", 3, 4), ("b", 2, 1)]:
        progress(unit, done, faces)  # unit a's actor died after two videos; the retry starts over
    assert progress.done == {"a": 3, "b": 2} and progress.faces == {"a": 4, "b": 1}
    progress.close()


def test_only_the_checked_reader_opens_tars():
    import ast

    package = Path(__file__).resolve().parents[1] / "dfprep"
    users = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                   if any(isinstance(node, ast.Import) and any(a.name == "tarfile" for a in node.names)
                          for node in ast.walk(ast.parse(path.read_text()))))
    assert users == ["io/shards.py"]


def test_a_ray_actors_progress_is_throttled_but_its_last_totals_always_reach_the_driver():
    from dfprep.runner.run import Throttled

    sent: list[tuple[str, int, int]] = []
    slow = Throttled(lambda unit, done, faces: sent.append((unit, done, faces)), interval_s=3600.0)
    for done in range(1, 6):
        slow("train-000003", done, 2 * done)
    assert sent == [("train-000003", 1, 2)]  # the first at once, the next ones held back
    slow.flush()
    slow.flush()  # nothing new: nothing sent twice
    assert sent == [("train-000003", 1, 2), ("train-000003", 5, 10)]
    every = Throttled(lambda unit, done, faces: sent.append((unit, done, faces)), interval_s=0.0)
    every("val-000000", 1, 1)
    every("val-000000", 2, 1)
    assert sent[2:] == [("val-000000", 1, 1), ("val-000000", 2, 1)]
