"""The map job's wiring: the Grad-CAM backend (dfprep.torch.cam) handed to `--method cam`, so the job itself
(dfprep.jobs.maps) never imports torch; `maps_run` (dfprep.runner.run) runs the job on the runner.
"""

from __future__ import annotations

from dfprep.config import PipelineConfig
from dfprep.io.regionmaps import ZooCheckpoint
from dfprep.io.storage import Storage
from dfprep.jobs.maps import CamBackend, MapJob, MapRun, MapSettings, inline_settings, zoo_layers
from dfprep.torch.cam import GradCamBackend


def cam_backend(settings: MapSettings) -> CamBackend | None:
    """The Grad-CAM backend for `--method cam` (torch itself loads only when a zoo is); None for landmark maps."""
    return GradCamBackend() if settings.method == "cam" else None


def check_inline_maps(config: PipelineConfig) -> None:
    """Before extract starts: every zoo checkpoint of inline `cam` maps reads and loads (not hours later)."""
    if "cam" in config.output.maps and config.cam.zoo:
        settings = inline_settings("cam", config.cam).resolved()
        zoo_layers(settings, [ZooCheckpoint.read(path) for path in settings.zoo], GradCamBackend())


def map_job(faces: Storage, run: MapRun) -> MapJob:
    """The map job over a face output (its settings resolved and checked here, before any file is touched)."""
    return MapJob(faces, run, cam_backend(run.settings))
