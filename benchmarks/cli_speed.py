"""The `dfprep` command as a user runs it (process start, model load and Ray start included) against floors.

    .venv/bin/python benchmarks/cli_speed.py floor     [--runs 3]   # 7 videos in-process vs the decode floor
    .venv/bin/python benchmarks/cli_speed.py default28 [--runs 3] [--dfb DIR --dfb-python PY [--dfb-runs 1]]
    .venv/bin/python benchmarks/cli_speed.py workers   [--runs 3]   # 28 videos: 1 vs 2 threads/Ray workers (1 on 1 core)
    .venv/bin/python benchmarks/cli_speed.py small     [--count 2000] [--runs 1]  # per-video overhead, tiny clips
    .venv/bin/python benchmarks/cli_speed.py memory    [--counts 2000 20000] [--runs 3]  # driver peak RSS vs videos
    .venv/bin/python benchmarks/cli_speed.py pinned    [--count 2000] [--runs 3]  # default flags on 1 of the CPUs

Prints ratios; asserts nothing. Every CLI figure is the worst of `--runs` runs (best shown beside it), with the
CPU-seconds of the command and the processes it waited for (Ray's daemons are not among them) and the 1-min
load average before and after: on a shared machine compare CPU-seconds, and walls only at low load.
The 28-video input is ffpp-mini four times over (symlinks), as DeepfakeBench's FF++ layout for its script.
DFPREP_PYTHON=<another venv's python> times another dfprep install with the same script (before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_floor import DEFAULT_ROOT, decode_floor  # noqa: E402

DFPREP = [os.environ.get("DFPREP_PYTHON", sys.executable), "-m", "dfprep"]  # another install: before/after
# ffpp-mini method → the FF++ subset its 4th copy goes to in DeepfakeBench's layout: its FF++ branch needs
# every sub-dataset to hold a video, and ffpp-mini lacks these.
EXTRA_SUBSET = {"youtube": "original_sequences/actors", "Deepfakes": "manipulated_sequences/FaceShifter",
                "Face2Face": "manipulated_sequences/FaceShifter", "FaceSwap": "manipulated_sequences/DeepFakeDetection",
                "NeuralTextures": "manipulated_sequences/DeepFakeDetection"}


def timed_command(command: Sequence[str], cwd: str | None = None,
                  env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall, CPU (user+sys of the process and its waited children) and peak RSS of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rss_mb": after.ru_maxrss / 1024, "load": load,
            "load_after": os.getloadavg()[0], "stdout": done.stdout}


def repeat_cli(label: str, args: Sequence[str], runs: int, out: Path, env: dict[str, str] | None = None,
               prefix: Sequence[str] = ()) -> dict[str, float]:
    """Run `[prefix] dfprep args -o out` `runs` times on a fresh output; print each; return the worst run."""
    results = []
    for number in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        result = timed_command([*prefix, *DFPREP, *args, "-o", str(out), "--quiet"], cwd=str(out.parent), env=env)
        results.append(result)
        print(f"  {label} run {number + 1}: wall {result['wall']:6.2f} s  cpu {result['cpu']:6.2f} s  "
              f"load {result['load']:.1f}->{result['load_after']:.1f}", flush=True)
    worst = max(results, key=lambda r: r["wall"])
    worst["best"] = min(r["wall"] for r in results)
    worst["note"] = next((line.strip() for line in worst["stdout"].splitlines() if "plan:" in line), "")
    return worst


def floor_vs_cli(root: Path, runs: int, work: Path) -> None:
    """7 videos, 32 frames, the CLI with default flags vs the decode floor, measured in pairs (floor, then CLI) so
    that each ratio is taken under the same load; the worst pair is the figure. The CLI runs with a cache folder
    of its own: a first run, shown apart, finds it empty (a fresh machine: dlib's HOG detector is built and
    cached), and the pairs find the detector there as every later run does."""
    from dfprep.catalog import scan
    from dfprep.config import load_config
    from dfprep.vision.video import frame_plan, probe

    config = load_config(None, {})
    plans = [(r.path, frame_plan(probe(r.path), config.sampling)) for r in scan("ffpp", root, config.dataset)]
    cache = work / "user-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "DFPREP_CACHE_DIR": str(cache)}
    command = ["extract", "ffpp", str(root)]
    first_floor = decode_floor(plans)
    first = repeat_cli("dfprep extract ffpp, empty user cache", command, 1, work / "floor", env)
    print(f"    floor {first_floor:6.2f} s wall -> first run on a machine {first['wall'] / first_floor:.2f}x wall",
          flush=True)
    pairs = []
    for number in range(runs):
        cpu = time.process_time()
        floor = decode_floor(plans)
        floor_cpu = time.process_time() - cpu
        cli = repeat_cli("dfprep extract ffpp (default flags)", command, 1, work / "floor", env)
        pairs.append((cli["wall"] / floor, cli["cpu"] / floor_cpu, floor, cli))
        print(f"    floor {floor:6.2f} s wall {floor_cpu:6.2f} s cpu -> ratio {pairs[-1][0]:.2f}x wall, "
              f"{pairs[-1][1]:.2f}x cpu", flush=True)
    worst = max(pairs, key=lambda p: p[0])
    print(f"\n== CLI vs decode floor: {len(plans)} videos x {config.sampling.frames} frames ==")
    print(f"  dfprep CLI / decode floor: worst of {runs} pairs {worst[0]:.2f}x wall "
          f"({worst[3]['wall']:.2f} s vs {worst[2]:.2f} s), best {min(p[0] for p in pairs):.2f}x; "
          f"cpu {max(p[1] for p in pairs):.2f}x (worst); {worst[3]['note']}")
    print(f"  first run on a machine (HOG detector built and cached): {first['wall'] / first_floor:.2f}x wall "
          f"({first['wall']:.2f} s vs {first_floor:.2f} s)")


def build_inputs(root: Path, target: Path, copies: int = 4) -> tuple[Path, Path]:
    """ffpp-mini `copies` times (symlinks): a folder-adapter tree and DeepfakeBench's FF++ layout."""
    folder, ffpp = target / "folder", target / "ffpp" / "FaceForensics++"
    for path in sorted(root.glob("*_sequences/*/c23/videos/*.mp4")):
        subset = path.relative_to(root).parents[2]
        label = "real" if str(subset).startswith("original") else "fake"
        for copy in range(copies):
            links = [folder / label / f"{subset.name}_{path.stem}_{copy}.mp4"]
            where = EXTRA_SUBSET[subset.name] if copy == copies - 1 else str(subset)
            links.append(ffpp / where / "c23" / "videos" / f"{path.stem}{'abcdefgh'[copy]}.mp4")
            for link in links:
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    os.symlink(path.resolve(), link)
    return folder, ffpp


