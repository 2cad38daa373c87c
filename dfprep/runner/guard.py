"""Guards around each video: a hard wall-clock watchdog, and markers that stop poison videos.

While a video is processed its marker says so ("in progress in pid P of run R"); the marker is released
when the video finishes, whatever the outcome. A marker still in progress later means its process
died. That is charged to the video only when the death is *observed*, never for an interrupted run:

- on Ray, the driver lives on, restarts the dead actor and retries the unit in the same run: a marker
  of the current run left by another pid is a worker death (a codec segfault, an OOM kill, a killed
  actor), unless that worker's whole node is gone (a lost machine is not the video's doing);
- in-process (--workers 0) the driver is the worker and cannot watch its own death, so it records
  fatal signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) through faulthandler into a crash log named
  in the marker; the next run charges the video only when that log shows a crash. A kill -9, Ctrl-C,
  SIGTERM, a full disk or a stopped run leave no crash record and charge nothing. Limit: an in-process
  run killed by the kernel's OOM killer (SIGKILL, which no process can record) is not charged, so a video
  that exhausts memory in-process stops every rerun at that video; on Ray it is charged like a crash.

In-process video threads (several videos in flight in one process) cannot tell from a crash log alone which
video crashed: a crash with more than one video in progress charges none of them but marks each a suspect,
and a suspect (or a video with a death) is retried alone: the process's other threads wait while it runs,
so a second crash is charged to it and to no other.

After `MAX_ATTEMPTS` deaths the video becomes a `decode_error` row instead of crashing the run forever.
A decoder stuck inside C cannot be interrupted from Python: a Ray actor records the video as hung and
ends itself (Ray restarts it, the retry writes `timeout`); an in-process run never ends the caller's
process: it records the video as hung and says so, and the video is `timeout` on the rerun.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from dfprep.io.layout import ATTEMPT_MARKER, ATTEMPTS_DIR, DECODE_ERROR, TIMEOUT, marker_name, marker_unit
from dfprep.io.storage import Storage
from dfprep.runner.pool import node_alive, node_identity

MAX_ATTEMPTS = 2
HUNG_EXIT_CODE = 70
CRASH_LOG_PREFIX = "dfprep-crash-"


@dataclass(frozen=True)
class RunContext:
    """Which run processes a unit, and how its process may react to a hung video."""

    run_id: str
    exit_on_hang: bool = False  # only a Ray actor may end itself; the caller's process never
    crash_log: str | None = None  # in-process: the file faulthandler writes a fatal signal into


class AttemptLog:
    """Per-unit markers on the output storage: in-progress records, observed deaths, hung videos."""

    def __init__(self, storage: Storage, unit: str, context: RunContext):
        self.storage, self.unit, self.context = storage, unit, context
        self.markers = self._read_all()

    def _read_all(self) -> dict[int, dict[str, Any]]:
        """Markers left by earlier attempts at this unit, by position (unreadable ones count as absent)."""
        markers = {}
        for name in self.storage.listdir(ATTEMPTS_DIR):
            position = _position(name, self.unit)
            marker = self.storage.read_marker(f"{ATTEMPTS_DIR}/{name}") if position is not None else None
            if marker is not None:
                markers[position] = marker  # type: ignore[index]
        return markers

    def begin(self, position: int, timeout_s: float) -> tuple[str, str] | None:
        """Mark the video in progress; returns (status, reason) when it must be skipped instead."""
        marker = charge_if_died(self.markers.get(position, {}), self.context.run_id)
        if marker.get("hung"):
            return TIMEOUT, f"video hung the decoder for more than {marker.get('seconds', timeout_s):g}s " \
                              "(recorded by the watchdog)"
        deaths = int(marker.get("deaths", 0))
        if deaths >= MAX_ATTEMPTS:
            return DECODE_ERROR, f"the worker died {deaths} times while processing this video " \
                                   f"({marker.get('last_death', 'crash in a decoder?')})"
        self._write(position, {**marker, "in_progress": in_progress_record(self.context)})
        return None

    def runs_alone(self, position: int) -> bool:
        """A video suspected of (or charged with) a crash runs with no other video in progress in its process."""
        marker = self.markers.get(position, {})
        return bool(marker.get("suspect") or marker.get("deaths"))

    def finish(self, position: int) -> None:
        """The video ended (any outcome, any exception): it was not in progress when anything died later, and a
        suspect that ran alone to the end is cleared."""
        marker = {k: v for k, v in self.markers.get(position, {}).items() if k not in ("in_progress", "suspect")}
        self._write(position, marker)

    def mark_hung(self, position: int, seconds: float) -> None:
        """Called by the watchdog when a video runs past its hard limit."""
        self._write(position, {**self.markers.get(position, {}), "hung": True, "seconds": seconds})

    def _write(self, position: int, marker: dict[str, Any]) -> None:
        """Persist one video's marker (an empty marker is deleted)."""
        self.markers[position] = marker
        if marker:
            self.storage.write_json(marker_name(self.unit, position), marker)
        else:
            self.storage.delete(marker_name(self.unit, position))

    def clear(self) -> None:
        """After the unit commits its markers are no longer needed."""
        for name in self.storage.listdir(ATTEMPTS_DIR):
            if marker_unit(name) == self.unit:
                self.storage.delete(f"{ATTEMPTS_DIR}/{name}")


