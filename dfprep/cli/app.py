"""The `dfprep` command line: parse, build the config, call the library, print a summary."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from dfprep.errors import DfprepError


INTERRUPTED = "interrupted: rerun the same command to continue"


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup on the way out runs; carries the exit code."""

    exit_code = 143


_RECEIVED: list[int] = []  # the signal that interrupted the command (libraries may re-raise a plain Ctrl-C)


def _on_signal(signum: int, frame: Any) -> None:
    """First SIGINT/SIGTERM: unwind cleanly (markers released, staging removed); a second one: stop at once."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, _stop_now)
    _RECEIVED.append(signum)
    raise Interrupted() if signum == signal.SIGTERM else KeyboardInterrupt()


def _stop_now(signum: int, frame: Any) -> None:
    """Interrupted again while cleaning up: leave now (the next run treats what is left as an interrupted run)."""
    click.echo(f"dfprep: {INTERRUPTED}", err=True)
    os._exit(143 if signum == signal.SIGTERM else 130)


def _install_signal_handlers() -> dict[int, Any]:
    """Ctrl-C and SIGTERM unwind through every cleanup; returns the handlers to put back (library callers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in saved:
        signal.signal(number, _on_signal)
    return saved


def _fail_cleanly(function: Callable[..., Any]) -> Callable[..., Any]:
    """A DfprepError is one line and exit code 2; Ctrl-C / SIGTERM one line and 130 / 143 (no traceback)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = _install_signal_handlers()
        _RECEIVED.clear()
        try:
            return function(*args, **kwargs)
        except DfprepError as exc:
            click.echo(f"dfprep: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            click.echo(f"dfprep: {INTERRUPTED}", err=True)
            terminated = isinstance(exc, Interrupted) or signal.SIGTERM in _RECEIVED
            sys.exit(Interrupted.exit_code if terminated else 130)
        finally:
            for number, handler in saved.items():
                signal.signal(number, handler)

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dfprep")
def cli() -> None:
    """Deepfake-detection video datasets → WebDataset shards of aligned faces."""


def _overrides(pairs: tuple[str, ...], **flags: Any) -> dict[str, Any]:
    """--set section.key=value pairs plus the dedicated flags that were given."""
    from dfprep.config import parse_override

    values = dict(parse_override(p) for p in pairs)
    values.update({k: v for k, v in flags.items() if v is not None})
    return values


@cli.command()
@click.argument("name", required=False)
@click.argument("root", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the records and counts as JSON.")
@click.option("--pipeline", help="Recipe whose dataset options apply (e.g. deepfakebench-ffpp): shows what it takes.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@_fail_cleanly
def datasets(name: str | None, root: str | None, as_json: bool, pipeline: str | None,
             settings: tuple[str, ...]) -> None:
    """List the dataset adapters, or catalog ROOT with adapter NAME (no pixels touched)."""
    from dfprep.catalog import ADAPTERS, get_adapter, left_out, scan, summarize
    from dfprep.config import load_config

    if name is None:
        for adapter_name in ADAPTERS:
            adapter = get_adapter(adapter_name)
            click.echo(f"{adapter_name:16s} {adapter.summary}\n{_indent(adapter.layout)}\n  labels: "
                       f"{adapter.labels}\n")
        return
    if root is None:
        adapter = get_adapter(name)
        click.echo(f"{name}: {adapter.summary}\n{_indent(adapter.layout)}\n  labels: {adapter.labels}")
        return
    config = load_config(pipeline, _overrides(settings))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = list(scan(name, root, config.dataset))
    counts = {**summarize(records), "left_out_by_methods": left_out(name, root, config.dataset)}
    if as_json:
        click.echo(json.dumps({"records": [r.to_row() for r in records], "counts": counts,
                               "warnings": [str(w.message) for w in caught]}, indent=1))
        return
    for record in records:
        note = f"  [{record.status}: {record.error}]" if record.status != "found" else ""
        click.echo(f"{record.split:10s} {'fake' if record.label else 'real'}  {record.video_id}{note}")
    click.echo(json.dumps(counts))
    _echo_methods_table(counts)
    for warning in caught:
        click.echo(f"  catalog warning: {warning.message}")


def _echo_methods_table(counts: dict[str, Any]) -> None:
    """Videos per method and split that the recipe takes, then what dataset.methods leaves out."""
    splits = sorted({split for row in counts["by_method_split"].values() for split in row})
    if splits:
        click.echo(f"{'method':20s}" + "".join(f"{split:>12s}" for split in splits))
    for method, row in counts["by_method_split"].items():
        click.echo(f"{method:20s}" + "".join(f"{row.get(split, 0):12d}" for split in splits))
    if counts["left_out_by_methods"]:
        click.echo("left out by dataset.methods: " + ", ".join(
            f"{method} {n}" for method, n in counts["left_out_by_methods"].items()))


def _indent(text: str) -> str:
    """Indent a multi-line block by two spaces."""
    return "\n".join("  " + line for line in text.strip("\n").splitlines())


@cli.command()
@_fail_cleanly
def models() -> None:
    """Show the landmark/detector models the registry resolves, with their checksums."""
    from dfprep.vision.models import manifest, resolve_model

    for entry in manifest():
        try:
            model = resolve_model(entry.name)
            click.echo(f"{entry.name:10s} {entry.points:3d} pts  {model.sha256[:16]}…  {model.path}")
        except DfprepError as exc:
            click.echo(f"{entry.name:10s} {entry.points:3d} pts  unavailable: {exc}")


@cli.command()
@click.argument("dataset", required=False)
@click.argument("root", required=False, type=click.Path())
@click.option("-o", "--output", required=True, help="Output folder or pyarrow.fs URI (s3://, gs://, file://).")
@click.option("--pipeline", help="Named recipe from pipelines/ (e.g. caddm-ffpp) or a .yaml path.")
@click.option("--frames", type=int, help="Frames per video (uniform sampling).")
@click.option("--workers", type=int, help="Ray workers (0 = in-process; default all CPUs).")
@click.option("--address", help="Join a Ray cluster (auto = the running one).")
@click.option("--videos-per-shard", type=int, help="Videos per output shard (work unit).")
@click.option("--maps", "inline_maps", multiple=True, type=click.Choice(["landmarks"]),
              help="Also compute these region maps in the same command (companion shards).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override any config key.")
@click.option("--overwrite", is_flag=True, help="Delete this folder's previous dfprep output and start over.")
@click.option("--extend", is_flag=True, help="Add newly found videos as new shards.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def extract(dataset: str | None, root: str | None, output: str, pipeline: str | None, frames: int | None,
            workers: int | None, address: str | None, videos_per_shard: int | None, inline_maps: tuple[str, ...],
            settings: tuple[str, ...], overwrite: bool, extend: bool, quiet: bool) -> None:
    """Extract aligned faces from DATASET at ROOT into WebDataset shards under OUTPUT."""
    from dfprep.catalog import scan
    from dfprep.config import load_config
    from dfprep.runner.run import extract_run

    overrides = _overrides(settings, **{"dataset.name": dataset, "dataset.root": root, "sampling.frames": frames,
                                        "ray.workers": workers, "ray.address": address,
                                        "output.videos_per_shard": videos_per_shard,
                                        "output.maps": list(inline_maps) or None})
    config = load_config(pipeline, overrides)
    if not config.dataset.name or not config.dataset.root:
        raise DfprepError("extract needs a DATASET and a ROOT (arguments, or dataset.name/root in the recipe)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = list(scan(config.dataset.name, config.dataset.root, config.dataset))
    report = extract_run(records, config, output, overwrite=overwrite, extend=extend, quiet=quiet)
    click.echo(format_summary(report))
    for warning in caught:
        click.echo(f"  catalog warning: {warning.message}")


@cli.command()
@click.option("-o", "--output", default="demo-out", show_default=True, help="Folder for the demo's artefacts.")
@click.option("--workers", type=int, default=None, help="Ray workers (0 = in-process; default all CPUs).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def demo(output: str, workers: int | None, quiet: bool) -> None:
    """Build a small labelled video set from a bundled real face and run the whole pipeline on it."""
    from dfprep.cli.demo import run_demo

    run_demo(Path(output).resolve(), workers, quiet, click.echo)

@cli.command()
@click.argument("outputs", nargs=-1, required=True)
@click.option("--threshold", type=float, default=0.6, show_default=True, help="Same-person descriptor distance.")
@click.option("--strict", is_flag=True, help="Exit with code 1 when any identity is shared.")
@click.option("--json", "as_json", is_flag=True, help="Print the shared identities as JSON.")
@_fail_cleanly
def leakage(outputs: tuple[str, ...], threshold: float, strict: bool, as_json: bool) -> None:
    """Identities shared across splits or datasets (needs extract with --set detection.identity=true)."""
    from dfprep.vision.identity import find_leaks, format_leaks, load_identities

    videos, without = load_identities(outputs)
    if not videos:
        raise DfprepError("no video in these outputs has an identity descriptor: extract with "
                          "--set detection.identity=true")
    leaks = find_leaks(videos, threshold)
    if as_json:
        click.echo(json.dumps({"threshold": threshold, "videos": len(videos), "without_descriptor": without,
                               "leaks": [leak.to_dict() for leak in leaks]}, indent=1))
    else:
        click.echo(format_leaks(leaks, len(videos), without, threshold))
    if strict and leaks:
        sys.exit(1)


@cli.command()
@click.argument("output")
@click.argument("more_zoo", nargs=-1, metavar="")
@click.option("--method", type=click.Choice(["landmarks", "cam"]), default="landmarks", show_default=True,
              help="landmarks: model-free prior from the stored landmarks; cam: Grad-CAM fusion over --zoo.")
@click.option("--name", default="", help="Folder under OUT/maps/ (default: the method).")
@click.option("--zoo", multiple=True, metavar="A.pt [B.pt …]", help="Detector checkpoints for --method cam.")
@click.option("--fusion", type=click.Choice(["mean", "max"]), default="mean", show_default=True)
@click.option("--threshold", type=float, help="Zero map values <= this (default 0.3 for cam, 0 for landmarks).")
@click.option("--layer", "layers", multiple=True,
              help="Module Grad-CAM reads; repeat for several (default: the architecture's PRLE-style layers).")
@click.option("--target", type=click.Choice(["predicted", "label", "fake"]), default="predicted", show_default=True,
              help="Explain each crop's predicted class (PRLE's code), its ground-truth class, or the fake logit.")
@click.option("--released-halving", is_flag=True,
              help="Halve each detector's map before fusion, as PRLE's released maps are (0.3 then acts as 0.6).")
@click.option("--weights", help="Landmark region weights, e.g. eyes=1,mouth=0.9,nose=0.7[,eyebrows=0.5].")
@click.option("--blur-sigma", type=float, help="Landmark map smoothing in pixels (0 = sharp hulls).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Crops per batch.")
@click.option("--device", default="auto", show_default=True, help="CAM device in-process (auto, cpu, cuda).")
@click.option("--model", "models", multiple=True, metavar="PKG.MOD:FACTORY",
              help="Trust this model factory for zoo checkpoints that name it (never imported from a file alone).")
@click.option("--workers", type=int, help="Ray workers (0 = in-process; default all CPUs).")
@click.option("--address", help="Join a Ray cluster (auto = the running one).")
@click.option("--overwrite", is_flag=True, help="Delete this map folder's previous maps and start over.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def maps(output: str, more_zoo: tuple[str, ...], method: str, name: str, zoo: tuple[str, ...], fusion: str,
         threshold: float | None, layers: tuple[str, ...], target: str, released_halving: bool,
         weights: str | None, blur_sigma: float | None, batch_size: int, device: str, models: tuple[str, ...],
         workers: int | None, address: str | None, overwrite: bool, quiet: bool) -> None:
    """Primary-region maps for every face under OUTPUT, as companion shards in OUTPUT/maps/NAME/."""
    from dfprep.jobs.maps import MapSettings, format_map_summary, maps_run
    from dfprep.vision.regions import parse_weights

    if more_zoo and not zoo:
        raise DfprepError(f"unexpected extra argument(s) {' '.join(more_zoo)}: checkpoints go after --zoo")
    landmark_options = {"weights": tuple(parse_weights(weights).items()) if weights is not None else None,
                        "blur_sigma": blur_sigma}
    settings = MapSettings(method=method, name=name, zoo=zoo + more_zoo, fusion=fusion, threshold=threshold,
                           layers=layers, target=target, released_halving=released_halving,
                           batch_size=batch_size, device=device, models=models,
                           **{k: v for k, v in landmark_options.items() if v is not None})
    report = maps_run(output, settings, workers=workers, address=address, overwrite=overwrite, quiet=quiet)
    click.echo(format_map_summary(report))


@cli.command()
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@_fail_cleanly
def stats(output: str, as_json: bool) -> None:
    """Counts, face yield, failures by reason and disk of OUTPUT, from its indexes (never opens a tar)."""
    from dfprep.inspect.stats import compute_stats, format_stats

    numbers = compute_stats(output)
    click.echo(json.dumps(numbers, indent=1) if as_json else format_stats(numbers))


@cli.command()
@click.argument("output")
@click.option("--deep", is_flag=True, help="Also hash every tar and index and compare the sha256 in its marker.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--repair", is_flag=True, help="Un-commit damaged shards so the next extract/maps rerun redoes them.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def verify(output: str, deep: bool, as_json: bool, repair: bool, quiet: bool) -> None:
    """Read every shard of OUTPUT once and check it against its commit marker; exit 1 when anything is damaged."""
    from tqdm import tqdm

    from dfprep.io.integrity import check_is_output, count_shards, uncommit, verify_output
    from dfprep.io.shards import Storage

    storage = Storage(output)
    check_is_output(storage)
    with tqdm(total=count_shards(storage), unit="shard", desc="verify", disable=quiet, dynamic_ncols=True) as bar:
        report = verify_output(storage, deep=deep, step=lambda: bar.update(1))
    damaged = [damage.shard for damage in report.problems if damage.kind == "damaged" and damage.shard]
    removed = [name for shard in damaged for name in uncommit(storage, shard)] if repair else []
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "removed": removed}, indent=1))
    else:
        for damage in report.problems:
            click.echo(f"{damage.kind}: {damage.line()}")
        checked = f"{report.shards} shards, {report.samples} samples{' (sha256 too)' if deep else ''}"
        click.echo(f"{report.output}: {'clean' if report.clean else f'{len(report.problems)} problem(s)'}, {checked}")
        if removed:
            click.echo(f"un-committed {len(removed)} files: rerun the extract (and maps) command to redo them")
    if not report.clean:
        sys.exit(1)


@cli.command()
@click.argument("output")
@click.option("-o", "--sheet", "sheet", required=True, type=click.Path(), help="PNG file to write.")
@click.option("--n", "count", type=int, default=48, show_default=True, help="Faces to sample.")
@click.option("--split", help="Only this split (default: all; ignored with --video).")
@click.option("--maps", "map_name", help="Overlay companion maps OUT/maps/NAME as a heat map.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--video", help="Every frame of this video_id, in time order (instead of sampling).")
@click.option("--cols", type=int, help="Tiles per row (default: a roughly 4:3 grid).")
@click.option("--tile", type=int, default=160, show_default=True, help="Tile size in pixels.")
@_fail_cleanly
def preview(output: str, sheet: str, count: int, split: str | None, map_name: str | None, seed: int,
            video: str | None, cols: int | None, tile: int) -> None:
    """Write a contact sheet of OUTPUT's crops: landmarks, label borders, captions, optional maps."""
    from dfprep.inspect.preview import write_sheet

    from dfprep.io.integrity import output_problems, summary_line

    height, width = write_sheet(output, sheet, n=count, split=split, maps=map_name, seed=seed, video=video,
                                cols=cols, tile=tile)
    click.echo(f"wrote {sheet} ({width}x{height})")
    problems = output_problems(output)
    if problems:
        click.echo(f"  note: {output} is incomplete or damaged: {summary_line(problems)}; see `dfprep verify`")


def format_summary(report: Any) -> str:
    """The end-of-run table: outcomes, reasons, faces, shards, disk, wall time, stage breakdown."""
    lines = [f"dfprep extract → {report.output}", f"  plan: {report.note}"]
    if report.units_skipped == report.units_total and report.units_total:
        lines.append("  nothing to do: every shard was already committed")
    lines.append(f"  shards: {report.units_total} ({report.units_skipped} already committed)")
    lines.append(f"  videos: {report.videos}   faces written: {report.faces}")
    for status, count in sorted(report.statuses.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {status:13s} {count:7d}")
    if report.reasons:
        lines.append("  reasons (top 10):")
        lines += [f"    {count:5d}  {reason}" for reason, count in report.reasons.most_common(10)]
    if report.removed:
        lines.append(f"  removed {len(report.removed)} uncommitted leftovers")
    lines += [f"  charged to a video: {line}" for line in report.charged]
    lines += [f"  warning: {line}" for line in report.warnings]
    total = sum(report.timings.values()) or 1.0
    stages = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(report.timings.items(), key=lambda kv: -kv[1]))
    lines.append(f"  disk: {report.disk_bytes / 1e6:.1f} MB   wall: {report.seconds:.1f} s")
    if report.timings:
        lines.append(f"  time by stage: {stages}")
    lines += [f"  {line}" for line in report.maps]
    return "\n".join(lines)


def _add_torch_commands() -> None:
    """`train` and `evaluate` live under dfprep.torch; their module imports without torch installed."""
    from dfprep.torch.commands import evaluate_command, train_command

    cli.add_command(train_command, "train")
    cli.add_command(evaluate_command, "evaluate")


_add_torch_commands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dfprep")


if __name__ == "__main__":
    main()
