"""Face detection, tracking, selection and landmarks with dlib, at a small fraction of decode cost.

A full-frame detection runs on a copy scaled so its longer side is `working_size`. Once a face is
known, the next frame is searched only in a window around it (side `track_window` × the face),
resized so the face is about `TRACK_FACE_SIZE` px: HOG there costs ~3 ms instead of ~25 ms (upsample 0)
or ~110 ms (upsample 1) for a 640x480 frame. Landmarks always come from the full-resolution frame.
While any tracked face is re-found, faces entering elsewhere are not looked for: a full-frame
detection runs again only when every track is lost (or after `reset`).

Box convention: (x0, y0, x1, y1) in frame pixels with exclusive right/bottom edges, so a dlib
rectangle (left, top, right, bottom) is (left, top, right + 1, bottom + 1) and scaling is exact.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import cv2
import dlib
import numpy as np

from dfprep.config import DetectionConfig
from dfprep.vision.hog import frontal_hog
from dfprep.vision.models import load_dlib
from dfprep.vision.pixels import Picture, Region, pixels_in

Box = tuple[float, float, float, float]
Candidate = tuple[Box, float]  # a detection before selection: box, score
T = TypeVar("T", bound=tuple)  # a candidate, with or without its track id: the box comes first

# Side (px) a tracked face is resized to: dlib HOG's 80 px window fires from ~60 px faces, but its
# box only follows the face size from ~80 px up; 80 px keeps boxes as accurate as larger sizes at ~3 ms.
TRACK_FACE_SIZE = 80.0
# A detection keeps a track's id when its centre moved less than this many previous-box sides.
MATCH_DISTANCE = 1.0
# Two candidates whose IoU exceeds this are the same face found from two overlapping windows.
DUPLICATE_IOU = 0.5
# The cascade's CNN pass: dlib's mmod detector on a copy whose longer side is this, without upsampling. Measured
# on 14 ffpp-mini frames (640x480 to 1920x1080) rotated by 0/40/50/60 degrees, 2 cores: mmod at 640 px found
# 14/14 at every angle (HOG with its 640 px ladder: 14, 14, 5 and 0) for ~2.2 CPU-s a frame; at 480 px 10/14
# (1.2 s), at 320 px 0/14 (0.5 s: the faces fall under mmod's ~80 px window); 320 px upsampled once found 14/14
# for the same 2.2 s as 640 px. HOG costs ~12 ms on the same 640 px frame (~150x less), so the CNN runs only
# where HOG and the neighbour retry found nothing, and only once per such frame (no upsample ladder).
CASCADE_CNN_SIZE = 640
CASCADE_CNN_UPSAMPLE = 0
# A faceless frame near frames where HOG found a face is first searched around those faces: a window of
# CASCADE_HINT_WINDOW face sides, scaled so the face is CASCADE_HINT_FACE px (mmod's own window is 80 px), and
# on the whole frame only when that finds nothing. Measured on the same 14 frames rolled by +55/-60 degrees about
# the face, hinted with HOG's box from the unrolled frame: whole frame 2.45 CPU-s/frame; windows of 2.5 sides at
# 100 px 0.57 s, at 80 px 0.36 s, 2 sides at 80 px 0.22 s, each 28/28 found. 2.5 sides at 80 px keeps room for a
# head that moved between the hint's frame and this one, at ~1/7 of the whole frame's cost.
CASCADE_HINT_WINDOW = 2.5
CASCADE_HINT_FACE = 80.0
# Whole-frame CNN searches that may find nothing per video: whole-frame searches go on while they find faces
# (a video of turned heads HOG never sees), the first that finds nothing ends them for the video (searches around
# hints go on). A faceless video thus costs one search (~2.5 CPU-s at 640 px) instead of one per planned frame.
CASCADE_WHOLE_FRAME_MISSES = 1
# Face sides around a box whose pixels the shape predictor may read: it samples pixels at offsets from its current
# landmarks within about the mean face's extent. Measured on every ffpp-mini video (tests/test_pixels.py): a reach
# of 0.25 changes landmarks, 0.5 gives those of whole frames; 1.0 keeps twice that. Only this region of a tracked
# frame is converted to RGB (the tracking window, `track_window` = 2 face sides, lies inside it).
LANDMARK_REACH = 1.0


@dataclass(frozen=True)
class Face:
    """One selected face in one frame, everything in full-frame pixels."""

    box: Box
    score: float
    landmarks: np.ndarray  # float32 (N, 2), (x, y)
    track_id: int
    detector: str = "hog"  # which detector found it: hog | cnn (the sample json's `detector`)


def box_side(box: Box) -> float:
    """Mean side of a box: the face size tracking windows and match distances scale with."""
    return 0.5 * ((box[2] - box[0]) + (box[3] - box[1]))


def box_centre(box: Box) -> tuple[float, float]:
    """Centre of a box."""
    return 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union: tells a face re-found from an overlapping window from a new one."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def centre_distance(previous: Box, box: Box) -> float:
    """Centre shift in units of the previous box's side: how far a face moved, independent of size."""
    (px, py), (cx, cy) = box_centre(previous), box_centre(box)
    return float(np.hypot(cx - px, cy - py)) / max(box_side(previous), 1.0)


