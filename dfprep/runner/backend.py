"""Where a run goes when the user did not say: video threads in this process, or a local Ray pool.

In-process, `threads` video threads take units from one queue: FFmpeg, dlib's HOG detector and OpenCV
release the GIL (dlib's shape predictor holds it, ~0.4 ms a face), so each thread keeps about a core busy
(THREAD_CORES of one, the rest is Python under the GIL), up to IN_PROCESS_THREADS. A local Ray pool keeps
every CPU busy with no GIL but pays RAY_START_S before its first video (ray.init, the actors' imports and model
loads, on the same CPUs). Ray is chosen only when the CPUs it adds would save more than that start-up:
videos × VIDEO_CPU_S × (1/in-process cores − 1/cpus) > RAY_START_S.
The constants are measured by benchmarks/cli_speed.py on FF++ c23 videos with 32 frames.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dfprep.config import PipelineConfig
from dfprep.config.machine import usable_cpus
from dfprep.config.schema import RayConfig
from dfprep.runner.pool import cluster_workers, joins_cluster, worker_count

IN_PROCESS_THREADS = 4  # beyond this the Python share of each video (under the GIL) stops the gain
THREAD_CORES = 0.9  # cores one video thread keeps busy (decode threads included), measured on 2 cores
VIDEO_CPU_S = 1.0  # CPU-seconds one FF++ c23 video takes at 32 frames (decode, faces, encode)
RAY_START_S = 6.0  # wall seconds before a local Ray pool's first video, on 2 shared cores


@dataclass(frozen=True)
class Backend:
    """Where a run's units go: `workers` Ray actors, or (workers 0) `threads` video threads in this process."""

    workers: int
    threads: int = 1
    note: str = ""  # why dfprep chose in-process itself (empty when the user, a cluster or the job decided)


def choose_backend(ray: RayConfig, videos: int | None, cpus: int | None = None) -> Backend:
    """The backend for this run. `--workers 0` is one thread, one video after another (debuggable, no Ray),
    unless `ray.threads` says more.

    `videos` None: the job leaves the choice to the ray settings (every CPU unless --workers says otherwise).
    """
    config = PipelineConfig(ray=ray)
    if videos is None or ray.workers is not None or joins_cluster(config):
        workers = worker_count(config)  # the user (or the cluster, or the job) decided
        return Backend(workers, (ray.threads or 1) if workers == 0 else 1)
    cpus = cpus or usable_cpus()
    threads = ray.threads or max(1, min(cpus, IN_PROCESS_THREADS))
    saved = videos * VIDEO_CPU_S * (1 / max(1.0, threads * THREAD_CORES) - 1 / cpus)
    if cpus > 1 and saved > RAY_START_S:
        return Backend(cpus)
    return Backend(0, threads, f"in-process: {videos} videos on {cpus} CPU{'s' if cpus > 1 else ''} ({threads} video "
                               f"thread{'s' if threads > 1 else ''}) finish sooner than a Ray pool could start "
                               "(--workers N to use Ray)")


def on_the_cluster(backend: Backend, ray: RayConfig) -> Backend:
    """A run that joins a cluster with `--workers` unset: one worker per CPU of the cluster's nodes (connects),
    so its units are planned for the cluster and not for the driver's own CPUs."""
    config = PipelineConfig(ray=ray)
    if backend.workers and ray.workers is None and joins_cluster(config):
        return replace(backend, workers=cluster_workers(config))
    return backend
