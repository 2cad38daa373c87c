"""Transforms: erasing touches exactly the expected pixels; flips move landmarks and maps along; all seeded."""

from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.helpers.torch_synthetic import template_landmarks_68  # noqa: E402
from dfprep.torch.transforms import (ColorJitter, Compose, GaussianBlur, JpegRecompression,  # noqa: E402
                                     LandmarkRegionErasing, Normalize, PrimaryRegionErasing, RandomHorizontalFlip,
                                     hull_mask, mirror_order_68)


def gradient_image(height: int = 4, width: int = 6) -> torch.Tensor:
    """Distinct, non-zero pixel values so any change is visible."""
    values = torch.arange(3 * height * width, dtype=torch.float32).reshape(3, height, width)
    return 0.1 + 0.8 * values / values.max()


def changed(before: torch.Tensor, after: torch.Tensor) -> set[tuple[int, int]]:
    """(row, col) pixels where any channel differs."""
    return {tuple(p) for p in torch.nonzero((before != after).any(0)).tolist()}


def erase(image, region_map, **options):
    transform = PrimaryRegionErasing(p=1.0, **{"fill": "zero", "ratio": (1.0, 1.0), **options})
    return transform({"image": image, "map": region_map})["image"]


def test_erasing_follows_map_rows_and_columns_on_an_asymmetric_map():
    image = gradient_image(4, 6)
    region_map = torch.zeros(4, 6)
    region_map[0, 4] = 0.9  # row 0, column 4: top right
    region_map[3, 1] = 0.8  # bottom left
    region_map[1, 5] = 0.7
    out = erase(image, region_map)
    assert changed(image, out) == {(0, 4), (3, 1), (1, 5)}
    assert torch.all(out[:, 0, 4] == 0) and torch.all(out[:, 3, 1] == 0)
    square = torch.zeros(5, 5)
    square[0, 3] = 1.0  # its transpose (3, 0) must stay untouched
    assert changed(gradient_image(5, 5), erase(gradient_image(5, 5), square)) == {(0, 3)}


def test_only_pixels_strictly_above_the_threshold_are_candidates():
    region_map = torch.tensor([[0.3, 0.31, 0.9], [0.29, 0.0, 0.5]])
    out = erase(gradient_image(2, 3), region_map, threshold=0.3)
    assert changed(gradient_image(2, 3), out) == {(0, 1), (0, 2), (1, 2)}


def test_the_top_alpha_fraction_by_value_is_erased():
    region_map = torch.tensor([[0.4, 0.9, 0.5], [0.8, 0.6, 0.7]])  # six candidates
    image = gradient_image(2, 3)
    assert changed(image, erase(image, region_map, ratio=(0.5, 0.5))) == {(0, 1), (1, 0), (1, 2)}  # 0.9 0.8 0.7
    region_map[0, 0] = 0.0  # five candidates: floor(0.5 * 5) = 2
    assert changed(image, erase(image, region_map, ratio=(0.5, 0.5))) == {(0, 1), (1, 0)}
    assert changed(image, erase(image, region_map, ratio=(0.1, 0.1))) == set()  # floor(0.5) = 0


def test_ties_are_broken_in_row_major_order():
    region_map = torch.full((2, 2), 0.6)
    image = gradient_image(2, 2)
    assert changed(image, erase(image, region_map, ratio=(0.5, 0.5))) == {(0, 0), (0, 1)}


def test_fills_zero_mean_and_seeded_noise():
    image = gradient_image(4, 6)
    region_map = torch.zeros(4, 6)
    region_map[2, :3] = 1.0
    means = image.mean(dim=(1, 2))
    mean_out = erase(image, region_map, fill="mean")
    assert torch.allclose(mean_out[:, 2, :3], means[:, None].expand(3, 3))
    noise = erase(image, region_map, fill="noise", seed=5)
    assert changed(image, noise) == {(2, 0), (2, 1), (2, 2)}
    assert float(noise.min()) >= 0 and float(noise.max()) <= 1
    assert torch.equal(noise, erase(image, region_map, fill="noise", seed=5))
    assert not torch.equal(noise, erase(image, region_map, fill="noise", seed=6))
    assert torch.equal(image, gradient_image(4, 6))  # the input tensor is never modified


