"""The cluster path as a user drives it: a real four-node Ray cluster on this machine (a head without CPUs, as
`ray start --head --num-cpus 0` makes, and three 1-CPU worker nodes, each its own raylet;
`ray.cluster_utils.Cluster`) and `dfprep extract|maps --address` run as a command.

One worker node imports another dfprep (a copy with another version on its PYTHONPATH, as a node with an older
install would): the run refuses it, naming the node, until --ship-code uploads the driver's dfprep. Nodes are
removed mid-run by pid (raylet and workers) while they hold a unit. Every Ray process the module started is
killed by pid when it ends. Skipped, with the reason, only when Ray cannot start a second node here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dfprep.jobs.contract import Needs
from dfprep.runner.cluster import NodeReport, node_problem, node_report
from tests.helpers.runhelpers import FRAMES, PER_SHARD, check_output, good_videos, write_small_dataset

pytestmark = pytest.mark.slow

FAKE_VERSION = "0.0.1+othernode"
# Ray's health check, fast, so a removed node is declared dead in about a second (defaults take ~15 s).
FAST_HEALTH = {"health_check_period_ms": 300, "health_check_failure_threshold": 3,
               "health_check_initial_delay_ms": 0, "health_check_timeout_ms": 300}
VIDEOS = 6  # write_small_dataset(faces=5): 5 clips with a face + 1 faceless → 3 units of PER_SHARD videos


# ---------------------------------------------------------------- processes: ours, found and ended by pid


def _children() -> dict[int, int]:
    """pid → parent pid of every process on this machine."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(root: int) -> set[int]:
    """Every process below `root` (children, their children, …)."""
    parents, found, frontier = _children(), set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def kill_pids(pids: set[int]) -> None:
    """SIGKILL each process (already gone is fine)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- the cluster


class RayNodes:
    """A Ray cluster of raylets on this machine, in a private temp dir, and the environment of its drivers."""

    def __init__(self, tmp: Path, fake_package: Path):
        from ray.cluster_utils import Cluster

        self.tmp, self.before = tmp, descendants(os.getpid())
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DFPREP_"))}
        self.env.update({"RAY_TMPDIR": str(tmp), "TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"})
        saved = dict(os.environ)
        try:
            os.environ.update(self.env)  # the node processes inherit it: their temp dir is ours, not /tmp/ray
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH})
            self.workers = [self.cluster.add_node(num_cpus=1)]
            os.environ["PYTHONPATH"] = str(fake_package)  # this node's workers import the other dfprep
            self.workers.append(self.cluster.add_node(num_cpus=1))
            os.environ.pop("PYTHONPATH")
            self.workers.append(self.cluster.add_node(num_cpus=1))
            self.cluster.wait_for_nodes(timeout=90)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.address = self.cluster.address
        self.other_dfprep = self.workers[1].node_id
        self.lost: list[str] = []

    def node_of(self, pid: int) -> object:
        """The node whose raylet started worker process `pid`."""
        parent = _children().get(pid)
        for node in [self.cluster.head_node, *self.workers]:
            if node.all_processes["raylet"][0].process.pid == parent:
                return node
        raise AssertionError(f"pid {pid} is no Ray worker of this cluster")

    def remove(self, node: object) -> None:
        """Lose a node the hard way: its raylet and every worker it started, by pid."""
        workers = descendants(node.all_processes["raylet"][0].process.pid)
        self.cluster.remove_node(node, allow_graceful=False)
        kill_pids(workers)
        self.workers.remove(node)
        self.lost.append(node.node_id)

    def alive(self) -> set[str]:
        """Node ids of the nodes still in the cluster."""
        return {node.node_id for node in [self.cluster.head_node, *self.workers]}

    def working(self) -> set[str]:
        """Node ids of the worker nodes still in the cluster (the head has no CPU for dfprep's workers)."""
        return {node.node_id for node in self.workers}

    def shutdown(self) -> None:
        """Stop every node, then kill by pid whatever this cluster started that still runs."""
        try:
            self.cluster.shutdown()
        finally:
            kill_pids(descendants(os.getpid()) - self.before)


def other_dfprep(folder: Path) -> Path:
    """A copy of this dfprep under another version: the package an outdated node would import."""
    package = folder / "dfprep"
    shutil.copytree(Path(__import__("dfprep").__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = package / "__init__.py"
    init.write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{FAKE_VERSION}"', init.read_text()))
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head without CPUs + three 1-CPU worker nodes; the second imports another dfprep. Skipped, with the
    reason, if Ray cannot start them."""
    pytest.importorskip("ray")
    tmp = Path(f"/tmp/dfc-{os.getpid()}")  # short: Ray's socket paths live under it
    tmp.mkdir(exist_ok=True)
    before = descendants(os.getpid())
    try:
        made = RayNodes(tmp, other_dfprep(tmp_path_factory.mktemp("otherdfprep")))
    except Exception as exc:  # noqa: BLE001 - any failure to start a second node is a skip, with its reason
        kill_pids(descendants(os.getpid()) - before)
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"Ray cannot start a multi-node cluster on this machine: {type(exc).__name__}: {exc}"[:300])
    yield made
    made.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The small folder dataset of the reliability tests: 6 videos, 3 units of 2."""
    return write_small_dataset(tmp_path_factory.mktemp("clusterdata") / "root", faces=VIDEOS - 1)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """The same extraction in-process (--workers 0): what every cluster run must equal."""
    out = tmp_path_factory.mktemp("reference") / "out"
    done = subprocess.run(extract(dataset, out, "--workers", "0"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


# ---------------------------------------------------------------- commands and what they wrote


def extract(root: Path, out: Path, *extra: str) -> list[str]:
    """`dfprep extract` as a user types it."""
    return [sys.executable, "-m", "dfprep", "extract", "folder", str(root), "-o", str(out), "--frames", str(FRAMES),
            "--videos-per-shard", str(PER_SHARD), *extra]


def run(command: list[str], env: dict[str, str], cwd: Path, fault: str | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command to its end in its own process group (killed whole if it overruns); output as text.

    The working directory is not the checkout: Ray puts the driver's directory first on every worker's path."""
    env = dict(env, **({"DFPREP_FAULT": fault} if fault else {}))
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def start(command: list[str], env: dict[str, str], cwd: Path, fault: str, log: Path) -> subprocess.Popen:
    """Start a command in its own process group, output to a log file."""
    handle = open(log, "w")
    return subprocess.Popen(command, env=dict(env, DFPREP_FAULT=fault, TQDM_DISABLE="0"), cwd=cwd, stdout=handle,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> int:
    """Wait for a started command; kill its group if it overruns."""
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def members(out: Path) -> dict[str, bytes]:
    """Every member of every shard tar, by name: keys, face images, landmarks, metadata."""
    found = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                found[f"{path.name}/{member.name}"] = tar.extractfile(member).read()
    return found


def face_pixels(out: Path) -> dict[str, object]:
    """The decoded face image of every sample (compared pixel for pixel)."""
    import cv2
    import numpy as np

    return {name: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            for name, data in members(out).items() if name.endswith((".png", ".jpg"))}


def assert_same_output(out: Path, reference: Path) -> None:
    """Key for key, byte for byte and pixel for pixel the in-process output; the same parquet rows."""
    import numpy as np

    ours, theirs = members(out), members(reference)
    assert sorted(ours) == sorted(theirs) and ours, sorted(set(ours) ^ set(theirs))
    assert [name for name in ours if ours[name] != theirs[name]] == []
    pixels, expected = face_pixels(out), face_pixels(reference)
    assert len(pixels) >= 8 and all(np.array_equal(pixels[name], expected[name]) for name in expected)
    keep = ["video_id", "status", "faces_written", "shard", "error"]
    rows = lambda folder: sorted(pq.read_table(folder / "videos.parquet").select(keep).to_pylist(),  # noqa: E731
                                 key=lambda row: row["video_id"])
    assert rows(out) == rows(reference)


def nodes_of_commits(out: Path) -> dict[str, list[str]]:
    """node id → the units its commit markers say it processed (and every marker names this host)."""
    units: dict[str, list[str]] = {}
    for marker in sorted(out.glob("*_stats.json")):
        stats = json.loads(marker.read_text())
        assert stats["node"]["host"] == socket.gethostname(), stats["node"]
        units.setdefault(stats["node"]["node_id"], []).append(stats["shard"])
    return units


def last_count(log: str, bar: str) -> tuple[int, int]:
    """The last `done/total` the progress bar printed."""
    counts = re.findall(rf"{bar}:[^\r\n]*?(\d+)/(\d+)", log)
    assert counts, log[-2000:]
    return int(counts[-1][0]), int(counts[-1][1])


def wait_markers(markers: list[Path], count: int, process: subprocess.Popen, log: Path,
                 timeout: float = 180) -> dict[Path, int]:
    """Wait until `count` of the fault points are reached; returns marker → pid of the worker holding it."""
    deadline = time.monotonic() + timeout
    while True:
        reached = {marker: int(marker.read_text()) for marker in markers if marker.exists()}
        if len(reached) >= count:
            return reached
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"only {len(reached)} of {count} fault points reached: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def lose_a_worker_node(cluster: RayNodes, reached: dict[Path, int]) -> tuple[str, Path]:
    """Remove a worker node (not the head) that holds a unit; returns its id and the marker of that unit."""
    for marker, pid in reached.items():
        node = cluster.node_of(pid)
        if node is not cluster.cluster.head_node:
            node_id = node.node_id
            cluster.remove(node)
            return node_id, marker
    raise AssertionError("every held unit sits on the head node")


def release(markers: list[Path]) -> None:
    """Let every held worker go on."""
    from dfprep.runner.faults import release_file

    for marker in markers:
        release_file(marker).touch()


def run_losing_a_node(command: list[str], cluster: RayNodes, markers: list[Path], fault: str, cwd: Path,
                      log: Path) -> tuple[str, Path, str]:
    """Run a command that holds its units at the fault points, remove a worker node holding one, let the rest
    go on; the run must still succeed. Returns the lost node's id, the held unit's marker and the log."""
    process = start(command, cluster.env, cwd, fault, log)
    try:
        reached = wait_markers(markers, len(cluster.working()), process, log)
        lost, marker = lose_a_worker_node(cluster, reached)
    finally:
        release(markers)
    assert finish(process) == 0, log.read_text()[-3000:]
    return lost, marker, log.read_text()


# ---------------------------------------------------------------- the tests (in this order: nodes get lost)


def test_a_node_with_another_dfprep_stops_the_run_naming_the_node(cluster, dataset, tmp_path):
    out = tmp_path / "out"
    done = run(extract(dataset, out, "--address", cluster.address, "--quiet"), cluster.env, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("dfprep: error: node "), done.stderr[-2000:]
    assert cluster.other_dfprep[:12] in message[0] and FAKE_VERSION in message[0] and "--ship-code" in message[0]
    assert not list(out.glob("*.tar")) and not list(out.glob("*_stats.json"))  # stopped before any work


def test_extract_across_the_nodes_with_shipped_code_equals_in_process(cluster, dataset, reference, tmp_path):
    out = tmp_path / "out"
    done = run(extract(dataset, out, "--address", cluster.address, "--ship-code", "--quiet"), cluster.env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_output(out, VIDEOS, good_videos(dataset))
    assert_same_output(out, reference)
    by_node = nodes_of_commits(out)
    assert set(by_node) == cluster.working() and all(by_node.values()), by_node  # every worker node did a unit
    assert "was lost" not in done.stdout


def test_a_default_run_on_a_cluster_plans_for_the_cluster_s_cpus_not_the_driver_s(cluster, tmp_path):
    # the driver has os.cpu_count() CPUs (2 here), the cluster 3 worker CPUs: units for 3 workers, one actor each
    from dfprep.catalog import scan
    from dfprep.jobs.plan import build_units, unit_size

    root = write_small_dataset(tmp_path / "many", faces=23)  # 24 videos
    videos = len(list(scan("folder", root)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dfprep", "extract", "folder", str(root), "-o", str(out), "--frames", "1",
               "--address", cluster.address, "--ship-code", "--quiet", "--json"]  # --workers and shard size unset
    done = run(command, cluster.env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cpus = len(cluster.working())
    planned = len(build_units(scan("folder", root), unit_size(videos, cpus, None)))
    assert planned != len(build_units(scan("folder", root), unit_size(videos, 2, None)))  # the test can tell
    assert json.loads(done.stdout)["shards"] == planned >= 4 * cpus
    by_node = nodes_of_commits(out)
    assert set(by_node) == cluster.working() and sum(map(len, by_node.values())) == planned, by_node
    assert len(pq.read_table(out / "videos.parquet")) == videos


def test_a_run_without_address_starts_its_own_ray_beside_a_running_cluster(cluster, dataset, reference, tmp_path):
    address_file = cluster.tmp / "ray" / "ray_current_cluster"
    assert address_file.read_text().strip() == cluster.address  # what a plain ray.init() would join
    out = tmp_path / "out"
    done = run(extract(dataset, out, "--workers", "1", "--quiet"), cluster.env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_output(out, VIDEOS, good_videos(dataset))
    assert_same_output(out, reference)
    by_node = nodes_of_commits(out)
    assert len(by_node) == 1 and not set(by_node) & cluster.alive(), by_node  # its own node, not the cluster's


def test_losing_a_node_mid_extract_redoes_its_unit(cluster, dataset, reference, tmp_path):
    from dfprep.jobs.plan import build_units
    from dfprep.catalog import scan

    units = [unit.name for unit in build_units(scan("folder", dataset), PER_SHARD)]
    markers = [tmp_path / f"held-{unit}" for unit in units]
    fault = ";".join(f"hold:{unit}:1:{marker}" for unit, marker in zip(units, markers))  # mid-unit: video 1
    out, log = tmp_path / "out", tmp_path / "run.log"
    lost, marker, text = run_losing_a_node(extract(dataset, out, "--address", cluster.address, "--ship-code"),
                                           cluster, markers, fault, tmp_path, log)
    held_unit = marker.name.removeprefix("held-")
    assert re.search(rf"node {lost[:12]} \(.+\) was lost; its 1 unit\(s\) were redone on the other nodes: "
                     rf"{held_unit}", text), text[-2000:]
    check_output(out, VIDEOS, good_videos(dataset))
    assert_same_output(out, reference)
    by_node = nodes_of_commits(out)
    assert lost not in by_node and held_unit in sum(by_node.values(), []), by_node
    assert last_count(text, "extract") == (VIDEOS, VIDEOS)  # its first video, done twice, is counted once


def test_a_video_is_never_charged_for_a_lost_node(cluster):
    import ray

    from dfprep.runner.guard import observed_death

    assert cluster.lost, "runs after a node was lost"
    left_in_progress = lambda node: {"run": "r1", "pid": -1, "node": node}  # noqa: E731 - what a marker says
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        alive_worker = next(node.node_id for node in cluster.workers)
        assert observed_death(left_in_progress(cluster.lost[0]), "r1") is None
        assert "died while processing it" in observed_death(left_in_progress(alive_worker), "r1")
    finally:
        ray.shutdown()


def test_losing_a_node_mid_maps_redoes_its_unit(cluster, reference, tmp_path):
    faces = tmp_path / "faces"
    shutil.copytree(reference, faces)
    expected = tmp_path / "expected"
    shutil.copytree(reference, expected)
    done = run([sys.executable, "-m", "dfprep", "maps", str(expected), "--workers", "0", "--quiet"], cluster.env,
               tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    units = sorted(json.loads(p.read_text())["shard"] for p in faces.glob("*_stats.json"))
    markers = [tmp_path / f"held-{unit}" for unit in units]
    fault = ";".join(f"hold:{unit}:-1:{marker}" for unit, marker in zip(units, markers))  # as it takes the unit
    log = tmp_path / "maps.log"
    lost, marker, text = run_losing_a_node([sys.executable, "-m", "dfprep", "maps", str(faces), "--address",
                                            cluster.address, "--ship-code"], cluster, markers, fault, tmp_path, log)
    assert f"node {lost[:12]} (" in text and f"were redone on the other nodes: {marker.name[5:]}" in text, text
    ours, theirs = members(faces / "maps" / "landmarks"), members(expected / "maps" / "landmarks")
    assert sorted(ours) == sorted(theirs) and ours and all(ours[name] == theirs[name] for name in theirs)
    manifest = json.loads((faces / "maps" / "landmarks" / "manifest.json").read_text())
    assert manifest.get("complete", True) is True
    samples = sum(json.loads(p.read_text())["samples"] for p in faces.glob("*_stats.json"))
    assert last_count(text, "maps") == (samples, samples)  # each face once, though a unit was taken twice


# ---------------------------------------------------------------- the node check itself (no cluster)


def test_the_node_check_names_what_a_node_cannot_open(tmp_path):
    present, missing = tmp_path / "videos", tmp_path / "only-on-the-driver"
    present.mkdir()
    report = node_report("f" * 56, Needs(read=(str(present), str(missing)), write=(str(present),)))
    assert report.unreadable == (str(missing),) and report.unwritable == ()
    problem = node_problem(report)
    assert problem.startswith(f"node {'f' * 12} ({socket.gethostname()}) cannot open {missing}")
    assert node_problem(NodeReport("a" * 56, "h", "0.0.0", "3.11")) .startswith(
        "node aaaaaaaaaaaa (h) imports dfprep 0.0.0 but this driver runs")
    assert node_problem(node_report("b" * 56, Needs(read=(str(present),)))) is None


def test_a_node_finds_the_driver_s_models_by_name_and_checksum(tmp_path):
    from dataclasses import replace

    from dfprep.vision.models import ModelError, file_sha256, locate, resolve_model

    model = resolve_model("dlib5")  # the driver's copy
    elsewhere = replace(model, path=tmp_path / "not-on-this-node" / model.path.name)  # another install path
    found = locate(elsewhere)
    assert found.path == model.path and file_sha256(found.path) == model.sha256
    other = replace(elsewhere, sha256="0" * 64)  # the driver used another file under that name
    with pytest.raises(ModelError, match="dlib5.*is not on this machine"):
        locate(other)
    reasons = node_report("c" * 56, Needs(models=(elsewhere, other))).models_missing
    assert len(reasons) == 1 and "is not on this machine" in reasons[0]
    assert node_problem(node_report("c" * 56, Needs(models=(other,)))).startswith(f"node {'c' * 12} (")
