"""Packaged resources and the user folders: recipes and landmark models found from any folder, in a stated order."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import dfprep.config
from dfprep.cli import cli
from dfprep.config import load_config, paths
from dfprep.config.loader import available_recipes, recipe_path
from dfprep.errors import ConfigError, ModelError
from dfprep.vision.models import manifest, resolve_model

REPO = Path(__file__).resolve().parents[1]


def test_resources_are_read_from_inside_the_package_not_the_checkout():
    package_folder = Path(dfprep.config.__file__).resolve().parent
    assert Path(str(paths.packaged())).resolve() == package_folder / "resources"
    assert paths.landmark_dirs()[-1].resolve() == package_folder / "resources" / "landmarks"
    assert Path(str(paths.recipe_dirs()[-1])).resolve() == package_folder / "resources" / "pipelines"


def test_the_checkout_top_level_names_are_links_to_the_packaged_files():
    for name in ("pipelines.yaml", "pipelines", "landmarks"):
        link = REPO / name
        assert link.is_symlink() and not Path(link.readlink()).is_absolute(), name
        assert link.resolve() == (REPO / "dfprep" / "config" / "resources" / name).resolve()
    assert (REPO / "pipelines" / "caddm-ffpp.yaml").is_file() and (REPO / "landmarks" / "models.yaml").is_file()


def test_recipes_and_landmarks_work_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("caddm-ffpp").alignment.preset == "caddm"
    assert {"dlib68", "dlib81"} <= {entry.name for entry in manifest()}
    assert resolve_model("dlib68").points == 68


def _user_recipe(folder: Path, name: str, text: str) -> None:
    (folder / "pipelines").mkdir(parents=True, exist_ok=True)
    (folder / "pipelines" / f"{name}.yaml").write_text(text)


def test_user_recipes_dfprep_home_before_xdg_before_the_package(tmp_path, monkeypatch):
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    _user_recipe(xdg / "dfprep", "mine", "extends: caddm-ffpp\nsampling: {frames: 7}\n")
    _user_recipe(xdg / "dfprep", "ffpp", "dataset: {name: ffpp, compressions: [c40]}\n")
    assert load_config("mine").sampling.frames == 7 and load_config("mine").alignment.preset == "caddm"
    assert load_config("ffpp").dataset.compressions == ("c40",)  # a user recipe shadows the packaged one
    assert "mine" in available_recipes() and "prle" in available_recipes()
    monkeypatch.setenv("DFPREP_HOME", str(home))
    _user_recipe(home, "mine", "sampling: {frames: 9}\n")
    assert load_config("mine").sampling.frames == 9
    assert recipe_path("mine") == home / "pipelines" / "mine.yaml"


def test_an_unknown_recipe_names_every_folder_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("DFPREP_HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError) as error:
        load_config("nosuch")
    message = str(error.value)
    assert "unknown pipeline 'nosuch'" in message and "caddm-ffpp" in message
    for folder in paths.recipe_dirs():
        assert str(folder) in message
    assert str(tmp_path / "home" / "pipelines") in message
    with pytest.raises(ConfigError, match="unknown pipeline"):
        load_config("../pipelines/ffpp")  # a name never walks out of the recipe folders


def _dlib5_file() -> Path:
    return resolve_model("dlib5").path


def test_landmark_drop_ins_in_the_user_folders_by_precedence(tmp_path, monkeypatch):
    xdg, mine = tmp_path / "xdg", tmp_path / "mine"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    (xdg / "dfprep" / "landmarks").mkdir(parents=True)
    dropped = xdg / "dfprep" / "landmarks" / "shape_predictor_81_face_landmarks.dat"
    shutil.copy(_dlib5_file(), dropped)
    assert resolve_model("dlib81").path == dropped  # found by its registry file name in the XDG folder
    mine.mkdir()
    shutil.copy(_dlib5_file(), mine / "shape_predictor_81_face_landmarks.dat")
    monkeypatch.setenv("DFPREP_LANDMARKS", str(mine))
    assert resolve_model("dlib81").path == mine / "shape_predictor_81_face_landmarks.dat"
    assert paths.landmark_dirs()[:2] == [mine.resolve(), (xdg / "dfprep" / "landmarks").resolve()]


def test_a_user_models_yaml_replaces_the_packaged_entry_of_that_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DFPREP_HOME", str(tmp_path))
    folder = tmp_path / "landmarks"
    folder.mkdir()
    shutil.copy(_dlib5_file(), folder / "shape_predictor_81_face_landmarks.dat")
    (folder / "models.yaml").write_text(
        "models:\n  - {name: dlib81, kind: shape_predictor, points: 81, file: shape_predictor_81_face_landmarks.dat,"
        f" sha256: '{'0' * 64}', package: null, source: pinned by me}}\n")
    entries = {entry.name: entry for entry in manifest()}
    assert entries["dlib81"].sha256 == "0" * 64 and "dlib68" in entries  # packaged entries still there
    with pytest.raises(ModelError, match="corrupt or a different file"):
        resolve_model("dlib81")  # the pin now guards the drop-in


def test_a_missing_model_names_every_landmark_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DFPREP_LANDMARKS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError) as error:
        resolve_model("dlib81")
    for folder in paths.landmark_dirs():
        assert str(folder) in str(error.value)


def test_models_command_lists_the_landmark_search_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DFPREP_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    assert "dlib68" in result.output and "68 pts" in result.output
    searched = result.output.splitlines()[-1]
    assert searched.startswith("landmark folders, first wins: ")
    assert searched.split(": ", 1)[1].split(", ") == [str(folder) for folder in paths.landmark_dirs()]
