"""Face identity: dlib's 128-D descriptor per face track, median per video (the leakage report reads them back)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from dfprep.vision.faces import Face


class IdentityCollector:
    """Computes a few descriptors per track while a video is extracted, then aggregates them by median."""

    def __init__(self, descriptor_path: Path, per_track: int):
        import dlib

        self._dlib = dlib
        self.model = dlib.face_recognition_model_v1(str(descriptor_path))
        self.per_track = max(1, per_track)
        self.reset(1)

    def reset(self, planned_frames: int) -> None:
        """New video: forget descriptors; sample every k-th face of a track so they spread over the video."""
        self.every = max(1, planned_frames // self.per_track)
        self.seen: dict[int, int] = defaultdict(int)
        self.descriptors: dict[int, list[np.ndarray]] = defaultdict(list)

    def observe(self, image: np.ndarray, face: Face) -> None:
        """Maybe compute this face's descriptor (the first face of a track, then every k-th)."""
        count = self.seen[face.track_id]
        self.seen[face.track_id] += 1
        if count % self.every or len(self.descriptors[face.track_id]) >= self.per_track:
            return
        dlib = self._dlib
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        points = [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
        shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), points)
        self.descriptors[face.track_id].append(np.asarray(self.model.compute_face_descriptor(image, shape)))

    def video_identity(self) -> tuple[list[float] | None, int]:
        """Median descriptor of the track seen most often, and how many descriptors it rests on."""
        if not self.descriptors:
            return None, 0
        track = max(self.descriptors, key=lambda t: (self.seen[t], -t))
        stack = np.stack(self.descriptors[track])
        return np.median(stack, axis=0).astype(float).round(6).tolist(), len(stack)
