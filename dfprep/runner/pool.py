"""The Ray backend (the only module that imports Ray): connect, check the nodes, a pool of stateful actors pinned
to the nodes and fed whole units, the units of a lost node redone on the others."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from dfprep import __version__
from dfprep.config import PipelineConfig
from dfprep.config.machine import usable_cpus
from dfprep.errors import DfprepError, one_line
from dfprep.io.shards import remove_stale_staging
from dfprep.runner import faults
from dfprep.jobs.contract import Needs
from dfprep.runner.cluster import NodeReport, node_problem, node_report, package_dir

_SHUTDOWN_WAIT_S = 10.0  # how long an interrupted pool waits for its killed actors before sweeping staging
_PROBE_TIMEOUT_S = 120.0  # how long the node check waits for each node's answer
_NODE_VERDICT_S = 60.0  # an actor gone, its node still looks alive: how long to wait for Ray's health check (5 misses)

# One thread per actor: parallelism comes from actors, not from OpenCV/OpenMP/BLAS inside them.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def as_is(unit: Any) -> Any:
    """A unit sent as the plan holds it."""
    return unit


def worker_count(config: PipelineConfig) -> int:
    """Workers to use: the configured number, else every CPU this process may use (its affinity and cgroup
    quota, not the host's count). A run that joins a cluster asks `cluster_workers` instead."""
    return config.ray.workers if config.ray.workers is not None else usable_cpus()


def cluster_workers(config: PipelineConfig) -> int:
    """One worker per CPU of the cluster's live nodes (connects): a run joining a cluster plans its units for
    the cluster's CPUs, not the driver's (a 4-core head would size a 64-CPU cluster's units for 4)."""
    connect(config, 0)
    _, slots = node_room({"num_cpus": 1})
    return max(1, sum(slots.values()))


def ray_version() -> str:
    """Ray's version, stamped into dataset.json (from its package metadata: importing Ray takes ~0.5 s)."""
    from importlib.metadata import version

    return version("ray")


def cluster_gpus() -> float:
    """GPUs of the connected cluster (0 without any)."""
    import ray

    return ray.cluster_resources().get("GPU", 0)


def connect(config: PipelineConfig, workers: int) -> None:
    """Join the configured cluster (address / RAY_ADDRESS) or start a local instance of our own sized by
    `workers` (never a `ray start` cluster that happens to run on this machine: address="local")."""
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    on_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main else None
    if address:  # code to ship goes with the job: Ray uploads local folders only at this level
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", runtime_env=job_env(config))
    else:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", runtime_env={"env_vars": SINGLE_THREAD_ENV})
    if on_main and callable(sigterm):  # ray.init replaces SIGTERM's handler: keep the command's own
        signal.signal(signal.SIGTERM, sigterm)


def joins_cluster(config: PipelineConfig) -> bool:
    """Whether this run joins an existing cluster (whose nodes may differ from the driver) or starts its own."""
    return bool(config.ray.address or os.environ.get("RAY_ADDRESS"))


def node_identity() -> dict[str, str]:
    """Which Ray node and machine run this process (stamped into commit markers; no node id outside Ray)."""
    ray = sys.modules.get("ray")  # never import Ray just to ask: an in-process run has none
    node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    return {"node_id": node, "host": socket.gethostname()}


def job_env(config: PipelineConfig) -> dict[str, Any]:
    """The runtime_env of a job joining a cluster: with ship_code, the driver's dfprep package goes to every
    worker (for nodes that have the dependencies but not dfprep); it comes first on their path."""
    return {"py_modules": [package_dir()]} if config.ray.ship_code else {}


def worker_env() -> dict[str, Any]:
    """The runtime_env of every actor and probe (on top of the job's): one thread each, a test's fault spec."""
    return {"env_vars": {**SINGLE_THREAD_ENV, **_fault_env()}}


@dataclass
class LostNode:
    """A node that died during the run, and the units it held (redone on the nodes left)."""

    host: str
    units: list[str] = field(default_factory=list)


class ActorPool:
    """A fixed set of stateful Ray actors fed whole units, at most k in flight each, messages via a queue.

    `worker` is any class with `run_unit(unit, *task_args, queue)`; it reports progress by putting
    messages on the queue actor, which `run` hands to `on_message` as they arrive. Actors are pinned to the
    cluster's nodes in proportion to the room each offers; when a node dies its actors go with it and the
    units they held are redone on the others (`lost` says which). `needs`: paths every node must open,
    checked on each node before any work when the run joins an existing cluster.
    """

    retired: set[int] | frozenset[int] = frozenset()  # actors whose node was lost (each pool starts its own set)

    def __init__(self, worker: type, args: tuple[Any, ...], count: int, config: PipelineConfig,
                 resources: dict[str, Any] | None = None, needs: Needs | None = None):
        import ray
        from ray.util.queue import Queue

        connect(config, count)
        self.ray = ray
        self.resources = resources = resources or {"num_cpus": 1}
        self.hosts, slots = node_room(resources)
        if joins_cluster(config):
            check_nodes(list(slots), needs or Needs(), self.hosts)
            count = sum(slots.values()) if config.ray.workers is None and slots else count
        # The queue lives on the driver's node (it must outlive any worker node) and takes no CPU (a head
        # started with --num-cpus 0 still holds it).
        self.home = ray.get_runtime_context().get_node_id()
        self.queue = Queue(maxsize=0, actor_options={"num_cpus": 0, "scheduling_strategy": pinned(self.home)})
        self.in_flight = max(1, config.ray.in_flight_per_worker)
        self.remote = ray.remote(max_restarts=config.ray.actor_restarts, max_task_retries=config.ray.task_retries,
                                 **resources)(with_unit_hook(worker))
        self.options, self.args = {"runtime_env": worker_env()}, args
        self.actors: list[Any] = []
        self.nodes: list[str | None] = []
        self.retired: set[int] = set()  # actors whose node was lost
        self.lost: dict[str, LostNode] = {}
        # Constructor args stay plain values (no actor handles): Ray can then always restart an actor.
        for node in spread(slots, max(1, count)) or [None] * max(1, count):
            self._start(node)
        self.pending: dict[Any, Any] = {}  # task ref → (unit, actor index) while it runs

    def _start(self, node: str | None) -> None:
        """One more actor, pinned to `node` (anywhere when None)."""
        options = dict(self.options, **({"scheduling_strategy": pinned(node)} if node else {}))
        self.actors.append(self.remote.options(**options).remote(*self.args))
        self.nodes.append(node)

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

    def run(self, units: list[Any], task_args: tuple[Any, ...], on_message: Callable[[Any], None],
            build: Callable[[Any], Any] = as_is) -> dict[str, str]:
        """Process every unit (`build` makes what an actor is sent, as it is sent); returns unit → reason for units
        that failed even after retries."""
        todo, pending, failures = deque(units), self.pending, {}
        load = {index: 0 for index in range(len(self.actors))}
        while todo or pending:
            self._submit(todo, pending, load, task_args, build)
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=0.2)
            self._drain(on_message)
            for ref in ready:
                unit, actor_index = pending.pop(ref)
                load[actor_index] -= 1
                try:
                    self.ray.get(ref)
                except Exception as exc:
                    if self._node_lost(actor_index, unit.name, exc):
                        todo.appendleft(unit)  # its node is gone: redo it on the nodes left
                        continue
                    failures[unit.name] = unit_failure(exc)
            self._replace_lost(load)
        time.sleep(0.05)
        self._drain(on_message)
        return failures

    def _submit(self, todo: deque[Any], pending: dict[Any, Any], load: dict[int, int],
                task_args: tuple[Any, ...], build: Callable[[Any], Any] = as_is) -> None:
        """Top up each live actor to `in_flight` units: never the whole plan at once (nor its items: a unit is
        built as it is sent)."""
        for index, actor in enumerate(self.actors):
            while todo and load[index] < self.in_flight and index not in self.retired:
                unit = todo.popleft()
                pending[actor.run_unit.remote(build(unit), *task_args, self.queue.actor)] = (unit, index)
                load[index] += 1

    def _node_lost(self, index: int, unit: str, error: Exception) -> bool:
        """A unit failed: was it because its actor's node died? Then retire the actor and record the loss."""
        node = self.nodes[index]
        gone = (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnschedulableError)
        if node in (None, self.home) or not isinstance(error, gone):
            return False  # the unit itself failed (a task error), the actor was never pinned, or it shares the
            # driver's node (which lives as long as this driver)
        if node_alive(node, _NODE_VERDICT_S):
            return False
        self.retired.add(index)
        self.ray.kill(self.actors[index], no_restart=True)  # pinned to a dead node: it can never come back
        self.lost.setdefault(node, LostNode(self.hosts.get(node, "?"))).units.append(unit)
        return True

    def _replace_lost(self, load: dict[int, int]) -> None:
        """Every actor's node was lost: fill the room of the nodes left (none left with room: stop)."""
        if not self.retired or len(self.retired) < len(self.actors):
            return
        self.hosts, slots = node_room(self.resources)
        if not slots:
            raise DfprepError("every node that ran dfprep's workers was lost and no node with free CPUs is left: "
                              "start nodes again and rerun the same command (committed shards are kept)")
        for node in spread(slots, sum(slots.values())):
            self._start(node)
            load[len(self.actors) - 1] = 0

    def node_losses(self) -> list[str]:
        """One line per node lost during the run: which node and which units were redone elsewhere."""
        return [f"node {node[:12]} ({lost.host}) was lost; its {len(lost.units)} unit(s) were redone on the "
                f"other nodes: {', '.join(lost.units)}" for node, lost in self.lost.items()]

    def _drain(self, on_message: Callable[[Any], None]) -> None:
        """Hand the actors' queued messages over, in arrival order."""
        waiting = self.queue.qsize()
        for message in self.queue.get_nowait_batch(waiting) if waiting else []:
            on_message(message)