def _position(name: str, unit: str) -> int | None:
    """The video position a marker file belongs to, or None for another unit's (or anybody else's) file."""
    match = ATTEMPT_MARKER.match(name)
    if match is None or match["unit"] != unit or match["temporary"]:
        return None
    return int(match["position"])


def in_progress_record(context: RunContext) -> dict[str, Any]:
    """What a marker says while its video is processed: which run, process, machine and crash log."""
    return {"run": context.run_id, "pid": os.getpid(), "host": socket.gethostname(),
            "node": node_identity()["node_id"], "crash_log": context.crash_log, "since": round(time.time(), 3)}


def charge_if_died(marker: dict[str, Any], run_id: str, alone: bool = True) -> dict[str, Any]:
    """A marker still in progress from an earlier attempt: count an observed death, else just release it.

    `alone` False: other videos were in progress in the same process when it died, so the death is not charged;
    the video becomes a suspect, retried alone.
    """
    progress = marker.get("in_progress")
    if not progress:
        return marker
    released = {k: v for k, v in marker.items() if k != "in_progress"}
    death = observed_death(progress, run_id)
    if death is None:
        return released
    if not alone:
        return {**released, "suspect": death}
    return {**released, "deaths": int(marker.get("deaths", 0)) + 1, "last_death": death}


def observed_death(progress: dict[str, Any], run_id: str) -> str | None:
    """Why the process that was processing a video died, if its death was observed; None for an interrupt."""
    if progress.get("run") == run_id and progress.get("pid") != os.getpid():
        if lost_with_its_node(progress):
            return None  # the whole node went (a machine lost, a raylet killed): not this video's doing
        return f"its worker (pid {progress.get('pid')}) died while processing it"
    crash = crash_record(progress)
    return f"the process crashed: {crash}" if crash else None


def lost_with_its_node(progress: dict[str, Any]) -> bool:
    """The worker that held the video was on another Ray node, and that node is gone."""
    node = progress.get("node")
    return bool(node) and node != node_identity()["node_id"] and not node_alive(node)


def crash_record(progress: dict[str, Any]) -> str | None:
    """The first line of a fatal-signal report left by an in-process run on this machine, if any."""
    path = progress.get("crash_log")
    if not path or progress.get("host") != socket.gethostname():
        return None
    try:
        with open(path, "rb") as handle:
            text = handle.read(4096).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text.splitlines()[0][:160] if text else None


def settle_interrupted(storage: Storage, run_id: str) -> list[str]:
    """Before a run: judge every video left in progress by an earlier run; returns the deaths it charged (and the
    suspects it marked, when several videos were in progress in the process that crashed)."""
    left = earlier_in_progress(storage, run_id)
    together = Counter(_process(marker["in_progress"]) for marker in left.values())
    charged, crash_logs = [], set()
    for name, marker in left.items():
        progress = marker["in_progress"]
        settled = charge_if_died(marker, run_id, alone=together[_process(progress)] == 1)
        if settled.get("deaths", 0) != marker.get("deaths", 0):
            charged.append(f"{name[:-len('.json')]}: {settled['last_death']}")
        elif settled.get("suspect"):
            charged.append(f"{name[:-len('.json')]}: suspect, retried alone ({together[_process(progress)]} "
                           f"videos were in progress when {settled['suspect']})")
        if settled:
            storage.write_json(f"{ATTEMPTS_DIR}/{name}", settled)
        else:
            storage.delete(f"{ATTEMPTS_DIR}/{name}")
        if progress.get("crash_log") and progress.get("host") == socket.gethostname():
            crash_logs.add(progress["crash_log"])
    for path in crash_logs:
        _remove_file(path)
    return charged


def earlier_in_progress(storage: Storage, run_id: str) -> dict[str, dict[str, Any]]:
    """Attempt markers an earlier run left in progress, by file name (unreadable ones are deleted as absent)."""
    left = {}
    for name in storage.listdir(ATTEMPTS_DIR):
        if marker_unit(name) is None or name.endswith(".tmp"):
            continue  # not an attempt marker: not dfprep's to judge or delete
        marker = storage.read_marker(f"{ATTEMPTS_DIR}/{name}")
        if marker is None:
            storage.delete(f"{ATTEMPTS_DIR}/{name}")  # unreadable (a full disk, say): treated as absent
            continue
        progress = marker.get("in_progress") or {}
        if progress and progress.get("run") != run_id:
            left[name] = marker
    return left


