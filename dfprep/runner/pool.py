"""The Ray backend (the only module that imports Ray): connect, a pool of stateful actors fed whole units."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from typing import Any, Callable

from dfprep.config import PipelineConfig
from dfprep.errors import DfprepError, one_line
from dfprep.io.shards import remove_stale_staging
from dfprep.runner import faults

_SHUTDOWN_WAIT_S = 10.0  # how long an interrupted pool waits for its killed actors before sweeping staging

# One thread per actor: parallelism comes from actors, not from OpenCV/OpenMP/BLAS inside them.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def worker_count(config: PipelineConfig) -> int:
    """Workers to use: the configured number, else every CPU of this machine."""
    return config.ray.workers if config.ray.workers is not None else (os.cpu_count() or 1)


def ray_version() -> str:
    """Ray's version, stamped into dataset.json (from its package metadata: importing Ray takes ~0.5 s)."""
    from importlib.metadata import version

    return version("ray")


def cluster_gpus() -> float:
    """GPUs of the connected cluster (0 without any)."""
    import ray

    return ray.cluster_resources().get("GPU", 0)


def connect(config: PipelineConfig, workers: int) -> None:
    """Join the configured cluster (address / RAY_ADDRESS) or start a local one sized by `workers`."""
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    on_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main else None
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": SINGLE_THREAD_ENV})
    if on_main and callable(sigterm):  # ray.init replaces SIGTERM's handler: keep the command's own
        signal.signal(signal.SIGTERM, sigterm)


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
        self.pending: dict[Any, Any] = {}  # task ref → (unit, actor index) while it runs

    def __enter__(self) -> "ActorPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.ray.kill(self.queue.actor)
        if self.pending:  # stopped mid-run: once the killed actors are gone, their staging folders go too
            try:
                self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=_SHUTDOWN_WAIT_S)
            except Exception:  # noqa: BLE001 - Ray itself may be shutting down; the sweep below still runs
                pass
            remove_stale_staging(grace_s=2.0)

    def run(self, units: list[Any], task_args: tuple[Any, ...], on_message: Callable[[Any], None]) -> dict[str, str]:
        """Process every unit; returns unit → reason for units that failed even after retries."""
        todo, pending, failures = deque(units), self.pending, {}
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
                except Exception as exc:
                    failures[unit.name] = unit_failure(exc)
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


def unit_failure(error: Exception) -> str:
    """The real cause of a failed unit in one line; a data error or the output's OSError stops the run."""
    cause = getattr(error, "cause", None)  # RayTaskError wraps the exception the actor raised
    cause = cause if isinstance(cause, BaseException) else error
    if isinstance(cause, DfprepError):  # a problem with the data itself: retrying cannot help
        raise DfprepError(one_line(cause)) from None
    if isinstance(cause, OSError):  # the output failed (full disk, permissions): the same for every unit
        raise cause
    return f"{type(cause).__name__}: {one_line(cause, 160)}"


def _fault_env() -> dict[str, str]:
    """Pass a test's fault-injection spec through to the actors."""
    return {faults.ENV: os.environ[faults.ENV]} if os.environ.get(faults.ENV) else {}