def to_dlib_rect(box: Box) -> dlib.rectangle:
    """Integer dlib rectangle (inclusive right/bottom) for a frame box, as the shape predictor wants."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(x0, y0, max(x1 - 1, x0), max(y1 - 1, y0))


def resize_for_detector(image: np.ndarray, factor: float) -> np.ndarray:
    """Contiguous copy scaled by `factor` (area filter when shrinking); dlib rejects strided views."""
    if factor == 1.0:
        return np.ascontiguousarray(image)
    height, width = image.shape[:2]
    size = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))
    interpolation = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def working_factor(shape: tuple[int, ...], working_size: int) -> float:
    """Scale that brings the frame's longer side down to `working_size` (never up; 0 = full size)."""
    longer = max(shape[0], shape[1])
    return 1.0 if working_size <= 0 or longer <= working_size else working_size / longer


def around(box: Box, sides: float) -> Region:
    """`box` grown by `sides` × its side on every side (not clipped: FramePixels clips)."""
    grow = sides * box_side(box)
    return (int(np.floor(box[0] - grow)), int(np.floor(box[1] - grow)), int(np.ceil(box[2] + grow)),
            int(np.ceil(box[3] + grow)))


def search_window(box: Box, frame_shape: tuple[int, ...], track_window: float) -> tuple[int, int, int, int]:
    """Integer window of side `track_window` × the face around a previous box, clipped to the frame."""
    cx, cy = box_centre(box)
    half = 0.5 * track_window * box_side(box)
    height, width = frame_shape[:2]
    x0, y0 = max(0, int(np.floor(cx - half))), max(0, int(np.floor(cy - half)))
    x1, y1 = min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))
    return x0, y0, x1, y1


def map_back(box: Box, scale_x: float, scale_y: float, offset: tuple[int, int]) -> Box:
    """A box found in a scaled (and cropped) copy, in frame pixels."""
    return (box[0] / scale_x + offset[0], box[1] / scale_y + offset[1],
            box[2] / scale_x + offset[0], box[3] / scale_y + offset[1])


def detect_scaled(image: np.ndarray, factor: float, offset: tuple[int, int],
                  detect: Callable[[np.ndarray], list[Candidate]]) -> list[Candidate]:
    """`detect` on `image` scaled by `factor`, its boxes mapped back to frame pixels via `offset`."""
    scaled = resize_for_detector(image, factor)
    scale_x, scale_y = scaled.shape[1] / image.shape[1], scaled.shape[0] / image.shape[0]
    return [(map_back(box, scale_x, scale_y, offset), score) for box, score in detect(scaled)]