def _process(progress: dict[str, Any]) -> tuple[Any, ...]:
    """The process a video was in progress in: videos sharing it died together."""
    return progress.get("run"), progress.get("host"), progress.get("pid")


class Isolation:
    """Lets a suspect video run alone in its process: ordinary videos run side by side; a video that must run
    alone waits until none is in progress, and none starts until it is done."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def hold(self, alone: bool) -> Iterator[None]:
        """Hold the process for one video: shared, or (`alone`) to itself."""
        with self._changed:
            if alone:
                self._waiting_alone += 1
                self._changed.wait_for(lambda: not self._alone and self._running == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                self._changed.wait_for(lambda: not self._alone and self._waiting_alone == 0)
                self._running += 1
        try:
            yield
        finally:
            with self._changed:
                if alone:
                    self._alone = False
                else:
                    self._running -= 1
                self._changed.notify_all()


ISOLATION = Isolation()  # one per process: a Ray actor runs one video at a time, in-process threads share it


@contextmanager
def recording_crashes(run_id: str) -> Iterator[str]:
    """In-process runs: fatal signals go to a crash log for the run's duration (removed when the run ends)."""
    path = os.path.join(tempfile.gettempdir(), f"{CRASH_LOG_PREFIX}{run_id}.log")
    was_enabled = faulthandler.is_enabled()
    handle = open(path, "wb")
    try:
        faulthandler.enable(file=handle, all_threads=False)
        yield path
    finally:
        faulthandler.disable()
        handle.close()
        _remove_file(path)
        if was_enabled:
            _restore_faulthandler()


def _restore_faulthandler() -> None:
    """Give a caller's faulthandler (pytest's, say) back its stderr, where possible."""
    try:
        faulthandler.enable(file=sys.__stderr__)
    except (AttributeError, ValueError, OSError):
        pass


def _remove_file(path: str) -> None:
    """Delete a file if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Watchdog:
    """Records a video that runs past its hard limit as hung; a Ray actor then ends itself, nothing else does.

    Every watched video of the process is timed by one shared thread (`_WATCH`): starting a thread per video
    cost ~1 ms of a tiny clip's budget."""

    def __init__(self, log: AttemptLog, position: int, limit_s: float, label: str, exit_on_hang: bool):
        self.log, self.position, self.limit_s, self.label = log, position, limit_s, label
        self.exit_on_hang = exit_on_hang

    def __enter__(self) -> "Watchdog":
        _WATCH.add(self, time.monotonic() + self.limit_s)
        return self

    def __exit__(self, *exc: Any) -> None:
        _WATCH.discard(self)

    def expired(self) -> None:
        """The limit passed with the video still running: record it as hung (and end an actor: C cannot be stopped)."""
        try:
            self.log.mark_hung(self.position, self.limit_s)
        finally:
            if self.exit_on_hang:
                print(f"dfprep: {self.label} hung for more than {self.limit_s:g}s; it is recorded as timeout — "
                      "the worker restarts", file=sys.stderr, flush=True)
                os._exit(HUNG_EXIT_CODE)
            print(f"dfprep: {self.label} has run for more than {self.limit_s:g}s (a decoder stuck in C code?); it "
                  "is recorded as timeout. An in-process run cannot stop it: if it does not finish, stop this "
                  "process (Ctrl-C, or kill it) and rerun the same command", file=sys.stderr, flush=True)


class _WatchThread:
    """One daemon thread per process that sleeps until the nearest watchdog's deadline and fires the expired."""

    def __init__(self) -> None:
        self._deadlines: dict[Watchdog, float] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, watchdog: Watchdog, deadline: float) -> None:
        """Start timing a video (the thread starts with the first one, or again after a fork)."""
        with self._changed:
            self._deadlines[watchdog] = deadline
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, daemon=True, name="dfprep-watchdog")
                self._thread.start()
            self._changed.notify()

    def discard(self, watchdog: Watchdog) -> None:
        """The video ended: it can no longer expire."""
        with self._changed:
            self._deadlines.pop(watchdog, None)

    def _watch(self) -> None:
        """Fire each watchdog whose deadline passes while it is still registered (outside the lock)."""
        while True:
            with self._changed:
                now = time.monotonic()
                due = [w for w, deadline in self._deadlines.items() if deadline <= now]
                for watchdog in due:
                    del self._deadlines[watchdog]
                if not due:
                    nearest = min(self._deadlines.values(), default=now + 60.0)
                    self._changed.wait(max(0.0, nearest - now))
                    continue
            for watchdog in due:
                watchdog.expired()


_WATCH = _WatchThread()


def hard_limit(timeout_s: float) -> float:
    """The watchdog's limit: past the cooperative timeout, with a grace period for it to act first."""
    return timeout_s + max(5.0, 0.25 * timeout_s)
