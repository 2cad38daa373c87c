"""The deepfakebench recipe against DeepfakeBench's own formulas (tests/helpers/deepfakebench_reference.py).

A rendered frame checks the recipe's detector, landmarks and crop in seconds; the ffpp-mini test runs the
extractor a real run uses on the first frame of every video (three resolutions) and holds it to the agreement
goal of docs/protocols.md: landmark offset ≤ 0.5 px, PSNR ≥ 30 dB. benchmarks/protocols.py prints the
same figures over all 32 frames.
"""

from __future__ import annotations

import dlib
import numpy as np
import pytest

from tests.helpers.deepfakebench_reference import (DeepfakeBench, agreement, dfprep_samples, make_extractor, mean_offset, psnr,
                                     reference_crop)
from dfprep.vision.align import align_face
from dfprep.catalog import scan
from dfprep.config import load_config
from dfprep.errors import ConfigError
from dfprep.jobs.extract import ExtractionModels
from dfprep.vision.faces import FaceAnalyzer
from dfprep.vision.models import resolve_model
from tests.helpers.synthetic import FacePlacement, render_frame

FAST_DETECTOR = {"detection.working_size": 640, "detection.tracking": True, "detection.upsample_ladder": True}


@pytest.fixture(scope="module")
def dlib_models() -> tuple[object, object]:
    """DeepfakeBench's detector (dlib frontal HOG) and the predictor dfprep resolves for the recipe."""
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(resolve_model("dlib68").path))


def test_recipe_crop_is_deepfakebench_crop_on_a_rendered_frame(dlib_models) -> None:
    detector, predictor = dlib_models
    frame = render_frame(960, 540, [FacePlacement(60, 250, 0.7), FacePlacement(480, 90, 1.3)])
    config = load_config("deepfakebench")
    face = FaceAnalyzer(config.detection, resolve_model("dlib68").path).analyze(frame)[0]
    assert face.box[0] > 400  # the larger of the two faces
    ours = align_face(frame, face.landmarks, face.box, config.alignment)
    theirs = reference_crop(frame, detector, predictor)
    assert theirs is not None and theirs.redetected is not None
    assert np.array_equal(face.landmarks, theirs.frame_landmarks)  # same box, so the same shape
    carried = theirs.frame_landmarks @ theirs.matrix[:, :2].T + theirs.matrix[:, 2]
    assert mean_offset(ours.landmarks, carried) < 1e-3
    assert psnr(ours.crop, theirs.crop) > 50


@pytest.mark.integration
@pytest.mark.slow
def test_recipe_matches_deepfakebench_on_ffpp_mini(ffpp_mini) -> None:
    config = load_config("deepfakebench-ffpp", {"sampling.frames": 1})
    fast_arcface = load_config("deepfakebench-ffpp", {"sampling.frames": 1, "alignment.preset": "arcface5",
                                                      **FAST_DETECTOR})
    records = list(scan("ffpp", ffpp_mini, config.dataset))
    assert len(records) == 7
    reference = DeepfakeBench(resolve_model("dlib68").path)
    recipe, old = make_extractor(config), make_extractor(fast_arcface)
    recipe_rows, old_rows = [], []
    for record in records:
        references = reference.crops(record, config)
        samples, _ = dfprep_samples(recipe, record)
        assert samples and all(set(s.members) == {"png", "ldm.npy", "json"} for s in samples)
        recipe_rows += agreement(record, samples, "png", references)
        old_rows += agreement(record, dfprep_samples(old, record)[0], "png", references)
    assert len(recipe_rows) == 7 and all(r.ours and r.theirs for r in recipe_rows)
    offsets, psnrs = np.array([r.offset for r in recipe_rows]), np.array([r.psnr for r in recipe_rows])
    assert np.median(offsets) <= 0.5 and offsets.max() <= 0.5
    assert np.median(psnrs) >= 30 and psnrs.min() >= 30
    # the measure tells crops apart: the eye-centre preset with the fast detector is far off
    assert np.median([r.offset for r in old_rows]) > 1.5 and np.median([r.psnr for r in old_rows]) < 30


def test_deepfakebench_preset_with_a_five_point_model_is_refused_before_any_work(folder_dataset, tmp_path) -> None:
    from click.testing import CliRunner

    from dfprep.cli import cli

    config = load_config("deepfakebench", {"detection.landmarks": "dlib5"})
    with pytest.raises(ConfigError, match="arcface5"):
        ExtractionModels.resolve(config)
    result = CliRunner().invoke(cli, ["extract", "folder", str(folder_dataset), "-o", str(tmp_path / "out"),
                                      "--workers", "0", "--quiet", "--set", "detection.landmarks=dlib5"])
    assert result.exit_code == 2 and "needs 68- or 81-point landmarks" in result.output
    assert not (tmp_path / "out" / "plan.json").exists()
    assert ExtractionModels.resolve(load_config("deepfakebench", {"detection.landmarks": "dlib5",
                                                                  "alignment.preset": "arcface5"}))