def shape_to_array(shape: dlib.full_object_detection) -> np.ndarray:
    """dlib landmarks as float32 (N, 2) (x, y)."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def rect_box(rect: dlib.rectangle) -> Box:
    """A dlib rectangle (inclusive right/bottom) as a box with exclusive edges."""
    return float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1)


def hint_windows(hints: Sequence[Box], frame_shape: tuple[int, ...]) -> list[tuple[tuple[int, int, int, int], float]]:
    """Where the cascade's CNN looks first, and at what scale: overlapping hints (one face seen before and after
    the frame) merge into one box; each box grown to CASCADE_HINT_WINDOW face sides, its face scaled to
    CASCADE_HINT_FACE px."""
    groups: list[tuple[Box, list[float]]] = []
    for hint in hints:
        for number, (box, sides) in enumerate(groups):
            if box_iou(box, hint) > 0:
                merged = (min(box[0], hint[0]), min(box[1], hint[1]), max(box[2], hint[2]), max(box[3], hint[3]))
                groups[number] = (merged, [*sides, box_side(hint)])
                break
        else:
            groups.append((hint, [box_side(hint)]))
    height, width = frame_shape[:2]
    windows = []
    for box, sides in groups:
        side = max(float(np.mean(sides)), 1.0)
        margin = 0.5 * (CASCADE_HINT_WINDOW - 1.0) * side
        x0, y0 = max(0, int(np.floor(box[0] - margin))), max(0, int(np.floor(box[1] - margin)))
        x1, y1 = min(width, int(np.ceil(box[2] + margin))), min(height, int(np.ceil(box[3] + margin)))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            windows.append(((x0, y0, x1, y1), CASCADE_HINT_FACE / side))
    return windows


class CascadeFallback:
    """The cascade's CNN: dlib's mmod detector, loaded by the first frame that needs it (a video where HOG finds
    every face never loads it); `load_dlib` keeps one per thread (a dlib net is not safe to share)."""

    def __init__(self, cnn_path: Path | None) -> None:
        if cnn_path is None:
            raise ValueError("detector 'cascade' needs the path of the mmod model (cnn_path)")
        self.path = cnn_path
        self.calls = 0  # frames searched by the CNN
        self.full_frames = 0  # of those, searched on the whole frame (no hint, or nothing near the hints)
        self.misses = 0  # whole-frame searches of the current video that found nothing
        self._detector: dlib.cnn_face_detection_model_v1 | None = None

    def detect(self, image: np.ndarray, hints: Sequence[Box], min_score: float) -> list[Candidate]:
        """mmod detections near the hints (faces HOG found on nearby frames), else on the whole frame while the
        video's whole-frame searches have found nothing fewer than CASCADE_WHOLE_FRAME_MISSES times."""
        if self._detector is None:
            self._detector = load_dlib("cnn_detector", self.path)  # a copy per thread
        self.calls += 1
        full = working_factor(image.shape, CASCADE_CNN_SIZE)
        windows = hint_windows(hints, image.shape)
        window_pixels = sum((x1 - x0) * (y1 - y0) * factor ** 2 for (x0, y0, x1, y1), factor in windows)
        found: list[Candidate] = []
        if window_pixels < image.shape[0] * image.shape[1] * full ** 2:  # cheaper than the whole frame: look there
            found = self._in_windows(image, windows, min_score)
        if found or self.misses >= CASCADE_WHOLE_FRAME_MISSES:
            return found
        self.full_frames += 1
        found = self._scaled(image, full, (0, 0), min_score)
        self.misses += int(not found)
        return found

    def _in_windows(self, image: np.ndarray, windows: list[tuple[tuple[int, int, int, int], float]],
                    min_score: float) -> list[Candidate]:
        """mmod in each window at its scale; a face found from two overlapping windows counts once."""
        found: list[Candidate] = []
        for (x0, y0, x1, y1), factor in windows:
            for candidate in self._scaled(image[y0:y1, x0:x1], factor, (x0, y0), min_score):
                if all(box_iou(candidate[0], other[0]) < DUPLICATE_IOU for other in found):
                    found.append(candidate)
        return found

    def _scaled(self, image: np.ndarray, factor: float, offset: tuple[int, int], min_score: float) -> list[Candidate]:
        """mmod on `image` scaled by `factor`, boxes mapped back to frame pixels via `offset`."""
        return detect_scaled(image, factor, offset, lambda scaled: [
            (rect_box(d.rect), float(d.confidence)) for d in self._detector(scaled, CASCADE_CNN_UPSAMPLE)
            if d.confidence >= min_score])


_per_thread = threading.local()  # dlib does not make one HOG detector safe to share between threads
_hog_template: list[dlib.fhog_object_detector] = []  # the process's first (cached or built), to copy from
_hog_lock = threading.Lock()


def frontal_detector() -> dlib.fhog_object_detector:
    """dlib's HOG face detector, one per thread: loaded once per process from the user's cache (~1 ms; built
    there once per dlib version, ~0.2 s holding the GIL), then copied for each further thread (~1 ms)."""
    detector = getattr(_per_thread, "hog", None)
    if detector is None:
        with _hog_lock:
            if not _hog_template:
                _hog_template.append(frontal_hog())
            detector = _per_thread.hog = copy.deepcopy(_hog_template[0])
    return detector


