"""CADDM's training side: FaceShards pairs, the multi-scale facial swap and the jittered crop (hermetic)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfprep.vision.align import template_points  # noqa: E402
from dfprep.torch import FaceShards  # noqa: E402
from dfprep.torch.shardlist import ShardListError  # noqa: E402
from dfprep.torch.transforms import (CaddmRandomCrop, MultiScaleFacialSwap, RandomDownscale,  # noqa: E402
                                     caddm_augmentation, caddm_template, face_hull_mask, partial_swap_box,
                                     to_uint8_hwc)


def stream(out, **options) -> list[dict]:
    """Every sample FaceShards yields, warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(FaceShards(str(out), **options))


@pytest.fixture(scope="module")
def pair_samples(pairs_out) -> list[dict]:
    """The pair output streamed with its context crops (what caddm_augmentation eats)."""
    return stream(pairs_out[1], pairs=True, context=True)


def a_fake(samples: list[dict], method: str = "Deepfakes") -> dict:
    """The first fake of one method."""
    return next(s for s in samples if s["method"] == method)


def test_caddm_template_is_the_extraction_presets_template():
    for size, scale in ((224, 0.9), (224, 0.7), (300, 1.1)):
        assert np.allclose(caddm_template(size, scale), template_points("caddm", size, scale), atol=1e-9)


def test_pairs_yield_each_fake_with_its_registered_original_and_reals_with_themselves(pairs_out):
    data = FaceShards(str(pairs_out[1]), pairs=True)
    assert data.unpaired_fakes == 4  # Face2Face/003_004: its original is absent (from the indexes)
    with pytest.warns(UserWarning, match="skips fakes without a registered original .4 such fakes"):
        samples = list(data)
    assert {s["method"] for s in samples} == {"youtube", "Deepfakes", "FaceSwap"} and len(samples) == 12
    assert data.skipped_unpaired == 4
    balanced = FaceShards(str(pairs_out[1]), pairs=True, balance=True)  # 4 reals, 8 paired fakes (not 12)
    assert balanced.label_counts == {0: 4, 1: 8} and balanced.estimated_length() == 16
    for sample in samples:
        assert sample["original"].shape == sample["image"].shape == (3, 224, 224)
        if sample["label"] == 0:
            assert torch.equal(sample["original"], sample["image"])  # CADDM: a real is its own source
        else:
            assert not torch.equal(sample["original"], sample["image"])


def test_context_pairs_hold_the_face_crop_in_their_middle_with_landmarks_moved(pairs_out, pair_samples):
    faces = {s["key"]: s for s in stream(pairs_out[1], pairs=True)}
    for sample in pair_samples:
        face = faces[sample["key"]]
        assert sample["image"].shape == sample["original"].shape == (3, 448, 448)
        assert sample["face_box"].tolist() == [112.0, 112.0, 336.0, 336.0]
        assert torch.allclose(sample["landmarks"], face["landmarks"] + 112, atol=1e-3)
        middle = sample["image"][:, 112:336, 112:336]
        assert (middle - face["image"]).abs().max() <= 1 / 255 + 1e-4
        assert (sample["original"][:, 112:336, 112:336] - face["original"]).abs().max() <= 1 / 255 + 1e-4


def test_pairs_need_shards_with_registered_originals(shared_out):
    with pytest.raises(ShardListError, match="registered_original"):
        FaceShards(str(shared_out), pairs=True)


