"""DeepfakeBench's face crop, re-implemented from its formulas, and dfprep's agreement with it.

What DeepfakeBench's `preprocessing/preprocess.py` does to one decoded frame (`extract_aligned_face_dlib`
with `get_keypts` and `img_align_crop`), written here step by step in our own code, so a test and
`benchmarks/protocols.py` can compare dfprep's `deepfakebench` recipe with it on the same frames:

1. dlib's HOG detector on the whole RGB frame, upsampled once; the largest box (width × height) wins.
2. The shape predictor on that box; five of its points (0-based 37, 44, 30, 49, 55) are the source.
3. The destination is the ArcFace 112-px template (its 96-px-wide form moved right by 8 px), scaled to
   the output size; a margin of (scale - 1) / 2 × size is added on each side and the whole is shrunk
   back to the output size.
4. A least-squares similarity (scikit-image's SimilarityTransform, Umeyama's method) maps source onto
   destination; one `cv2.warpAffine` with OpenCV's defaults (bilinear, black border) makes the crop,
   followed by a `cv2.resize` to the same size.
5. Landmarks saved with the crop are detected again on the crop (first box, upsample 1).

This is test code: nothing in dfprep imports it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import dlib
import numpy as np
from skimage.transform import SimilarityTransform

from dfprep.catalog.base import VideoRecord
from dfprep.config import PipelineConfig
from dfprep.jobs.extract import ExtractionModels, VideoExtractor
from dfprep.io.shards import Sample
from dfprep.vision.video import decode_frames, frame_plan, probe

# The ArcFace template as DeepfakeBench writes it: 96 px wide (x) by 112 px high, before its x + 8.
TEMPLATE_96X112 = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                            [33.5493, 92.3655], [62.7299, 92.2041]])
KEY_POINTS = [37, 44, 30, 49, 55]  # get_keypts: upper eyelids, nose tip, outer-lip points


@dataclass(frozen=True)
class ReferenceCrop:
    """What DeepfakeBench's code produces for one frame."""

    crop: np.ndarray  # RGB uint8 (size, size, 3)
    matrix: np.ndarray  # (2, 3) frame → crop
    frame_landmarks: np.ndarray  # every shape point in frame pixels (integers, as dlib gives them)
    redetected: np.ndarray | None  # the landmarks DeepfakeBench saves: detected again on the crop


def reference_template(size: int, scale: float) -> np.ndarray:
    """Step 3: the destination points, built the way img_align_crop builds them (margin, then shrink)."""
    points = TEMPLATE_96X112.astype(np.float32).copy()
    points[:, 0] += 8.0
    points *= size / 112.0
    margin = size * (scale - 1.0) / 2.0
    points += margin
    points *= size / (size + 2.0 * margin)
    return points


def largest_face(detector: Any, rgb: np.ndarray) -> Any:
    """Step 1: the largest HOG detection at upsample 1 on the full frame, or None."""
    boxes = list(detector(rgb, 1))
    return max(boxes, key=lambda box: box.width() * box.height()) if boxes else None


def shape_points(predictor: Any, image: np.ndarray, box: Any) -> np.ndarray:
    """Step 2: all shape points of a box as float32 (N, 2)."""
    shape = predictor(image, box)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float32)


def reference_crop(rgb: np.ndarray, detector: Any, predictor: Any, size: int = 256,
                   scale: float = 1.3) -> ReferenceCrop | None:
    """Steps 1-5 on one RGB frame; None when DeepfakeBench would skip it (no face, or none on the crop)."""
    box = largest_face(detector, rgb)
    if box is None:
        return None
    landmarks = shape_points(predictor, rgb, box)
    fit = SimilarityTransform.from_estimate(landmarks[KEY_POINTS], reference_template(size, scale))
    matrix = np.asarray(fit.params[:2], np.float64)
    crop = cv2.resize(cv2.warpAffine(rgb, matrix, (size, size)), (size, size))
    on_crop = list(detector(crop, 1))  # DeepfakeBench passes the BGR copy; dlib's HOG and shape
    redetected = shape_points(predictor, crop, on_crop[0]) if on_crop else None  # model are colour-blind
    return ReferenceCrop(crop, matrix, landmarks, redetected)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when identical)."""
    error = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if error == 0 else 10.0 * np.log10(255.0 ** 2 / error)


def mean_offset(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding points (the first 68: iBUG's, in every model)."""
    count = min(len(a), len(b), 68)
    return float(np.linalg.norm(np.asarray(a[:count], np.float64) - b[:count], axis=1).mean())