def select_faces(candidates: list[T], policy: str, frame_shape: tuple[int, ...]) -> list[T]:
    """Apply the `select` policy: the largest face, the one nearest the frame centre, or all."""
    if policy == "all" or len(candidates) <= 1:
        return list(candidates)
    if policy == "largest":
        return [max(candidates, key=lambda c: (c[0][2] - c[0][0]) * (c[0][3] - c[0][1]))]
    if policy == "centre":
        mid = (0.5 * frame_shape[1], 0.5 * frame_shape[0])
        return [min(candidates, key=lambda c: np.hypot(box_centre(c[0])[0] - mid[0],
                                                        box_centre(c[0])[1] - mid[1]))]
    raise ValueError(f"unknown face selection policy {policy!r} (expected largest, centre or all)")


def contiguous(image: Picture) -> Picture:
    """dlib rejects strided arrays: a view becomes a contiguous copy (a frame's pixels always are contiguous)."""
    return np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image


class FaceAnalyzer:
    """Finds, tracks and landmarks faces frame by frame; one instance per worker, reused across videos."""

    def __init__(self, detection: DetectionConfig, predictor_path: Path,
                 cnn_path: Path | None = None) -> None:
        self.config = detection
        if detection.detector == "cnn":
            if cnn_path is None:
                raise ValueError("detector 'cnn' needs the path of the mmod model (cnn_path)")
            self._cnn = load_dlib("cnn_detector", cnn_path)
            self._hog = None
        elif detection.detector in ("hog", "cascade"):
            self._hog = frontal_detector()
            self._cnn = None
        else:
            raise ValueError(f"unknown detector {detection.detector!r} (expected cascade, hog or cnn)")
        self._predictor = load_dlib("shape_predictor", predictor_path)
        self.timings: dict[str, float] = {"detect": 0.0, "landmarks": 0.0}
        self.full_detections = 0  # frames that needed a full-frame detection
        self.tracked_detections = 0  # frames served by the windows around previous faces
        self._tracks: list[tuple[Box, int]] = []
        self._next_id = 0
        self.stage = "detect"  # detect | landmarks: which half of `analyze` runs (named in internal errors)
        self.cascade = CascadeFallback(cnn_path) if detection.detector == "cascade" else None

    def reset(self) -> None:
        """Start a new video: previous faces say nothing about where faces are now."""
        self._tracks = []
        self._next_id = 0
        if self.cascade is not None:
            self.cascade.misses = 0

    def analyze(self, image: Picture) -> list[Face]:
        """Faces of one RGB uint8 frame (an array, or a decoded frame's pixels) per the `select` policy, with
        landmarks and track ids; a tracked frame's pixels are converted only around its faces."""
        image = contiguous(image)
        start = time.perf_counter()
        self.stage = "detect"
        tracked = self._track(image) if self.config.tracking and self._tracks else []
        if tracked:
            self.tracked_detections += 1
            chosen = select_faces(tracked, self.config.select, image.shape)
        else:
            self.full_detections += 1
            chosen = self._assign_ids(select_faces(self._detect_full(pixels_in(image)), self.config.select,
                                                   image.shape))
        faces = self._landmarked(image, chosen, "cnn" if self._cnn is not None else "hog", start)
        self._tracks = [(face.box, face.track_id) for face in faces]
        return faces

    def analyze_fallback(self, image: Picture, hints: Sequence[Box] = ()) -> list[Face]:
        """The cascade's second look at a frame HOG left faceless: mmod around the hints (boxes HOG found on the
        nearest frames), else on the whole frame; the `select` policy, landmarks as for any face, marked `cnn`."""
        if self.cascade is None:
            raise ValueError("analyze_fallback needs detector 'cascade'")
        image = contiguous(image)
        start = time.perf_counter()
        self.stage = "detect"
        found = self.cascade.detect(pixels_in(image), hints, self.config.min_score)
        return self._landmarked(image, self._assign_ids(select_faces(found, self.config.select, image.shape)),
                                "cnn", start)

    def _landmarked(self, image: Picture, chosen: list[tuple[Box, float, int]], detector: str,
                    start: float) -> list[Face]:
        """The chosen detections as faces with landmarks; detection time (since `start`) and landmark time kept."""
        middle = time.perf_counter()
        self.stage = "landmarks"
        faces = [Face(box, score, self.landmarks(image, box), track_id, detector) for box, score, track_id in chosen]
        self.timings["detect"] += middle - start
        self.timings["landmarks"] += time.perf_counter() - middle
        return faces

    def landmarks(self, image: Picture, box: Box) -> np.ndarray:
        """Shape-predictor landmarks on the full-resolution frame for a frame box, float32 (N, 2)."""
        return shape_to_array(self._predictor(pixels_in(image, around(box, LANDMARK_REACH)), to_dlib_rect(box)))

    def _run_detector(self, image: np.ndarray, upsample: int) -> list[Candidate]:
        """Raw detections (box in `image` pixels, score) at or above `min_score`."""
        threshold = self.config.min_score
        if self._cnn is not None:
            found = [(d.rect, float(d.confidence)) for d in self._cnn(image, upsample)]
        else:
            rects, scores, _ = self._hog.run(image, upsample, threshold)
            found = list(zip(rects, (float(s) for s in scores)))
        return [(rect_box(r), score) for r, score in found if score >= threshold]

    def _detect_scaled(self, image: np.ndarray, factor: float, offset: tuple[int, int],
                       upsample: int) -> list[Candidate]:
        """Detect on `image` scaled by `factor`, boxes mapped back to frame pixels via `offset`."""
        return detect_scaled(image, factor, offset, lambda scaled: self._run_detector(scaled, upsample))

    def _detect_full(self, image: np.ndarray) -> list[Candidate]:
        """Full-frame detection at the working size.

        For `largest` with `upsample_ladder`, cheaper pyramid levels go first: a face found without
        upsampling is larger than anything upsampling could add, so the expensive pass only runs when
        nothing was found. Its box sits on another pyramid grid than the upsampled pass's, so a recipe
        that must match a reference detector's boxes turns the ladder off.
        """
        factor = working_factor(image.shape, self.config.working_size)
        ladder = self.config.select == "largest" and self.config.upsample_ladder
        levels = range(self.config.upsample + 1) if ladder else [self.config.upsample]
        found: list[Candidate] = []
        for upsample in levels:
            found = self._detect_scaled(image, factor, (0, 0), upsample)
            if found:
                break
        return found

    def _detect_near(self, image: Picture, previous: Box) -> list[Candidate]:
        """Detections inside the search window around a previous box (upsample 0, face ~80 px); the pixels
        converted are those the landmarks of a face found there will read too."""
        x0, y0, x1, y1 = search_window(previous, image.shape, self.config.track_window)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return []
        factor = TRACK_FACE_SIZE / max(box_side(previous), 1.0)
        reach = max(LANDMARK_REACH, 0.5 * (self.config.track_window - 1.0))
        window = pixels_in(image, around(previous, reach))[y0:y1, x0:x1]
        return self._detect_scaled(window, factor, (x0, y0), 0)

    def _track(self, image: Picture) -> list[tuple[Box, float, int]]:
        """Re-find each previous face near where it was; faces not found there are dropped."""
        found: list[tuple[Box, float, int]] = []
        for previous, track_id in self._tracks:
            near = self._detect_near(image, previous)
            if not near:
                continue
            box, score = min(near, key=lambda c: centre_distance(previous, c[0]))
            if all(box_iou(box, other[0]) < DUPLICATE_IOU for other in found):
                found.append((box, score, track_id))
        return found

    def _assign_ids(self, candidates: list[Candidate]) -> list[tuple[Box, float, int]]:
        """Give full-frame detections the id of the previous face they continue, else a new id."""
        pairs = sorted(((centre_distance(prev, box), i, track_id)
                        for i, (box, _) in enumerate(candidates) for prev, track_id in self._tracks),
                       key=lambda p: p[0])
        ids: dict[int, int] = {}
        for distance, index, track_id in pairs:
            if distance < MATCH_DISTANCE and index not in ids and track_id not in ids.values():
                ids[index] = track_id
        result = []
        for index, (box, score) in enumerate(candidates):
            if index not in ids:
                ids[index] = self._next_id
                self._next_id += 1
            result.append((box, score, ids[index]))
        return result
