"""Landmark-model registry: package defaults, drop-ins recognised by checksum, corrupt files refused."""

import shutil

import pytest

from dfprep.errors import ModelError
from dfprep.vision.models import load_check, manifest, resolve_model


def _registry_copy(tmp_path):
    """A private landmarks/ folder holding only the manifest."""
    from dfprep.config import paths

    shutil.copy(paths.landmark_dirs()[-1] / "models.yaml", tmp_path / "models.yaml")
    return tmp_path


def test_defaults_resolve_to_package_models_with_right_point_counts(tmp_path):
    folder = _registry_copy(tmp_path)
    for name, points in [("dlib68", 68), ("dlib5", 5)]:
        model = resolve_model(name, folder)
        assert model.path.parent.name == "models" and model.points == points
        assert load_check(model) == points
    assert resolve_model("mmod", folder).kind == "cnn_detector"
    assert {e.name for e in manifest(folder)} >= {"dlib68", "dlib5", "mmod", "resnet128", "dlib81"}


def test_drop_in_under_any_name_is_recognised_by_checksum(tmp_path):
    folder = _registry_copy(tmp_path)
    package_file = resolve_model("dlib5", folder).path
    shutil.copy(package_file, folder / "my_predictor.dat")
    by_path = resolve_model(str(folder / "my_predictor.dat"), folder)
    assert by_path.name == "dlib5" and by_path.points == 5


def test_81_point_model_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="'dlib81' not found in .* drop it into a landmarks/ folder"):
        resolve_model("dlib81", _registry_copy(tmp_path))


def test_corrupt_drop_in_is_refused_before_work(tmp_path):
    folder = _registry_copy(tmp_path)
    (folder / "shape_predictor_68_face_landmarks.dat").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="corrupt"):
        resolve_model("dlib68", folder)
    (folder / "shape_predictor_81_face_landmarks.dat").write_bytes(b"truncated")
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_check(resolve_model("dlib81", folder))


def test_unknown_name_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="neither a known name"):
        resolve_model("dlib999", _registry_copy(tmp_path))
