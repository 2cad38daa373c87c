"""Run the map job (`dfprep maps`, and extract's inline maps): lock, refuse or resume, map what is left on
this process or on Ray actors, write the manifest. The map job itself is dfprep.jobs.maps; this module wires in
the Grad-CAM backend (dfprep.torch.cam) for `--method cam`, so the job never imports torch.
"""

from __future__ import annotations

import time
from typing import Any

from dfprep.config import PipelineConfig, load_config
from dfprep.errors import DfprepError
from dfprep.io.layout import MAPS_FOLDER
from dfprep.io.lock import OutputLock
from dfprep.io.ownership import open_output, output_errors
from dfprep.io.regionmaps import ZooCheckpoint
from dfprep.io.shards import remove_stale_staging
from dfprep.io.storage import Storage
from dfprep.jobs.maps import (CamBackend, MapReport, MapSettings, MapUnit, MapWorker, ReportFn, face_units,
                              finalize_maps, inline_settings, make_mapper, manifest_base, map_unit, prepare_maps,
                              source_summary, valid_map_commits, zoo_layers)
from dfprep.runner.pool import ActorPool, cluster_gpus, connect, worker_count
from dfprep.runner.progress import MapProgress
from dfprep.torch.cam import GradCamBackend


def cam_backend(settings: MapSettings) -> CamBackend | None:
    """The Grad-CAM backend for `--method cam` (torch itself loads only when a zoo is); None for landmark maps."""
    return GradCamBackend() if settings.method == "cam" else None


def check_inline_maps(config: PipelineConfig) -> None:
    """Before extract starts: every zoo checkpoint of inline `cam` maps reads and loads (not hours later)."""
    if "cam" in config.output.maps and config.cam.zoo:
        settings = inline_settings("cam", config.cam).resolved()
        zoo_layers(settings, [ZooCheckpoint.read(path) for path in settings.zoo], GradCamBackend())


def maps_run(output: str, settings: MapSettings, *, workers: int | None = None, address: str | None = None,
             overwrite: bool = False, quiet: bool = False, filesystem: Any = None) -> MapReport:
    """The whole `dfprep maps`: check, lock the output, refuse or resume, map what is left, write the manifest."""
    started = time.monotonic()
    settings = settings.resolved()
    faces = open_output(output, filesystem)
    with output_errors(faces), OutputLock(faces, "maps"):
        report = _maps_locked(faces, settings, workers, address, overwrite, quiet)
    report.seconds = time.monotonic() - started
    return report


def _maps_locked(faces: Storage, settings: MapSettings, workers: int | None, address: str | None, overwrite: bool,
                 quiet: bool) -> MapReport:
    """The maps run proper, under the output's lock."""
    units = face_units(faces)
    checkpoints = [ZooCheckpoint.read(path) for path in settings.zoo]
    cam = cam_backend(settings)
    layers = zoo_layers(settings, checkpoints, cam) if cam is not None and checkpoints else []
    source = source_summary(faces)
    maps = Storage(faces.path(f"{MAPS_FOLDER}/{settings.name}"), faces.fs)
    manifest = manifest_base(settings, checkpoints, layers, source)
    remove_stale_staging()
    removed = prepare_maps(maps, manifest, units, overwrite)
    committed = valid_map_commits(maps, manifest["settings_hash"])
    todo = [u for u in units if u.name not in committed]
    progress = MapProgress(sum(u.samples for u in todo), quiet)
    try:
        if todo and workers == 0:
            run_in_process(todo, settings, checkpoints, cam, faces, maps, progress, manifest["settings_hash"])
        elif todo:
            run_on_ray(todo, settings, checkpoints, cam, faces, maps, progress, workers, address,
                       manifest["settings_hash"])
    finally:
        progress.close()
    committed = finalize_maps(maps, manifest, units)
    note = "" if source.get("complete", True) else "the face output is incomplete: rerun maps after extract finishes"
    shown = f"{faces.display}/{MAPS_FOLDER}/{settings.name}"  # with its scheme (s3://…), without the query
    return MapReport(shown, settings.name, settings.method, len(units), len(units) - len(todo),
                     sum(committed[u.name]["samples"] for u in todo if u.name in committed),
                     sum(committed[u.name]["samples"] for u in units if u.name in committed),
                     0.0, removed, note)


# ---------------------------------------------------------------- execution: in-process or Ray actors


def run_in_process(units: list[MapUnit], settings: MapSettings, checkpoints: list[ZooCheckpoint],
                   cam: CamBackend | None, faces: Storage, maps: Storage, progress: ReportFn,
                   settings_hash: str = "") -> None:
    """--workers 0: every unit in this process, one after another."""
    mapper = make_mapper(settings, checkpoints, cam)
    for unit in units:
        map_unit(unit, faces, maps, mapper, progress, settings_hash)


def actor_plan(settings: MapSettings, workers: int, gpus: float) -> tuple[int, dict[str, Any]]:
    """How many actors and what each asks for: CAM takes one GPU each when the cluster has GPUs."""
    if settings.method == "cam" and gpus >= 1:
        return int(gpus), {"num_cpus": 1, "num_gpus": 1}
    return max(1, workers), {"num_cpus": 1}


def run_on_ray(units: list[MapUnit], settings: MapSettings, checkpoints: list[ZooCheckpoint], cam: CamBackend | None,
               faces: Storage, maps: Storage, progress: ReportFn, workers: int | None, address: str | None,
               settings_hash: str = "") -> None:
    """Units over a pool of map actors: bounded in flight, retried, progress per batch."""
    config = load_config(None, {"ray.workers": workers, "ray.address": address})
    connect(config, worker_count(config))
    count, resources = actor_plan(settings, worker_count(config), cluster_gpus())
    digests = [checkpoint.sha256 for checkpoint in checkpoints]
    with ActorPool(MapWorker, (settings, digests, cam), count, config, resources) as pool:
        failures = pool.run(units, (faces, maps, settings_hash), lambda message: progress(*message))
    if failures:
        first = next(iter(failures.items()))
        raise DfprepError(f"{len(failures)} map shard(s) failed after retries (first: {first[0]}: {first[1]}); "
                          f"rerun the same command to complete them")
