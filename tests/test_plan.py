"""Shard plan: one split per unit, families together, deterministic numbering, persisted and reused."""

import pytest

from dfprep.catalog.base import VideoRecord
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.jobs.plan import UNITS_PER_WORKER, build_units, load_or_create_plan, unit_size
from dfprep.io.storage import Storage


def _record(stem: str, split: str, label: int, family: str) -> VideoRecord:
    vid = f"d/{'fake' if label else 'real'}/raw/{stem}"
    return VideoRecord(vid, f"/data/{stem}.mp4", "d", "fake" if label else "real", "raw", split, label,
                       f"d/real/raw/{family}")


def _catalog():
    records = []
    for index in range(10):
        split = ["train", "test"][index % 2]
        records.append(_record(f"{index:03d}", split, 0, f"{index:03d}"))
        records += [_record(f"{index:03d}_{m}", split, 1, f"{index:03d}") for m in range(3)]
    return records


def test_units_hold_one_split_and_keep_families_together():
    units = build_units(reversed(_catalog()), videos_per_shard=8)
    assert [u.name for u in units] == ["test-000000", "test-000001", "test-000002",
                                       "train-000000", "train-000001", "train-000002"]
    for unit in units:
        assert len({r.split for r in unit.records}) == 1 and len(unit.records) <= 8
        assert unit.name.startswith(unit.records[0].split)
        families = [r.family_id for r in unit.records]
        assert all(families.count(f) == 4 for f in set(families))  # whole families only
        for record, original in zip(unit.records, unit.original_paths):
            assert original == (f"/data/{record.family_id.split('/')[-1]}.mp4" if record.label else None)
    assert sum(len(u.records) for u in units) == 40


def test_plan_is_deterministic():
    a = build_units(_catalog(), 8)
    b = build_units(list(reversed(_catalog())), 8)
    assert [(u.name, [r.video_id for r in u.records]) for u in a] == [(u.name, [r.video_id for r in u.records])
                                                                      for u in b]


def test_plan_is_persisted_reused_refused_and_extended(tmp_path):
    storage = Storage(str(tmp_path))
    config = load_config(None, {"output.videos_per_shard": 8})
    units, note = load_or_create_plan(storage, _catalog()[:20], config)
    assert note.startswith("new plan") and storage.exists("plan.parquet")
    again, note = load_or_create_plan(storage, [], config)
    assert note.startswith("resuming") and [u.records for u in again] == [u.records for u in units]
    with pytest.raises(DfprepError, match="different config.*--overwrite"):
        load_or_create_plan(storage, [], load_config(None, {"sampling.frames": 4}))
    extended, note = load_or_create_plan(storage, _catalog(), config, extend=True)
    assert "20 new videos" in note
    assert [u.name for u in extended[: len(units)]] == [u.name for u in units]  # old units keep their numbers
    assert len({u.name for u in extended}) == len(extended)
    assert sum(len(u.records) for u in extended) == 40


def test_units_are_sized_so_every_worker_gets_several():
    assert unit_size(28, 2, None) == 28 // (UNITS_PER_WORKER * 2)  # a small folder still feeds both workers
    assert unit_size(28, 64, None) == 1  # a big cluster: one video per unit, as many busy workers as videos
    assert unit_size(20_000, 2, None) == 48  # plenty of videos: full-size shards
    assert unit_size(28, 0, None) == unit_size(28, 1, None) == 48  # in-process / one worker: nothing to balance
    assert unit_size(28, 64, 7) == unit_size(28, 0, 7) == 7  # a shard size the user set is kept exactly


def test_a_new_plan_gives_each_worker_four_units_and_a_resumed_plan_keeps_its_units(tmp_path):
    storage = Storage(str(tmp_path))
    config = load_config(None, {})  # videos_per_shard unset: sized for the workers
    records = [_record(f"{i:03d}", "train", 0, f"{i:03d}") for i in range(40)]
    units, _ = load_or_create_plan(storage, records, config, workers=2)
    assert len(units) >= UNITS_PER_WORKER * 2 and sum(len(u.records) for u in units) == 40
    again, note = load_or_create_plan(storage, records, config, workers=16)  # other workers: same units
    assert note.startswith("resuming") and [u.records for u in again] == [u.records for u in units]
    more = records + [_record(f"{i:03d}", "train", 0, f"{i:03d}") for i in range(40, 56)]
    extended, _ = load_or_create_plan(storage, more, config, extend=True, workers=2)
    assert [u.records for u in extended[:len(units)]] == [u.records for u in units]
    assert len(extended) - len(units) == 8  # the 16 new videos, sized for 2 workers: 2 per unit


def test_an_extract_unit_costs_its_bytes_of_video_so_the_biggest_go_first(tmp_path):
    from dfprep.jobs.extract_shards import ExtractJob
    from dfprep.jobs.plan import WorkUnit

    (tmp_path / "big.mp4").write_bytes(b"x" * 5000)
    (tmp_path / "small.mp4").write_bytes(b"x" * 70)
    records = [VideoRecord(f"folder/real/raw/{stem}", str(tmp_path / f"{stem}.mp4"), "folder", "real", "raw",
                           "unassigned", 0, f"folder/real/raw/{stem}") for stem in ("big", "small", "gone")]
    job = ExtractJob(Storage(str(tmp_path / "out")), records, load_config(None, {}), overwrite=False, extend=False,
                     runtime_versions={})
    assert job.cost(WorkUnit("unassigned-000000", tuple(records), (None,) * 3)) == 5070.0  # a missing file: 0
    assert job.cost(WorkUnit("unassigned-000001", tuple(records[1:]), (None,) * 2)) == 70.0
