"""A default run uses the CPUs this process may use, not the host's: the affinity mask (taskset, Slurm, cpusets)
and the cgroup CPU quota (Docker --cpus, Kubernetes limits), read from fake /proc and /sys trees here and from
the real affinity through the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfprep.config.machine import quota_cpus, usable_cpus

REPO = Path(__file__).resolve().parents[1]

V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
             "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
             "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
             "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")


def fake_root(tmp: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A tree standing for `/`: /proc/self/{cgroup,mountinfo} and the cgroup files given."""
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/self/cgroup").write_text(cgroup)
    (tmp / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return tmp


def test_a_v2_quota_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    root = fake_root(tmp_path, "0::/user.slice/job42/step\n", V2_MOUNTS, {
        "sys/fs/cgroup/cpu.max": "max 100000\n",
        "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
        "sys/fs/cgroup/user.slice/job42/cpu.max": "250000 100000\n",  # the job: 2.5 CPUs
        "sys/fs/cgroup/user.slice/job42/step/cpu.max": "400000 100000\n"})  # its step asks more: the parent wins
    assert quota_cpus(root) == 2.5
    assert usable_cpus(root) == min(len(os.sched_getaffinity(0)), 3)  # rounded up, never above the affinity


def test_a_v1_cfs_quota_is_read_from_the_cpu_controller_mount(tmp_path):
    root = fake_root(tmp_path, "12:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n", V1_MOUNTS, {
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",  # docker --cpus 0.5
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpuset/docker/abc/cpu.cfs_quota_us": "10000\n"})  # not the cpu controller: ignored
    assert quota_cpus(root) == 0.5
    assert usable_cpus(root) == 1  # half a CPU still runs one worker


def test_a_container_sees_its_own_cgroup_as_the_mount_root(tmp_path):
    # a cgroup namespace: /proc/self/cgroup says "/", the mount's root is the container's cgroup
    root = fake_root(tmp_path, "0::/\n", V2_MOUNTS.replace(" / /sys/fs/cgroup", " /kubepods/pod1 /sys/fs/cgroup"),
                     {"sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert quota_cpus(root) == 1.0


def test_no_quota_and_no_proc_leave_the_affinity(tmp_path):
    unlimited = fake_root(tmp_path / "a", "0::/\n", V2_MOUNTS, {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert quota_cpus(unlimited) is None and quota_cpus(tmp_path / "nothing") is None
    assert usable_cpus(unlimited) == usable_cpus(tmp_path / "nothing") == len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None or (os.cpu_count() or 1) < 2, reason="needs taskset, 2 CPUs")
def test_a_default_run_pinned_to_one_cpu_plans_for_one(folder_dataset, tmp_path):
    # `taskset -c 0` as Slurm or a cpuset would pin it: the host has 2 CPUs, the command may use 1
    command = ["taskset", "-c", "0", sys.executable, "-m", "dfprep", "extract", "folder", str(folder_dataset),
               "-o", str(tmp_path / "out"), "--frames", "2", "--quiet", "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["plan"].startswith("new plan: 1 shard; in-process: 8 videos on 1 CPU (1 video thread) "), report
    assert report["shards"] == 1  # one worker: full-size units, not 4 per CPU the host has
