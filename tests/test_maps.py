"""`dfprep maps`: companion shards with the face shards' keys in order, manifest, refusal, resume, CAM, Ray."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.catalog import scan
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.config.schema import RayConfig
from dfprep.jobs.maps import LandmarkMapper, MapRun, MapSettings
from dfprep.runner.run import maps_run
from dfprep.vision.regions import REGION_PARTS_68


@pytest.fixture(scope="module")
def faces_out(folder_dataset, tmp_path_factory) -> Path:
    """One extraction of the synthetic folder dataset: 24 faces in 2-video shards, one shard without faces."""
    from dfprep.runner.run import extract_run

    out = tmp_path_factory.mktemp("faces") / "out"
    config = load_config(None, {"sampling.frames": 4, "output.videos_per_shard": 2, "ray.workers": 0})
    extract_run(scan("folder", folder_dataset, config.dataset), config, str(out), quiet=True)
    return out


@pytest.fixture()
def out(faces_out, tmp_path) -> Path:
    """A private copy of the face output that a test may add maps to or damage."""
    return Path(shutil.copytree(faces_out, tmp_path / "out"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> list[Path]:
    """Two tiny_cnn checkpoints with different random weights, saved as dfprep checkpoints."""
    torch = pytest.importorskip("torch")
    from dfprep.torch.models import build_model

    folder = tmp_path_factory.mktemp("zoo")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(folder / f"tiny{seed}.pt")
        torch.save({"model_name": "tiny_cnn", "state_dict": build_model("tiny_cnn").state_dict(),
                    "config": {"model_kwargs": {}}}, paths[-1])
    return paths


def _members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _keys(tar_path: Path) -> list[str]:
    """Sample keys in tar order (each once)."""
    keys: list[str] = []
    for name, _ in _members(tar_path):
        key = name.split(".", 1)[0]
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys


def _face_shards(out: Path) -> list[str]:
    return sorted(p.name[: -len("_stats.json")] for p in out.glob("*_stats.json"))


def _maps(folder: Path, dtype: type = np.uint8) -> dict[str, np.ndarray]:
    """key → decoded map over every map shard of a folder, checking one gray PNG per key (8-bit, 16 for CAM)
    and the json beside it that records the PNG's crc32."""
    decoded = {}
    for tar_path in sorted(folder.glob("*.tar")):
        members = _members(tar_path)
        assert [name.split(".", 1)[1] for name, _ in members] == ["prmap.png", "json"] * (len(members) // 2)
        for (name, payload), (_, meta) in zip(members[::2], members[1::2]):
            key = name.split(".", 1)[0]
            assert key not in decoded and json.loads(meta) == {"key": key, "crc32": {"prmap.png": zlib.crc32(payload)}}
            decoded[key] = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
            assert decoded[key].dtype == dtype and decoded[key].ndim == 2
    return decoded


def _faces(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(out.glob("*.tar")):
        for name, payload in _members(tar_path):
            key, extension = name.split(".", 1)
            samples.setdefault(key, {})[extension] = payload
    return samples


def _reach_of_parts(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per pixel, the distance to the nearest eye/nose/mouth hull (drawn here, independently)."""
    inside = np.zeros(size, np.uint8)
    for region in ("eyes", "nose", "mouth"):
        for part in REGION_PARTS_68[region]:
            cv2.fillConvexPoly(inside, cv2.convexHull(np.round(landmarks[list(part)]).astype(np.int32)), 1)
    return cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def test_landmark_maps_mirror_the_face_shards_and_lie_over_the_landmarks(out):
    report = maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    folder = out / "maps" / "landmarks"
    assert report.maps_written == report.maps_total == 24 and report.units_skipped == 0
    for shard in _face_shards(out):
        stats = json.loads((folder / f"{shard}_stats.json").read_text())
        if not (out / f"{shard}.tar").exists():  # a shard whose videos had no face: committed, empty
            assert stats["samples"] == 0 and not (folder / f"{shard}.tar").exists()
            continue
        assert _keys(folder / f"{shard}.tar") == _keys(out / f"{shard}.tar")
        assert pq.read_table(folder / f"{shard}.parquet").column("key").to_pylist() == _keys(out / f"{shard}.tar")
    faces, maps = _faces(out), _maps(folder)
    assert set(maps) == set(faces)
    for key, region_map in maps.items():
        crop = cv2.imdecode(np.frombuffer(faces[key]["jpg"], np.uint8), cv2.IMREAD_COLOR)
        landmarks = np.load(io.BytesIO(faces[key]["ldm.npy"]))
        assert region_map.shape == crop.shape[:2]
        for part in ((36, 42), (42, 48), (48, 68)):
            x, y = landmarks[part[0]:part[1]].mean(axis=0)
            assert region_map[int(round(y)), int(round(x))] > 0.5 * 255  # over the eyes and the mouth
        reach = _reach_of_parts(landmarks, region_map.shape)
        assert reach[region_map > 0].max() <= 4 * 4.0 * 2 ** 0.5 + 2  # zero beyond the blur of a part
        assert region_map[:20].max() == 0 and region_map[:, :20].max() == 0  # forehead strip, cheek edge


def test_manifest_records_how_the_maps_were_made(out):
    weights = MapSettings(weights=(("eyes", 1.0), ("eyebrows", 0.4)))
    maps_run(str(out), MapRun(weights, RayConfig(workers=0), quiet=True))
    manifest = json.loads((out / "maps" / "landmarks" / "manifest.json").read_text())
    assert manifest["method"] == "landmarks" and manifest["weights"] == {"eyes": 1.0, "eyebrows": 0.4}
    assert manifest["size"] == [256, 256] and manifest["threshold"] == 0.0 and manifest["zoo"] == []
    assert manifest["dfprep_version"] and manifest["complete"] and manifest["maps"] == 24
    assert manifest["shards"] == _face_shards(out)
    dataset = json.loads((out / "dataset.json").read_text())
    assert manifest["identity"]["source_config_hash"] == dataset["config_hash"]


def test_rerun_skips_committed_shards_and_other_settings_are_refused(out):
    maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    folder = out / "maps" / "landmarks"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "manifest.json"}
    report = maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    assert report.units_skipped == report.units_total and report.maps_written == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "manifest.json"}
    sharper = MapSettings(blur_sigma=0.0)
    with pytest.raises(DfprepError, match=r"different settings \(blur_sigma changed\).*--overwrite.*--name"):
        maps_run(str(out), MapRun(sharper, RayConfig(workers=0), quiet=True))
    side_by_side = MapSettings(blur_sigma=0.0, name="sharp")
    maps_run(str(out), MapRun(side_by_side, RayConfig(workers=0), quiet=True))
    assert _maps(out / "maps" / "sharp").keys() == _maps(folder).keys()
    report = maps_run(str(out), MapRun(sharper, RayConfig(workers=0), quiet=True, overwrite=True))
    assert report.maps_written == 24
    assert json.loads((folder / "manifest.json").read_text())["blur_sigma"] == 0.0


def test_resume_after_a_kill_completes_with_identical_shards(out, monkeypatch):
    maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    folder = out / "maps" / "landmarks"
    reference = {p.name: p.read_bytes() for p in folder.glob("*.tar")}
    first, second, third = sorted(reference)[:3]
    (folder / first.replace(".tar", "_stats.json")).unlink()  # killed between tar and commit marker
    (folder / second).rename(folder / f"{second}.tmp")  # killed while uploading
    (folder / second.replace(".tar", "_stats.json")).unlink()
    (folder / second.replace(".tar", ".parquet")).unlink()
    for suffix in (".tar", ".parquet", "_stats.json"):  # never started
        (folder / third.replace(".tar", suffix)).unlink()
    report = maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    assert report.units_skipped == report.units_total - 3 and {first, f"{second}.tmp"} <= set(report.removed)
    assert {p.name: p.read_bytes() for p in folder.glob("*.tar")} == reference
    assert not list(folder.glob("*.tmp"))


def test_a_crash_mid_run_keeps_committed_shards_and_the_rerun_finishes(out, monkeypatch):
    calls = {"n": 0}
    original = LandmarkMapper.maps

    def crash_on_third_batch(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, batch)

    monkeypatch.setattr(LandmarkMapper, "maps", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        maps_run(str(out), MapRun(MapSettings(batch_size=4), RayConfig(workers=0), quiet=True))
    folder = out / "maps" / "landmarks"
    assert len(list(folder.glob("*_stats.json"))) < len(_face_shards(out))
    assert not json.loads((folder / "manifest.json").read_text())["complete"]
    monkeypatch.setattr(LandmarkMapper, "maps", original)
    report = maps_run(str(out), MapRun(MapSettings(batch_size=4), RayConfig(workers=0), quiet=True))
    assert report.maps_total == 24 and report.units_skipped >= 1
    assert all(_keys(folder / f"{s}.tar") == _keys(out / f"{s}.tar") for s in _face_shards(out)
               if (out / f"{s}.tar").exists())


def test_cam_maps_fuse_the_zoo_and_zero_values_at_or_below_the_threshold(out, zoo):
    settings = MapSettings(method="cam", zoo=tuple(map(str, zoo)), fusion="max", batch_size=5, target="fake")
    report = maps_run(str(out), MapRun(settings, RayConfig(workers=0), quiet=True))
    folder = out / "maps" / "cam"
    assert report.maps_written == 24
    for shard in _face_shards(out):
        if (out / f"{shard}.tar").exists():
            assert _keys(folder / f"{shard}.tar") == _keys(out / f"{shard}.tar")
    maps = _maps(folder, np.uint16)  # CAM maps: 16-bit, since erasing ranks their values
    levels = np.concatenate([m.ravel() for m in maps.values()])
    assert levels.max() > 60000 and (levels == 0).any()
    assert levels[levels > 0].min() >= 19661  # everything at or below 0.3 (19660.5 of 65535) was zeroed
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [z["file"] for z in manifest["zoo"]] == ["tiny0.pt", "tiny1.pt"]
    assert [z["sha256"] for z in manifest["zoo"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in zoo]
    assert [z["layers"] for z in manifest["zoo"]] == [["features.2", "features.4"]] * 2
    assert manifest["fusion"] == "max" and manifest["threshold"] == 0.3 and manifest["target"] == "fake"
    assert manifest["released_halving"] is False


def test_cam_label_target_explains_each_crops_own_class(out, zoo):
    common = {"method": "cam", "zoo": tuple(map(str, zoo)), "threshold": 0.0, "batch_size": 8}
    maps_run(str(out), MapRun(MapSettings(**common, target="fake"), RayConfig(workers=0), quiet=True))
    maps_run(str(out), MapRun(MapSettings(**common, target="label", name="by-label"), RayConfig(workers=0), quiet=True))
    fake_target, by_label = _maps(out / "maps" / "cam", np.uint16), _maps(out / "maps" / "by-label", np.uint16)
    labels = {key: json.loads(members["json"])["label"] for key, members in _faces(out).items()}
    for key, label in labels.items():
        difference = np.abs(fake_target[key].astype(int) - by_label[key].astype(int)).max()
        assert (difference <= 1) if label == 1 else (difference > 2570), (key, label, difference)


def test_a_checkpoint_that_does_not_fit_its_architecture_fails_before_any_map(out, tmp_path):
    torch = pytest.importorskip("torch")
    from dfprep.torch.models import build_model

    wrong = tmp_path / "wrong.pt"
    torch.save({"model_name": "efficientnet_small", "state_dict": build_model("tiny_cnn").state_dict(),
                "config": {}}, wrong)
    with pytest.raises(DfprepError, match="wrong.pt: state_dict does not match its declared architecture"):
        maps_run(str(out), MapRun(MapSettings(method="cam", zoo=(str(wrong),)), RayConfig(workers=0), quiet=True))
    assert not (out / "maps").exists()


def test_cli_maps_cam_landmarks_and_one_line_errors(out, zoo):
    runner = CliRunner()
    result = runner.invoke(cli, ["maps", str(out), "--method", "cam", "--zoo", str(zoo[0]), str(zoo[1]),
                                 "--fusion", "mean", "--workers", "0", "--quiet", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "maps written: 24" in result.output and "maps/s" in result.output and "shards:" in result.output
    assert len(json.loads((out / "maps/cam/manifest.json").read_text())["zoo"]) == 2
    result = runner.invoke(cli, ["maps", str(out), "--weights", "eyes=1,eyebrows=0.5", "--blur-sigma", "0",
                                 "--name", "sharp", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "maps/sharp/manifest.json").read_text())["weights"] == {"eyes": 1.0, "eyebrows": 0.5}
    result = runner.invoke(cli, ["maps", str(out), "--method", "cam", "--zoo", str(zoo[0]), "--target", "label",
                                 "--released-halving", "--layer", "features.4", "--name", "halved", "--workers", "0",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "maps/halved/manifest.json").read_text())
    assert (manifest["target"], manifest["released_halving"], manifest["zoo"][0]["layers"]) == (
        "label", True, ["features.4"])
    assert max(m.max() for m in _maps(out / "maps" / "halved", np.uint16).values()) <= 32768  # halved: ≤ 0.5
    for arguments in (["--method", "cam"], [str(zoo[0])], ["--weights", "ears=1"], ["--name", "a/b"],
                      ["--method", "cam", "--zoo", str(zoo[0]), "--fusion", "max"], ["--released-halving"],
                      ["--layer", "features.4"], ["--method", "cam", "--zoo", str(zoo[0]), "--layer", "nope"]):
        result = runner.invoke(cli, ["maps", str(out), "--workers", "0", "--quiet", *arguments])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, (arguments, result.output)


def test_maps_on_a_pyarrow_filesystem(out):
    subtree = pafs.SubTreeFileSystem(str(out.parent), pafs.LocalFileSystem())
    report = maps_run(out.name, MapRun(MapSettings(), RayConfig(workers=0), quiet=True), filesystem=subtree)
    assert report.maps_written == 24 and (out / "maps/landmarks/manifest.json").exists()
    maps_run(f"file://{out}", MapRun(MapSettings(), RayConfig(workers=0), quiet=True))  # a URI resumes the same folder


def test_face_shards_stream_the_maps_joined_by_key(out):
    pytest.importorskip("torch")
    from dfprep.torch import FaceShards

    maps_run(str(out), MapRun(MapSettings(), RayConfig(workers=0), quiet=True))
    samples = list(FaceShards(str(out), maps="landmarks"))
    assert len(samples) == 24
    assert all(s["map"].shape == (256, 256) and 0 <= float(s["map"].min()) and float(s["map"].max()) <= 1
               for s in samples)


def test_ray_actors_write_what_in_process_writes(out, zoo, ray_session):
    maps_run(str(out), MapRun(MapSettings(name="local"), RayConfig(workers=0), quiet=True))
    report = maps_run(str(out), MapRun(MapSettings(name="ray"), RayConfig(workers=2), quiet=True))
    assert report.maps_written == 24
    local = {p.name: p.read_bytes() for p in (out / "maps/local").glob("*.tar")}
    assert local == {p.name: p.read_bytes() for p in (out / "maps/ray").glob("*.tar")}
    cam = {"method": "cam", "zoo": (str(zoo[0]),), "batch_size": 6}
    maps_run(str(out), MapRun(MapSettings(**cam, name="cam-local"), RayConfig(workers=0), quiet=True))
    maps_run(str(out), MapRun(MapSettings(**cam, name="cam-ray"), RayConfig(workers=2), quiet=True))
    in_process, distributed = _maps(out / "maps/cam-local", np.uint16), _maps(out / "maps/cam-ray", np.uint16)
    assert in_process.keys() == distributed.keys()
    assert all(np.abs(in_process[k].astype(int) - distributed[k].astype(int)).max() <= 1 for k in in_process)


def test_the_printed_maps_command_makes_the_maps_the_recipe_describes():
    import shlex

    from dfprep.cli.build import maps as maps_command
    from dfprep.jobs.maps import cam_next_steps, inline_settings

    config = load_config("prle", {"cam.released_halving": True, "cam.target": "label", "cam.threshold": 0.4,
                                  "cam.layers": ["features.4"], "cam.name": "cam2", "cam.fusion": "max"})
    lines = cam_next_steps("out/ffpp", config.cam)
    command = next(line.strip() for line in lines if line.strip().startswith("dfprep maps "))
    context = maps_command.make_context("maps", shlex.split(command)[2:])
    parsed, recipe = context.params, inline_settings("cam", config.cam)
    assert parsed["method"] == "cam" and parsed["zoo"] + parsed["more_zoo"] == (
        "runs/zoo-resnet18/model.pt", "runs/zoo-efficientnet_small/model.pt")
    for option in ("name", "layers", "target", "fusion", "threshold", "released_halving"):
        assert parsed[option] == getattr(recipe, option), option
    assert "  dfprep train out/ffpp -o runs/prle --region-erasing --maps cam2" in lines
    defaults = next(line for line in cam_next_steps("o", load_config("prle").cam) if "dfprep maps" in line)
    assert defaults.strip() == ("dfprep maps o --method cam --zoo runs/zoo-resnet18/model.pt "
                                "runs/zoo-efficientnet_small/model.pt")  # the recipe's settings are the defaults
