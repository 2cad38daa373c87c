"""train/evaluate fed a truncated shard: a one-line error naming the shard, or skip-with-report."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from dfprep.cli import cli  # noqa: E402


def _truncate_first_train_shard(out: Path) -> Path:
    shard = sorted(out.glob("train-*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return shard


def test_train_and_evaluate_name_a_truncated_shard_or_skip_it(out_copy, tmp_path):
    shard = _truncate_first_train_shard(out_copy)
    args = ["train", str(out_copy), "-o", str(tmp_path / "run"), "--epochs", "1", "--workers", "0",
            "--device", "cpu", "--quiet", "--batch-size", "8"]
    refused = CliRunner().invoke(cli, args)  # the cheap check sees the tar is shorter than its marker says
    assert refused.exit_code == 2 and f"{shard.stem}: {shard.name} has" in refused.output
    assert "--allow-incomplete" in refused.output and len(refused.output.strip().splitlines()) == 1
    failed = CliRunner().invoke(cli, args + ["--allow-incomplete"])  # then the reader names shard and offset
    assert failed.exit_code == 2 and shard.name in failed.output and "offset" in failed.output
    assert len(failed.output.strip().splitlines()) == 1
    skipped = CliRunner().invoke(cli, args + ["--allow-incomplete", "--skip-bad-shards", "--no-resume"])
    assert skipped.exit_code == 0, skipped.output
    checkpoint = tmp_path / "run" / "model.pt"
    for target in ("test", "train"):
        result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(out_copy), "--split", target,
                                          "--workers", "0", "--device", "cpu", "--skip-bad-shards",
                                          "--allow-incomplete"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(out_copy), "--split", "train",
                                      "--workers", "0", "--device", "cpu", "--allow-incomplete"])
    assert result.exit_code == 2 and shard.name in result.output
