"""Per-video extraction: plan → decode → detect/track → landmarks → align → encode, one status row."""

from __future__ import annotations

import json
import time
from contextlib import closing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from dfprep.catalog.base import VideoRecord
from dfprep.config import PipelineConfig
from dfprep.errors import ConfigError, one_line
from dfprep.io.keys import sample_key
from dfprep.io.layout import FOUND, INTERNAL_ERROR, MISSING, NO_FACE, OK, PARTIAL, SAMPLE_JSON_STRINGS, TIMEOUT
from dfprep.io.shards import Sample, encode_image, encode_npy
from dfprep.jobs.pairs import Pairing, family_plan, start_pairing
from dfprep.vision.align import AlignedFace, align_face
from dfprep.vision.faces import Box, Face, FaceAnalyzer
from dfprep.vision.identity import IdentityCollector
from dfprep.vision.models import ResolvedModel, load_check, locate, resolve_model
from dfprep.vision.pixels import Picture
from dfprep.vision.video import DecodedFrame, VideoError, VideoInfo, decode_frames, prefetched, probe


@dataclass
class VideoResult:
    """What one video produced: its status row for videos.parquet and stage timings."""

    row: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractionModels:
    """The model files an extraction needs, resolved and checked once before any work."""

    predictor: ResolvedModel
    cnn: ResolvedModel | None
    descriptor: ResolvedModel | None = None

    @classmethod
    def resolve(cls, config: PipelineConfig) -> "ExtractionModels":
        """Resolve and load-check the configured models (a bad model fails here, not mid-run)."""
        predictor = resolve_model(config.detection.landmarks)
        points = load_check(predictor)
        if config.alignment.preset == "deepfakebench" and points < 68:
            raise ConfigError(f"alignment.preset=deepfakebench needs 68- or 81-point landmarks, but "
                              f"{predictor.name} predicts {points}: use alignment.preset=arcface5")
        cnn = resolve_model("mmod") if config.detection.detector in ("cnn", "cascade") else None
        descriptor = resolve_model("resnet128") if config.detection.identity else None
        for optional in (cnn, descriptor):
            if optional is not None:
                load_check(optional)
        return cls(predictor, cnn, descriptor)

    def present(self) -> tuple[ResolvedModel, ...]:
        """The models in use (an unused detector or descriptor left out)."""
        return tuple(m for m in (self.predictor, self.cnn, self.descriptor) if m is not None)

    def here(self) -> "ExtractionModels":
        """The same models found on this machine (a cluster node may hold them at another path)."""
        return ExtractionModels(*(locate(m) if m is not None else None
                                  for m in (self.predictor, self.cnn, self.descriptor)))

    def checksums(self) -> dict[str, str]:
        """name → sha256, stamped into dataset.json."""
        return {m.name: m.sha256 for m in (self.predictor, self.cnn, self.descriptor) if m is not None}


def plan_for_family(record: VideoRecord, info: VideoInfo, original_path: str | None,
                    config: PipelineConfig, probe_cache: dict[str, VideoInfo]) -> tuple[list[int], str]:
    """A fake samples its original's frames (clamped to the shorter video); else its own plan, and why."""
    family = family_plan(record, info, original_path, config.sampling, probe_cache,
                         config.output.registered_original)
    return family.plan, family.note


def neighbour_order(planned: int, reach: int, frame_count: int) -> list[int]:
    """Frames to try when `planned` has no face: +1, -1, +2, -2, … within the video."""
    order = []
    for step in range(1, reach + 1):
        order += [i for i in (planned + step, planned - step) if 0 <= i < frame_count]
    return order


