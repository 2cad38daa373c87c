"""Fake/original pairs: one frame plan for both, and the original's frame cut with the fake's geometry.

CADDM trains on a fake frame and its original's frame *at the same index*, both cut with the fake's
landmarks, and blends regions between the two. Here a fake's plan is its original's plan when the frame
counts agree, else both videos are sampled on the same absolute indices clamped to the shorter one. With
`output.registered_original` the original video is decoded in step with the fake (one frame of each in
memory, whatever the unit, worker or run the original itself was extracted in) and each fake sample also
stores the original's frame warped with the fake's own matrix: `<key>.original.<ext>` (and
`<key>.original_context.<ext>` beside a context crop). A fake without one says why, in its sample json
(`has_original`, `original_missing`) and in its videos.parquet row (`plan`, `pair`).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2

from dfprep.vision.align import AlignedFace, warp
from dfprep.catalog.base import VideoRecord
from dfprep.config import OutputConfig, SamplingConfig
from dfprep.io.keys import sample_key
from dfprep.io.shards import encode_image
from dfprep.vision.pixels import Picture, pixels_in
from dfprep.vision.video import DecodedFrame, VideoError, VideoInfo, decode_frames, frame_plan, probe

PAIRED = "paired"
CLAMPED = "clamped"
ORIGINAL_MEMBER = "original"
ORIGINAL_CONTEXT_MEMBER = "original_context"


@dataclass(frozen=True)
class FamilyPlan:
    """A video's frame plan, the note for videos.parquet's `plan` column, and the original it pairs with."""

    plan: list[int]
    note: str
    original: VideoInfo | None = None  # the fake's original, probed; None when there is no pair
    shares_original_plan: bool = False  # the original's own samples sit on exactly these frames


def family_plan(record: VideoRecord, info: VideoInfo, original_path: str | None, sampling: SamplingConfig,
                probe_cache: dict[str, VideoInfo], registering: bool = False) -> FamilyPlan:
    """A fake's plan on its original's frames (clamped to the shorter video), else its own plan and why."""
    own = frame_plan(info, sampling)
    if record.label == 0 or not (sampling.pair_with_original or registering):
        return FamilyPlan(own, "own")
    original, problem = _probe_original(original_path, probe_cache)
    if original is None:
        return FamilyPlan(own, f"own: {problem}")
    original_plan = frame_plan(original, sampling)
    if not sampling.pair_with_original:
        return FamilyPlan(own, "own", original, own == original_plan)
    if original.frame_count == info.frame_count:
        return FamilyPlan(original_plan, PAIRED, original, True)
    shorter = min(original.frame_count, info.frame_count)
    clamped = frame_plan(dataclasses.replace(info, frame_count=shorter), sampling)
    note = (f"{CLAMPED}: frame counts differ (fake {info.frame_count}, original {original.frame_count}); "
            f"both sampled on the same frames within the first {shorter}")
    return FamilyPlan(clamped, note, original, clamped == original_plan)


def _probe_original(path: str | None, probe_cache: dict[str, VideoInfo]) -> tuple[VideoInfo | None, str]:
    """The original's VideoInfo (cached per worker), or None and a one-line reason."""
    if not path or not Path(path).is_file():
        return None, "original video absent"
    try:
        original = probe_cache.get(path) or probe(path)
    except VideoError as exc:
        return None, f"original unreadable ({exc})"
    probe_cache[path] = original
    return original, ""


class OriginalFrames:
    """The original video's frames at the fake's indices, decoded in step with the fake.

    Requests come in the fake's frame order; each advances one decoder over the original, so one original
    frame is held at a time. A request the running decoder will not deliver (a neighbour standing in for a
    faceless frame, behind it or between its frames) restarts it from there: a seek, never memory.
    """

    def __init__(self, info: VideoInfo, plan: Sequence[int], deadline: float | None, threads: int = 0):
        self.info = info
        self.wanted = sorted({int(i) for i in plan if 0 <= i < info.frame_count})
        self.deadline, self.threads = deadline, threads
        self._frames: Iterator[DecodedFrame] | None = None
        self._current: DecodedFrame | None = None
        self._run: frozenset[int] = frozenset()  # the frames the running decoder will deliver
        self.failure = ""  # set when the original stopped decoding: every later request gets it

    def at(self, index: int) -> tuple[Picture | None, str]:
        """The original's RGB frame at `index` (converted where it is read), or None and why it is not there."""
        if index >= self.info.frame_count:
            return None, f"original has {self.info.frame_count} frames"
        if self.failure:
            return None, self.failure
        if self._current is not None and self._current.index == index:
            return self._current.pixels, ""  # a second face on the same frame
        if self._frames is None or index not in self._run or (self._current and index < self._current.index):
            self._restart(index)
        try:
            while self._current is None or self._current.index < index:
                self._current = next(self._frames)  # type: ignore[arg-type]
        except StopIteration:
            self._current = None
            return None, f"original frame {index} could not be decoded"
        except VideoError as exc:
            self.failure = f"original {exc.status}: {exc}"
            self.close()
            return None, self.failure
        if self._current.index != index:
            return None, f"original frame {index} could not be decoded"
        return self._current.pixels, ""

    def _restart(self, index: int) -> None:
        """(Re)start decoding at `index`, then on to the later wanted frames."""
        self.close()
        later = sorted({index, *[i for i in self.wanted if i > index]})
        self._run = frozenset(later)
        self._frames = iter(decode_frames(self.info.path, later, self.info, deadline=self.deadline,
                                          threads=self.threads))

    def close(self) -> None:
        """Release the decoder (closes the original's container)."""
        if self._frames is not None and hasattr(self._frames, "close"):
            self._frames.close()  # type: ignore[union-attr]
        self._frames, self._current = None, None


