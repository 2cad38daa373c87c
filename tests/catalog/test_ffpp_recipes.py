"""Each FF++ recipe takes exactly its protocol's method set from a full FF++ download (faked layout)."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfprep.catalog import left_out, scan
from dfprep.cli import cli
from dfprep.config import load_config

FF_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
EXPECTED = {  # recipe → the methods (originals included) it takes, per each project's code
    "ffpp": {"youtube", *FF_METHODS, "FaceShifter"},
    "deepfakebench-ffpp": {"youtube", *FF_METHODS},  # DeepfakeBench rearrange.py drops FF-FH, DFD_fake/real
    "caddm-ffpp": {"youtube", *FF_METHODS, "FaceShifter"},  # CADDM extract_frames_ldm_ff++.py DATASETS
    "prle-ffpp": {"youtube", *FF_METHODS, "FaceShifter"},  # PRLE config/yaml/heatmap_fusion.yaml
    "dfd": {"actors", "DeepFakeDetection"},
    "deepfakebench-dfd": {"actors", "DeepFakeDetection"},
}


def touch(root: Path, relative: str) -> None:
    """An empty file (and its folders) below root."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


@pytest.fixture
def full_ffpp(tmp_path: Path) -> Path:
    """Every FF++ folder at c23 and c40: 4 youtube originals, 2 actors, 2 fakes per method, official splits."""
    for compression in ("c23", "c40"):
        for stem in ("000", "001", "002", "003"):
            touch(tmp_path, f"original_sequences/youtube/{compression}/videos/{stem}.mp4")
        for stem in ("01__walk", "02__walk"):
            touch(tmp_path, f"original_sequences/actors/{compression}/videos/{stem}.mp4")
        for method in (*FF_METHODS, "FaceShifter"):
            for stem in ("000_001", "002_003"):
                touch(tmp_path, f"manipulated_sequences/{method}/{compression}/videos/{stem}.mp4")
        for stem in ("01_02__walk__ABCD1234", "02_01__walk__EFGH5678"):
            touch(tmp_path, f"manipulated_sequences/DeepFakeDetection/{compression}/videos/{stem}.mp4")
    (tmp_path / "splits").mkdir()
    for split, pairs in (("train", [["000", "001"]]), ("val", []), ("test", [["002", "003"]])):
        (tmp_path / "splits" / f"{split}.json").write_text(json.dumps(pairs))
    return tmp_path


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_takes_exactly_its_method_set(full_ffpp: Path, recipe: str) -> None:
    options = load_config(recipe).dataset
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every method the recipe names is on disk: no warning
        records = list(scan("ffpp", full_ffpp, options))
    taken = Counter(r.method for r in records)
    assert set(taken) == EXPECTED[recipe]
    assert {r.compression for r in records} == {"c23"}
    originals = 2 if recipe.endswith("dfd") else 4
    assert sum(taken[m] for m in ("youtube", "actors")) == originals and taken.total() == originals + 2 * (
        len(EXPECTED[recipe]) - 1)
    assert set(left_out("ffpp", full_ffpp, options)) == {
        "youtube", "actors", *FF_METHODS, "FaceShifter", "DeepFakeDetection"} - EXPECTED[recipe]


def test_ffpp_recipes_keep_dfd_out_of_the_test_split_and_dfd_is_all_test(full_ffpp: Path) -> None:
    ffpp = list(scan("ffpp", full_ffpp, load_config("deepfakebench-ffpp").dataset))
    assert Counter(r.split for r in ffpp) == {"train": 2 + 4, "test": 2 + 4}  # youtube pair + one fake per method
    dfd = list(scan("ffpp", full_ffpp, load_config("dfd").dataset))
    assert {r.split for r in dfd} == {"test"} and Counter(r.label for r in dfd) == {0: 2, 1: 2}


def test_datasets_command_shows_what_a_recipe_takes_and_leaves_out(full_ffpp: Path) -> None:
    result = CliRunner().invoke(cli, ["datasets", "ffpp", str(full_ffpp), "--pipeline", "deepfakebench-ffpp"])
    assert result.exit_code == 0, result.output
    table = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()
             if line.split() and line.split()[0] in ("method", "youtube", *FF_METHODS)}
    assert table["method"] == ["test", "train"] and table["youtube"] == ["2", "2"]
    assert all(table[m] == ["1", "1"] for m in FF_METHODS)
    assert "left out by dataset.methods: DeepFakeDetection 2, FaceShifter 2, actors 2" in result.output
    as_json = CliRunner().invoke(cli, ["datasets", "ffpp", str(full_ffpp), "--pipeline", "dfd", "--json"])
    counts = json.loads(as_json.output)["counts"]
    assert counts["by_method_split"] == {"DeepFakeDetection": {"test": 2}, "actors": {"test": 2}}


def test_a_method_with_no_videos_is_named_not_silently_dropped(full_ffpp: Path) -> None:
    options = load_config("ffpp", {"dataset.methods": ["youtube", "deepfakes"]}).dataset  # a typo
    with pytest.warns(UserWarning, match=r"no deepfakes videos .*methods there: .*Deepfakes"):
        records = list(scan("ffpp", full_ffpp, options))
    assert {r.method for r in records} == {"youtube"}
    result = CliRunner().invoke(cli, ["datasets", "ffpp", str(full_ffpp), "--set", "dataset.methods=[Face2Face, X]"])
    assert result.exit_code == 0 and "catalog warning: dataset.methods: no X videos" in result.output