@dataclass(frozen=True)
class FrameAgreement:
    """dfprep's sample against DeepfakeBench's crop of the same decoded frame (NaN where one side has none)."""

    video: str
    frame: int
    ours: bool  # dfprep wrote a sample for this planned frame
    theirs: bool  # DeepfakeBench keeps the frame (a face on the frame, and again on its crop)
    offset: float = float("nan")  # crop px: dfprep's landmarks vs the same points through DeepfakeBench's matrix
    psnr: float = float("nan")  # dB between the two crops
    offset_redetected: float = float("nan")  # crop px: dfprep's landmarks vs the ones DeepfakeBench saves


def dfprep_samples(extractor: VideoExtractor, record: VideoRecord) -> tuple[list[Sample], dict[str, float]]:
    """dfprep's samples of one video and its stage timings, from the extractor a run uses."""
    samples: list[Sample] = []
    result = extractor.extract(record, None, samples.append)
    return samples, result.timings


def make_extractor(config: PipelineConfig) -> VideoExtractor:
    """dfprep's per-worker extractor for a config (loads the dlib models once)."""
    return VideoExtractor(config, ExtractionModels.resolve(config))


def decode_sample(sample: Sample, image_format: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(frame index, RGB crop, crop landmarks) of one encoded sample."""
    meta = json.loads(sample.members["json"])
    bgr = cv2.imdecode(np.frombuffer(sample.members[image_format], np.uint8), cv2.IMREAD_COLOR)
    landmarks = np.load(io.BytesIO(sample.members["ldm.npy"]), allow_pickle=False)
    return int(meta["frame"]), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), landmarks


class DeepfakeBench:
    """DeepfakeBench's preprocessing with its dlib models loaded once."""

    def __init__(self, predictor_path: Path, size: int = 256, scale: float = 1.3):
        self.detector, self.predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path))
        self.size, self.scale = size, scale

    def crops(self, record: VideoRecord, config: PipelineConfig) -> dict[int, ReferenceCrop | None]:
        """Its crop of every frame `config` plans, decoded by dfprep's decoder (the pixels dfprep sees)."""
        info = probe(record.path)
        return {decoded.index: reference_crop(decoded.image, self.detector, self.predictor, self.size, self.scale)
                for decoded in decode_frames(record.path, frame_plan(info, config.sampling), info)}


def agreement(record: VideoRecord, samples: list[Sample], image_format: str,
              references: dict[int, ReferenceCrop | None]) -> list[FrameAgreement]:
    """Each planned frame: dfprep's sample against DeepfakeBench's crop of it."""
    ours = {frame: (crop, ldm) for frame, crop, ldm in (decode_sample(s, image_format) for s in samples)}
    rows, name = [], Path(record.path).name
    for frame, reference in sorted(references.items()):
        kept = reference is not None and reference.redetected is not None
        if reference is None or frame not in ours:
            rows.append(FrameAgreement(name, frame, frame in ours, kept))
            continue
        crop, landmarks = ours[frame]
        carried = reference.frame_landmarks @ reference.matrix[:, :2].T + reference.matrix[:, 2]
        again = mean_offset(landmarks, reference.redetected) if kept else float("nan")
        rows.append(FrameAgreement(name, frame, True, kept, mean_offset(landmarks, carried),
                                   psnr(crop, reference.crop), again))
    return rows