def default_vs_deepfakebench(root: Path, runs: int, work: Path, dfb: Path | None, dfb_python: str | None,
                             dfb_runs: int) -> None:
    """The default `dfprep extract folder` on 28 videos, vs DeepfakeBench's preprocess.py when its source is given."""
    folder, ffpp = build_inputs(root, work / "inputs")
    worst = repeat_cli("dfprep extract folder (default flags)", ["extract", "folder", str(folder)], runs,
                       work / "default28")
    print(f"\n== default run, 28 videos x 32 frames, {os.cpu_count()} CPUs ==")
    print(f"  dfprep           {worst['wall']:6.2f} s wall  {worst['cpu']:6.2f} s cpu   worst of {runs} "
          f"(best {worst['best']:.2f} s); {worst['note']}")
    if dfb is None:
        print("  DeepfakeBench: pass --dfb <its checkout> --dfb-python <interpreter with dlib, cv2, skimage, imutils>")
        return
    from deepfakebench_speed import run_preprocess

    reference = [run_preprocess(dfb, ffpp, dfb_python or sys.executable, 32, work) for _ in range(max(1, dfb_runs))]
    slowest = max(reference, key=lambda r: r["wall_s"])
    print(f"  DeepfakeBench    {slowest['wall_s']:6.2f} s wall  {slowest['cpu_s']:6.2f} s cpu   worst of "
          f"{len(reference)}; {slowest['pngs']} crops")
    print(f"  speed-up         {slowest['wall_s'] / worst['wall']:.1f}x (worst vs worst), "
          f"{min(r['wall_s'] for r in reference) / worst['wall']:.1f}x (DeepfakeBench best vs dfprep worst)")


