"""What the wheel carries: every packaged recipe and landmark file, and never a user's drop-in model.

The wheel's package data comes from setup.cfg's [options.package_data]; setuptools' own build_py step
(the one `pip wheel` runs) is asked which files it would copy, on a copy of the package tree, in milliseconds.
The end-to-end proof (build, install non-editable, run from another folder) is .ci/wheel_smoke.sh.
"""

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "dfprep" / "config" / "resources"


def _shipped_files(tree: Path) -> set[str]:
    """Files build_py would put in the wheel for the source tree at `tree` (paths relative to it)."""
    setuptools_dist = pytest.importorskip("setuptools.dist")
    distribution = setuptools_dist.Distribution()
    distribution.parse_config_files([str(tree / "setup.cfg")])
    build_py = distribution.get_command_obj("build_py")
    build_py.ensure_finalized()
    return {str(Path(source) / name) for _, source, _, names in build_py.data_files for name in names}


def _resource_files(folder: Path) -> set[str]:
    """Every file of the packaged resources (relative to the checkout), user drop-ins excepted."""
    return {str(path.relative_to(folder.parents[2])) for path in folder.rglob("*")
            if path.is_file() and path.suffix != ".dat" and "__pycache__" not in path.parts}


def test_the_wheel_carries_every_recipe_and_landmark_file_and_no_drop_in(tmp_path, monkeypatch):
    tree = tmp_path / "src"
    shutil.copytree(RESOURCES, tree / "dfprep" / "config" / "resources", ignore=shutil.ignore_patterns("*.dat"))
    for name in ("setup.cfg", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    for package in ("dfprep", "dfprep/config"):
        (tree / package / "__init__.py").write_text("")
    (tree / "dfprep" / "config" / "resources" / "landmarks" / "shape_predictor_81_face_landmarks.dat").write_bytes(b"x")
    monkeypatch.chdir(tree)  # build_py resolves package folders from the working directory
    shipped = _shipped_files(tree)
    expected = _resource_files(tree / "dfprep" / "config" / "resources")
    assert expected and expected <= shipped, sorted(expected - shipped)
    assert {"dfprep/config/resources/pipelines.yaml", "dfprep/config/resources/pipelines/caddm-ffpp.yaml",
            "dfprep/config/resources/landmarks/models.yaml"} <= shipped
    assert not any(name.endswith(".dat") for name in shipped)
    assert _resource_files(RESOURCES) == expected  # the copy is the checkout's own resource list


def test_license_file_is_mit_and_named_in_the_metadata():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "dfprep maintainers" in text
    assert "license = MIT" in (REPO / "setup.cfg").read_text()
