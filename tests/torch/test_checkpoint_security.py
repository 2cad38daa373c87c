"""Checkpoints carry data, never code: the model a file names is a registered one, or one the user named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from dfprep.cli import cli  # noqa: E402
from dfprep.torch.evaluate import load_detector  # noqa: E402
from dfprep.torch.models import ModelBuildError, build_model, model_from_checkpoint  # noqa: E402

TRUSTED = "dfprep.torch.models:tiny_cnn"


def _save(path: Path, model_name: str, **config) -> Path:
    torch.save({"model_name": model_name, "state_dict": build_model("tiny_cnn").state_dict(), "config": config},
               path)
    return path


@pytest.fixture()
def attack(tmp_path) -> tuple[Path, Path, Path]:
    """The issue's exact checkpoint: model_name shutil:copyfile with src/dst kwargs; returns (ckpt, src, dst)."""
    src, dst = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    src.write_text("private")
    return _save(tmp_path / "evil.pt", "shutil:copyfile", model_kwargs={"src": str(src), "dst": str(dst)}), src, dst


def test_evaluate_never_calls_a_factory_named_by_the_checkpoint(attack, out_copy):
    checkpoint, _, stolen = attack
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(out_copy), "--workers", "0"])
    assert result.exit_code == 2 and not stolen.exists()
    assert result.output.strip() == (f"dfprep: error: {checkpoint} names the model factory 'shutil:copyfile'; dfprep "
                                     "never imports code a file names: if you trust it, pass --model shutil:copyfile")


def test_maps_cam_never_calls_a_factory_named_by_the_checkpoint(attack, out_copy):
    checkpoint, _, stolen = attack
    result = CliRunner().invoke(cli, ["maps", str(out_copy), "--method", "cam", "--zoo", str(checkpoint),
                                      "--workers", "0", "--name", "cam1", "--quiet"])
    assert result.exit_code == 2 and not stolen.exists() and "pass --model shutil:copyfile" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (out_copy / "maps" / "cam1").exists()


def test_a_factory_the_user_names_is_trusted_and_must_match_the_checkpoint(tmp_path, out_copy):
    checkpoint = _save(tmp_path / "own.pt", TRUSTED)
    with pytest.raises(ModelBuildError, match="pass --model dfprep.torch.models:tiny_cnn"):
        load_detector(checkpoint, torch.device("cpu"))
    with pytest.raises(ModelBuildError, match="records the model 'dfprep.torch.models:tiny_cnn', but --model says"):
        load_detector(checkpoint, torch.device("cpu"), "resnet18")
    model, _ = load_detector(checkpoint, torch.device("cpu"), TRUSTED)
    assert not model.training
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(out_copy), "--workers", "0", "--model", TRUSTED])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["maps", str(out_copy), "--method", "cam", "--zoo", str(checkpoint), "--model",
                                      TRUSTED, "--workers", "0", "--name", "cam1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list((out_copy / "maps" / "cam1").glob("*.tar"))) == len(list(out_copy.glob("*.tar")))


@pytest.mark.parametrize("kwargs, message", [
    ({"width": [8, 16]}, "model_kwargs\\['width'\\] is a list; only plain numbers, strings"),
    ({"width": {"__class__": "x"}}, "model_kwargs\\['width'\\] is a dict"),
    ({"__init__": 1}, "invalid argument name '__init__'"),
    ({"depth": 3}, "model_kwargs do not fit the model"),
    ("width=8", "model_kwargs must be a mapping"),
])
def test_model_kwargs_must_be_plain_values(kwargs, message):
    payload = {"model_name": "tiny_cnn", "state_dict": build_model("tiny_cnn").state_dict(),
               "config": {"model_kwargs": kwargs}}
    with pytest.raises(ModelBuildError, match=message):
        model_from_checkpoint(payload, "x.pt")


def test_a_huge_declared_model_is_refused_before_it_is_allocated():
    # width 10**7 would need ~10**15 parameters; it is built on the meta device and compared first
    payload = {"model_name": "tiny_cnn", "state_dict": build_model("tiny_cnn").state_dict(),
               "config": {"model_kwargs": {"width": 10**7}}}
    with pytest.raises(ModelBuildError, match="state_dict does not match its declared architecture 'tiny_cnn': "
                                              "wrong shape"):
        model_from_checkpoint(payload, "x.pt")


def test_a_malformed_normalisation_is_a_one_line_error(tmp_path, out_copy):
    checkpoint = _save(tmp_path / "odd.pt", "tiny_cnn", mean="zero")
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(out_copy), "--workers", "0"])
    assert result.exit_code == 2 and result.output.strip() == ("dfprep: error: checkpoint config mean must be three "
                                                               "numbers, got zero")