# label → (flags, CPUs the whole command may use: None = all). "on 1 core" pins the command and everything it
# starts (FFmpeg's frame threads, Ray's daemons and actors) to CPU 0 with taskset: one worker with one core,
# against two workers with two, is what "2 workers vs 1" means where one worker would otherwise borrow the
# second core through FFmpeg's frame threads.
SCALING: dict[str, tuple[list[str], str | None]] = {
    "in-process, 1 thread": (["--workers", "0", "--threads", "1"], None),
    "in-process, 1 thread on 1 core": (["--workers", "0", "--threads", "1"], "0"),
    "in-process, 2 threads": (["--workers", "0", "--threads", "2"], None),
    "default flags": ([], None),
    "Ray, 1 worker": (["--workers", "1"], None),
    "Ray, 1 worker on 1 core": (["--workers", "1"], "0"),
    "Ray, 2 workers": (["--workers", "2"], None)}
RATIOS = (("in-process, 1 thread", "in-process, 2 threads"), ("in-process, 1 thread on 1 core", "in-process, 2 threads"),
          ("Ray, 1 worker", "Ray, 2 workers"), ("Ray, 1 worker on 1 core", "Ray, 2 workers"))


def _decode_pinned(cpu: int, plans: list[tuple[str, list[int]]]) -> None:
    """One process's share of the machine ceiling: the decode floor of its videos (one FFmpeg thread) on CPU `cpu`."""
    os.sched_setaffinity(0, {cpu})
    decode_floor(plans, threads=1)


