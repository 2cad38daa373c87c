"""Resource bounds: an 8K frame stays within a fixed memory budget; the pool never floods the cluster."""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from pathlib import Path

from dfprep.jobs.plan import PlannedUnit
from dfprep.runner.pool import ActorPool
from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip

PEAK_RSS = """
from dfprep.catalog.base import VideoRecord
from dfprep.config import load_config
from dfprep.jobs.extract import ExtractionModels, VideoExtractor
config = load_config(None, {"sampling.frames": 2})
extractor = VideoExtractor(config, ExtractionModels.resolve(config))
record = VideoRecord("b/real/raw/8k", PATH, "b", "real", "raw", "test", 0, "b/real/raw/8k")
row = extractor.extract(record, None, lambda sample: None).row
# VmHWM belongs to this address space; ru_maxrss would carry over the forking parent's peak across exec
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(row["status"], row["faces_written"], peak_kb // 1024)
"""


def test_an_8k_frame_is_processed_within_a_fixed_memory_budget(tmp_path):
    path = write_clip(tmp_path / "8k.mp4", 7680, 4320, 2, linear_motion(FacePlacement(3000, 1500, 6.0),
                                                                        FacePlacement(3100, 1600, 6.0)), crf=35)
    code = PEAK_RSS.replace("PATH", repr(str(path)))
    status, faces, peak_mb = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True).stdout.split()
    assert (status, faces) == ("ok", "2")
    assert int(peak_mb) < 1200  # models ~300 MB + a handful of 8K frames (100 MB each as RGB), never more


class _Method:
    def __init__(self, log: list, actor: int):
        self.log, self.actor = log, actor

    def remote(self, unit, *task_args):
        self.log.append((self.actor, unit.name))
        return f"ref-{unit.name}"


class _Actor:
    def __init__(self, log: list, index: int):
        self.run_unit = _Method(log, index)


def test_the_pool_keeps_at_most_k_units_in_flight_per_actor():
    log: list = []
    pool = object.__new__(ActorPool)  # the submission logic alone, without starting Ray
    pool.actors, pool.in_flight, pool.queue = [_Actor(log, 0), _Actor(log, 1)], 2, type("Q", (), {"actor": None})
    todo = deque(PlannedUnit(f"train-{i:06d}", i, 1) for i in range(100))
    pending: dict = {}
    load = {0: 0, 1: 0}
    built: list[str] = []
    pool._submit(todo, pending, load, (None,), lambda unit: built.append(unit.name) or unit)
    assert len(pending) == 4 and len(todo) == 96 and load == {0: 2, 1: 2}
    assert built == ["train-000000", "train-000001", "train-000002", "train-000003"]  # only what is sent is built
    load[1] -= 1  # one unit of actor 1 finished
    pending.pop("ref-train-000002", None)
    pool._submit(todo, pending, load, (None,))
    assert load == {0: 2, 1: 2} and len(todo) == 95 and log[-1] == (1, "train-000004")
