"""The sharded-job contract: what a job tells the one runner (dfprep.runner.run) so the runner can run it.

A job turns a list of work units into committed shards (one shard per unit, `<unit>.tar` → `.parquet` →
`_stats.json`). The job knows its units, its workers and its indexes; the runner knows everything around
them: the lock, skipping committed shards and deleting uncommitted leftovers, the per-item guards,
progress, the in-process and Ray backends, retries, and when to finalize and report. Extract
(dfprep.jobs.extract_shards) and maps (dfprep.jobs.maps) are the two jobs; this module imports neither
the runner nor Ray, so a job stays testable without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Generic, Protocol, Sequence, TypeVar

from pathlib import Path
from typing import Iterable

from dfprep.config.schema import RayConfig
from dfprep.io.storage import Storage
from dfprep.vision.models import ResolvedModel

Stats = dict[str, Any]  # a unit's commit marker (`<unit>_stats.json`) as a dict
Announce = Callable[[str, int, int], None]  # (unit name, items done in it so far, faces written in it so far)
Skip = tuple[str, str]  # (status, reason) of an item its guard stops before it starts


class Unit(Protocol):
    """A work unit: whatever a job plans, as long as it names the shard it commits."""

    @property
    def name(self) -> str:
        """The shard name, `<split>-NNNNNN`."""


UnitT = TypeVar("UnitT", bound=Unit)
UnitT_contra = TypeVar("UnitT_contra", bound=Unit, contravariant=True)
ReportT = TypeVar("ReportT", covariant=True)


class ItemGuard(Protocol):
    """The runner's guard around one item of a unit (a video): attempt markers, a watchdog, observed deaths."""

    placement: dict[str, Any]  # where and by what the unit runs (worker host:pid, Ray node, dfprep version): marker

    def attempt(self, position: int, label: str, timeout_s: float) -> ContextManager[Skip | None]:
        """Run one item under guard; yields a (status, reason) instead when earlier attempts rule it out."""


class UnitWorker(Protocol[UnitT_contra]):
    """Turns one unit into one committed shard and returns its commit marker (stats)."""

    def run_unit(self, unit: UnitT_contra, guard: ItemGuard, announce: Announce) -> Stats:
        """Process every item, commit the shard (discarding the staging on any error), return its stats."""


WorkerFactory = Callable[[], UnitWorker[Any]]  # picklable (a functools.partial): Ray restarts an actor from it


@dataclass(frozen=True)
class Bar:
    """How the runner's progress bar names a job's items."""

    desc: str  # extract | maps
    item: str  # video | map
    rate: str  # the postfix's rate: faces_per_s | maps_per_s
    faces: bool  # also show the faces written so far


@dataclass(frozen=True)
class Needs:
    """Paths every worker node must open: inputs it reads (files or folders), local output folders it writes,
    and the models it loads (checked on each node before work starts)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    models: tuple[ResolvedModel, ...] = ()


def local_needs(read: Iterable[str | Path | None], outputs: Iterable[Storage],
                models: Iterable[ResolvedModel] = ()) -> Needs:
    """The local paths and the models of a run (object-store outputs are reached through their URI)."""
    paths = tuple(dict.fromkeys(str(path) for path in read if path))
    return Needs(paths, tuple(storage.root for storage in outputs if storage.is_local), tuple(models))


@dataclass
class Plan(Generic[UnitT]):
    """What a job plans under the lock: its units, a note for the summary, and warnings."""

    units: list[UnitT]
    note: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class Outcome(Generic[UnitT]):
    """What the runner did, handed to the job's report: valid commits after the run and what it cleaned."""

    plan: Plan[UnitT]
    committed: dict[str, Stats]  # unit → commit marker, valid for this job
    done: list[str]  # the units this run processed (the others were committed already)
    removed: list[str]  # files deleted: --overwrite's, damaged and stale shards, uncommitted leftovers
    redone: dict[str, str] = field(default_factory=dict)  # unit → why its commit was damaged and is redone
    charged: list[str] = field(default_factory=list)  # items charged a death of an earlier run
    backend_note: str = ""  # why the runner chose to run in-process when the user did not say
    nodes_lost: list[str] = field(default_factory=list)  # cluster nodes lost mid-run (their units were redone)

    @property
    def skipped(self) -> int:
        """Units already committed before this run."""
        return len(self.plan.units) - len(self.done)


class ShardJob(Protocol[UnitT, ReportT]):
    """One sharded job: the runner calls these in the order they are listed, under the output's lock.

    kind: the lock's command and the failure message's name; output: the folder the lock covers;
    shards: where the units are committed; ray: the Ray settings the Ray backend honours;
    guarded: whether items run under attempt markers (the runner keeps them in `shards/_attempts`);
    threads: whether several of its workers may run side by side in threads of one process;
    marker_keys: the commit-marker keys the job reads from the runner's committed markers: the runner keeps
    those (and integrity's) as it reads each marker, so a run holds a few numbers per unit, not its per-item
    rows (finalize reads a marker file again for those); reading an undeclared key raises.
    """

    kind: str
    output: Storage
    shards: Storage
    ray: RayConfig
    bar: Bar
    guarded: bool
    threads: bool
    temporaries: Sequence[str]  # the job's index files whose `.tmp` leftovers the runner deletes
    marker_keys: frozenset[str]

    def check(self) -> None:
        """Before the lock: refuse, in one line, what cannot be run (foreign folder, bad models)."""

    def claim(self) -> list[str]:
        """Under the lock: take the folder (--overwrite cleans the job's own earlier files); returns what it deleted."""

    def expected_items(self) -> int | None:
        """Items this run may process, known before planning: lets the runner run a small job in-process
        rather than pay Ray's start-up (None: the job leaves the choice to the user's ray settings)."""

    def plan(self, workers: int) -> Plan[UnitT]:
        """The units, in order (a persisted plan is reused); a new plan is sized for `workers` (0: in-process)."""

    def is_committed(self, stats: Stats) -> bool:
        """Whether a commit marker counts for this job (stamped with its config or settings hash)."""

    def stale(self, unit: str, stats: Stats, units: dict[str, UnitT]) -> str | None:
        """Why a valid commit must still be redone (its input changed), or None."""

    def size(self, unit: UnitT) -> int:
        """Items in a unit (the progress bar's total)."""

    def cost(self, unit: UnitT) -> float:
        """A unit's expected work, in any unit: the runner hands out the costliest first, so the last unit to
        finish is a small one and no worker idles while another ends a big one alone."""

    def load(self, unit: UnitT) -> Unit:
        """The unit as its worker takes it, built as it is handed out (a plan may keep its units light: a name
        and where its items lie), so only the units in flight hold their items in the driver."""

    def worker(self, in_process: bool, threads: int = 1) -> WorkerFactory:
        """A factory of the worker that commits units (in this process, where `threads` video threads share the
        cores, or inside each Ray actor)."""

    def actors(self, workers: int, gpus: float) -> tuple[int, dict[str, Any] | None]:
        """How many Ray actors and what each asks for (None: one CPU)."""

    def needs(self) -> Needs:
        """What every node's workers must open; the Ray backend checks each node before work starts."""

    def finalize(self, units: list[UnitT], committed: dict[str, Stats]) -> None:
        """Rewrite the job's indexes from the committed shards (the single source of truth)."""

    def report(self, outcome: Outcome[UnitT]) -> ReportT:
        """The run's summary numbers."""