class VideoExtractor:
    """Turns one video into aligned-face samples; holds the dlib models so they load once per worker."""

    def __init__(self, config: PipelineConfig, models: ExtractionModels, decode_threads: int = 0):
        self.config = config
        self.decode_threads = decode_threads  # 0 = FFmpeg's choice (all cores): right when running alone
        cnn_path = models.cnn.path if models.cnn else None
        self.analyzer = FaceAnalyzer(config.detection, models.predictor.path, cnn_path)
        self.identity = (IdentityCollector(models.descriptor.path, config.detection.identity_frames)
                         if models.descriptor is not None else None)
        self.probe_cache: dict[str, VideoInfo] = {}
        self._stage = "probe"  # where the current video is, for an internal_error row's reason
        self._faces = 0  # faces of the current video handed to the sink
        self._cnn_faces = 0  # of those, found by the CNN (videos.parquet faces_cnn)
        self._boxes: dict[int, list[Box]] = {}  # frame → boxes of the current video's faces (the cascade's hints)
        self.pairing: Pairing | None = None  # the current video's pair state (pair_key, registered originals)

    def extract(self, record: VideoRecord, original_path: str | None,
                sink: Callable[[Sample], None]) -> VideoResult:
        """Run the whole per-video pipeline; every outcome becomes a status row, never an exception.

        A VideoError is the video's own problem (corrupt, unsupported, too slow); any other exception inside
        a stage (a ValueError from align, a cv2.error, a dlib RuntimeError) becomes `internal_error` with the
        stage and exception type, and the faces written before it are kept, as for `decode_error`. What
        still propagates: the sink's errors (the output storage failed: not this video's fault),
        MemoryError, and KeyboardInterrupt/SystemExit (not Exceptions).
        """
        timings: Counter[str] = Counter()
        row = base_row(record)
        if record.status != FOUND:
            return VideoResult({**row, "status": MISSING, "error": record.error or "file not found"}, {})
        self._stage, self._faces, self._cnn_faces = "probe", 0, 0
        if self.identity is not None:
            self.identity.reset(0)  # a video that fails before its plan must not report the previous one's identity
        try:
            status, error = self._extract_video(record, original_path, sink, timings, row)
        except VideoError as exc:
            status, error = exc.status, str(exc)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any bug or library failure inside one video is that video's row
            if self._stage == "write":
                raise
            status, error = INTERNAL_ERROR, internal_reason(self.stage(), exc)
        finally:
            pairing = self._close_pairing(timings)
        if pairing is not None and pairing.registering:
            row["pair"] = pairing.summary(self._faces)
        if self.identity is not None:
            status, error = self._identity_columns(row, status, error)
        row.update(status=status, error=error, faces_written=self._faces, faces_cnn=self._cnn_faces)
        return VideoResult(row, dict(timings))

    def _identity_columns(self, row: dict[str, Any], status: str, error: str) -> tuple[str, str]:
        """The video's identity descriptor (from whatever faces it gave); a failure here is an internal_error too."""
        try:
            row["identity"], row["identity_faces"] = self.identity.video_identity()  # type: ignore[union-attr]
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - see extract()
            return INTERNAL_ERROR, internal_reason("identity", exc)
        return status, error

    def _extract_video(self, record: VideoRecord, original_path: str | None, sink: Callable[[Sample], None],
                       timings: Counter[str], row: dict[str, Any]) -> tuple[str, str]:
        """Probe, plan, run the plan and summarise; fills the row's plan columns as it goes."""
        started = time.monotonic()
        info = probe(record.path)
        self.probe_cache[record.path] = info
        self._stage = "plan"
        deadline = started + self.config.sampling.video_timeout_s
        self.pairing = self._start_pairing(record, info, original_path, deadline)
        plan = self.pairing.family.plan
        timings["probe"] += time.monotonic() - started
        row.update(frames_planned=len(plan), plan=self.pairing.family.note, frame_count=info.frame_count,
                   fps=info.fps)
        return outcome(self._run_plan(record, info, plan, deadline, sink, timings), plan)

    def stage(self) -> str:
        """The stage the current video is in; detection reports whether it was finding faces or landmarks."""
        return self.analyzer.stage if self._stage == "detect" else self._stage

    def _start_pairing(self, record: VideoRecord, info: VideoInfo, original_path: str | None,
                       deadline: float) -> Pairing:
        """Plan this video's frames with its family, and open its original when originals are registered."""
        registering = self.config.output.registered_original
        family = family_plan(record, info, original_path, self.config.sampling, self.probe_cache, registering)
        return start_pairing(record, family, registering, deadline, self.decode_threads)

    def _close_pairing(self, timings: Counter[str]) -> Pairing | None:
        """Close the current video's original decoder; its decode time moves from encode to its own stage."""
        pairing, self.pairing = self.pairing, None
        if pairing is not None:
            pairing.close()
            timings["encode"] -= pairing.seconds  # the original's decode ran inside the encode stage
            timings["decode_original"] += pairing.seconds
        return pairing

    def _run_plan(self, record: VideoRecord, info: VideoInfo, plan: list[int], deadline: float,
                  sink: Callable[[Sample], None], timings: Counter[str]) -> dict[int, int]:
        """Planned frames first, then neighbours of faceless ones; returns planned frame → faces written."""
        self.analyzer.reset()
        self._boxes = {}
        if self.identity is not None:
            self.identity.reset(len(plan))
        written: dict[int, int] = {}
        for frame in self._decode(record.path, plan, info, deadline, timings):
            written[frame.index] = self._emit(record, frame, frame.index, sink, timings)
        missing = [p for p in plan if not written.get(p)]
        if missing and self.config.sampling.neighbour_retry > 0:
            self._retry_neighbours(record, info, missing, deadline, sink, timings, written)
            missing = [p for p in plan if not written.get(p)]
        if missing and self.analyzer.cascade is not None:
            self._cascade_pass(record, info, missing, deadline, sink, timings, written)
        return written

    def _cascade_pass(self, record: VideoRecord, info: VideoInfo, missing: list[int], deadline: float,
                      sink: Callable[[Sample], None], timings: Counter[str], written: dict[int, int]) -> None:
        """Last pass of `detector: cascade`: the planned frames HOG and the neighbour retry left faceless are
        decoded again and searched with the CNN, so its cost is paid only where HOG found nothing."""
        self.analyzer.reset()
        for frame in self._decode(record.path, missing, info, deadline, timings):
            faces = self._detect(frame.pixels, timings, hints=nearest_boxes(self._boxes, frame.index))
            written[frame.index] = self._write_faces(record, frame, frame.index, faces, sink, timings)

    def _retry_neighbours(self, record: VideoRecord, info: VideoInfo, missing: list[int], deadline: float,
                          sink: Callable[[Sample], None], timings: Counter[str], written: dict[int, int]) -> None:
        """Second pass: each faceless planned frame takes its nearest neighbour (+1, -1, +2, …) with a face."""
        reach = self.config.sampling.neighbour_retry
        planned = set(written)
        wanted = {p: [n for n in neighbour_order(p, reach, info.frame_count) if n not in planned] for p in missing}
        needed = sorted({n for options in wanted.values() for n in options})
        seen: set[int] = set()
        with_faces: dict[int, tuple[DecodedFrame, list[Face]]] = {}
        self.analyzer.reset()
        for frame in self._decode(record.path, needed, info, deadline, timings):
            seen.add(frame.index)
            faces = self._detect(frame.pixels, timings)
            if faces:
                with_faces[frame.index] = (frame, faces)
            for target in list(wanted):
                choice = _first_with_face(wanted[target], seen, with_faces)
                if choice is _UNDECIDED:
                    continue
                del wanted[target]
                if choice is not None:
                    chosen_frame, chosen_faces = with_faces.pop(choice)
                    written[target] = self._write_faces(record, chosen_frame, target, chosen_faces, sink, timings)
            still_useful = {n for options in wanted.values() for n in options}
            with_faces = {i: v for i, v in with_faces.items() if i in still_useful}

    def _decode(self, path: str, indices: list[int], info: VideoInfo, deadline: float,
                timings: Counter[str]) -> Iterable[DecodedFrame]:
        """Decoded frames from a decode thread running ahead; `decode` time is what the face work waited for."""
        self._stage = "decode"
        frames = prefetched(lambda: decode_frames(path, indices, info, deadline=deadline,
                                                  threads=self.decode_threads))
        with closing(frames):  # stops the decode thread however this loop ends
            while True:
                started = time.monotonic()
                self._stage = "decode"
                frame = next(frames, None)
                timings["decode"] += time.monotonic() - started  # time spent waiting for the decode thread
                if frame is None:
                    return
                yield frame
                if time.monotonic() > deadline:
                    raise VideoError(TIMEOUT, f"video took longer than {self.config.sampling.video_timeout_s:g}s")

    def _detect(self, image: Picture, timings: Counter[str], hints: list[Box] | None = None) -> list[Face]:
        """Faces in one frame (by the cascade's CNN when given `hints`), with detector and landmark time accounted."""
        before = dict(self.analyzer.timings)
        self._stage = "detect"
        faces = self.analyzer.analyze(image) if hints is None else self.analyzer.analyze_fallback(image, hints)
        for stage in ("detect", "landmarks"):
            timings[stage] += self.analyzer.timings.get(stage, 0.0) - before.get(stage, 0.0)
        return faces

    def _emit(self, record: VideoRecord, frame: DecodedFrame, planned: int, sink: Callable[[Sample], None],
              timings: Counter[str]) -> int:
        """Detect on a planned frame and write its faces; returns how many were written."""
        return self._write_faces(record, frame, planned, self._detect(frame.pixels, timings), sink, timings)

    def _write_faces(self, record: VideoRecord, frame: DecodedFrame, planned: int, faces: list[Face],
                     sink: Callable[[Sample], None], timings: Counter[str]) -> int:
        """Align, encode and hand each face of a frame to the sink."""
        self._boxes.setdefault(frame.index, []).extend(face.box for face in faces)
        for face in faces:
            started = time.monotonic()
            self._stage = "align"
            aligned = align_face(frame.pixels, face.landmarks, face.box, self.config.alignment)
            timings["align"] += time.monotonic() - started
            started = time.monotonic()
            self._stage = "encode"
            sample = self._sample(record, frame, planned, face, aligned)
            self._stage = "write"
            sink(sample)
            self._faces += 1
            self._cnn_faces += int(face.detector == "cnn")
            timings["encode"] += time.monotonic() - started
            if self.identity is not None:
                started = time.monotonic()
                self._stage = "identity"
                self.identity.observe(frame.image, face)
                timings["identity"] += time.monotonic() - started
        return len(faces)

    def _sample(self, record: VideoRecord, frame: DecodedFrame, planned: int, face: Face,
                aligned: AlignedFace) -> Sample:
        """Encode one aligned face with its landmarks and metadata."""
        output = self.config.output
        track = face.track_id if self.config.detection.select == "all" else None
        key = sample_key(record.video_id, frame.index, track)
        meta = sample_meta(record, frame, planned, face, aligned, key, track)
        members = {output.image_format: encode_image(aligned.crop, output.image_format, output.quality),
                   "ldm.npy": encode_npy(aligned.landmarks.astype(np.float32))}
        if aligned.context is not None:
            members[f"context.{output.image_format}"] = encode_image(aligned.context, output.image_format,
                                                                     output.quality)
        if self.pairing is not None:
            self.pairing.annotate(meta, frame.index, planned, track)
            members.update(self.pairing.original_members(frame.index, frame.shape, aligned, output, meta))
        members["json"] = json.dumps(meta, separators=(",", ":")).encode()
        row = index_row(record, frame, planned, face, meta)
        if output.registered_original:
            row["has_original"] = bool(meta.get("has_original"))
        return Sample(key, members, row)


