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


def test_a_file_hashed_by_two_threads_at_once_is_read_once_and_a_failure_is_not_remembered(tmp_path, monkeypatch):
    import hashlib
    import threading
    import time

    from dfprep.vision import models

    big = tmp_path / "model.dat"
    big.write_bytes(bytes(range(256)) * 40_000)
    reads: list[str] = []
    real = models._sha256

    def slow_sha256(path: str) -> str:
        reads.append(path)
        time.sleep(0.2)  # the second caller arrives while the first is hashing
        return real(path)

    monkeypatch.setattr(models, "_sha256", slow_sha256)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(models.file_sha256(big))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reads == [str(big)] and results == [hashlib.sha256(big.read_bytes()).hexdigest()] * 2
    big.write_bytes(b"changed")  # another size: hashed afresh
    assert models.file_sha256(big) == hashlib.sha256(b"changed").hexdigest() and len(reads) == 2
    gone = tmp_path / "vanishing.dat"
    gone.write_bytes(b"x")
    monkeypatch.setattr(models, "_sha256", lambda path: (_ for _ in ()).throw(OSError("disk went away")))
    with pytest.raises(OSError, match="disk went away"):
        models.file_sha256(gone)
    monkeypatch.setattr(models, "_sha256", real)
    assert models.file_sha256(gone) == hashlib.sha256(b"x").hexdigest()  # the failure was not kept


def test_checksum_ahead_leaves_errors_to_resolve_model_and_warms_its_result(tmp_path, monkeypatch):
    import time

    from dfprep.vision import models

    folder = _registry_copy(tmp_path)
    monkeypatch.setenv("DFPREP_LANDMARKS", str(folder))
    models.checksum_ahead("no-such-model")  # the background thread swallows it; the caller's resolve reports it
    with pytest.raises(ModelError, match="'no-such-model' is neither a known name"):
        resolve_model("no-such-model")
    shutil.copy(resolve_model("dlib5").path, folder / "fresh.dat")
    hashed: list[str] = []
    real = models._sha256
    monkeypatch.setattr(models, "_sha256", lambda path: hashed.append(path) or real(path))
    models.checksum_ahead(str(folder / "fresh.dat"))
    deadline = time.monotonic() + 30
    while not hashed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert resolve_model(str(folder / "fresh.dat")).name == "dlib5" and hashed == [str(folder / "fresh.dat")]