def test_probability_and_alpha_are_drawn_from_the_seed():
    region_map = torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    transform = PrimaryRegionErasing(p=0.5, ratio=(0.5, 1.0), fill="zero", seed=11)
    counts = [len(changed(gradient_image(8, 8), transform({"image": gradient_image(8, 8), "map": region_map})["image"]))
              for _ in range(200)]
    erased = [c for c in counts if c]
    assert 70 < len(erased) < 130  # p = 0.5
    candidates = int((region_map > 0.3).sum())
    assert all(candidates // 2 <= c <= candidates for c in erased)  # alpha in [0.5, 1]
    again = PrimaryRegionErasing(p=0.5, ratio=(0.5, 1.0), fill="zero", seed=11)
    assert [len(changed(gradient_image(8, 8), again({"image": gradient_image(8, 8), "map": region_map})["image"]))
            for _ in range(200)] == counts
    untouched = PrimaryRegionErasing(p=0.0)({"image": gradient_image(8, 8), "map": region_map})
    assert torch.equal(untouched["image"], gradient_image(8, 8))


def test_a_map_of_another_size_is_resized_to_the_image():
    region_map = torch.zeros(4, 4)
    region_map[:2, 2:] = 1.0  # top-right quadrant
    pixels = changed(gradient_image(8, 8), erase(gradient_image(8, 8), region_map))
    assert pixels and all(row < 4 and col >= 4 for row, col in pixels)


def test_erasing_without_a_map_says_how_to_get_one():
    with pytest.raises(KeyError, match="maps="):
        PrimaryRegionErasing(p=1.0)({"image": gradient_image()})


def test_landmark_erasing_fills_exactly_the_chosen_part_hull():
    size = 64
    landmarks = torch.from_numpy(template_landmarks_68(size))
    image = gradient_image(size, size)
    mouth = LandmarkRegionErasing(p=1.0, regions=("mouth",), fill="zero")
    out = mouth({"image": image, "landmarks": landmarks})["image"]
    expected = hull_mask(landmarks.numpy()[48:68], (size, size))
    assert changed(image, out) == {tuple(p) for p in torch.nonzero(expected).tolist()}
    assert all(row > size // 2 for row, _ in changed(image, out))  # the mouth is in the lower half
    eyes = LandmarkRegionErasing(p=1.0, regions=("eyes",), fill="zero")
    eyes = eyes({"image": image, "landmarks": landmarks})["image"]
    columns = {col for _, col in changed(image, eyes)}
    assert min(columns) < size // 2 < max(columns) and size // 2 not in columns  # two separate eye hulls


def test_landmark_erasing_picks_every_region_over_draws():
    size = 64
    landmarks = torch.from_numpy(template_landmarks_68(size))
    transform = LandmarkRegionErasing(p=1.0, fill="zero", seed=2)
    areas = {len(changed(gradient_image(size, size), transform({"image": gradient_image(size, size),
                                                                "landmarks": landmarks})["image"]))
             for _ in range(30)}
    assert len(areas) == 3


def test_flip_mirrors_image_map_and_landmarks_consistently():
    image = gradient_image(4, 6)
    region_map = torch.zeros(4, 6)
    region_map[1, 0] = 1.0
    landmarks = torch.from_numpy(template_landmarks_68(6))
    sample = {"image": image, "map": region_map, "landmarks": landmarks}
    flipped = RandomHorizontalFlip(p=1.0)(sample)
    assert torch.equal(flipped["image"], image.flip(-1))
    assert float(flipped["map"][1, 5]) == 1.0
    assert torch.allclose(flipped["landmarks"][36], torch.tensor([5 - landmarks[45, 0], landmarks[45, 1]]))
    assert torch.allclose(flipped["landmarks"][8], torch.tensor([5 - landmarks[8, 0], landmarks[8, 1]]))
    back = RandomHorizontalFlip(p=1.0)(flipped)
    assert torch.equal(back["image"], image) and torch.allclose(back["landmarks"], landmarks)
    order = mirror_order_68()
    assert sorted(order) == list(range(68)) and all(order[order[i]] == i for i in range(68))


def test_jpeg_recompression_changes_pixels_a_little_and_deterministically():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 32, 32), dtype=np.float32))
    out = JpegRecompression(quality=(20, 30), p=1.0, seed=1)({"image": image})["image"]
    assert out.shape == image.shape and out.dtype == torch.float32
    assert 0.01 < float((out - image).abs().mean()) < 0.4
    assert torch.equal(out, JpegRecompression(quality=(20, 30), p=1.0, seed=1)({"image": image})["image"])


def test_blur_smooths_a_checkerboard_and_keeps_its_mean():
    board = torch.tensor(np.indices((16, 16)).sum(0) % 2, dtype=torch.float32).expand(3, 16, 16).contiguous()
    out = GaussianBlur(sigma=(1.5, 1.5), p=1.0)({"image": board})["image"]
    assert out.shape == board.shape and float(out.std()) < 0.2 * float(board.std())
    assert abs(float(out.mean()) - float(board.mean())) < 0.02


