"""What integrity costs: the crc32/sha256 bookkeeping of a commit, and `dfprep verify` (default and --deep).

    .venv/bin/python benchmarks/verify.py [--root ../shared/data/ffpp-mini] [--frames 32]

Extracts the videos in-process into a temporary folder (the extract time is the reference), then times
the writer's per-sample crc32 step on every sample, the cheap check every reader runs, and `verify` with
and without --deep; prints figures and ratios, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_floor import DEFAULT_ROOT  # noqa: E402

from dfprep.catalog import scan  # noqa: E402
from dfprep.config import load_config  # noqa: E402
from dfprep.inspect.verify import verify_output
from dfprep.io.integrity import output_problems  # noqa: E402
from dfprep.io.payloads import with_crcs  # noqa: E402
from dfprep.runner.run import extract_run  # noqa: E402


def samples_of(out: Path) -> list[dict[str, bytes]]:
    """Every sample's members, read back from the tars (the json already holds crc32s: recomputing costs the same)."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return list(samples.values())


def timed(function, repeats: int = 3) -> float:
    """Best of `repeats` wall times, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    """Extract once, then time each integrity step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        config = load_config(None, {"sampling.frames": args.frames, "ray.workers": 0, "output.videos_per_shard": 2})
        started = time.perf_counter()
        report = extract_run(scan("ffpp", args.root, config.dataset), config, str(out), quiet=True)
        extract_s = time.perf_counter() - started
        samples = samples_of(out)
        megabytes = sum(p.stat().st_size for p in out.glob("*.tar")) / 1e6
        shards = len(list(out.glob("*.tar")))
        crc_s = timed(lambda: [with_crcs(s) for s in samples])
        cheap_s = timed(lambda: output_problems(str(out)))
        verify_s = timed(lambda: verify_output(str(out)))
        deep_s = timed(lambda: verify_output(str(out), deep=True))
    print(f"extract: {report.faces} faces, {megabytes:.1f} MB of tars in {extract_s:.2f} s")
    print(f"writer crc32 step: {1e6 * crc_s / len(samples):.0f} µs per sample "
          f"({100 * crc_s / extract_s:.2f}% of extraction)")
    print(f"cheap check (every reader): {1e3 * cheap_s:.1f} ms for {shards} shards")
    print(f"verify: {verify_s:.3f} s ({megabytes / verify_s:.0f} MB/s, {len(samples) / verify_s:.0f} samples/s)")
    print(f"verify --deep: {deep_s:.3f} s ({megabytes / deep_s:.0f} MB/s); deep/default {deep_s / verify_s:.2f}x")


if __name__ == "__main__":
    main()