_UNDECIDED = -1


def _first_with_face(options: list[int], seen: set[int], with_faces: dict[int, Any]) -> int | None:
    """The preferred neighbour with a face, None if none has one, _UNDECIDED while a better one is pending."""
    for option in options:
        if option in with_faces:
            return option
        if option not in seen:
            return _UNDECIDED
    return None


def nearest_boxes(boxes: dict[int, list[Box]], index: int) -> list[Box]:
    """The face boxes of the nearest frames with faces before and after `index`: where the cascade's CNN looks
    first (a face HOG lost for a few frames is still near where it was seen)."""
    before = max((i for i in boxes if i < index and boxes[i]), default=None)
    after = min((i for i in boxes if i > index and boxes[i]), default=None)
    return [box for i in (before, after) if i is not None for box in boxes[i]]


def internal_reason(stage: str, exc: BaseException) -> str:
    """One line for an internal_error row: stage, exception type and its first line (`align: ValueError: …`)."""
    return f"internal error in {stage}: {type(exc).__name__}: {one_line(exc, limit=160, fallback='(no message)')}"


def outcome(written: dict[int, int], plan: list[int]) -> tuple[str, str]:
    """Status and one-line reason from how many planned frames got a face."""
    with_face = sum(1 for p in plan if written.get(p))
    if not plan:
        return NO_FACE, "video has no frames to sample"
    if with_face == len(plan):
        return OK, ""
    if with_face == 0:
        return NO_FACE, f"no face found in any of {len(plan)} planned frames (or their neighbours)"
    return PARTIAL, f"no face in {len(plan) - with_face} of {len(plan)} planned frames (or their neighbours)"