def test_color_jitter_brightness_scales_and_stays_in_range():
    image = gradient_image(4, 6) * 0.5
    jitter = ColorJitter(brightness=0.5, contrast=0.0, saturation=0.0, seed=3)
    out = jitter({"image": image})["image"]
    ratio = out / image
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-5) and float(ratio.flatten()[0]) != 1
    strong = ColorJitter(brightness=0.9, contrast=0.9, saturation=0.9, seed=4)({"image": gradient_image()})["image"]
    assert 0.0 <= float(strong.min()) and float(strong.max()) <= 1.0


def test_normalize_and_compose():
    image = torch.full((3, 2, 2), 0.75)
    normalized = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))({"image": image})["image"]
    assert torch.allclose(normalized, torch.ones(3, 2, 2))
    pipeline = Compose([RandomHorizontalFlip(0.5), ColorJitter(), Normalize()], seed=9)
    first = [pipeline({"image": gradient_image()})["image"] for _ in range(5)]
    again = Compose([RandomHorizontalFlip(0.5), ColorJitter(), Normalize()], seed=9)
    assert all(torch.equal(a, again({"image": gradient_image()})["image"]) for a in first)
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(pipeline({"image": gradient_image()}, generator)["image"],
                       pipeline({"image": gradient_image()}, torch.Generator().manual_seed(1))["image"])


# The 81-point model's forehead points from the image's left to its right, read off its documentation picture
# (codeniko/shape_predictor_81_face_landmarks, 81_facial_landmarks_reference.jpg).
FOREHEAD_IN_THE_PICTURE = [77, 75, 76, 68, 69, 70, 71, 80, 72, 73, 79, 74, 78]


def on_ellipse(centre: tuple[float, float], radii: tuple[float, float], degrees: list[float]) -> np.ndarray:
    """Points at the given angles (counter-clockwise on screen, 0° = right) around a centre."""
    angles = np.radians(degrees)
    return np.stack([centre[0] + radii[0] * np.cos(angles), centre[1] - radii[1] * np.sin(angles)], 1)


def symmetric_81_shape(width: int) -> np.ndarray:
    """An 81-point face, mirror-symmetric about the image's middle column, built from what each index marks.

    iBUG: jaw 0-16 left to right; brows 17-21 and 22-26 left to right; nose bridge 27-30 down; nostrils
    31-35 left to right; eyes 36-41 and 42-47 from the left corner clockwise; outer lips 48-59 from the left
    corner clockwise, inner lips 60-67 likewise; forehead 68-80 in the picture's left-to-right order.
    """
    c, points = (width - 1) / 2, np.zeros((81, 2))
    points[:17] = on_ellipse((c, 60), (45, 50), list(np.linspace(180, 360, 17)))
    brow = np.linspace(40, 8, 5)
    points[17:22] = np.stack([c - brow, 40 - 4 * np.sin(np.linspace(0, np.pi, 5))], 1)
    points[22:27] = np.stack([c + brow[::-1], 40 - 4 * np.sin(np.linspace(0, np.pi, 5))], 1)
    points[27:31] = np.stack([np.full(4, c), np.linspace(48, 66, 4)], 1)
    points[31:36] = np.stack([c + np.linspace(-8, 8, 5), 70 + np.abs(np.linspace(-2, 2, 5))], 1)
    eye = [180, 120, 60, 0, -60, -120]
    points[36:42], points[42:48] = on_ellipse((c - 20, 50), (7, 3), eye), on_ellipse((c + 20, 50), (7, 3), eye)
    points[48:60] = on_ellipse((c, 85), (15, 6), [180, 150, 120, 90, 60, 30, 0, -30, -60, -90, -120, -150])
    points[60:68] = on_ellipse((c, 85), (10, 2), [180, 135, 90, 45, 0, -45, -90, -135])
    points[FOREHEAD_IN_THE_PICTURE] = on_ellipse((c, 40), (46, 30), list(np.linspace(180, 0, 13)))
    return points.astype(np.float32)


@pytest.mark.parametrize("count", [68, 81])
def test_flip_maps_a_symmetric_shape_onto_itself(count):
    width = 128
    shape = torch.from_numpy(symmetric_81_shape(width)[:count])
    flipped = RandomHorizontalFlip(p=1.0)({"image": torch.zeros(3, 128, width), "landmarks": shape})["landmarks"]
    assert torch.allclose(flipped, shape, atol=1e-4)  # every index still marks the same facial part
    unordered = shape.clone()
    unordered[:, 0] = (width - 1) - unordered[:, 0]
    assert not torch.allclose(unordered, shape, atol=1)  # without re-indexing it would not be


