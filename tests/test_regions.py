"""Primary-region maps: the landmark prior lies over its landmarks, fusion/threshold as PRLE defines, Grad-CAM."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfprep.errors import RegionMapError
from dfprep.io.regionmaps import apply_threshold, decode_map_png, encode_map_png
from dfprep.torch.cam import fuse_maps, normalise_min_max
from dfprep.vision.regions import REGION_PARTS_68, landmark_prior_map, parse_weights

REPO = Path(__file__).resolve().parents[1]
SIZE = (128, 128)


def _ellipse(centre: tuple[float, float], radii: tuple[float, float], count: int, start: float = np.pi) -> np.ndarray:
    angles = start + np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([centre[0] + radii[0] * np.cos(angles), centre[1] + radii[1] * np.sin(angles)], axis=1)


def face_68() -> np.ndarray:
    """A hand-made iBUG layout in a 128-px crop: jaw, brows, nose, eyes at y=52, mouth at y=98."""
    points = np.zeros((68, 2), np.float32)
    jaw = np.linspace(-np.pi * 0.9, -np.pi * 0.1, 17)
    points[0:17] = np.stack([64 - 46 * np.cos(jaw), 40 - 80 * np.sin(jaw) * 0.95], axis=1)
    points[17:22] = np.stack([np.linspace(30, 55, 5), np.full(5, 36.0)], axis=1)
    points[22:27] = np.stack([np.linspace(73, 98, 5), np.full(5, 36.0)], axis=1)
    points[27:31] = np.stack([np.full(4, 64.0), np.linspace(50, 74, 4)], axis=1)
    points[31:36] = np.stack([np.linspace(54, 74, 5), np.full(5, 80.0)], axis=1)
    points[36:42] = _ellipse((42, 52), (9, 4), 6)
    points[42:48] = _ellipse((86, 52), (9, 4), 6)
    points[48:60] = _ellipse((64, 98), (18, 8), 12)
    points[60:68] = _ellipse((64, 98), (10, 3), 8)
    return points


def _centre(points: np.ndarray, indices) -> tuple[int, int]:
    """(row, col) of the mean of some landmarks."""
    x, y = points[list(indices)].mean(axis=0)
    return int(round(y)), int(round(x))


def _distance_to_parts(points: np.ndarray, regions: list[str]) -> np.ndarray:
    """Per pixel, the distance to the nearest filled hull of the named regions (drawn independently here)."""
    inside = np.zeros(SIZE, np.uint8)
    for region in regions:
        for part in REGION_PARTS_68[region]:
            cv2.fillConvexPoly(inside, cv2.convexHull(np.round(points[list(part)]).astype(np.int32)), 1)
    return cv2.distanceTransform((1 - inside).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_landmark_map_lies_over_its_landmarks_and_is_zero_far_from_them(sigma):
    points = face_68()
    region_map = landmark_prior_map(points, SIZE, blur_sigma=sigma)
    assert region_map.dtype == np.float32 and region_map.shape == SIZE
    assert 0.0 <= region_map.min() and region_map.max() <= 1.0
    for indices in (range(36, 42), range(42, 48), (29, 30, 31, 33, 35), range(48, 68)):
        assert region_map[_centre(points, indices)] > 0.5  # over each weighted part
    distance = _distance_to_parts(points, ["eyes", "nose", "mouth"])
    assert distance[region_map > 0].max() <= 4 * sigma * 2 ** 0.5 + 2  # the (square) blur kernel's reach
    for far in (_centre(points, range(17, 22)), _centre(points, (0, 1)), _centre(points, (8,)), (0, 0), (127, 5)):
        assert region_map[far] == 0.0  # brows (unweighted), jaw, chin, crop corners


@pytest.mark.parametrize("sigma", [0.0, 3.0])
def test_each_region_peaks_at_its_weight_even_after_smoothing(sigma):
    points = face_68()
    weights = {"eyes": 1.0, "mouth": 0.9, "nose": 0.7, "eyebrows": 0.5}
    region_map = landmark_prior_map(points, SIZE, weights, blur_sigma=sigma)
    for region, weight in weights.items():
        inside = _distance_to_parts(points, [region]) == 0
        assert region_map[inside].max() == pytest.approx(weight, abs=1e-6)
    assert region_map[_centre(points, range(17, 22))] > 0  # eyebrows are on once weighted


def test_a_zero_weight_turns_a_region_off_and_the_map_follows_the_landmarks():
    points = face_68()
    no_mouth = landmark_prior_map(points, SIZE, {"eyes": 1.0, "mouth": 0.0}, blur_sigma=0)
    assert no_mouth[_centre(points, range(48, 68))] == 0 and no_mouth[_centre(points, range(36, 42))] == 1.0
    base = landmark_prior_map(points, SIZE, blur_sigma=2.0)
    shifted = landmark_prior_map(points + np.array([7, -5], np.float32), SIZE, blur_sigma=2.0)
    assert np.allclose(np.roll(base, (-5, 7), axis=(0, 1))[20:-20, 20:-20], shifted[20:-20, 20:-20], atol=1e-6)


def test_81_point_landmarks_use_their_first_68_and_bad_inputs_are_refused():
    points = face_68()
    with_forehead = np.concatenate([points, np.tile([[64.0, 5.0]], (13, 1))]).astype(np.float32)
    assert np.array_equal(landmark_prior_map(with_forehead, SIZE), landmark_prior_map(points, SIZE))
    with pytest.raises(RegionMapError, match="68"):
        landmark_prior_map(points[:5], SIZE)
    with pytest.raises(RegionMapError, match="unknown region"):
        landmark_prior_map(points, SIZE, {"ears": 1.0})
    with pytest.raises(RegionMapError, match=r"\[0, 1\]"):
        parse_weights("eyes=1.5")
    with pytest.raises(RegionMapError, match="REGION=WEIGHT"):
        parse_weights("eyes")
    assert parse_weights("eyes=1, mouth=0.25") == {"eyes": 1.0, "mouth": 0.25}


def test_landmarks_outside_the_crop_or_not_finite_do_not_break_the_map():
    points = face_68()
    assert landmark_prior_map(points + 400, SIZE).max() == 0.0
    damaged = points.copy()
    damaged[36] = np.nan
    assert landmark_prior_map(damaged, SIZE)[_centre(points, range(42, 48))] > 0.5


def test_fusion_mean_and_max_on_hand_made_maps():
    first = np.array([[0.0, 0.2], [1.0, 0.6]], np.float32)
    second = np.array([[0.4, 0.2], [0.0, 0.9]], np.float32)
    assert np.allclose(fuse_maps([first, second], "mean"), [[0.2, 0.2], [0.5, 0.75]])
    assert np.allclose(fuse_maps([first, second], "max"), [[0.4, 0.2], [1.0, 0.9]])
    assert np.array_equal(fuse_maps([first], "mean"), first)
    with pytest.raises(RegionMapError, match="fusion"):
        fuse_maps([first], "median")


def test_threshold_zeroes_values_at_or_below_it_and_keeps_the_rest():
    values = np.array([[0.0, 0.1, 0.3, 0.30001], [0.5, 0.29999, 1.0, 0.31]], np.float32)
    kept = apply_threshold(values, 0.3)
    assert np.array_equal(kept, np.where(values > np.float32(0.3), values, 0))
    assert kept[0, 2] == 0 and kept[1, 1] == 0 and kept[0, 3] == values[0, 3] and kept[1, 2] == 1.0


def test_min_max_normalisation_is_per_image_after_relu():
    cams = np.stack([np.array([[-1.0, 0.0], [2.0, 4.0]]), np.full((2, 2), 3.0), np.array([[-2.0, -1.0], [-3, -4]])])
    normalised = normalise_min_max(cams)
    assert np.allclose(normalised[0], [[0.0, 0.0], [0.5, 1.0]])
    assert np.array_equal(normalised[1], np.zeros((2, 2))) and np.array_equal(normalised[2], np.zeros((2, 2)))


def test_map_png_is_8bit_grayscale_and_round_trips():
    region_map = landmark_prior_map(face_68(), SIZE)
    payload = encode_map_png(region_map)
    levels = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    assert levels.dtype == np.uint8 and levels.shape == SIZE and levels.max() == 255
    assert np.array_equal(levels, np.rint(region_map * 255).astype(np.uint8))
    assert np.abs(decode_map_png(payload) - region_map).max() <= 0.5 / 255 + 1e-6
    deep = encode_map_png(region_map, 16)  # CAM maps: 16 bits, so erasing's ranking keeps its order
    levels = cv2.imdecode(np.frombuffer(deep, np.uint8), cv2.IMREAD_UNCHANGED)
    assert levels.dtype == np.uint16 and levels.max() == 65535
    assert np.abs(decode_map_png(deep) - region_map).max() <= 0.5 / 65535 + 1e-6
    with pytest.raises(RegionMapError, match="8 or 16 bits"):
        encode_map_png(region_map, 12)
    with pytest.raises(RegionMapError, match="cannot decode"):
        decode_map_png(b"not a png")


def test_regions_and_maps_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import dfprep.vision.regions, dfprep.jobs.maps, numpy as np\n"
            "print(dfprep.vision.regions.landmark_prior_map(np.full((68, 2), 10.0) + np.arange(68)[:, None] % 7, "
            "(32, 32)).max())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) > 0


# ---------------------------------------------------------------- Grad-CAM


@pytest.fixture()
def torch_one_thread():
    """torch, single-threaded for the test (small models run faster without thread contention)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def _checkpoint(torch, model_name: str, state_dict=None, seed: int = 0, **extra) -> "ZooCheckpoint":
    from dfprep.io.regionmaps import ZooCheckpoint
    from dfprep.torch.models import build_model

    torch.manual_seed(seed)
    state = build_model(model_name).state_dict() if state_dict is None else state_dict
    buffer = io.BytesIO()
    torch.save({"model_name": model_name, "state_dict": state, "config": {}, **extra}, buffer)
    return ZooCheckpoint(f"{model_name}-{seed}.pt", "0" * 64, buffer.getvalue())


