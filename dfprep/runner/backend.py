"""Where an extraction runs when the user did not say: in this process, or on a local Ray pool.

One process keeps about IN_PROCESS_CORES cores busy (FFmpeg's decode threads and the decode thread run
beside the face work); a local Ray pool keeps every CPU busy but pays RAY_START_S before its first video
(ray.init, the actors' imports and model loads, on the same CPUs). Ray is chosen only when the CPUs it
adds would save more than that start-up: videos × VIDEO_CPU_S × (1/IN_PROCESS_CORES − 1/cpus) > RAY_START_S.
The constants are measured by benchmarks/cli_speed.py on FF++ c23 videos with 32 frames.
"""

from __future__ import annotations

import os

from dfprep.config import PipelineConfig
from dfprep.config.schema import RayConfig
from dfprep.runner.pool import worker_count

IN_PROCESS_CORES = 1.6  # cores one in-process run keeps busy on 1080p/720p FF++ videos
VIDEO_CPU_S = 1.0  # CPU-seconds one FF++ c23 video takes at 32 frames (decode, faces, encode)
RAY_START_S = 6.0  # wall seconds before a local Ray pool's first video, on 2 shared cores


def planned_workers(ray: RayConfig, videos: int | None, cpus: int | None = None) -> tuple[int, str]:
    """Workers for this run (0 = in-process) and, when dfprep chose in-process itself, why.

    `videos` None: the job leaves the choice to the ray settings (every CPU unless --workers says otherwise).
    """
    config = PipelineConfig(ray=ray)
    if videos is None or ray.workers is not None or ray.address or os.environ.get("RAY_ADDRESS"):
        return worker_count(config), ""  # the user (or the cluster, or the job) decided
    cpus = cpus or os.cpu_count() or 1
    saved = videos * VIDEO_CPU_S * (1 / IN_PROCESS_CORES - 1 / cpus)
    if cpus > 1 and saved > RAY_START_S:
        return cpus, ""
    return 0, (f"in-process: {videos} videos on {cpus} CPUs finish sooner than a Ray pool could start "
               "(--workers N to use Ray)")
