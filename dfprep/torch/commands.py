"""`dfprep train` and `dfprep evaluate` as click commands; torch is imported only inside the command bodies.

This module imports without torch, so the CLI can always list these commands; running one without torch
installed prints the install hint and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing
from typing import Any, Callable

import click

from dfprep.errors import DfprepError
from dfprep.torch._require import INSTALL_HINT
from dfprep.torch.trainconfig import TrainConfig


_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")
_EXCEPTION_LINE = re.compile(r"^[\w.]+: ")


def error_line(exc: BaseException) -> str:
    """The one line a user error prints; an error raised in a DataLoader worker is unwrapped to its own message.

    PyTorch re-raises a worker's exception with the same type, but with a message of 20-40 lines (a banner and
    the worker's traceback) whose last line is `module.Type: original message`.
    """
    text = str(exc)
    if _WORKER_WRAPPER.match(text):
        last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), text)
        text = _EXCEPTION_LINE.sub("", last.strip(), count=1)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _one_line_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """A DfprepError or a missing torch becomes one 'dfprep: error:' line and exit status 2."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        """The command body, with user errors reported on one line."""
        try:
            return function(*args, **kwargs)
        except (DfprepError, ImportError) as exc:
            if isinstance(exc, ImportError) and str(exc) != INSTALL_HINT:
                raise
            click.echo(f"dfprep: error: {error_line(exc)}", err=True)
            sys.exit(2)

    wrapper.__name__, wrapper.__doc__ = function.__name__, function.__doc__
    return wrapper


def _click_type(annotation: Any, low: int | None) -> Any:
    """The click type of a field: a Literal is a choice, an int with a floor a range, `X | None` is X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice(list(typing.get_args(annotation)))
    if args and len(args) == 1:
        return _click_type(args[0], low)
    if annotation is int:
        return click.IntRange(min=low) if low is not None else int
    return annotation


def _option(spec: dataclasses.Field, annotation: Any) -> Callable[[Any], Any]:
    """The click.option of one TrainConfig field: its --flag, help and default."""
    flag = "--" + spec.name.replace("_", "-")
    cli_default = spec.metadata["cli_default"]
    default = cli_default if cli_default is not dataclasses.MISSING else spec.default
    if annotation is bool:
        return click.option(flag, spec.name, is_flag=True, default=default, help=spec.metadata["help"])
    return click.option(flag, spec.name, type=_click_type(annotation, spec.metadata["low"]), default=default,
                        show_default=default is not None, help=spec.metadata["help"])


def train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """A --flag for every TrainConfig field a command line can give (the others are Python API only)."""
    hints = typing.get_type_hints(TrainConfig)
    for spec in reversed(dataclasses.fields(TrainConfig)):
        if spec.metadata.get("cli", True):
            command = _option(spec, hints[spec.name])(command)
    return command


def require_sources(paths: tuple[str, ...]) -> None:
    """A local OUT that does not exist is a one-line error; a URI (s3://, gs://, …) is checked when it is read."""
    for path in paths:
        if "://" not in path and not os.path.exists(path):
            raise DfprepError(f"{path}: no such file or folder")


@click.command("train", epilog="""\b
Examples:
  dfprep train out/ffpp -o runs/r18 --model resnet18 --epochs 20
  dfprep train out/ffpp --maps landmarks --region-erasing -o runs/prle
  dfprep train s3://bucket/out/ffpp -o runs/x     # OUT folders may be pyarrow.fs URIs""")
@click.argument("outs", nargs=-1, required=True)
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, model.pt, metrics.jsonl/csv.")
@train_options
@click.option("--balance", type=click.Choice(["none", "over", "under"]), default="none", show_default=True,
              help="Resample so real:fake ≈ 1:1.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the run folder's last checkpoint, or start over.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_one_line_errors
def train_command(outs: tuple[str, ...], run_dir: str, balance: str, resume: bool, quiet: bool,
                  **options: Any) -> None:
    """Train a real/fake detector on the train split of one or more OUT folders."""
    from dfprep.torch.train import train

    require_sources(outs)
    config = TrainConfig(out_dirs=outs, balance=False if balance == "none" else balance, **options)
    rows = train(config, run_dir, resume=resume, progress=not quiet)
    click.echo(format_epochs(rows))
    click.echo(f"model: {run_dir}/model.pt")


def format_epochs(rows: list[dict[str, Any]]) -> str:
    """The end-of-run summary: one line per epoch."""
    lines = ["epoch  steps  train_loss  val_frame_auc  val_video_auc"]
    for row in rows:
        frame_auc, video_auc = row.get("val_frame_auc"), row.get("val_video_auc")
        lines.append(f"{row['epoch']:<5d}  {row['steps']:<5d}  {row['train_loss']:<10.4f}  "
                     f"{'-' if frame_auc is None else f'{frame_auc:.4f}':<13}  "
                     f"{'-' if video_auc is None else f'{video_auc:.4f}'}")
    return "\n".join(lines)


@click.command("evaluate", epilog="""\b
Examples:
  dfprep evaluate runs/x/model.pt out/celebdf out/dfdc       # the cross-dataset table
  dfprep evaluate runs/x/model.pt out/ffpp --json - | jq .   # the rows as JSON on stdout
  dfprep evaluate runs/x/model.pt s3://bucket/out/celebdf    # OUT folders may be pyarrow.fs URIs""")
@click.argument("checkpoint")
@click.argument("outs", nargs=-1, required=True)
@click.option("--split", default="test", show_default=True)
@click.option("--aggregate", type=click.Choice(["mean", "max", "confident"]), default="mean", show_default=True,
              help="How frame scores become a video score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write the rows as JSON to this file; - prints only the JSON, on stdout.")
@click.option("--skip-bad-shards", is_flag=True, help="Skip truncated/corrupt shards with a warning instead of stopping.")
@click.option("--allow-incomplete", is_flag=True, help="Score an OUT that is incomplete or damaged instead of refusing.")
@click.option("--model", metavar="PKG.MOD:FACTORY",
              help="Trust this model factory when the checkpoint names one (never imported from the file alone).")
@click.option("--faceless", type=click.Choice(["score", "drop"]), default="score", show_default=True,
              help="Listed videos without any face: score them 0.5, or drop them (as DeepfakeBench and CADDM do).")
@click.option("--per-method/--pooled-only", default=True, show_default=True,
              help="With several fake methods (FF++): a row per method (FF-DF, FF-F2F, …) beside the pooled row.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_one_line_errors
def evaluate_command(checkpoint: str, outs: tuple[str, ...], split: str, aggregate: str, batch_size: int,
                     workers: int, device: str, json_path: str | None, skip_bad_shards: bool, allow_incomplete: bool,
                     model: str | None, faceless: str, per_method: bool, quiet: bool) -> None:
    """Frame/video AUC, AP, ACC and EER of CHECKPOINT on each OUT folder (the cross-dataset table)."""
    import json

    from dfprep.torch.evaluate import evaluate, format_table

    require_sources((checkpoint, *outs))
    rows = evaluate(checkpoint, list(outs), split=split, batch_size=batch_size, aggregate=aggregate,
                    workers=workers, device=device, json_path=json_path, skip_bad_shards=skip_bad_shards,
                    model=model, allow_incomplete=allow_incomplete, faceless=faceless, per_method=per_method,
                    progress=not quiet)
    if json_path == "-":
        click.echo(json.dumps({"checkpoint": checkpoint, "rows": rows}, indent=1))
    else:
        click.echo(format_table(rows))