def test_grad_cam_matches_its_definition(torch_one_thread):
    torch = torch_one_thread
    from dfprep.torch.cam import grad_cam
    from dfprep.torch.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_cnn").eval().requires_grad_(False)
    images = torch.rand(3, 3, 40, 48)
    signs = torch.tensor([1.0, -1.0, 1.0])
    activation = model.features(images.clone()).detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad((model.head(activation) * signs).sum(), activation)
    expected = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1))
    (got,) = grad_cam(model, ["features"], images, signs)
    assert got.shape == (3, 5, 6) and torch.allclose(got, expected.detach(), atol=1e-6)
    assert not any(p.grad is not None for p in model.parameters())  # explaining never touches the weights
    predicted = torch.where(model(images) >= 0, 1.0, -1.0)
    (by_prediction,) = grad_cam(model, ["features"], images)  # no signs: each crop's predicted class
    assert torch.allclose(by_prediction, grad_cam(model, ["features"], images, predicted)[0], atol=1e-6)
    # several layers in one pass: each equals the single-layer CAM of that layer
    both = grad_cam(model, ["features.2", "features.4"], images, signs)
    assert [tuple(c.shape) for c in both] == [(3, 10, 12), (3, 5, 6)]
    for layer, cam in zip(["features.2", "features.4"], both):
        assert torch.allclose(cam, grad_cam(model, [layer], images, signs)[0], atol=1e-6)


