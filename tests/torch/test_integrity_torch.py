"""train/evaluate never score damaged or incomplete data silently; DataLoader worker errors are one line."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from dfprep.cli import cli  # noqa: E402
from dfprep.torch.commands import error_line  # noqa: E402
from dfprep.torch.data import FaceShards  # noqa: E402
from dfprep.torch.models import build_model  # noqa: E402
from dfprep.torch.shardio import ShardError  # noqa: E402

TEST_SHARD = "test-000000"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny_cnn checkpoint (the scores need not be good, only reproducible)."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.manual_seed(0)
    torch.save({"model_name": "tiny_cnn", "state_dict": build_model("tiny_cnn").state_dict(), "config": {}}, path)
    return path


def _evaluate(checkpoint: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(out), "--workers", "0", "--device", "cpu",
                                    *extra])


def _flip_jpg(out: Path, shard: str = TEST_SHARD) -> str:
    """64 flipped bytes inside the second jpg member of a shard; returns the sample's key."""
    tar_path = out / f"{shard}.tar"
    with tarfile.open(tar_path) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".jpg")][1]
    data = bytearray(tar_path.read_bytes())
    start = member.offset_data + member.size // 2
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    tar_path.write_bytes(bytes(data))
    return member.name.split(".")[0]


def test_flipped_jpg_bytes_fail_evaluate_instead_of_changing_its_auc(checkpoint, out_copy):
    clean = _evaluate(checkpoint, out_copy)
    assert clean.exit_code == 0, clean.output
    key = _flip_jpg(out_copy)
    damaged = _evaluate(checkpoint, out_copy)
    assert damaged.exit_code == 2, damaged.output
    assert damaged.output.strip() == (f"dfprep: error: {out_copy / TEST_SHARD}.tar: sample {key!r}: member .jpg does "
                                      "not match its recorded crc32 (damaged bytes)")
    skipped = _evaluate(checkpoint, out_copy, "--skip-bad-shards")
    assert skipped.exit_code == 0 and "skipping bad sample" not in skipped.output  # warned on stderr, not a row
    frames = int(skipped.output.splitlines()[1].split()[1])
    assert frames == int(clean.output.splitlines()[1].split()[1]) - 1


def test_a_deleted_commit_marker_is_refused_not_scored_as_auc_one_half(checkpoint, out_copy):
    (out_copy / f"{TEST_SHARD}_stats.json").unlink()
    refused = _evaluate(checkpoint, out_copy)
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert f"is incomplete or damaged: 1 problem (first: {TEST_SHARD}: planned but not committed" in refused.output
    assert "--allow-incomplete" in refused.output
    allowed = _evaluate(checkpoint, out_copy, "--allow-incomplete")
    # allowed: the shard's 2 videos join the 2 face-less ones at score 0.5, which is what the refusal prevents
    assert allowed.exit_code == 0 and allowed.output.splitlines()[1].split()[-3:] == ["4", "scored", "0.5"]


@pytest.mark.parametrize("damage", ["parquet", "truncate"])
def test_evaluate_and_train_refuse_a_damaged_output(damage, checkpoint, out_copy, tmp_path):
    if damage == "parquet":
        (out_copy / f"{TEST_SHARD}.parquet").unlink()
    else:
        tar_path = out_copy / f"{TEST_SHARD}.tar"
        tar_path.write_bytes(tar_path.read_bytes()[:-2048])
    for result in (_evaluate(checkpoint, out_copy),
                   CliRunner().invoke(cli, ["train", str(out_copy), "-o", str(tmp_path / "run"), "--epochs", "1",
                                            "--workers", "0", "--device", "cpu", "--quiet"])):
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
        assert f"is incomplete or damaged: 1 problem (first: {TEST_SHARD}: {TEST_SHARD}." in result.output
    assert not (tmp_path / "run").exists()


def test_an_output_without_dataset_json_is_incomplete(checkpoint, out_copy):
    (out_copy / "dataset.json").unlink()
    result = _evaluate(checkpoint, out_copy)
    assert result.exit_code == 2 and "no readable dataset.json: the extract has not finished" in result.output


def test_errors_inside_dataloader_workers_are_one_line(checkpoint, out_copy):
    key = _flip_jpg(out_copy)
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(out_copy), "--workers", "2",
                                      "--device", "cpu"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"dfprep: error: {out_copy / TEST_SHARD}.tar: sample {key!r}: member .jpg does not match its recorded crc32 "
        "(damaged bytes)"]


def test_error_line_unwraps_a_worker_traceback_and_leaves_plain_messages_alone():
    wrapped = ShardError("Caught ShardError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 3, in f\n    raise ShardError(msg)\n"
                         "dfprep.torch.shardio.ShardError: a.tar: truncated at byte offset 10\n")
    assert error_line(wrapped) == "a.tar: truncated at byte offset 10"
    assert error_line(ShardError("b.tar: bad: x")) == "b.tar: bad: x"


def test_a_crc_mismatch_is_a_shard_error_naming_shard_and_key(out_copy):
    key = _flip_jpg(out_copy)
    with pytest.raises(ShardError, match=f"{TEST_SHARD}.tar: sample '{key}': member .jpg does not match"):
        list(FaceShards(str(out_copy), split="test"))
    dataset = FaceShards(str(out_copy), split="test", skip_bad_shards=True)
    with pytest.warns(UserWarning, match="skipping bad sample"):
        keys = [sample["key"] for sample in dataset]
    assert key not in keys and len(keys) == 15 and dataset.skipped_samples == 1
