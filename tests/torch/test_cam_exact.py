"""Grad-CAM maps are computed in exact float32 on CUDA: TF32 made an H200's thresholded maps jump by 0.30
against the CPU's (benchmarks/gpu_check.py); with it off the gap was 4e-6. These tests run on CPU: they check
the switch itself, which is what a GPU run depends on."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfprep.torch import cam  # noqa: E402


def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_is_off_inside_and_restored_after_even_on_error():
    saved = _tf32()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with cam.exact_float32():
            assert _tf32() == (False, False)
        assert _tf32() == (True, True)
        with pytest.raises(RuntimeError), cam.exact_float32():
            raise RuntimeError("boom")
        assert _tf32() == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_zoo_computes_every_detector_s_cam_without_tf32(monkeypatch):
    seen = []

    def one_detector(self, detector, pixels, signs, size):
        seen.append(_tf32())
        return torch.full((pixels.shape[0], *size), 0.5)

    monkeypatch.setattr(cam.CamZoo, "_one_detector", one_detector)
    zoo = object.__new__(cam.CamZoo)
    zoo.device, zoo.recipe, zoo.detectors = torch.device("cpu"), cam.CamRecipe(threshold=0.0), [None, None]
    saved = _tf32()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        maps = zoo.maps(np.zeros((3, 8, 8, 3), np.uint8))
    finally:
        restored = _tf32()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert seen == [(False, False)] * 2 and restored == (True, True)
    assert maps.shape == (3, 8, 8) and np.allclose(maps, 0.5)
