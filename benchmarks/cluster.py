"""A 2-node Ray cluster vs 1 node on ffpp-mini x4 (28 videos): wall time and units per node.

    .venv/bin/python benchmarks/cluster.py [--root ../shared/data/ffpp-mini] [--nodes 1 2] [--cpus-per-node 1]

Each configuration gets a fresh cluster on this machine (`ray.cluster_utils.Cluster`: head + worker raylets,
`--cpus-per-node` CPUs each, a private temp dir) and runs `dfprep extract folder DUP -o OUT --address ADDR` as a
user would (default settings, 2 videos per shard). The wall time is the command's (driver start, connect, the
node check, actor start and model load included; cluster start-up excluded). Prints figures; asserts nothing.
On one machine the nodes share its cores: the figure shows the cluster path's overhead and balance, not the
speed-up of real machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_floor import DEFAULT_ROOT  # noqa: E402
from extract import duplicated_dataset  # noqa: E402


def run_on_cluster(dataset: Path, workdir: Path, nodes: int, cpus: int) -> dict[str, object]:
    """Start `nodes` raylets, run the extract command against them, stop them; wall time and units per node."""
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="dfb-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"})
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out = workdir / f"nodes_{nodes}"
    try:
        command = [sys.executable, "-m", "dfprep", "extract", "folder", str(dataset), "-o", str(out), "--address",
                   cluster.address, "--videos-per-shard", "2", "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True)
        wall = time.perf_counter() - started
    finally:
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    markers = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    per_node = Counter(m["node"]["node_id"][:12] for m in markers)
    videos = sum(len(m["videos"]) for m in markers)
    faces = sum(m["samples"] for m in markers)
    return {"nodes": nodes, "wall_s": round(wall, 1), "units_per_node": dict(per_node), "videos": videos,
            "faces": faces}


def main() -> int:
    """Run each configuration and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args()
    if not (args.root / "original_sequences").is_dir():
        print(f"ffpp-mini not found at {args.root}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dfprep-bench-") as tmp:
        dataset = duplicated_dataset(args.root, Path(tmp), 4)
        results = [run_on_cluster(dataset, Path(tmp), nodes, args.cpus_per_node) for nodes in args.nodes]
    for result in results:
        print(json.dumps(result))
    if len(results) > 1:
        print(f"wall {results[0]['nodes']} node(s) / {results[-1]['nodes']} nodes: "
              f"{results[0]['wall_s'] / results[-1]['wall_s']:.2f}x   load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