def machine_ceiling(folder: Path, runs: int) -> float:
    """What this machine gives a second core: the decode floor of the 28 videos in one process on one CPU vs two
    processes, each on its own CPU with half the videos (no GIL, no shared state: only the hardware's own
    scaling, e.g. shared cache and memory bandwidth). Worst of `runs` pairs, interleaved."""
    import multiprocessing

    from dfprep.catalog import scan
    from dfprep.config import load_config
    from dfprep.vision.video import frame_plan, probe

    config = load_config(None, {})
    plans = [(str(r.path), frame_plan(probe(r.path), config.sampling)) for r in scan("folder", folder, config.dataset)]
    ratios = []
    for _ in range(runs):
        walls = []
        for shares in ([plans], [plans[0::2], plans[1::2]]):
            started = time.perf_counter()
            workers = [multiprocessing.Process(target=_decode_pinned, args=(cpu, share))
                       for cpu, share in enumerate(shares)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            walls.append(time.perf_counter() - started)
        ratios.append(walls[0] / walls[1])
        print(f"  decode floor, 1 process on 1 core {walls[0]:6.2f} s, 2 processes on 2 cores {walls[1]:6.2f} s "
              f"-> {ratios[-1]:.2f}x", flush=True)
    return min(ratios)


def workers_scaling(root: Path, runs: int, work: Path) -> None:
    """28 videos: in-process with 1 and 2 video threads, default flags, Ray with 1 and 2 workers (the flags are
    always obeyed), the single ones also pinned to one core; interleaved run by run so that load from other jobs
    falls on all alike."""
    folder, _ = build_inputs(root, work / "inputs")
    pinning = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    chosen = {label: spec for label, spec in SCALING.items() if spec[1] is None or pinning}
    results: dict[str, list[dict[str, float]]] = {label: [] for label in chosen}
    for _ in range(runs):
        for number, (label, (flags, cpus)) in enumerate(chosen.items()):
            prefix = ["taskset", "-c", cpus] if cpus else []
            results[label].append(repeat_cli(label, ["extract", "folder", str(folder), *flags], 1,
                                             work / f"scaling{number}", prefix=prefix))
    worst = {label: max(r["wall"] for r in rs) for label, rs in results.items()}
    best = {label: min(r["wall"] for r in rs) for label, rs in results.items()}
    cpu = {label: max(r["cpu"] for r in rs) for label, rs in results.items()}
    print(f"\n== 28 videos x 32 frames on {os.cpu_count()} CPUs: 1 vs 2 video threads in-process, 1 vs 2 Ray "
          "workers ==")
    for label in chosen:
        print(f"  {label:31s} {worst[label]:7.2f} s wall (worst of {runs}, best {best[label]:.2f} s), "
              f"{cpu[label]:6.2f} s cpu (worst)")
    for one, two in RATIOS:
        if one in chosen:
            print(f"  {two} vs {one}: {worst[one] / worst[two]:.2f}x (worst vs worst), "
                  f"{best[one] / best[two]:.2f}x (best vs best)")
    print(f"  default flags vs Ray 2 workers: {worst['Ray, 2 workers'] / worst['default flags']:.2f}x "
          "(worst vs worst; > 1: the default is faster)")
    if not pinning:
        print("  (no taskset or one CPU: the runs on 1 core were left out)")
        return
    ceiling = machine_ceiling(folder, runs)
    print(f"  this machine's own 2-core scaling (decode floor, 2 pinned processes vs 1): {ceiling:.2f}x (worst of "
          f"{runs}); dfprep's 2 threads vs 1 thread on 1 core reach "
          f"{worst['in-process, 1 thread on 1 core'] / worst['in-process, 2 threads'] / ceiling:.0%} of it")


def small_clips(target: Path, count: int, distinct: int = 50) -> Path:
    """`count` tiny face clips (320x240, 8 frames), `distinct` of them encoded and hard-linked under many names."""
    from dfprep.cli.democlips import FacePlacement, linear_motion, write_clip

    sources = []
    for i in range(distinct):
        path = target / "_src" / f"clip{i:03d}.mp4"
        if not path.exists():
            motion = linear_motion(FacePlacement(10 + i % 7, 5, 0.8), FacePlacement(60 - i % 5, 20, 0.85))
            write_clip(path, 320, 240, 8, motion, fps=25, gop=8, seed=i)
        sources.append(path)
    videos = target / f"videos{count}"
    for n in range(count):
        link = videos / ("real" if n % 2 == 0 else "fake") / f"v{n:05d}.mp4"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.link(sources[n % distinct], link)
    return videos


def per_video_overhead(count: int, runs: int, work: Path) -> None:
    """Many tiny clips, 4 frames each: wall beyond the stages' own time (divided by the 2 cores both backends keep
    busy). For Ray with 2 workers and for 2 in-process video threads the same run on count/20 clips gives the
    run's fixed start-up; what grows with the clips beyond it, per clip, is the per-video overhead. The default
    flags run once, at `count` (dfprep picks its backend by the number of videos)."""

    small = max(2, count // 20)
    print(f"\n== {count} tiny clips x 4 frames (and {small} for the fixed start-up) ==")
    walls = {}
    for label, extra, sizes in (("default flags", [], (count,)), ("Ray, 2 workers", ["--workers", "2"], (small, count)),
                                ("in-process, 2 threads", ["--workers", "0", "--threads", "2"], (small, count))):
        beyond, probes = {}, {}
        for clips in sizes:
            videos = small_clips(work / "small", clips)
            out = work / f"small-{len(walls)}-{clips}"
            result = repeat_cli(label, ["extract", "folder", str(videos), "--frames", "4", *extra], runs, out)
            markers = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
            stages = sum(sum(m["timings"].values()) for m in markers)
            probes[clips] = sum(m["timings"].get("probe", 0) for m in markers) / clips
            beyond[clips] = result["wall"] - stages / 2
            print(f"  {label:21s} {clips:5d} clips {result['wall']:7.2f} s wall {result['cpu']:7.2f} s cpu; stages "
                  f"{stages:.1f} s (probe {1000 * probes[clips]:.2f} ms/video); beyond the stages on 2 cores "
                  f"{beyond[clips]:.2f} s = {1000 * beyond[clips] / clips:.2f} ms/video; {result['note']}")
        walls[label] = result["wall"]
        if len(sizes) == 2:
            marginal = (beyond[count] - beyond[small]) / (count - small)
            print(f"  {label}: fixed start-up {beyond[small] - small * marginal:.1f} s; per video beyond the stages "
                  f"{1000 * marginal:.2f} ms; with the probe (a stage above: its worker time over 2 cores) "
                  f"{1000 * (marginal + probes[count] / 2):.2f} ms")
    print(f"  default flags vs Ray 2 workers: {walls['Ray, 2 workers'] / walls['default flags']:.2f}x; vs in-process "
          f"2 threads: {walls['in-process, 2 threads'] / walls['default flags']:.2f}x (> 1: the default is faster)")


def pinned_default(root: Path, count: int, runs: int, work: Path) -> None:
    """The default flags with the command pinned to CPU 0 (taskset, as Slurm or a cpuset pins a job) on tiny clips
    and on the 28 videos, against the choice the host's CPU count made before dfprep counted the CPUs it may use
    (a Ray pool of os.cpu_count() workers for the clips, os.cpu_count() video threads for the 28). Interleaved."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("  needs taskset and 2 CPUs")
        return
    host = str(os.cpu_count())
    inputs = {"tiny": (small_clips(work / "small", count), ["--frames", "4"], ["--workers", host]),
              "28": (build_inputs(root, work / "inputs")[0], [], ["--workers", "0", "--threads", host])}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(runs):
        for name, (videos, flags, by_host) in inputs.items():
            for label, extra in (("default flags", []), (f"the host's count ({' '.join(by_host)})", by_host)):
                run = repeat_cli(f"{name}: {label}", ["extract", "folder", str(videos), *flags, *extra], 1,
                                 work / f"pinned-{name}-{bool(extra)}", prefix=["taskset", "-c", "0"])
                results.setdefault((name, label), []).append(run)
    print(f"\n== pinned to 1 of {host} CPUs: {count} tiny clips x 4 frames, and 28 videos x 32 frames ==")
    for (name, label), runs_of in results.items():
        worst = max(runs_of, key=lambda r: r["wall"])
        print(f"  {name:4s} {label:44s} {worst['wall']:7.2f} s wall (worst of {len(runs_of)}, best "
              f"{min(r['wall'] for r in runs_of):.2f} s), {worst['cpu']:6.2f} s cpu; {worst['note']}")
    for name in inputs:
        default, old = (max(r["wall"] for r in runs_of) for (n, _), runs_of in results.items() if n == name)
        print(f"  {name}: default flags vs the host's count: {old / default:.2f}x (worst vs worst; > 1: faster now)")


# `dfprep …` in this process, then the process's peak resident memory (VmHWM) on stderr when it exits.
DRIVER_PEAK = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
    "    print('driver-peak-kb', status['VmHWM'].split()[0], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['dfprep', *sys.argv[1:]]\n"
    "runpy.run_module('dfprep', run_name='__main__')\n"
)


def driver_memory(counts: Sequence[int], runs: int, work: Path) -> None:
    """Peak RSS of the `dfprep extract` process itself (the driver: catalog, plan, dispatch, progress, finalize,
    report; the videos are decoded by the Ray workers) for growing folders of tiny clips, one frame each; the
    worst of `runs` fresh runs per folder (allocators make single runs vary by several MB). The folders take
    turns, run after run, so a drift of the machine over the minutes (page cache, other load) reaches all alike."""
    print("\n== driver memory vs catalog size (dfprep extract --workers 2 --frames 1, the driver's own peak RSS) ==")
    folders = {count: small_clips(work / "small", count) for count in counts}
    peaks: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(runs):
        for count, videos in folders.items():
            out = work / f"memory{count}"
            shutil.rmtree(out, ignore_errors=True)
            done = subprocess.run([DFPREP[0], "-c", DRIVER_PEAK, "extract", "folder", str(videos), "-o", str(out),
                                   "--frames", "1", "--workers", "2", "--quiet", "--json"],
                                  capture_output=True, text=True, check=True)
            peaks[count].append(int(done.stderr.split("driver-peak-kb")[-1].split()[0]) / 1024)
            assert json.loads(done.stdout)["videos"] == count, "every video has its row"
    worst = {count: max(values) for count, values in peaks.items()}
    for count in counts:
        units = len(list((work / f"memory{count}").glob("*_stats.json")))
        print(f"  {count:6d} videos  {units:5d} units  driver peak RSS worst of {runs} {worst[count]:7.1f} MB "
              f"(runs: {', '.join(f'{peak:.1f}' for peak in peaks[count])})")
    low, high = min(worst), max(worst)
    if high > low:
        grown = worst[high] - worst[low]
        print(f"  {low} -> {high} videos: {grown:+.1f} MB ({100 * grown / worst[low]:+.1f}%), "
              f"{1024 * grown / (high - low):.2f} kB per video")


def main() -> int:
    """Parse arguments and run one benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["floor", "default28", "workers", "small", "memory", "pinned"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT.resolve())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--dfb", type=Path, help="DeepfakeBench checkout (public; keep it out of this repository)")
    parser.add_argument("--dfb-python", help="interpreter for DeepfakeBench (dlib, cv2, skimage, imutils)")
    parser.add_argument("--dfb-runs", type=int, default=1, help="DeepfakeBench runs (~200 s each on 2 cores)")
    parser.add_argument("--work", type=Path, help="keep inputs and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dfprep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.what == "floor":
            floor_vs_cli(args.root, args.runs, work)
        elif args.what == "default28":
            default_vs_deepfakebench(args.root, args.runs, work, args.dfb, args.dfb_python, args.dfb_runs)
        elif args.what == "workers":
            workers_scaling(args.root, args.runs, work)
        elif args.what == "small":
            per_video_overhead(args.count, args.runs, work)
        elif args.what == "pinned":
            pinned_default(args.root, args.count, args.runs, work)
        else:
            driver_memory(args.counts, args.runs, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
