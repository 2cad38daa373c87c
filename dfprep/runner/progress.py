"""The progress bar of a run (videos for extract, maps for maps), silent with --quiet; a redone unit counts once."""

from __future__ import annotations

import time

from dfprep.config.console import bar_disable
from dfprep.jobs.contract import Bar


class Progress:
    """A tqdm bar over a job's items (total and ETA) with a rate; workers announce cumulative counts per unit."""

    def __init__(self, total: int, quiet: bool, bar: Bar):
        from tqdm import tqdm

        self.spec = bar
        self.bar = tqdm(total=total, unit=bar.item, disable=bar_disable(quiet), dynamic_ncols=True, desc=bar.desc)
        self.done: dict[str, int] = {}
        self.faces: dict[str, int] = {}
        self.started = time.monotonic()

    def __call__(self, unit: str, done: int, faces: int) -> None:
        """`done` items of `unit` are finished, `faces` written (cumulative: a unit Ray redoes never double-counts)."""
        gained = done - self.done.get(unit, 0)
        if gained <= 0:
            return
        self.done[unit], self.faces[unit] = done, faces
        counted = sum(self.faces.values()) if self.spec.faces else sum(self.done.values())
        postfix = {"faces": sum(self.faces.values())} if self.spec.faces else {}
        rate = counted / max(time.monotonic() - self.started, 1e-6)
        self.bar.set_postfix(**postfix, **{self.spec.rate: f"{rate:.1f}"}, refresh=False)
        self.bar.update(gained)

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()