def test_cam_of_a_trained_tiny_cnn_points_at_the_fake_artefact(torch_one_thread):
    torch = torch_one_thread
    from dfprep.config import CamRecipe
    from dfprep.io.regionmaps import ZooCheckpoint
    from dfprep.torch.cam import CamZoo
    from dfprep.torch.models import build_model

    rng = np.random.default_rng(0)

    def crops(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = rng.integers(70, 180, (count, 64, 64, 3)).astype(np.uint8)
        labels, corners = rng.integers(0, 2, count), rng.integers(4, 44, (count, 2))
        for image, label, (row, col) in zip(images, labels, corners):
            image[row:row + 16, col:col + 16] = 255 if label else image[row:row + 16, col:col + 16]
        return images, labels, corners

    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        images, labels, _ = crops(32)
        pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(pixels), torch.from_numpy(labels).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model_name": "tiny_cnn", "state_dict": model.state_dict(), "config": {}}, buffer)
    zoo = CamZoo([ZooCheckpoint("trained.pt", "0" * 64, buffer.getvalue())], CamRecipe(target="fake"), device="cpu")
    images, labels, corners = crops(24)
    maps = zoo.maps(images)
    assert maps.shape == (24, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and not ((maps > 0) & (maps <= 0.3)).any()
    fakes = np.flatnonzero(labels == 1)
    peaks = [np.unravel_index(maps[i].argmax(), (64, 64)) for i in fakes]
    inside = [c[0] - 6 <= r <= c[0] + 22 and c[1] - 6 <= q <= c[1] + 22 for (r, q), c in zip(peaks, corners[fakes])]
    assert np.mean(inside) >= 0.8, f"CAM peaks on the white patch for {np.mean(inside):.0%} of fakes"


def test_cam_zoo_with_random_weights_gives_fused_maps_in_unit_range(torch_one_thread):
    torch = torch_one_thread
    from dfprep.config import CamRecipe
    from dfprep.torch.cam import CamZoo

    zoo_members = [_checkpoint(torch, "tiny_cnn", seed=0), _checkpoint(torch, "tiny_cnn", seed=1)]
    crops = np.random.default_rng(1).integers(0, 256, (5, 48, 40, 3)).astype(np.uint8)

    def maps(members, labels=None, **recipe):
        return CamZoo(members, CamRecipe(**{"threshold": 0.0, "target": "fake", **recipe}), "cpu").maps(crops, labels)

    raw = {f: maps(zoo_members, fusion=f) for f in ("mean", "max")}
    assert raw["mean"].shape == (5, 48, 40)
    assert all(m.min() >= 0 and m.max() <= 1 for m in raw.values())
    assert (raw["max"] >= raw["mean"] - 1e-6).all() and (raw["max"] > raw["mean"] + 1e-3).any()
    each = [maps([member]) for member in zoo_members]
    assert all(np.isclose(m.reshape(5, -1).max(axis=1), 1.0).all() for m in each)  # min–max per image
    assert np.allclose(raw["mean"], (each[0] + each[1]) / 2, atol=1e-5)
    thresholded = maps(zoo_members, threshold=0.3)
    assert np.array_equal(thresholded, np.where(raw["mean"] > 0.3, raw["mean"], 0))
    halved = maps(zoo_members, released_halving=True)
    assert np.allclose(halved, raw["mean"] / 2, atol=1e-6) and halved.max() <= 0.5 + 1e-6
    assert np.array_equal(maps(zoo_members, threshold=0.3, released_halving=True),
                          np.where(raw["mean"] / 2 > 0.3, halved, 0))  # halved maps: 0.3 acts as 0.6
    explain_real = maps(zoo_members, np.zeros(5), target="label")
    assert not np.allclose(explain_real, raw["mean"])  # the label target explains the other class
    assert np.allclose(maps(zoo_members, np.ones(5), target="label"), raw["mean"], atol=1e-6)
    with pytest.raises(RegionMapError, match="needs one 0/1 label per crop"):
        maps(zoo_members, target="label")


def test_default_cam_layers_and_an_unknown_layer(torch_one_thread):
    torch = torch_one_thread
    from dfprep.torch.cam import DEFAULT_CAM_LAYERS, load_detector, resolve_cam_layers
    from dfprep.torch.models import MODELS, build_model

    for name in MODELS:  # every registered architecture has PRLE-style layers that exist and give 4-D maps
        model = build_model(name).eval()
        modules = dict(model.named_modules())
        assert DEFAULT_CAM_LAYERS[name] and all(layer in modules for layer in DEFAULT_CAM_LAYERS[name]), name
        shapes = []
        hooks = [modules[layer].register_forward_hook(lambda m, i, o: shapes.append(o.dim()))
                 for layer in DEFAULT_CAM_LAYERS[name]]
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
        [hook.remove() for hook in hooks]
        assert shapes == [4] * len(DEFAULT_CAM_LAYERS[name]), name
    assert load_detector(_checkpoint(torch, "tiny_cnn"))[2] == ("features.2", "features.4")
    assert load_detector(_checkpoint(torch, "resnet18"))[2] == ("stages.5", "stages.7")
    assert load_detector(_checkpoint(torch, "tiny_cnn"), ["features.3"])[2] == ("features.3",)
    custom = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    assert resolve_cam_layers(custom, "mine:factory", (), "custom.pt") == ("2",)
    with pytest.raises(RegionMapError, match="no module named 'stage9'"):
        load_detector(_checkpoint(torch, "tiny_cnn"), ["features.2", "stage9"])
    with pytest.raises(RegionMapError, match="named twice"):
        load_detector(_checkpoint(torch, "tiny_cnn"), ["features.2", "features.2"])


def test_a_checkpoint_that_does_not_fit_its_architecture_is_a_one_line_error(torch_one_thread):
    torch = torch_one_thread
    from dfprep.io.regionmaps import ZooCheckpoint
    from dfprep.torch.cam import load_detector
    from dfprep.torch.models import build_model

    wrong = _checkpoint(torch, "resnet18", state_dict=build_model("tiny_cnn").state_dict())
    with pytest.raises(RegionMapError) as error:
        load_detector(wrong)
    message = str(error.value)
    assert "does not match its declared architecture 'resnet18'" in message and "\n" not in message
    assert "missing" in message and "unexpected" in message
    narrow = _checkpoint(torch, "tiny_cnn", state_dict=build_model("tiny_cnn", width=8).state_dict())
    with pytest.raises(RegionMapError, match=r"wrong shape \d+ \(e\.g\. features"):
        load_detector(narrow)
    with pytest.raises(RegionMapError, match="not a dfprep checkpoint"):
        load_detector(ZooCheckpoint("weights.pt", "0" * 64, _saved(torch, build_model("tiny_cnn").state_dict())))
    with pytest.raises(RegionMapError, match="not a loadable checkpoint"):
        load_detector(ZooCheckpoint("evil.pt", "0" * 64, pickle.dumps({"model_name": Path("x")}, protocol=2)))


def _saved(torch, payload) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()
