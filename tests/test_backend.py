"""Where a default run goes: in-process when Ray's start-up would cost more than its extra CPUs save."""

from __future__ import annotations

import os

import pyarrow.parquet as pq

from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.runner.backend import Backend, choose_backend
from dfprep.runner.run import extract_run


def test_a_small_input_on_few_cpus_runs_in_process_and_a_large_one_on_ray():
    default = load_config(None, {})
    small = choose_backend(default.ray, 28, cpus=2)  # ffpp-mini x4 on 2 CPUs: Ray cannot pay off
    assert (small.workers, small.threads) == (0, 2) and "in-process" in small.note  # one video thread per CPU
    assert choose_backend(default.ray, 2000, cpus=2) == Backend(2)  # many videos: both CPUs as Ray workers
    assert choose_backend(default.ray, 28, cpus=64) == Backend(64)  # a big machine pays Ray's start-up back at once
    assert choose_backend(default.ray, 3, cpus=1) == Backend(0, 1, choose_backend(default.ray, 3, cpus=1).note)
    assert choose_backend(default.ray, 8, cpus=16).threads == 4  # threads stop paying beyond a few (the GIL)


def test_what_the_user_set_is_never_second_guessed(monkeypatch):
    assert choose_backend(load_config(None, {"ray.workers": 2}).ray, 1, cpus=2) == Backend(2)
    assert choose_backend(load_config(None, {"ray.workers": 0}).ray, 10**6, cpus=64) == Backend(0, 1)  # one thread
    assert choose_backend(load_config(None, {"ray.workers": 0, "ray.threads": 3}).ray, 5, cpus=2) == Backend(0, 3)
    assert choose_backend(load_config(None, {"ray.threads": 3}).ray, 5, cpus=2).threads == 3
    assert choose_backend(load_config(None, {"ray.address": "auto"}).ray, 1, cpus=2).workers >= 1  # a cluster: Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert choose_backend(load_config(None, {}).ray, 1, cpus=2).workers >= 1


def test_a_default_run_on_a_few_videos_says_it_ran_in_process(folder_dataset, tmp_path):
    config = load_config(None, {"sampling.frames": 2})  # ray.workers unset, as a user runs it
    report = extract_run(scan("folder", folder_dataset, config.dataset), config, str(tmp_path / "out"), quiet=True)
    assert "in-process: 8 videos" in report.note and report.faces == 12
    assert len(pq.read_table(tmp_path / "out/videos.parquet")) == 8


def test_inline_maps_stay_in_process_when_dfprep_chose_in_process(folder_dataset, tmp_path, monkeypatch):
    import dfprep.runner.run as run

    def no_ray(*args, **kwargs):
        raise AssertionError("a small default run started Ray for its inline maps")

    monkeypatch.setattr(run, "run_on_ray", no_ray)
    config = load_config(None, {"sampling.frames": 2, "output.maps": ["landmarks"]})  # ray.workers unset
    report = extract_run(scan("folder", folder_dataset, config.dataset), config, str(tmp_path / "out"), quiet=True)
    maps = tmp_path / "out" / "maps" / "landmarks"
    assert "in-process" in report.note and report.maps == [f"landmarks maps: {report.faces} in {maps}"]
