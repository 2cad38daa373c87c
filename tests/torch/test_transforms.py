"""Transforms: erasing touches exactly the expected pixels; flips move landmarks and maps along; all seeded."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfprep.torch.synthetic import template_landmarks_68  # noqa: E402
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