class Pairing:
    """One video's pairing state while it is extracted: pair_key, registered crops and their tally."""

    def __init__(self, record: VideoRecord, family: FamilyPlan, frames: OriginalFrames | None,
                 registering: bool):
        self.record, self.family, self.frames, self.registering = record, family, frames, registering
        self.registered = 0
        self.missing: Counter[str] = Counter()
        self.resized_from: tuple[int, int] | None = None
        self.seconds = 0.0  # spent decoding the original

    @property
    def is_fake(self) -> bool:
        """Whether this video is a fake with an original to pair with (by identity, not by file)."""
        return self.record.label == 1 and self.record.family_id != self.record.video_id

    def annotate(self, meta: dict[str, Any], frame: int, planned: int, track: int | None) -> None:
        """Add pair_key to a fake sample's json when the original's own sample can sit on that frame.

        That is when both videos have the same plan and this face is on its planned frame (not a neighbour
        standing in for it); the key is still absent from the shards if the original had no face there.
        """
        if self.is_fake and self.family.shares_original_plan and frame == planned:
            meta["pair_key"] = sample_key(self.record.family_id, frame, track)

    def original_members(self, frame_index: int, frame_shape: tuple[int, ...], aligned: AlignedFace,
                         output: OutputConfig, meta: dict[str, Any]) -> dict[str, bytes]:
        """`original.<ext>` (+ `original_context.<ext>`) cut with the fake's matrices; records the outcome in meta."""
        if not self.registering:
            return {}
        image, problem = self._original_image(frame_index, frame_shape)
        meta["has_original"] = image is not None
        meta["original_missing"] = ""  # in every sample's json (one schema for readers); why, when a fake lacks it
        if image is None:
            if self.record.label == 1:
                meta["original_missing"] = problem
                self.missing[problem] += 1
            return {}
        self.registered += 1
        members = {f"{ORIGINAL_MEMBER}.{output.image_format}":
                   encode_image(warp(image, aligned.matrix, aligned.crop.shape[0]), output.image_format,
                                output.quality)}
        if aligned.context is not None and aligned.context_matrix is not None:
            members[f"{ORIGINAL_CONTEXT_MEMBER}.{output.image_format}"] = encode_image(
                warp(image, aligned.context_matrix, aligned.context.shape[0]), output.image_format, output.quality)
        return members

    def _original_image(self, frame_index: int, frame_shape: tuple[int, ...]) -> tuple[Picture | None, str]:
        """The original's frame at this index, at the fake's frame size (resized as CADDM does when they differ)."""
        if self.record.label == 0:
            return None, "a real video is its own original"
        if self.frames is None:
            note = self.family.note
            return None, note[len("own: "):] if note.startswith("own: ") else "no original video known"
        started = time.monotonic()
        image, problem = self.frames.at(frame_index)
        self.seconds += time.monotonic() - started
        if image is None or image.shape == frame_shape:
            return image, problem
        self.resized_from = (image.shape[1], image.shape[0])
        return cv2.resize(pixels_in(image), (frame_shape[1], frame_shape[0]), interpolation=cv2.INTER_LINEAR), ""

    def summary(self, faces_written: int) -> str:
        """The videos.parquet `pair` note: how many faces got a registered original, and why not the rest."""
        if not self.registering or self.record.label == 0:
            return ""
        text = f"registered {self.registered}/{faces_written}"
        if self.missing:
            reason, count = self.missing.most_common(1)[0]
            text += f" ({sum(self.missing.values())} without: {reason})"
        if self.resized_from is not None:
            text += f"; original frames resized from {self.resized_from[0]}x{self.resized_from[1]}"
        return text

    def close(self) -> None:
        """Release the original's decoder."""
        if self.frames is not None:
            self.frames.close()


def start_pairing(record: VideoRecord, family: FamilyPlan, registering: bool, deadline: float | None,
                  threads: int) -> Pairing:
    """The pairing state of one video: an in-step decoder over its original when crops are registered."""
    frames = None
    if registering and record.label == 1 and family.original is not None:
        frames = OriginalFrames(family.original, family.plan, deadline, threads)
    return Pairing(record, family, frames, registering)
