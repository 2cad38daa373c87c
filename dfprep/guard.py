"""Guards around each video: a hard wall-clock watchdog and attempt markers that stop poison videos.

A decoder stuck inside C cannot be interrupted from Python. The watchdog therefore records the video as
hung on the output storage and ends the worker process; Ray restarts the actor and retries the unit,
and the retry skips that video with status `timeout`. The same markers count how often a worker died
on a video (a segfault in a codec, say): after `MAX_ATTEMPTS` the video is skipped as `decode_error`
instead of crashing the run forever.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from dfprep.shards import Storage

ATTEMPTS_DIR = "_attempts"
MAX_ATTEMPTS = 2
HUNG_EXIT_CODE = 70


class AttemptLog:
    """Per-unit markers on the output storage: which video was being processed when a worker died."""

    def __init__(self, storage: Storage, unit: str):
        self.storage, self.unit = storage, unit
        self.previous = self._read_all()

    def _name(self, position: int) -> str:
        """Marker file of one video of this unit."""
        return f"{ATTEMPTS_DIR}/{self.unit}-{position:05d}.json"

    def _read_all(self) -> dict[int, dict[str, Any]]:
        """Markers left by earlier attempts at this unit, by position."""
        markers = {}
        for name in self.storage.listdir(ATTEMPTS_DIR):
            if name.startswith(f"{self.unit}-") and name.endswith(".json"):
                position = int(name[len(self.unit) + 1:-5])
                markers[position] = self.storage.read_json(f"{ATTEMPTS_DIR}/{name}")
        return markers

    def begin(self, position: int, timeout_s: float) -> tuple[str, str] | None:
        """Record an attempt; returns (status, reason) when the video must be skipped instead."""
        marker = self.previous.get(position, {})
        if marker.get("hung"):
            return "timeout", f"video hung the decoder for more than {marker.get('seconds', timeout_s):g}s " \
                              "(the worker was restarted)"
        attempts = int(marker.get("attempts", 0)) + 1
        if attempts > MAX_ATTEMPTS:
            return "decode_error", f"a worker died {MAX_ATTEMPTS} times on this video (crash in a decoder?)"
        self.storage.write_json(self._name(position), {"attempts": attempts})
        return None

    def mark_hung(self, position: int, seconds: float) -> None:
        """Called by the watchdog just before it ends the process."""
        self.storage.write_json(self._name(position), {"hung": True, "seconds": seconds})

    def clear(self) -> None:
        """After the unit commits its markers are no longer needed."""
        for name in self.storage.listdir(ATTEMPTS_DIR):
            if name.startswith(f"{self.unit}-"):
                self.storage.delete(f"{ATTEMPTS_DIR}/{name}")


class Watchdog:
    """Ends the process if one video runs past its hard limit, after recording it as hung."""

    def __init__(self, log: AttemptLog, position: int, limit_s: float, label: str):
        self.log, self.position, self.limit_s, self.label = log, position, limit_s, label
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="dfprep-watchdog")

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        """Wait for the video to finish; past the limit, record and exit hard (C code cannot be interrupted)."""
        if self._done.wait(self.limit_s):
            return
        try:
            self.log.mark_hung(self.position, self.limit_s)
        finally:
            print(f"dfprep: {self.label} hung for more than {self.limit_s:g}s; it is recorded as timeout — "
                  "the worker restarts (or rerun the same command)", file=sys.stderr, flush=True)
            os._exit(HUNG_EXIT_CODE)


def hard_limit(timeout_s: float) -> float:
    """The watchdog's limit: past the cooperative timeout, with a grace period for it to act first."""
    return timeout_s + max(5.0, 0.25 * timeout_s)