def pinned(node: str) -> Any:
    """A scheduling strategy that keeps an actor or task on one node (it fails, never moves, if the node dies)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node, soft=False)


def node_room(resources: dict[str, Any]) -> tuple[dict[str, str], dict[str, int]]:
    """Alive nodes: id → host, and id → how many actors asking `resources` each holds at once (0 left out)."""
    import ray

    need = {"CPU": float(resources.get("num_cpus", 1)), "GPU": float(resources.get("num_gpus", 0))}
    hosts, room = {}, {}
    for node in sorted(ray.nodes(), key=lambda n: n["NodeID"]):
        if not node["Alive"]:
            continue
        hosts[node["NodeID"]] = node.get("NodeManagerHostname") or node.get("NodeManagerAddress", "?")
        have = node.get("Resources", {})
        fits = min((int(have.get(key, 0) // amount) for key, amount in need.items() if amount > 0), default=1)
        if fits > 0:
            room[node["NodeID"]] = fits
    return hosts, room


def spread(room: dict[str, int], count: int) -> list[str]:
    """The node of each of `count` actors: round robin over the nodes while they have room, then over all."""
    order: list[str] = []
    left = dict(room)
    while len(order) < count and any(left.values()):
        for node in room:
            if left[node] > 0 and len(order) < count:
                order.append(node)
                left[node] -= 1
    nodes = list(room)
    while nodes and len(order) < count:
        order.append(nodes[len(order) % len(nodes)])
    return order


def node_alive(node: str, verdict_s: float = 0.0) -> bool:
    """Whether a node is alive; while it looks alive, wait up to `verdict_s` for Ray's health check to decide."""
    import ray

    deadline = time.monotonic() + verdict_s
    while True:
        alive = any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.5)


