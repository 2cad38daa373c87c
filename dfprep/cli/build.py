"""The commands that build outputs: datasets (catalog a root), models, extract, maps, demo."""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from dfprep.cli.app import _fail_cleanly, cli, system_allocator, without_pandas
from dfprep.errors import DfprepError


def _overrides(pairs: tuple[str, ...], **flags: Any) -> dict[str, Any]:
    """--set section.key=value pairs plus the dedicated flags that were given."""
    from dfprep.config import parse_override

    values = dict(parse_override(p) for p in pairs)
    values.update({k: v for k, v in flags.items() if v is not None})
    return values


def _complete_dataset(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion: the dataset adapters' names."""
    from dfprep.catalog import ADAPTERS

    return [name for name in ADAPTERS if name.startswith(incomplete)]


def _complete_recipe(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion: the named recipes (pipelines/*.yaml, user folders included)."""
    from dfprep.config.loader import available_recipes

    return [name for name in available_recipes() if name.startswith(incomplete)]


@cli.command(epilog="""\b
Examples:
  dfprep datasets                                  # every adapter and the layout it expects
  dfprep datasets ffpp /data/FaceForensics++ --pipeline deepfakebench-ffpp""")
@click.argument("name", required=False, shell_complete=_complete_dataset)
@click.argument("root", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the records and counts as JSON.")
@click.option("--pipeline", shell_complete=_complete_recipe,
              help="Recipe whose dataset options apply (e.g. deepfakebench-ffpp): shows what it takes.")
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


@cli.command(epilog="""\b
Examples:
  dfprep models     # each landmark/detector model, its sha256 and where it was found""")
@_fail_cleanly
def models() -> None:
    """Show the landmark/detector models the registry resolves, with their checksums."""
    from dfprep.config.paths import landmark_dirs
    from dfprep.vision.models import manifest, resolve_model

    for entry in manifest():
        try:
            model = resolve_model(entry.name)
            click.echo(f"{entry.name:10s} {entry.points:3d} pts  {model.sha256[:16]}…  {model.path}")
        except DfprepError as exc:
            click.echo(f"{entry.name:10s} {entry.points:3d} pts  unavailable: {exc}")
    click.echo("landmark folders, first wins: " + ", ".join(str(folder) for folder in landmark_dirs()))


@cli.command(epilog="""\b
Examples:
  dfprep extract ffpp /data/FaceForensics++ -o out/ffpp --frames 32
  dfprep extract --pipeline caddm-ffpp --set dataset.root=/data/FaceForensics++ -o out/caddm
  dfprep extract folder ./videos -o 's3://bucket/out?endpoint_override=localhost:9000&scheme=http'
  dfprep extract ffpp /data/ffpp -o out/ffpp --json --min-yield 0.9 | jq .face_yield""")
@click.argument("dataset", required=False, shell_complete=_complete_dataset)
@click.argument("root", required=False, type=click.Path())
@click.option("-o", "--output", required=True, help="Output folder or pyarrow.fs URI (s3://, gs://, file://).")
@click.option("--pipeline", shell_complete=_complete_recipe,
              help="Named recipe from pipelines/ (e.g. caddm-ffpp) or a .yaml path.")
@click.option("--frames", type=int, help="Frames per video (uniform sampling).")
@click.option("--workers", type=int, help="Ray workers (0 = in-process; default all CPUs).")
@click.option("--threads", type=int,
              help="In-process video threads (default: every CPU up to 4 when dfprep runs in-process; "
                   "1 with --workers 0).")
@click.option("--address", help="Join a Ray cluster (auto = the running one).")
@click.option("--ship-code", is_flag=True, default=None,
              help="Upload this dfprep to the cluster's workers (nodes with the dependencies, not dfprep).")
@click.option("--videos-per-shard", type=int, help="Videos per output shard (work unit).")
@click.option("--maps", "inline_maps", multiple=True, type=click.Choice(["landmarks"]),
              help="Also compute these region maps in the same command (companion shards).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override any config key.")
@click.option("--overwrite", is_flag=True, help="Delete this folder's previous dfprep output and start over.")
@click.option("--extend", is_flag=True, help="Add newly found videos as new shards.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout (instead of the table).")
@click.option("--min-yield", type=click.FloatRange(0, 1), metavar="FRACTION",
              help="Exit 1 when fewer than this share of the videos gave a face (default: warn when none did).")
@_fail_cleanly
def extract(dataset: str | None, root: str | None, output: str, pipeline: str | None, frames: int | None,
            workers: int | None, threads: int | None, address: str | None, ship_code: bool | None,
            videos_per_shard: int | None, inline_maps: tuple[str, ...], settings: tuple[str, ...],
            overwrite: bool, extend: bool, quiet: bool, as_json: bool, min_yield: float | None) -> None:
    """Extract aligned faces from DATASET at ROOT into WebDataset shards under OUTPUT."""
    system_allocator()  # first: Arrow picks its allocator when pyarrow loads
    from dfprep.config import load_config
    from dfprep.vision.models import checksum_ahead

    overrides = _overrides(settings, **{"dataset.name": dataset, "dataset.root": root, "sampling.frames": frames,
                                        "ray.workers": workers, "ray.threads": threads, "ray.address": address,
                                        "ray.ship_code": ship_code, "output.videos_per_shard": videos_per_shard,
                                        "output.maps": list(inline_maps) or None})
    config = load_config(pipeline, overrides)
    if not config.dataset.name or not config.dataset.root:
        raise DfprepError("extract needs a DATASET and a ROOT (arguments, or dataset.name/root in the recipe)")
    checksum_ahead(config.detection.landmarks)  # hashed while the run's modules load and the videos are catalogued
    from dfprep.catalog import scan
    from dfprep.catalog.table import catalog_table
    from dfprep.cli.summary import format_summary, summary_json
    from dfprep.runner.run import extract_job, run_extract

    with without_pandas() if "cam" not in config.output.maps else nullcontext():  # Grad-CAM loads torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            catalog = catalog_table(scan(config.dataset.name, config.dataset.root, config.dataset))  # as columns
        job = extract_job(catalog, config, output, overwrite=overwrite, extend=extend)
        del catalog  # the job's now: freed once planned, not held here for the whole run
        report = run_extract(job, output, quiet)
    if as_json:
        click.echo(json.dumps({**summary_json(report), "catalog_warnings": [str(w.message) for w in caught]},
                              indent=1))
    else:
        click.echo(format_summary(report))
        for warning in caught:
            click.echo(f"  catalog warning: {warning.message}")
    _check_yield(report, min_yield)


def _check_yield(report: Any, min_yield: float | None) -> None:
    """Warn (stderr) when no video gave a face; exit 1 below --min-yield (the run itself still completed)."""
    from dfprep.cli.summary import face_yield, yield_warning

    warning = yield_warning(report)
    if warning:
        click.echo(f"dfprep: {warning}", err=True)
    if min_yield is not None and face_yield(report) < min_yield:
        click.echo(f"dfprep: face yield {face_yield(report):.3f} is below --min-yield {min_yield}", err=True)
        sys.exit(1)


@cli.command(epilog="""\b
Examples:
  dfprep maps out/ffpp                                   # landmark prior, OUT/maps/landmarks/
  dfprep maps out/ffpp --method cam --zoo a.pt b.pt c.pt # PRLE Grad-CAM fusion
  dfprep maps out/ffpp --json | jq .maps_written""")
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
@click.option("--ship-code", is_flag=True, help="Upload this dfprep to the cluster's workers (nodes without dfprep).")
@click.option("--overwrite", is_flag=True, help="Delete this map folder's previous maps and start over.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout (instead of the lines).")
@_fail_cleanly
def maps(output: str, more_zoo: tuple[str, ...], method: str, name: str, zoo: tuple[str, ...], fusion: str,
         threshold: float | None, layers: tuple[str, ...], target: str, released_halving: bool,
         weights: str | None, blur_sigma: float | None, batch_size: int, device: str, models: tuple[str, ...],
         workers: int | None, address: str | None, ship_code: bool, overwrite: bool, quiet: bool,
         as_json: bool) -> None:
    """Primary-region maps for every face under OUTPUT, as companion shards in OUTPUT/maps/NAME/."""
    from dfprep.cli.summary import format_map_summary, map_summary_json
    from dfprep.config import load_config
    from dfprep.jobs.maps import MapRun, MapSettings
    from dfprep.runner.run import maps_run
    from dfprep.vision.regions import parse_weights

    if more_zoo and not zoo:
        raise DfprepError(f"unexpected extra argument(s) {' '.join(more_zoo)}: checkpoints go after --zoo")
    landmark_options = {"weights": tuple(parse_weights(weights).items()) if weights is not None else None,
                        "blur_sigma": blur_sigma}
    settings = MapSettings(method=method, name=name, zoo=zoo + more_zoo, fusion=fusion, threshold=threshold,
                           layers=layers, target=target, released_halving=released_halving,
                           batch_size=batch_size, device=device, models=models,
                           **{k: v for k, v in landmark_options.items() if v is not None})
    ray = load_config(None, {"ray.workers": workers, "ray.address": address, "ray.ship_code": ship_code}).ray
    report = maps_run(output, MapRun(settings, ray, overwrite=overwrite, quiet=quiet))
    click.echo(json.dumps(map_summary_json(report), indent=1) if as_json else format_map_summary(report))


@cli.command(epilog="""\b
Examples:
  dfprep demo -o demo-out --workers 0""")
@click.option("-o", "--output", default="demo-out", show_default=True, help="Folder for the demo's artefacts.")
@click.option("--workers", type=int, default=None, help="Ray workers (0 = in-process; default all CPUs).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_fail_cleanly
def demo(output: str, workers: int | None, quiet: bool) -> None:
    """Build a small labelled video set from a bundled real face and run the whole pipeline on it."""
    from dfprep.cli.deps import dependency_problem

    problem = dependency_problem("demo")
    if problem:
        raise DfprepError(problem)
    from dfprep.cli.demo import run_demo

    run_demo(Path(output).resolve(), workers, quiet, click.echo)