def test_flip_matches_landmarks_found_on_the_mirrored_face():
    from dfprep.config import DetectionConfig
    from dfprep.vision.faces import FaceAnalyzer
    from dfprep.vision.models import resolve_model
    from tests.helpers.synthetic import FacePlacement, render_frame

    frame = render_frame(480, 360, [FacePlacement(120, 60, 1.0)])
    mirrored = np.ascontiguousarray(frame[:, ::-1])
    for model in ("dlib68", "dlib5"):
        analyzer = FaceAnalyzer(DetectionConfig(detector="hog", tracking=False), resolve_model(model).path)
        found = torch.from_numpy(analyzer.analyze(frame)[0].landmarks)
        on_mirror = torch.from_numpy(analyzer.analyze(mirrored)[0].landmarks)
        sample = {"image": torch.zeros(3, 360, 480), "landmarks": found}
        flipped = RandomHorizontalFlip(p=1.0)(sample)["landmarks"]
        assert float((flipped - on_mirror).norm(dim=1).mean()) < 2.5, model


def test_flip_refuses_a_layout_it_cannot_mirror():
    sample = {"image": torch.zeros(3, 8, 8), "landmarks": torch.zeros(12, 2)}
    with pytest.raises(ValueError, match="12-point"):
        RandomHorizontalFlip(p=1.0)(sample)


def region_of(before: torch.Tensor, after: torch.Tensor, masks: dict[str, torch.Tensor]) -> str:
    """Which part's hull an erasure filled."""
    erased = changed(before, after)
    return next(name for name, mask in masks.items() if erased == {tuple(p) for p in torch.nonzero(mask).tolist()})


def part_masks(landmarks: np.ndarray, size: int) -> dict[str, torch.Tensor]:
    """The hull of each part of a 68-point layout."""
    hulls = {"eyes": [landmarks[36:42], landmarks[42:48]], "nose": [landmarks[27:36]], "mouth": [landmarks[48:68]]}
    return {name: torch.stack([hull_mask(p, (size, size)) for p in parts]).any(0) for name, parts in hulls.items()}


def test_landmark_erasing_draws_prle_weights_by_default():
    size = 64
    landmarks = template_landmarks_68(size)
    masks, image = part_masks(landmarks, size), gradient_image(size, size)
    transform = LandmarkRegionErasing(p=1.0, fill="zero", seed=5)
    counts = Counter(region_of(image, transform({"image": image, "landmarks": torch.from_numpy(landmarks)})["image"],
                               masks) for _ in range(400))
    assert abs(counts["nose"] / 400 - 0.25) < 0.07 and abs(counts["eyes"] / 400 - 0.25) < 0.07
    assert abs(counts["mouth"] / 400 - 0.5) < 0.08


def test_landmark_erasing_weights_are_configurable_and_checked():
    size = 64
    landmarks = template_landmarks_68(size)
    masks, image = part_masks(landmarks, size), gradient_image(size, size)
    only_mouth = LandmarkRegionErasing(p=1.0, regions={"mouth": 1.0, "nose": 0.0}, fill="zero")
    sample = {"image": image, "landmarks": torch.from_numpy(landmarks)}
    assert {region_of(image, only_mouth(sample)["image"], masks) for _ in range(20)} == {"mouth"}
    for bad in ({"ears": 1.0}, {"eyes": -1.0}, {"nose": 0.0}, {"nose": float("nan")}, {}):
        with pytest.raises(ValueError):
            LandmarkRegionErasing(regions=bad)


def test_landmark_erasing_takes_81_points_by_their_ibug_part():
    size = 64
    landmarks = template_landmarks_68(size)
    eighty_one = np.vstack([landmarks, np.full((13, 2), 2.0, np.float32)])  # forehead points play no part
    image = gradient_image(size, size)
    erased = [LandmarkRegionErasing(p=1.0, fill="zero", seed=3)({"image": image, "landmarks": torch.from_numpy(s)})
              ["image"] for s in (landmarks, eighty_one)]
    assert changed(image, erased[0]) and torch.equal(erased[0], erased[1])
    with pytest.raises(ValueError, match="68 or 81"):
        LandmarkRegionErasing(p=1.0)({"image": image, "landmarks": torch.zeros(5, 2)})
