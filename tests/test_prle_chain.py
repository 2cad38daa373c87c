"""The PRLE chain on the demo data, as a user runs it: extract with the `prle` recipe (no zoo yet: the next
commands are printed), train a zoo, make the CAM maps (inline or with `dfprep maps`), train with region
erasing, evaluate; and dfprep's maps against PRLE's map formulas re-implemented in benchmarks/protocol_prle.py."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from dfprep.cli import cli

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # ~40 s: demo videos, two extracts, three short trainings

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # the deepfakebench crop at 64 px keeps the chain to seconds


def _protocol() -> object:
    """benchmarks/protocol_prle.py as a module (the re-implemented PRLE chain lives there, beside its script)."""
    spec = importlib.util.spec_from_file_location("protocol_prle", REPO / "benchmarks" / "protocol_prle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*arguments: str) -> str:
    result = CliRunner().invoke(cli, list(arguments))
    assert result.exit_code == 0, f"dfprep {' '.join(arguments)}\n{result.output}"
    return result.output


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch single-threaded: these small models (and the one-crop-at-a-time reference) only contend for threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, one_thread) -> dict[str, object]:
    """Demo videos → `extract --pipeline prle` without a zoo → two tiny_cnn zoo members → extract with the zoo."""
    from dfprep.cli.demo import build_demo_dataset

    root = tmp_path_factory.mktemp("prle")
    build_demo_dataset(root / "videos")
    out = root / "out"
    extract = ["extract", "folder", str(root / "videos"), "-o", str(out), "--pipeline", "prle", "--frames", "4",
               "--set", f"alignment.size={SIZE}", "--workers", "0", "--quiet"]
    without_zoo = _run(*extract)
    zoo = []
    for seed in (1, 2):
        _run("train", str(out), "-o", str(root / f"zoo{seed}"), "--model", "tiny_cnn", "--epochs", "2", "--seed",
             str(seed), "--batch-size", "16", "--workers", "0", "--device", "cpu", "--quiet")
        zoo.append(str(root / f"zoo{seed}" / "model.pt"))
    with_zoo = _run(*extract, "--set", f"cam.zoo=[{zoo[0]},{zoo[1]}]")
    return {"root": root, "out": out, "zoo": zoo, "without_zoo": without_zoo, "with_zoo": with_zoo}


def _members(tar_path: Path, suffix: str) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name[:-len(suffix)]: tar.extractfile(m).read() for m in tar if m.name.endswith(suffix)}


def test_extract_without_a_zoo_writes_faces_and_prints_the_exact_next_commands(chain):
    out, printed = chain["out"], chain["without_zoo"]
    assert "faces written: 64" in printed
    assert "cam maps: not made yet" in printed and "cam.zoo is empty" in printed
    assert f"dfprep train {out} -o runs/zoo-resnet18 --model resnet18" in printed
    assert (f"dfprep maps {out} --method cam --zoo runs/zoo-resnet18/model.pt "
            f"runs/zoo-efficientnet_small/model.pt\n") in printed
    assert f"dfprep train {out} -o runs/prle --region-erasing --maps cam" in printed
    assert f"dfprep evaluate runs/prle/model.pt {out}" in printed
    assert ("rerun this extract with --set 'cam.zoo=[runs/zoo-resnet18/model.pt,"
            "runs/zoo-efficientnet_small/model.pt]'") in printed
    assert "landmarks maps" not in printed  # no silent landmark heuristic in place of the CAM maps


def test_a_zoo_that_cannot_load_is_refused_before_any_extraction(chain, tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(cli, ["extract", "folder", str(chain["root"] / "videos"), "-o", str(out),
                                      "--pipeline", "prle", "--workers", "0", "--quiet",
                                      "--set", f"cam.zoo=[{chain['zoo'][0]},{tmp_path / 'missing.pt'}]"])
    assert result.exit_code == 2 and "cannot read checkpoint" in result.output and "missing.pt" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_extract_with_a_zoo_makes_the_cam_maps_and_dfprep_maps_agrees(chain):
    out, zoo = chain["out"], chain["zoo"]
    assert "nothing to do: every shard was already committed" in chain["with_zoo"]
    assert f"cam maps: 64 in {out}/maps/cam" in chain["with_zoo"]
    # the printed `dfprep maps` command makes the same maps as the recipe: nothing left to do
    assert "nothing to do" in _run("maps", str(out), "--method", "cam", "--zoo", *zoo, "--workers", "0", "--quiet")
    manifest = json.loads((out / "maps" / "cam" / "manifest.json").read_text())
    assert (manifest["target"], manifest["fusion"], manifest["threshold"], manifest["released_halving"],
            manifest["bits"]) == ("predicted", "mean", 0.3, False, 16)
    assert [z["layers"] for z in manifest["zoo"]] == [["features.2", "features.4"]] * 2 and manifest["complete"]
    for tar_path in sorted(out.glob("*.tar")):
        image = "." + json.loads((out / "dataset.json").read_text())["config"]["output"]["image_format"]
        faces, maps = _members(tar_path, image), _members(out / "maps" / "cam" / tar_path.name, ".prmap.png")
        assert list(maps) == list(faces)
        for payload in maps.values():
            levels = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
            assert levels.dtype == np.uint16 and levels.shape == (SIZE, SIZE)
            # each member's map peaks at ~1, so the mean of two peaks at >= 1/2; <= 0.3 was zeroed
            assert levels.max() >= 0.5 * 65535 - 8 and levels[levels > 0].min() > 0.3 * 65535


def test_region_erasing_training_on_the_cam_maps_then_evaluate(chain, tmp_path):
    from dfprep.torch import FaceShards

    out = chain["out"]
    samples = list(FaceShards(str(out), split="test", maps="cam"))
    stored = _members(out / "maps" / "cam" / sorted(out.glob("test-*.tar"))[0].name, ".prmap.png")
    first = next(s for s in samples if s["key"] in stored)
    decoded = cv2.imdecode(np.frombuffer(stored[first["key"]], np.uint8), cv2.IMREAD_UNCHANGED) / 65535
    assert np.allclose(first["map"].numpy(), decoded, atol=1e-6)  # FaceShards reads the 16-bit maps exactly
    run = tmp_path / "prle"
    _run("train", str(out), "-o", str(run), "--model", "tiny_cnn", "--epochs", "1", "--region-erasing", "--maps",
         "cam", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--quiet")
    printed = _run("evaluate", str(run / "model.pt"), str(out), "--workers", "0", "--json", str(tmp_path / "e.json"))
    (row,) = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert row["frames"] == 16 and row["videos"] == 4 and 0 <= row["frame_auc"] <= 1 and 0 <= row["ap"] <= 1
    assert printed.splitlines()[0].split()[:3] == ["dataset", "frames", "videos"]


@pytest.mark.parametrize("halve", [False, True], ids=["plain", "released-halving"])
def test_cam_maps_agree_with_the_reimplemented_prle_chain(chain, halve):
    protocol = _protocol()
    out, zoo = chain["out"], chain["zoo"]
    name = "cam-halved" if halve else "cam"
    if halve:
        _run("maps", str(out), "--method", "cam", "--zoo", *zoo, "--released-halving", "--name", name,
             "--workers", "0", "--quiet")
    keys, crops, labels, ours = protocol.crops_and_maps(out, name)
    picked = np.arange(0, len(keys), 2)  # every other face (32 of 64): the reference runs one crop at a time
    reference = protocol.reference_maps(protocol.load_zoo(zoo), crops[picked], labels[picked], halve=halve)
    numbers = protocol.agreement(ours[picked], reference)
    assert len(keys) == 64 and reference.max() <= (0.5 if halve else 1.0) + 1e-6
    assert numbers["within_1e-3"] >= 0.999, numbers  # values: the same formula (float noise, 16-bit rounding)
    assert numbers["support_iou"] >= 0.999, numbers  # the same pixels survive the 0.3 threshold
    assert numbers["erased_iou_0.5"] >= 0.95, numbers  # PRLE breaks value ties the other way round
    assert 0 < numbers["ref_coverage"] < (0.3 if halve else 0.95), numbers
