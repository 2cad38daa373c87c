"""Shard plan: one split per unit, families together, deterministic numbering, persisted and reused."""

import pytest

from dfprep.catalog.base import VideoRecord
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.jobs.plan import UNITS_PER_WORKER, WorkUnit, build_units, load_or_create_plan, unit_size
from dfprep.io.storage import Storage


def _plan(storage, records, config, **options) -> tuple[list[WorkUnit], str]:
    """load_or_create_plan's units, each with its records (as its worker gets it)."""
    plan, note = load_or_create_plan(storage, records, config, **options)
    return [plan.load(unit) for unit in plan.units], note


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
    units, note = _plan(storage, _catalog()[:20], config)
    assert note.startswith("new plan") and storage.exists("plan.parquet")
    again, note = _plan(storage, [], config)
    assert note.startswith("resuming") and [u.records for u in again] == [u.records for u in units]
    with pytest.raises(DfprepError, match="different config.*--overwrite"):
        _plan(storage, [], load_config(None, {"sampling.frames": 4}))
    extended, note = _plan(storage, _catalog(), config, extend=True)
    assert "20 new videos" in note
    kept = {u.name: u.records for u in units}
    assert {u.name: u.records for u in extended if u.name in kept} == kept  # old units keep their numbers
    assert [u.name for u in extended] == sorted(u.name for u in extended)  # one order, resumed or not
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
    units, _ = _plan(storage, records, config, workers=2)
    assert len(units) >= UNITS_PER_WORKER * 2 and sum(len(u.records) for u in units) == 40
    again, note = _plan(storage, records, config, workers=16)  # other workers: same units
    assert note.startswith("resuming") and [u.records for u in again] == [u.records for u in units]
    more = records + [_record(f"{i:03d}", "train", 0, f"{i:03d}") for i in range(40, 56)]
    extended, _ = _plan(storage, more, config, extend=True, workers=2)
    assert [u.records for u in extended if u.name in {v.name for v in units}] == [u.records for u in units]
    assert len(extended) - len(units) == 8  # the 16 new videos, sized for 2 workers: 2 per unit


def test_an_extract_unit_costs_its_bytes_of_video_so_the_biggest_go_first(tmp_path):
    from dfprep.jobs.extract_shards import ExtractJob

    (tmp_path / "big.mp4").write_bytes(b"x" * 5000)
    (tmp_path / "small.mp4").write_bytes(b"x" * 70)
    records = [VideoRecord(f"folder/real/raw/{stem}", str(tmp_path / f"{stem}.mp4"), "folder", "real", "raw",
                           "unassigned", 0, f"folder/real/raw/{stem}") for stem in ("big", "small", "gone")]
    config = load_config(None, {"output.videos_per_shard": 2})
    job = ExtractJob(Storage(str(tmp_path / "out")), records, config, overwrite=False, extend=False,
                     runtime_versions={})
    units = job.plan(0).units  # sorted by id: big + gone, then small
    assert [job.size(unit) for unit in units] == [2, 1]
    assert [job.cost(unit) for unit in units] == [5000.0, 70.0]  # a missing file costs 0


def _reference_units(records, per_shard, numbers=None, originals=None):
    """The packing rule written over a list of records: families in (split, family, label, id) order, a family
    never split unless it alone exceeds a unit, a unit never spanning two splits."""
    ordered = sorted(records, key=lambda r: (r.split, r.family_id, r.label, r.video_id))
    known = {**(originals or {}), **{r.video_id: r.path for r in ordered if r.video_id == r.family_id}}
    numbers, units, current = dict(numbers or {}), [], []

    def close():
        split = current[0].split
        units.append((f"{split}-{numbers.get(split, 0):06d}", tuple(current),
                      tuple(known.get(r.family_id) if r.label == 1 else None for r in current)))
        numbers[split] = numbers.get(split, 0) + 1
        current.clear()

    families: dict[tuple[str, str], list[VideoRecord]] = {}
    for record in ordered:
        families.setdefault((record.split, record.family_id), []).append(record)
    for (split, _), members in families.items():
        if current and (current[0].split != split or len(current) + len(members) > per_shard):
            close()
        for record in members:
            current.append(record)
            if len(current) == per_shard:
                close()
    if current:
        close()
    return units


def _random_catalog(rng, families):
    records = []
    for family in range(families):
        split = rng.choice(["train", "val", "test", "unassigned"])
        original = f"d/real/raw/f{family:03d}"
        if rng.random() < 0.8:  # some fakes have no original in the catalog
            records.append(VideoRecord(original, f"/x/{family}.mp4", "d", "real", "raw", split, 0, original))
        records += [VideoRecord(f"d/fake/raw/f{family:03d}_{m}", f"/x/{family}_{m}.mp4", "d", "fake", "raw", split,
                                1, original) for m in range(rng.randint(0, 12))]
    rng.shuffle(records)
    return records


def test_the_columnar_plan_packs_exactly_like_the_rule_over_a_list_of_records(tmp_path):
    import random

    rng = random.Random(7)
    for trial in range(120):
        records, per_shard = _random_catalog(rng, rng.randint(0, 30)), rng.randint(1, 10)
        got = [(u.name, u.records, u.original_paths) for u in build_units(records, per_shard)]
        assert got == _reference_units(records, per_shard), trial
    # an extension numbers after the plan and pairs new fakes with originals the plan already holds
    config = load_config(None, {"output.videos_per_shard": 5})
    for trial in range(20):
        storage = Storage(str(tmp_path / f"x{trial}"))
        records = _random_catalog(rng, 25)
        first, rest = records[: len(records) // 2], records[len(records) // 2:]
        planned, _ = _plan(storage, first, config)
        extended, _ = _plan(storage, records, config, extend=True)
        numbers = {}
        for unit in planned:
            split = unit.name.rsplit("-", 1)[0]
            numbers[split] = numbers.get(split, 0) + 1
        originals = {r.video_id: r.path for r in first if r.video_id == r.family_id}
        added = _reference_units(rest, 5, numbers, originals)
        want = sorted([(u.name, u.records, u.original_paths) for u in planned] + added)
        assert [(u.name, u.records, u.original_paths) for u in extended] == want, trial

