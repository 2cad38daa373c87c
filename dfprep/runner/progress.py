"""Progress bars of a run: videos (extract) and faces (maps), silent with --quiet; a redone unit counts once."""

from __future__ import annotations

import time
from typing import Any

from dfprep.config.console import bar_disable


class Progress:
    """A tqdm bar over videos (total and ETA) showing faces/s; silent with --quiet."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="video", disable=bar_disable(quiet), dynamic_ncols=True, desc="extract")
        self.faces = 0
        self.started = time.monotonic()

    def __call__(self, row: dict[str, Any]) -> None:
        """One video finished."""
        self.faces += row["faces_written"]
        rate = self.faces / max(time.monotonic() - self.started, 1e-6)
        self.bar.set_postfix(faces=self.faces, faces_per_s=f"{rate:.1f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


class MapProgress:
    """A tqdm bar over faces (total and ETA) showing maps/s; a retried unit is counted once."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="map", disable=bar_disable(quiet), dynamic_ncols=True, desc="maps")
        self.done: dict[str, int] = {}
        self.started = time.monotonic()

    def __call__(self, unit: str, mapped: int) -> None:
        """`mapped` faces of `unit` are done (cumulative, so a redone unit never double-counts)."""
        gained = mapped - self.done.get(unit, 0)
        if gained > 0:
            self.done[unit] = mapped
            self.bar.update(gained)
            rate = sum(self.done.values()) / max(time.monotonic() - self.started, 1e-6)
            self.bar.set_postfix(maps_per_s=f"{rate:.1f}", refresh=False)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()
