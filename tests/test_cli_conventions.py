"""CLI conventions: bars only on a terminal (TQDM_DISABLE honoured), --json summaries, the zero-yield warning and
--min-yield, shell completion of dataset and recipe names, examples in --help."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from tqdm import tqdm

from dfprep.cli import cli
from dfprep.config.console import bar_disable
from tests.helpers.synthetic import write_clip


def test_bars_are_off_when_not_a_terminal_and_with_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert bar_disable(quiet=True) is True and bar_disable() is None
    pipe = io.StringIO()  # not a terminal: tqdm(disable=None) stays silent
    with tqdm(total=3, disable=bar_disable(), file=pipe) as bar:
        bar.update(3)
    assert pipe.getvalue() == ""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert bar_disable() is True
    monkeypatch.setenv("TQDM_DISABLE", "0")  # bars forced on, e.g. into a log file
    assert bar_disable() is False and bar_disable(quiet=True) is True


@pytest.fixture(scope="module")
def faceless_root(tmp_path_factory):
    """A folder dataset whose only video has no face: the run completes and writes no face."""
    root = tmp_path_factory.mktemp("faceless")
    write_clip(root / "real" / "empty_room.mp4", 160, 120, 6, lambda i, n: [], gop=3)
    return root


def _extract(root, out, *extra: str) -> subprocess.CompletedProcess:
    """The extract command as a user runs it (stdout and stderr apart)."""
    command = [sys.executable, "-m", "dfprep", "extract", "folder", str(root), "-o", str(out), "--workers", "0",
               "--frames", "2", "--quiet", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})


def test_a_run_without_any_face_exits_0_with_a_warning_and_min_yield_fails_it(faceless_root, tmp_path):
    result = _extract(faceless_root, tmp_path / "out", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # --json: the summary alone on stdout
    assert summary["videos"] == 1 and summary["faces"] == 0 and summary["face_yield"] == 0.0
    assert summary["statuses"] == {"no_face": 1} and summary["output"] == str(tmp_path / "out")
    assert "dfprep: warning: no face written from 1 videos" in result.stderr
    again = _extract(faceless_root, tmp_path / "out", "--min-yield", "0.5")
    assert again.returncode == 1
    assert "dfprep: face yield 0.000 is below --min-yield 0.5" in again.stderr
    assert "nothing to do" in again.stdout  # the rerun skipped the committed shard: only the exit code changed


def _complete(*words: str) -> list[str]:
    """What bash completion offers after `words` (click's bash_complete protocol)."""
    env = {**os.environ, "_DFPREP_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(["dfprep", *words]),
           "COMP_CWORD": str(len(words))}
    result = subprocess.run([sys.executable, "-m", "dfprep"], capture_output=True, text=True, env=env, timeout=60)
    return [line.split(",", 1)[1] for line in result.stdout.splitlines()]


def test_shell_completion_offers_dataset_and_recipe_names():
    assert _complete("extract", "ce") == ["celebdf"]
    assert {"caddm", "caddm-ffpp"} <= set(_complete("extract", "--pipeline", "cad"))
    assert "dfdc" in _complete("datasets", "df")


@pytest.mark.parametrize("command", ["datasets", "models", "extract", "maps", "demo", "stats", "verify", "preview",
                                     "leakage", "train", "evaluate"])
def test_each_command_help_shows_examples(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and f"dfprep {command} " in result.output
