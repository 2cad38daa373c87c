"""The commands that read outputs and never write them (but `verify --repair`): stats, verify, preview, leakage."""

from __future__ import annotations

import json
import sys

import click

from dfprep.cli.app import _fail_cleanly, cli
from dfprep.errors import DfprepError


@cli.command(epilog="""\b
Examples:
  dfprep stats out/ffpp
  dfprep stats s3://bucket/out/ffpp --json | jq .faces""")
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@_fail_cleanly
def stats(output: str, as_json: bool) -> None:
    """Counts, face yield, failures by reason and disk of OUTPUT, from its indexes (never opens a tar)."""
    from dfprep.inspect.stats import compute_stats, format_stats

    numbers = compute_stats(output)
    click.echo(json.dumps(numbers, indent=1) if as_json else format_stats(numbers))


@cli.command(epilog="""\b
Examples:
  dfprep verify out/ffpp
  dfprep verify out/ffpp --deep --json
  dfprep verify out/ffpp --repair   # then rerun extract""")
@click.argument("output")
@click.option("--deep", is_flag=True, help="Also hash every tar and index and compare the sha256 in its marker.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--repair", is_flag=True, help="Un-commit damaged shards so the next extract/maps rerun redoes them.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_cleanly
def verify(output: str, deep: bool, as_json: bool, repair: bool, quiet: bool) -> None:
    """Read every shard of OUTPUT once and check it against its commit marker; exit 1 when anything is damaged."""
    from tqdm import tqdm

    from dfprep.config.console import bar_disable
    from dfprep.inspect.verify import check_is_output, count_shards, verify_output
    from dfprep.io.integrity import uncommit
    from dfprep.io.storage import Storage

    storage = Storage(output)
    check_is_output(storage)
    with tqdm(total=count_shards(storage), unit="shard", desc="verify", disable=bar_disable(quiet),
              dynamic_ncols=True) as bar:
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


@cli.command(epilog="""\b
Examples:
  dfprep preview out/ffpp -o sheet.png --split test
  dfprep preview out/ffpp -o maps.png --maps landmarks""")
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


@cli.command(epilog="""\b
Examples:
  dfprep leakage out/ffpp out/celebdf --strict""")
@click.argument("outputs", nargs=-1, required=True)
@click.option("--threshold", type=float, default=0.6, show_default=True, help="Same-person descriptor distance.")
@click.option("--strict", is_flag=True, help="Exit with code 1 when any identity is shared.")
@click.option("--json", "as_json", is_flag=True, help="Print the shared identities as JSON.")
@_fail_cleanly
def leakage(outputs: tuple[str, ...], threshold: float, strict: bool, as_json: bool) -> None:
    """Identities shared across splits or datasets (needs extract with --set detection.identity=true)."""
    from dfprep.inspect.leakage import find_leaks, format_leaks, load_identities

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
