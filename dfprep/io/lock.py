"""One run at a time per output folder: an exclusive lock file naming its owner, with stale-lock detection.

On a local filesystem the lock is created with O_CREAT|O_EXCL, so of two runs started together exactly
one wins. A lock whose process no longer runs on this machine (or whose pid now belongs to a process
started later) is stale and taken over. On object stores pyarrow offers no conditional create: the lock
is written, then read back, which stops a run started after another one but not two runs started
within the same moment (a documented limit; the config hash in every commit marker still keeps another
config's shards out of the output).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from typing import Any

from dfprep.errors import DfprepError
from dfprep.io.layout import LOCK_FILE
from dfprep.io.shards import process_alive
from dfprep.io.storage import Storage

_UNREADABLE_GRACE_S = 30.0  # a lock still being written is unreadable for a moment; older than this it is junk
_HELD: dict[tuple[str, str], "OutputLock"] = {}  # locks this process holds, so nested commands re-enter


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def new_run_id() -> str:
    """A unique id for one run of a command (attempt markers name the run that wrote them)."""
    return uuid.uuid4().hex[:16]


class OutputLock:
    """The output folder's lock, held for a whole command (re-entered by a nested command of the same run)."""

    def __init__(self, storage: Storage, command: str, run_id: str | None = None):
        self.storage, self.command = storage, command
        self.run_id = run_id or new_run_id()
        self.depth = 0
        self._key = (storage.fs.type_name, storage.root)

    def record(self) -> dict[str, Any]:
        """What the lock file says: who holds the folder, since when, for which command."""
        pid = os.getpid()
        return {"owner": _user(), "pid": pid, "host": socket.gethostname(), "command": self.command,
                "run": self.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_ts": time.time(),
                "process_start": process_start(pid)}

    def __enter__(self) -> "OutputLock":
        held = _HELD.get(self._key)
        if held is not None:  # a nested command of the run that holds the lock (extract's inline maps)
            held.depth += 1
            self.run_id, self._nested = held.run_id, held
            return self
        self._nested: OutputLock | None = None
        self.storage.makedirs()
        self._acquire()
        self.depth = 1
        _HELD[self._key] = self
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._nested is not None:
            self._nested.depth -= 1
            return
        self.depth = 0
        _HELD.pop(self._key, None)
        if self._owned():
            self.storage.delete(LOCK_FILE)

    def _acquire(self) -> None:
        """Create the lock, taking over a stale one; refuse when a live run holds it."""
        for _ in range(5):
            if self._create():
                return
            current = self._read()
            if current is None and self._age() < _UNREADABLE_GRACE_S:
                time.sleep(0.2)
                continue
            if current is not None and not is_stale(current):
                raise DfprepError(held_message(self.storage, current))
            self._take_over(current)
        raise DfprepError(f"could not take the lock {self.storage.path(LOCK_FILE)}: another run keeps taking it")

    def _create(self) -> bool:
        """Write our record if no lock exists; True when we hold the lock now."""
        payload = json.dumps(self.record(), indent=1).encode()
        if self.storage.is_local:
            return _create_exclusive(self.storage.path(LOCK_FILE), payload)
        if self.storage.exists(LOCK_FILE):
            return False
        self.storage.write_bytes(LOCK_FILE, payload)
        time.sleep(0.05)
        return self._owned()  # best effort: the last writer wins, the other sees a foreign record

    def _take_over(self, stale: dict[str, Any] | None) -> None:
        """Move a stale lock aside (only if it is still the one judged stale) and delete it."""
        aside = f"{LOCK_FILE}.stale-{self.run_id}"
        try:
            self.storage.rename(LOCK_FILE, aside)
        except FileNotFoundError:
            return  # another run took it over first: try again
        moved = self.storage.read_marker(aside)
        if stale is not None and (moved or {}).get("run") != stale.get("run"):
            if self.storage.is_local:  # we moved a fresh lock of a run that won the race: put it back
                _restore(self.storage.path(aside), self.storage.path(LOCK_FILE))
            return
        self.storage.delete(aside)

    def _read(self) -> dict[str, Any] | None:
        """The current lock record, or None when absent or unreadable."""
        return self.storage.read_marker(LOCK_FILE)

    def _owned(self) -> bool:
        """Whether the lock file on storage is ours."""
        return (self._read() or {}).get("run") == self.run_id

    def _age(self) -> float:
        """Seconds since the lock file was last written (0 when unknown)."""
        from pyarrow import fs as pafs

        info = self.storage.fs.get_file_info(self.storage.path(LOCK_FILE))
        if info.type != pafs.FileType.File or info.mtime is None:
            return 0.0
        return time.time() - info.mtime.timestamp()


def is_stale(record: dict[str, Any]) -> bool:
    """A lock of this machine whose process is gone (or whose pid was reused) no longer protects anything."""
    if record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or not process_alive(pid):
        return True
    started = record.get("process_start")
    return started is not None and process_start(pid) not in (None, started)


def held_message(storage: Storage, record: dict[str, Any]) -> str:
    """The one-line refusal: who holds the folder and what to do."""
    return (f"{storage.root} is in use by another dfprep run ({record.get('command', '?')}, pid {record.get('pid')} "
            f"on {record.get('host')}, by {record.get('owner')}, since {record.get('started')}): wait for it to "
            f"finish, or if that run is gone (another machine), delete {storage.path(LOCK_FILE)}")


def _create_exclusive(path: str, payload: bytes) -> bool:
    """O_CREAT|O_EXCL: of several processes exactly one creates the file; a failed write leaves nothing."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
    except BaseException:
        os.unlink(path)
        raise
    return True


def _restore(aside: str, path: str) -> None:
    """Put a lock moved aside by mistake back, unless a newer one took its place."""
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    os.unlink(aside)


def _user() -> str:
    """The login name, or the uid when there is none (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