def check_nodes(nodes: list[str], needs: Needs, hosts: dict[str, str]) -> None:
    """Before any work: each node's workers import this dfprep version and open the needed paths (else stop,
    naming the node)."""
    import ray

    probe = ray.remote(num_cpus=0, max_retries=0)(node_report)
    options = {"runtime_env": worker_env()}
    refs = {node: probe.options(scheduling_strategy=pinned(node), **options).remote(node, needs) for node in nodes}
    for node, ref in refs.items():
        where = f"node {node[:12]} ({hosts.get(node, '?')})"
        try:
            report: NodeReport = ray.get(ref, timeout=_PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise DfprepError(f"{where} did not answer within {_PROBE_TIMEOUT_S:g} s: is it overloaded or "
                              "unreachable? (`ray status`)") from None
        except Exception as exc:  # noqa: BLE001 - whatever stops a worker there is the node's problem to report
            raise DfprepError(f"{where} cannot run dfprep's workers ({_cause(exc)}): install dfprep "
                              f"{__version__} there, or pass --ship-code (ray.ship_code: true)") from None
        problem = node_problem(report)
        if problem:
            raise DfprepError(problem)


def with_unit_hook(worker: type) -> type:
    """Under $DFPREP_FAULT only: the worker class with a fault point as each unit starts (a node holds it)."""
    if not os.environ.get(faults.ENV):
        return worker

    class Hooked(worker):  # type: ignore[misc, valid-type]
        def run_unit(self, unit: Any, *args: Any) -> Any:
            faults.reached(unit.name, faults.UNIT_START)
            return super().run_unit(unit, *args)

    Hooked.__name__ = Hooked.__qualname__ = worker.__name__
    return Hooked


def _cause(error: Exception) -> str:
    """The exception a Ray error wraps, in one line."""
    cause = getattr(error, "cause", None)
    cause = cause if isinstance(cause, BaseException) else error
    return f"{type(cause).__name__}: {one_line(cause, 160)}"


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