def test_alpha_partial_swap_takes_the_box_from_the_fake_and_leaves_the_rest_original(pair_samples):
    sample = a_fake(pair_samples)
    swap = MultiScaleFacialSwap(p_global=0.0, p_poisson=0.0)
    for seed in range(4):
        mixed = swap(sample, torch.Generator().manual_seed(seed))
        assert mixed["swap"] == "partial" and mixed["blending"] == "alpha"
        x0, y0, x1, y1 = (int(v) for v in mixed["swap_box"])
        assert x1 - x0 > 8 and y1 - y0 > 8
        out, fake, original = (to_uint8_hwc(t).astype(int) for t in (mixed["image"], sample["image"],
                                                                       sample["original"]))
        assert np.abs(out[y0 + 3:y1 - 3, x0 + 3:x1 - 3] - fake[y0 + 3:y1 - 3, x0 + 3:x1 - 3]).max() <= 1
        outside = np.ones(out.shape[:2], bool)
        outside[max(y0 - 3, 0):y1 + 3, max(x0 - 3, 0):x1 + 3] = False
        assert np.array_equal(out[outside], original[outside])
        hull = face_hull_mask(sample["landmarks"].numpy(), out.shape[:2])
        assert hull[(y0 + y1) // 2, (x0 + x1) // 2] or hull[y0:y1, x0:x1].any()  # the window is on the face


def test_alpha_global_swap_moves_the_whole_face_hull_one_way_or_the_other(pair_samples):
    sample = a_fake(pair_samples)
    fake, original = (to_uint8_hwc(sample[k]).astype(int) for k in ("image", "original"))
    hull = face_hull_mask(sample["landmarks"].numpy(), fake.shape[:2])
    inside = cv2.erode(hull, np.ones((7, 7), np.uint8)) > 0
    outside = cv2.dilate(hull, np.ones((7, 7), np.uint8)) == 0
    swap = MultiScaleFacialSwap(p_global=1.0, p_poisson=0.0, elastic_p=0.0)
    seen = set()
    for seed in range(12):
        mixed = swap(sample, torch.Generator().manual_seed(seed))
        out = to_uint8_hwc(mixed["image"]).astype(int)
        assert mixed["swap_box"].tolist() == [0.0, 0.0, 448.0, 448.0]
        if mixed["swap"] == "none":
            assert np.array_equal(out, fake)
            seen.add("none")
            continue
        face_from_original = np.abs(out[inside] - original[inside]).max() <= 1
        background = fake if face_from_original else original
        assert np.abs(out[inside] - (original if face_from_original else fake)[inside]).max() <= 1
        assert np.array_equal(out[outside], background[outside])
        seen.add("original face on fake" if face_from_original else "fake face on original")
    assert seen == {"none", "original face on fake", "fake face on original"}


def test_elastic_and_poisson_global_swaps_stay_on_the_face(pair_samples):
    sample = a_fake(pair_samples)
    fake, original = (to_uint8_hwc(sample[k]).astype(int) for k in ("image", "original"))
    hull = face_hull_mask(sample["landmarks"].numpy(), fake.shape[:2])
    far_outside = cv2.dilate(hull, np.ones((31, 31), np.uint8)) == 0
    deep_inside = cv2.erode(hull, np.ones((31, 31), np.uint8)) > 0
    kinds = set()
    for p_poisson in (0.0, 1.0):
        swap = MultiScaleFacialSwap(p_global=1.0, p_poisson=p_poisson, elastic_p=1.0)
        for seed in range(6):
            mixed = swap(sample, torch.Generator().manual_seed(seed))
            if mixed["swap"] == "none":
                continue
            out = to_uint8_hwc(mixed["image"]).astype(int)
            background = fake if np.abs(out[far_outside] - fake[far_outside]).max() <= 2 else original
            rounding = 2 if mixed["blending"] == "poisson" else 0  # seamlessClone rewrites its whole box, ±2 levels
            assert np.abs(out[far_outside] - background[far_outside]).max() <= rounding
            changed = np.abs(out[deep_inside] - background[deep_inside]).mean()
            assert changed > 2, (mixed["blending"], changed)  # the face really came from the other image
            kinds.add(mixed["blending"])
    assert kinds == {"alpha", "poisson"}


def test_poisson_swap_keeps_the_outside_and_the_fakes_gradients_inside(pair_samples):
    sample = a_fake(pair_samples)
    mixed = MultiScaleFacialSwap(p_global=0.0, p_poisson=1.0)(sample, torch.Generator().manual_seed(1))
    assert mixed["swap"] == "partial" and mixed["blending"] == "poisson"
    x0, y0, x1, y1 = (int(v) for v in mixed["swap_box"])
    out, fake, original = (to_uint8_hwc(t).astype(float) for t in (mixed["image"], sample["image"],
                                                                     sample["original"]))
    outside = np.ones(out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], original[outside])
    inner = (slice(y0 + 3, y1 - 3), slice(x0 + 3, x1 - 3))
    laplacian = lambda image: np.abs(cv2.Laplacian(image, cv2.CV_64F)[inner]).mean()  # noqa: E731
    assert laplacian(out - fake) < 0.25 * laplacian(original - fake)  # the fake's detail, the original's tone


def test_partial_swap_box_finds_where_fake_and_original_differ(pair_samples):
    sample = a_fake(pair_samples)
    original = to_uint8_hwc(sample["original"])
    landmarks = sample["landmarks"].numpy()
    fake = original.copy()
    nose = landmarks[30].astype(int)
    fake[nose[1] - 12:nose[1] + 12, nose[0] - 12:nose[0] + 12] = (255, 0, 255)  # the only difference
    x0, y0, x1, y1 = partial_swap_box(fake, original, landmarks, (80, 120))
    assert x0 <= nose[0] <= x1 and y0 <= nose[1] <= y1
    assert partial_swap_box(original, original, landmarks, (80, 120)) is None