def base_row(record: VideoRecord) -> dict[str, Any]:
    """The videos.parquet row before extraction fills in the outcome."""
    return {**record.to_row(), "status": "", "error": "", "frames_planned": 0, "faces_written": 0, "faces_cnn": 0,
            "plan": "", "frame_count": 0, "fps": 0.0, "shard": ""}


def sample_meta(record: VideoRecord, frame: DecodedFrame, planned: int, face: Face, aligned: AlignedFace,
                key: str, track: int | None) -> dict[str, Any]:
    """The `<key>.json` member: everything needed to trace a crop back to its video frame."""
    meta = {
        "key": key, "label": record.label, "video_id": record.video_id, "dataset": record.dataset,
        "method": record.method, "split": record.split, "family_id": record.family_id,
        "frame": frame.index, "planned_frame": planned, "pts": round(frame.pts_seconds, 6),
        "bbox": [round(float(v), 2) for v in face.box], "score": round(float(face.score), 4),
        "landmarks": np.round(face.landmarks, 2).tolist(), "matrix": np.round(aligned.matrix, 6).tolist(),
        "track_id": face.track_id, "detector": face.detector,
        **dict.fromkeys(SAMPLE_JSON_STRINGS, ""),  # in every sample, so readers infer one schema; a fake's pair fills it
    }
    if aligned.context_matrix is not None:
        meta["context_matrix"] = np.round(aligned.context_matrix, 6).tolist()
    return meta


def index_row(record: VideoRecord, frame: DecodedFrame, planned: int, face: Face,
              meta: dict[str, Any]) -> dict[str, Any]:
    """The per-shard parquet row for one sample."""
    x0, y0, x1, y1 = (float(v) for v in face.box)
    return {
        "video_id": record.video_id, "dataset": record.dataset, "method": record.method,
        "split": record.split, "label": record.label, "family_id": record.family_id,
        "frame": frame.index, "planned_frame": planned, "pts": float(frame.pts_seconds),
        "track_id": int(face.track_id), "score": float(face.score),
        "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1, "pair_key": meta.get("pair_key") or None,
        "detector": face.detector,
    }
