"""Training: the loss falls, checkpoints are weights_only-loadable, and a resumed run equals an uninterrupted one."""

import csv
import json

import pytest

torch = pytest.importorskip("torch")

from dfprep.torch.models import build_model  # noqa: E402
from dfprep.torch.train import TrainConfig, TrainError, train  # noqa: E402

FAST = {"batch_size": 8, "lr": 3e-3, "workers": 0, "seed": 4}


def test_a_tiny_model_learns_the_synthetic_artefact(learnable_out, tmp_path):
    rows = train(TrainConfig((learnable_out,), epochs=3, **FAST), tmp_path / "run", progress=False)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < 0.75 * rows[0]["train_loss"]
    assert rows[-1]["val_frame_auc"] > 0.8 and rows[-1]["steps"] == 6 and rows[-1]["global_step"] == 18


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(learnable_out, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig((learnable_out,), epochs=2, max_steps_per_epoch=2, **FAST), run, progress=False)
    assert sorted(p.name for p in run.glob("*.pt")) == ["checkpoint-001.pt", "checkpoint-002.pt", "model.pt"]
    payload = torch.load(run / "model.pt", weights_only=True)
    assert {"model_name", "state_dict", "config", "epoch", "optimizer", "metrics"} <= set(payload)
    assert payload["model_name"] == "tiny_cnn" and payload["epoch"] == 2 and payload["step"] == 4
    assert payload["config"]["batch_size"] == 8 and isinstance(payload["config"]["out_dirs"], list)
    model = build_model(payload["model_name"])
    model.load_state_dict(payload["state_dict"])
    first = torch.load(run / "checkpoint-001.pt", weights_only=True)
    assert first["epoch"] == 1 and len(first["metrics"]) == 1


def test_metrics_files_hold_one_row_per_epoch(learnable_out, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig((learnable_out,), epochs=2, max_steps_per_epoch=1, **FAST), run, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in lines] == [1, 2] and "val_frame_auc" in lines[0]
    with open(run / "metrics.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["epoch"] for row in table] == ["1", "2"] and float(table[1]["train_loss"]) == lines[1]["train_loss"]


def test_resume_continues_the_same_schedule(learnable_out, tmp_path):
    straight = train(TrainConfig((learnable_out,), epochs=2, **FAST), tmp_path / "straight", progress=False)
    train(TrainConfig((learnable_out,), epochs=1, **FAST), tmp_path / "resumed", progress=False)
    resumed = train(TrainConfig((learnable_out,), epochs=2, **FAST), tmp_path / "resumed", progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert [r["global_step"] for r in resumed] == [r["global_step"] for r in straight]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["optimizer"]["state"][i]["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
               for i in a["optimizer"]["state"])
    again = train(TrainConfig((learnable_out,), epochs=2, **FAST), tmp_path / "resumed", progress=False)
    assert again == resumed  # nothing left to do


def test_resume_refuses_a_different_run_and_no_resume_starts_over(learnable_out, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig((learnable_out,), epochs=1, max_steps_per_epoch=1, **FAST), run, progress=False)
    with pytest.raises(TrainError, match=r"different run \(lr"):
        train(TrainConfig((learnable_out,), epochs=2, max_steps_per_epoch=1, **{**FAST, "lr": 0.1}), run,
              progress=False)
    rows = train(TrainConfig((learnable_out,), epochs=1, max_steps_per_epoch=1, **{**FAST, "lr": 0.1}), run,
                 progress=False, resume=False)
    assert len(rows) == 1 and torch.load(run / "model.pt", weights_only=True)["config"]["lr"] == 0.1


def test_region_erasing_needs_existing_maps(learnable_out, tmp_path):
    with pytest.raises(TrainError, match="--maps"):
        train(TrainConfig((learnable_out,), epochs=1, region_erasing=True, **FAST), tmp_path / "a", progress=False)
    with pytest.raises(TrainError, match="maps 'cam' not found"):
        train(TrainConfig((learnable_out,), epochs=1, region_erasing=True, maps="cam", **FAST), tmp_path / "b",
              progress=False)
    rows = train(TrainConfig((learnable_out,), epochs=1, region_erasing=True, maps="landmarks",
                             max_steps_per_epoch=2, **FAST), tmp_path / "c", progress=False)
    assert rows[0]["steps"] == 2


def test_training_with_dataloader_workers(learnable_out, tmp_path):
    rows = train(TrainConfig((learnable_out,), epochs=1, **{**FAST, "workers": 2}), tmp_path / "run", progress=False)
    assert rows[0]["samples"] == 48 and rows[0]["steps"] == 6


def test_the_train_command_flags_are_the_trainconfig_fields_and_resume_fields_come_from_them():
    import dataclasses

    from click.testing import CliRunner

    from dfprep.torch.commands import train_command
    from dfprep.torch.trainconfig import RESUME_FIELDS

    flags = {p.name: p for p in train_command.params}
    for spec in dataclasses.fields(TrainConfig):
        if spec.metadata.get("cli", True):
            assert spec.name in flags, spec.name
            assert flags[spec.name].help == spec.metadata["help"]
    assert list(flags["optimizer"].type.choices) == ["adam", "adamw", "sgd"]  # the Literal's choices
    assert flags["epochs"].default == TrainConfig.epochs and flags["workers"].default == 2  # the command's choice
    assert set(RESUME_FIELDS) == {"out_dirs", "model", "model_kwargs", "batch_size", "lr", "optimizer",
                                  "weight_decay", "region_erasing", "maps", "seed", "max_steps_per_epoch",
                                  "shuffle_buffer", "balance", "mean", "std"}
    result = CliRunner().invoke(train_command, ["--help"])
    assert "--weight-decay" in result.output and "--shuffle-buffer" in result.output


def test_the_train_command_builds_the_same_config_as_the_api(learnable_out, tmp_path):
    from click.testing import CliRunner

    from dfprep.torch.commands import train_command

    result = CliRunner().invoke(train_command, [str(learnable_out), "-o", str(tmp_path / "cli"), "--epochs", "1",
                                                "--batch-size", "8", "--lr", "0.003", "--workers", "0", "--seed", "4",
                                                "--max-steps-per-epoch", "1", "--weight-decay", "0.01", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "cli" / "model.pt", weights_only=True)["config"]
    api = TrainConfig((str(learnable_out),), epochs=1, max_steps_per_epoch=1, weight_decay=0.01, **FAST)
    assert saved == {**api.to_dict(), "out_dirs": [str(learnable_out.resolve())]}
