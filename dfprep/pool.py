"""Ray actor pool for extraction: each actor loads dlib once and processes whole work units."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Callable

from dfprep.config import PipelineConfig
from dfprep.errors import DfprepError, one_line
from dfprep.plan import WorkUnit
from dfprep.shards import Storage

# One thread per actor: parallelism comes from actors, not from OpenCV/OpenMP/BLAS inside them.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ExtractWorker:
    """Ray actor body: holds a VideoExtractor and reports per-video progress to the queue actor."""

    def __init__(self, config: PipelineConfig, models: Any):
        import cv2

        from dfprep.extract import VideoExtractor
        from dfprep.faults import fault_hook_from_env

        cv2.setNumThreads(1)
        self.extractor = VideoExtractor(config, models, decode_threads=config.ray.decode_threads)
        self.fault = fault_hook_from_env()

    def run_unit(self, unit: WorkUnit, storage: Storage, queue: Any) -> dict[str, Any]:
        """Process and commit one unit; each finished video is announced as (unit, position, row)."""
        from dfprep.run import process_unit

        positions = iter(range(len(unit.records)))
        report = lambda row: queue.put_nowait.remote((unit.name, next(positions), row))  # noqa: E731
        return process_unit(unit, self.extractor, storage, report, self.fault)


def connect(config: PipelineConfig, workers: int) -> None:
    """Join the configured cluster (address / RAY_ADDRESS) or start a local one sized by `workers`."""
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": SINGLE_THREAD_ENV})


class ActorPool:
    """A fixed set of stateful Ray actors fed whole units, at most k in flight each, messages via a queue.

    `worker` is any class with `run_unit(unit, *task_args, queue)`; it reports progress by putting
    messages on the queue actor, which `run` hands to `on_message` as they arrive.
    """

    def __init__(self, worker: type, args: tuple[Any, ...], count: int, config: PipelineConfig,
                 resources: dict[str, Any] | None = None):
        import ray
        from ray.util.queue import Queue

        connect(config, count)
        self.ray = ray
        self.queue = Queue(maxsize=0)
        self.in_flight = max(1, config.ray.in_flight_per_worker)
        remote = ray.remote(max_restarts=config.ray.actor_restarts, max_task_retries=config.ray.task_retries,
                            **(resources or {"num_cpus": 1}))(worker)
        options = {"runtime_env": {"env_vars": {**SINGLE_THREAD_ENV, **_fault_env()}}}
        # Constructor args stay plain values (no actor handles): Ray can then always restart an actor.
        self.actors = [remote.options(**options).remote(*args) for _ in range(max(1, count))]

    def __enter__(self) -> "ActorPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.ray.kill(self.queue.actor)

    def run(self, units: list[Any], task_args: tuple[Any, ...], on_message: Callable[[Any], None]) -> dict[str, str]:
        """Process every unit; returns unit → reason for units that failed even after retries."""
        todo, pending, failures = deque(units), {}, {}
        load = {index: 0 for index in range(len(self.actors))}
        while todo or pending:
            self._submit(todo, pending, load, task_args)
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=0.2)
            self._drain(on_message)
            for ref in ready:
                unit, actor_index = pending.pop(ref)
                load[actor_index] -= 1
                try:
                    self.ray.get(ref)
                except DfprepError as exc:  # a problem with the data itself: retrying cannot help
                    raise DfprepError(one_line(getattr(exc, "cause", None) or exc)) from None
                except Exception as exc:  # an infrastructure failure that outlived the retries
                    failures[unit.name] = f"{type(exc).__name__}: {one_line(exc, 160)}"
        time.sleep(0.05)
        self._drain(on_message)
        return failures

    def _submit(self, todo: deque[Any], pending: dict[Any, Any], load: dict[int, int],
                task_args: tuple[Any, ...]) -> None:
        """Top up each actor to `in_flight` units: never the whole plan at once."""
        for index, actor in enumerate(self.actors):
            while todo and load[index] < self.in_flight:
                unit = todo.popleft()
                pending[actor.run_unit.remote(unit, *task_args, self.queue.actor)] = (unit, index)
                load[index] += 1

    def _drain(self, on_message: Callable[[Any], None]) -> None:
        """Hand the actors' queued messages over, in arrival order."""
        waiting = self.queue.qsize()
        for message in self.queue.get_nowait_batch(waiting) if waiting else []:
            on_message(message)


def _fault_env() -> dict[str, str]:
    """Pass a test's fault-injection spec through to the actors."""
    from dfprep.faults import ENV

    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}