def test_the_swap_is_seeded_and_reals_pass_through(pair_samples):
    sample = a_fake(pair_samples)
    swap = MultiScaleFacialSwap()
    first = swap(sample, torch.Generator().manual_seed(7))
    again = swap(sample, torch.Generator().manual_seed(7))
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["swap_box"], again["swap_box"])
    outcomes = {tuple(swap(sample, torch.Generator().manual_seed(s))["swap_box"].tolist()) for s in range(10)}
    assert len(outcomes) > 1
    real = next(s for s in pair_samples if s["label"] == 0)
    passed = swap(real, torch.Generator().manual_seed(0))
    assert torch.equal(passed["image"], real["image"]) and passed["swap"] == "real"
    assert passed["swap_box"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_the_plain_crop_of_a_context_crop_is_the_stored_face_crop(pairs_out, pair_samples):
    faces = {s["key"]: s for s in stream(pairs_out[1], pairs=True)}
    crop = CaddmRandomCrop(train=False)
    for sample in pair_samples:
        cropped = crop(sample)
        face = faces[sample["key"]]
        assert cropped["image"].shape == (3, 224, 224)
        assert (cropped["landmarks"] - face["landmarks"]).abs().max() < 0.01
        assert (cropped["image"] - face["image"]).abs().max() <= 1 / 255 + 1e-4  # one grey level
        without_frame = {k: v for k, v in sample.items() if k not in ("frame_landmarks", "frame_matrix")}
        moved = crop(without_frame)["landmarks"] - face["landmarks"]  # untruncated eye centres: CADDM's quirk
        assert 0.01 < moved.abs().max() < 2.0


def test_the_random_crop_moves_image_landmarks_and_box_together():
    image = torch.zeros(3, 300, 300)
    landmarks = torch.from_numpy(_face_landmarks(300))
    x, y = (int(v) for v in landmarks[30])
    image[:, y - 1:y + 2, x - 1:x + 2] = 1.0  # a white dot on the nose tip
    box = torch.tensor([100.0, 180.0, 160.0, 220.0])
    image[1, 180:220, 100:160] = 0.5  # the swapped box, painted green
    sample = {"image": image, "original": image.clone(), "landmarks": landmarks, "swap_box": box, "label": 1}
    crop = CaddmRandomCrop()
    for seed in range(6):
        out = crop(sample, torch.Generator().manual_seed(seed))
        nose = out["landmarks"][30].numpy()
        red = out["image"][0].numpy()  # only the dot is red
        rows, cols = np.nonzero(red > 0.05)
        weights = red[rows, cols]
        centroid = np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()
        assert np.abs(centroid - nose).max() < 0.5, (centroid, nose)
        x0, y0, x1, y1 = (float(v) for v in out["swap_box"])
        assert float(out["image"][1, int((y0 + y1) / 2), int((x0 + x1) / 2)]) == pytest.approx(0.5, abs=0.05)
        assert torch.equal(out["image"], out["original"])


def _face_landmarks(size: int) -> np.ndarray:
    """A frontal 68-point layout filling the middle of a size×size image."""
    from tests.helpers.torch_synthetic import template_landmarks_68

    return np.round(template_landmarks_68(size // 2) + size // 4).astype(np.float32)  # whole pixels, as dlib's


def test_random_crop_follows_caddms_distributions():
    crop = CaddmRandomCrop()
    generator = torch.Generator().manual_seed(0)
    draws = [crop.jitter(generator) for _ in range(2000)]
    scales = np.array([d["scale"] for d in draws])
    assert abs(scales.mean() - 0.9) < 0.01 and abs(scales.std() - 0.1) < 0.01
    shifts = np.array([d["shift"] for d in draws])
    assert np.abs(shifts).max() <= 25 and abs(np.abs(shifts).mean() - 12.5) < 1
    rotations = np.array([d["rotation"] for d in draws])
    assert np.abs(rotations).max() <= 30 and abs(np.mean(np.abs(rotations) < 3.75) - 0.5) < 0.05  # 30·u³
    stretched = np.mean([d["stretch_eyes"] != 1.0 for d in draws])
    assert abs(stretched - 0.2) < 0.03


def test_downscale_halves_the_pair_and_its_landmarks(pair_samples):
    sample = a_fake(pair_samples)
    small = RandomDownscale(p=1.0)(sample, torch.Generator().manual_seed(0))
    assert small["image"].shape == small["original"].shape == (3, 224, 224)
    assert torch.allclose(small["landmarks"], sample["landmarks"] / 2)
    assert RandomDownscale(p=0.0)(sample, torch.Generator())["image"] is sample["image"]


def test_caddm_augmentation_batches_through_a_dataloader(pairs_out):
    data = FaceShards(str(pairs_out[1]), pairs=True, context=True, transform=caddm_augmentation(seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(torch.utils.data.DataLoader(data, batch_size=6))
    images = torch.cat([b["image"] for b in batches])
    boxes = torch.cat([b["swap_box"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    assert images.shape == (12, 3, 224, 224) and boxes.shape == (12, 4)
    assert (boxes[labels == 0] == 0).all() and (boxes[labels == 1, 2:] > 0).all()
    assert ((boxes >= 0) & (boxes <= 224)).all()
