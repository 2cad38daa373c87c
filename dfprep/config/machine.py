"""How many CPUs this process may really use: what `taskset`, Slurm and cpusets (the affinity mask) and Docker
`--cpus` or Kubernetes limits (the cgroup's CPU quota) leave it, not the host's count that `os.cpu_count()`
reports. A default run sizes its video threads, FFmpeg threads and local Ray pool by it: on a 64-core node
where a job was given 4 CPUs, 64 workers on 4 cores would only fight over them.

The quota is read as the kernel applies it: the tightest `cpu.max` (cgroup v2) or `cpu.cfs_quota_us` /
`cpu.cfs_period_us` (cgroup v1) of the process's own cgroup and every ancestor up to the mount's root.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath


def usable_cpus(root: Path = Path("/")) -> int:
    """CPUs this process may keep busy: its affinity mask, capped by its cgroups' CPU quota (rounded up: 1.5
    CPUs of quota keep two workers busy three quarters of the time); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        cpus = os.cpu_count() or 1
    quota = quota_cpus(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def quota_cpus(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroups in CPUs (quota / period), the tightest over cgroup v1 and v2 and
    every ancestor; None when no level sets one. `root` stands for `/` (tests give a fake tree)."""
    try:
        memberships = (root / "proc/self/cgroup").read_text()
        mounts = (root / "proc/self/mountinfo").read_text()
    except OSError:  # no /proc (not Linux): no quota to honour
        return None
    limits = [limit for folder in cpu_cgroup_folders(memberships, mounts, root)
              for limit in [folder_quota(folder)] if limit is not None]
    return min(limits, default=None)


def cpu_cgroup_folders(memberships: str, mounts: str, root: Path) -> list[Path]:
    """The folders of this process's CPU cgroups and their ancestors, up to each mount's root: the v2 hierarchy
    and the v1 hierarchy that carries the `cpu` controller."""
    paths: dict[str, str] = {}  # "v2" / "v1" → the cgroup path this process is in
    for line in memberships.splitlines():
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    folders: list[Path] = []
    for line in mounts.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        mount_root, mount_point = fields[3], fields[4]
        after = fields[fields.index("-") + 1:]
        fstype, options = after[0], (after[2] if len(after) > 2 else "")
        kind = "v2" if fstype == "cgroup2" else "v1" if fstype == "cgroup" and "cpu" in options.split(",") else None
        if kind is None or kind not in paths:
            continue
        path, base = PurePosixPath(paths[kind]), PurePosixPath(mount_root)
        inside = path.relative_to(base) if path == base or base in path.parents else PurePosixPath(".")
        top = root / mount_point.lstrip("/")
        folders += [top / part for part in (inside, *inside.parents)]  # the cgroup, then each parent up to "."
    return folders


def folder_quota(folder: Path) -> float | None:
    """One cgroup folder's CPU quota in CPUs (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None when unlimited."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
