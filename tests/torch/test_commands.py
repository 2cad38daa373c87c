"""`dfprep train` / `dfprep evaluate` click commands, and the package's behaviour without torch."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from dfprep.torch.commands import evaluate_command, train_command  # noqa: E402


def test_train_then_evaluate_from_the_command_line(learnable_out, shared_out, tmp_path):
    runner = CliRunner()
    run = tmp_path / "runs" / "x"
    result = runner.invoke(train_command, [str(learnable_out), "-o", str(run), "--epochs", "2", "--batch-size", "8",
                                           "--workers", "0", "--max-steps-per-epoch", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "model.pt" in result.output and (run / "model.pt").is_file()
    assert [line.split()[0] for line in result.output.splitlines()[1:3]] == ["1", "2"]
    table = tmp_path / "table.json"
    result = runner.invoke(evaluate_command, [str(run / "model.pt"), str(learnable_out), str(shared_out),
                                              "--workers", "0", "--aggregate", "max", "--json", str(table)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("dataset")
    rows = json.loads(table.read_text())["rows"]
    assert [row["aggregate"] for row in rows] == ["max", "max"] and rows[1]["videos_without_faces"] == 2
    assert rows[1]["faceless"] == "scored 0.5" and rows[1]["videos"] == 6
    result = runner.invoke(evaluate_command, [str(run / "model.pt"), str(shared_out), "--workers", "0",
                                              "--faceless", "drop", "--pooled-only", "--json", str(table)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(table.read_text())["rows"]
    assert row["faceless"] == "dropped" and row["videos"] == 4 and row["videos_without_faces"] == 2
    assert result.output.splitlines()[1].split()[-2:] == ["2", "dropped"]


def test_user_errors_are_one_line_and_exit_2(learnable_out, tmp_path):
    result = CliRunner().invoke(train_command, [str(learnable_out), "-o", str(tmp_path / "r"), "--region-erasing",
                                                "--workers", "0", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("dfprep: error:") and "--maps" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_commands_import_without_torch_and_the_rest_says_how_to_install():
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import dfprep.torch.commands, dfprep.torch.metrics\n"
        "try:\n"
        "    from dfprep.torch import FaceShards\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "pip install dfprep[torch]" in output
