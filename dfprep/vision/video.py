"""Decode stage: probe a video, plan which frames become samples, decode only those frames.

Frame index = position in presentation order, counted from the first frame. Packets are ranked by
their presentation timestamp (a demux-only scan, no decoding), which lets the decoder seek to a
keyframe, skip non-reference frames between planned ones, and still name every frame exactly.
A seek counts only if the demuxer lands on a keyframe at or before the target; otherwise decoding
falls back to plain sequential order, which is always exact.
"""

from __future__ import annotations

import bisect
import itertools
import os
import queue
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Generator, Iterable, Iterator, Sequence, TypeVar

import av
import numpy as np

from dfprep.config import SamplingConfig
from dfprep.io.layout import DECODE_ERROR, MISSING, TIMEOUT, UNSUPPORTED, VIDEO_STATUSES
from dfprep.vision.pixels import FramePixels

# Codecs whose non-reference frames no other frame is predicted from, so skipping them is exact.
NONREF_SKIP_CODECS = frozenset({"h264"})
# A seek flushes the threaded decoder; it must skip at least this many frames to pay off.
SEEK_MIN_GAP = 16
# Packets scanned past the last planned frame: covers B-frame reordering (at most 16 in H.264/HEVC).
REORDER_MARGIN = 64
# Container metadata is trusted when frames ≈ duration × fps within this share (or one frame).
COUNT_TOLERANCE = 0.02

# Leading bytes of video containers: a file that starts like one but fails to open is corrupt, not alien.
_CONTAINER_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),  # mp4 / mov
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"RIFF"),  # avi
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # mpeg program stream
    (0, b"\x30\x26\xb2\x75"),  # asf / wmv
    (0, b"\x47"),  # mpeg transport stream sync byte
)
# Decoded frames a decode thread may hold ahead of the face work: enough to cover a slow face, bounded so
# memory stays flat (a 1080p frame is 3-6 MB).
PREFETCH_FRAMES = 3
# How long a stopped consumer waits for its decode thread (it stops between frames; a frame takes ms).
_PREFETCH_JOIN_S = 10.0
T = TypeVar("T")


class VideoError(Exception):
    """A per-video failure the engine records as status + one-line error instead of raising it further."""

    def __init__(self, status: str, message: str):
        if status not in VIDEO_STATUSES:
            raise ValueError(f"unknown video status {status!r}")
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # Exception pickles args only; Ray needs both fields back
        return (type(self), (self.status, self.message), self.__dict__)


@dataclass(frozen=True)
class VideoInfo:
    """What planning and decoding need to know about a video, read without decoding it."""

    path: str
    frame_count: int
    fps: float
    duration: float
    width: int  # displayed size, after rotation
    height: int
    rotation: int  # counterclockwise degrees (0/90/180/270) that turn decoded frames upright
    codec: str
    gop: int  # largest keyframe interval seen, in frames
    frame_count_source: str  # "metadata" | "packets"


@dataclass(frozen=True)
class DecodedFrame:
    """One planned frame, upright RGB (converted where it is read), with where it sits in the video."""

    index: int
    pts_seconds: float
    pixels: FramePixels

    @property
    def image(self) -> np.ndarray:
        """The whole frame, RGB uint8, H x W x 3."""
        return self.pixels.full()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3) of the upright frame, without converting it."""
        return self.pixels.shape


@dataclass(frozen=True)
class PacketIndex:
    """Presentation order of a stream's frames, from packet timestamps alone (demuxed, not decoded)."""

    frame_count: int
    pts: np.ndarray  # sorted presentation timestamps: position = frame index; empty when unusable
    keyframes: tuple[int, ...]  # frame indices of keyframes, ascending
    complete: bool  # the scan reached the end of the stream
    keyframe_dts: tuple[int | None, ...] = ()  # decode timestamp of each keyframe (same order)

    def index_of(self, pts: int | None) -> int | None:
        """Frame index of an exact presentation timestamp, None when unknown."""
        if pts is None or not len(self.pts):
            return None
        position = int(np.searchsorted(self.pts, pts))
        return position if position < len(self.pts) and self.pts[position] == pts else None

    def seek_timestamps(self, keyframe: int) -> list[int]:
        """Timestamps to seek to for a keyframe: its pts, then its dts (demuxers differ in which they match)."""
        position = bisect.bisect_left(self.keyframes, keyframe)
        dts = self.keyframe_dts[position] if position < len(self.keyframe_dts) else None
        pts = int(self.pts[keyframe])
        return [pts] if dts is None or dts == pts else [pts, int(dts)]

    def keyframe_at_or_before(self, index: int) -> int | None:
        """The keyframe a decode reaching `index` can start from (None: before the first keyframe)."""
        position = bisect.bisect_right(self.keyframes, index)
        return self.keyframes[position - 1] if position else None


def _reason(exc: BaseException) -> str:
    """One-line cause of a library error, without paths, errno numbers or tracebacks."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _looks_like_video(path: str) -> bool:
    """Whether a file starts like a known video container (so failing to open it means it is damaged)."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    return any(head[offset:offset + len(magic)] == magic for offset, magic in _CONTAINER_SIGNATURES)


def open_video(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open a video for demuxing; every failure becomes a VideoError with a status."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise VideoError(MISSING, "file not found")
    if not os.path.isfile(name):
        raise VideoError(UNSUPPORTED, "not a regular file")
    if os.path.getsize(name) == 0:
        raise VideoError(DECODE_ERROR, "empty file")
    try:
        return _open_lean(name)
    except FileNotFoundError:
        raise VideoError(MISSING, "file not found") from None
    except av.FFmpegError as exc:
        status = DECODE_ERROR if _looks_like_video(name) else UNSUPPORTED
        raise VideoError(status, f"cannot open: {_reason(exc)}") from None
    except OSError as exc:
        raise VideoError(DECODE_ERROR, f"cannot open: {_reason(exc)}") from None


def _open_lean(name: str) -> av.container.InputContainer:
    """av.open without the trial decode stream-info probing does (a whole HD frame per open)."""
    try:
        return av.open(name, "r", metadata_errors="ignore", stream_options=[{"skip_frame": "all"}] * 8)
    except ValueError as exc:  # formats that only reveal their streams while probing (MPEG-TS/PS)
        if isinstance(exc, av.FFmpegError):
            raise
        return av.open(name, "r", metadata_errors="ignore")


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream (cover art does not count), or an 'unsupported' VideoError."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            if stream.codec_context is None:
                raise VideoError(UNSUPPORTED, "no decoder for the video codec")
            return stream
    raise VideoError(UNSUPPORTED, "no video stream")


def scan_packets(path: str | os.PathLike[str], stop_after: int | None = None) -> PacketIndex:
    """Rank packets by presentation time (demux only); stop a margin past frame `stop_after` if given."""
    timestamps: list[int | None] = []
    keyframe_positions: list[int] = []
    keyframe_dts: list[int | None] = []
    complete = True
    with open_video(path) as container:
        stream = video_stream(container)
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.is_keyframe:
                    keyframe_positions.append(len(timestamps))
                    keyframe_dts.append(packet.dts)
                timestamps.append(packet.pts)
                if stop_after is not None and len(timestamps) > stop_after + REORDER_MARGIN:
                    complete = False
                    break
        except av.FFmpegError:
            complete = False  # damaged tail: the decoder reports it when it gets there
    return _packet_index(timestamps, keyframe_positions, keyframe_dts, complete)


def _packet_index(timestamps: list[int | None], keyframe_positions: list[int], keyframe_dts: list[int | None],
                  complete: bool) -> PacketIndex:
    """Sort timestamps into presentation order; missing or repeated timestamps rank nothing."""
    usable = all(pts is not None for pts in timestamps)
    ordered = np.sort(np.asarray(timestamps if usable else [], dtype=np.int64))
    if len(ordered) > 1 and bool(np.any(np.diff(ordered) == 0)):
        usable, ordered = False, np.empty(0, np.int64)
    if not usable:  # decode order then stands in for presentation order (exact without B-frames)
        return PacketIndex(len(timestamps), ordered, tuple(keyframe_positions), complete)
    keyframe_pts = np.asarray([timestamps[p] for p in keyframe_positions], dtype=np.int64)
    ranked = sorted(zip((int(i) for i in np.searchsorted(ordered, keyframe_pts)), keyframe_dts))
    return PacketIndex(len(timestamps), ordered, tuple(r for r, _ in ranked), complete, tuple(d for _, d in ranked))


def keyframe_gap(keyframes: Sequence[int], frame_count: int) -> int:
    """Largest run of frames a decode may need before reaching any frame (the tail counts too)."""
    if not keyframes or frame_count <= 0:
        return max(frame_count, 1)
    bounds = list(keyframes) + [frame_count]
    return max(max(b - a for a, b in zip(bounds, bounds[1:])), 1)


def _frame_rate(stream: av.video.stream.VideoStream) -> float:
    """Nominal frames per second: average rate, else the demuxer's guess, else the stream's base rate."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _duration_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """Stream duration in seconds, else the container's, else 0 (unknown)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _upright_rotation(degrees: float) -> int:
    """Display-matrix angle (counterclockwise, -180..180) as 0/90/180/270."""
    return int(round(degrees / 90.0)) * 90 % 360


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame:
    """Decode the first frame: proves the stream decodes and carries the true size and display rotation."""
    stream.codec_context.options = {"skip_loop_filter": "all"}  # its pixels are not used: ~15% cheaper
    stream.codec_context.thread_count = 1  # one frame: a thread pool costs more to start (~3 ms) than it saves
    try:
        for packet in container.demux(stream):
            for frame in stream.codec_context.decode(packet):
                return frame
    except av.error.DecoderNotFoundError:
        raise VideoError(UNSUPPORTED, f"no decoder for codec {stream.codec_context.name}") from None
    except av.FFmpegError as exc:
        raise VideoError(DECODE_ERROR, f"cannot decode: {_reason(exc)}") from None
    raise VideoError(DECODE_ERROR, "no decodable frame")


def _index_keyframes(stream: av.video.stream.VideoStream, frame_count: int) -> list[int] | None:
    """Keyframe positions from the container's own sample index (mp4, avi), when it lists every frame."""
    entries = stream.index_entries
    if frame_count <= 0 or len(entries) != frame_count:
        return None
    return [position for position, entry in enumerate(entries) if entry.is_keyframe]


def _count_is_plausible(frames: int, duration: float, fps: float) -> bool:
    """Container frame counts lie: trust one only when it matches duration × fps."""
    if frames <= 0 or duration <= 0 or fps <= 0:
        return False
    return abs(frames - duration * fps) <= max(COUNT_TOLERANCE * frames, 1.0)


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read count, rate, upright size, rotation and GOP: metadata when it holds up, packets when not."""
    with open_video(path) as container:
        stream = video_stream(container)
        fps, duration = _frame_rate(stream), _duration_seconds(container, stream)
        claimed = int(stream.frames or 0)
        keyframes = _index_keyframes(stream, claimed) if _count_is_plausible(claimed, duration, fps) else None
        codec = stream.codec_context.name
        first = _first_frame(container, stream)
        width, height, rotation = first.width, first.height, _upright_rotation(first.rotation)
    if keyframes is not None:
        frame_count, source = claimed, "metadata"
    else:
        packets = scan_packets(path)
        frame_count, source, keyframes = packets.frame_count, "packets", list(packets.keyframes)
    if fps <= 0:
        if duration <= 0:
            raise VideoError(UNSUPPORTED, "unknown frame rate")
        fps = frame_count / duration
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(str(os.fspath(path)), frame_count, fps, duration or frame_count / fps, width, height,
                     rotation, codec, keyframe_gap(keyframes, frame_count), source)


def _thin(plan: list[int], cap: int) -> list[int]:
    """Keep `cap` evenly spread entries of a plan (0 = no cap)."""
    if cap <= 0 or len(plan) <= cap:
        return plan
    return [plan[int(p)] for p in np.linspace(0, len(plan) - 1, cap, dtype=int)]


def _fps_plan(info: VideoInfo, rate: float) -> list[int]:
    """The frame nearest each multiple of 1/rate seconds (frame i shows at i / fps)."""
    step = info.fps / rate  # frames between samples
    samples = int(np.floor((info.frame_count - 1) / step + 1e-9)) + 1
    indices = np.rint(np.arange(samples) * step).astype(int)
    return sorted({int(i) for i in indices if i < info.frame_count})


def frame_plan(info: VideoInfo, sampling: SamplingConfig) -> list[int]:
    """Sorted, unique, deterministic frame indices that become samples."""
    count, mode = info.frame_count, sampling.mode
    if count <= 0:
        return []
    if mode == "uniform":
        return sorted({int(i) for i in np.linspace(0, count - 1, sampling.frames, dtype=int)})
    if mode == "stride":
        plan = list(range(0, count, sampling.stride))
    elif mode == "fps":
        plan = _fps_plan(info, sampling.fps)
    elif mode == "all":
        plan = list(range(count))
    elif mode == "keyframes":
        plan = [k for k in scan_packets(info.path).keyframes if k < count]
    else:
        raise ValueError(f"unknown sampling mode {mode!r}")
    return _thin(plan, sampling.max_frames)


class _LandingMissed(Exception):
    """A seek landed past the first frame of its run; an earlier keyframe must be tried."""


class _SeekUnreliable(Exception):
    """The demuxer cannot be made to land on a keyframe: decode sequentially instead."""


def decode_runs(wanted: Sequence[int], packets: PacketIndex | None) -> list[tuple[int | None, list[int]]]:
    """Split sorted indices into runs (keyframe to seek to, or None to decode on; indices): seek where it pays."""
    runs: list[tuple[int | None, list[int]]] = []
    position = -1  # last frame the decoder will have produced
    for index in wanted:
        key = packets.keyframe_at_or_before(index) if packets is not None else None
        if key is not None and key > position + SEEK_MIN_GAP:
            runs.append((key, [index]))
        elif runs:
            runs[-1][1].append(index)
        else:
            runs.append((None, [index]))
        position = index
    return runs


def _check_deadline(deadline: float | None, index: int) -> None:
    """Raise 'timeout' once the per-video wall-clock budget is spent."""
    if deadline is not None and time.monotonic() > deadline:
        where = f"after frame {index}" if index >= 0 else "before the first frame"
        raise VideoError(TIMEOUT, f"decode deadline passed {where}")


def _frame_index(frame: av.VideoFrame, packets: PacketIndex | None, previous: int) -> int:
    """A frame's index from its timestamp's rank; counting on from the previous frame when unranked."""
    index = packets.index_of(frame.pts) if packets is not None else None
    return previous + 1 if index is None else index


def _run_frames(demuxed: Iterable[av.Packet], codec: av.video.codeccontext.VideoCodecContext,
                packets: PacketIndex | None, targets: list[int], first: int, after_seek: bool,
                deadline: float | None, skip_nonref: bool) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decode on from the current position, yielding (index, frame) for each target, stopping at the last."""
    wanted, pending, index = set(targets), 0, first - 1
    for packet in demuxed:
        _check_deadline(deadline, index)
        if skip_nonref:  # packets is set whenever skipping is on
            needed = packet.size == 0 or packets.index_of(packet.pts) in wanted  # type: ignore[union-attr]
            codec.skip_frame = "DEFAULT" if needed else "NONREF"
        for frame in codec.decode(packet):
            index = _frame_index(frame, packets, index)
            if index < first:
                continue  # leading frames of an open GOP refer to frames before the seek point
            if index > targets[pending]:
                if after_seek and pending == 0:
                    raise _LandingMissed()
                raise VideoError(DECODE_ERROR, f"planned frame {targets[pending]} did not decode")
            if index == targets[pending]:
                yield index, frame
                pending += 1
                if pending == len(targets):
                    return
    raise VideoError(DECODE_ERROR, f"video ended after frame {index}, before planned frame {targets[pending]}")


def _land_on_keyframe(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                      packets: PacketIndex, start: int) -> Iterator[av.Packet] | None:
    """Seek to keyframe `start`: the packets from there if the demuxer landed on a keyframe no later than it."""
    for timestamp in packets.seek_timestamps(start):  # mp4/mkv land by pts; MPEG-TS needs the dts
        try:
            container.seek(timestamp, stream=stream, backward=True)  # also flushes the decoder
        except av.FFmpegError:
            raise _SeekUnreliable() from None
        demuxed = container.demux(stream)
        landing = next(demuxed, None)
        rank = packets.index_of(landing.pts) if landing is not None else None
        if landing is not None and landing.is_keyframe and rank is not None and rank <= start:
            return itertools.chain([landing], demuxed)
    return None


def _seek_run(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
              packets: PacketIndex | None, key: int | None, targets: list[int], deadline: float | None,
              skip_nonref: bool) -> Iterator[tuple[int, av.VideoFrame]]:
    """One run: seek to its keyframe (up to two earlier ones if the demuxer lands badly), then decode on."""
    codec = stream.codec_context
    if key is None or packets is None:
        yield from _run_frames(container.demux(stream), codec, packets, targets, 0, False, deadline, skip_nonref)
        return
    candidates = packets.keyframes[:bisect.bisect_right(packets.keyframes, key)]
    for start in reversed(candidates[-3:]):
        landed = _land_on_keyframe(container, stream, packets, start)
        if landed is None:
            continue
        try:
            yield from _run_frames(landed, codec, packets, targets, start, True, deadline, skip_nonref)
            return
        except _LandingMissed:
            continue
    raise _SeekUnreliable()


def _prime_decoder(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
    """Show the decoder the first packet before a seek skips it: its SEI and parameter sets set decoder state."""
    # e.g. FFmpeg's H.264 decoder emulates x264 < 151's 4:4:4 bug by encoder build, read from that SEI;
    # without it a seek into such a stream (FF++ Deepfakes videos) decodes to garbage.
    codec = stream.codec_context
    codec.skip_frame = "ALL"  # parse headers, decode no pixels
    for packet in container.demux(stream):
        codec.decode(packet)
        break
    codec.skip_frame = "DEFAULT"


def _decode_planned(path: str | os.PathLike[str], wanted: list[int], info: VideoInfo, packets: PacketIndex | None,
                    deadline: float | None, threads: int, skip_nonref: bool,
                    seek: bool) -> Iterator[DecodedFrame]:
    """One pass over the video: runs of sequential decoding, joined by keyframe seeks when `seek`."""
    with open_video(path) as container:
        stream = video_stream(container)
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        runs = decode_runs(wanted, packets if seek else None)
        try:
            if runs[0][0] is not None:  # the very first thing is a seek
                _prime_decoder(container, stream)
            for key, targets in runs:
                for index, frame in _seek_run(container, stream, packets, key, targets, deadline, skip_nonref):
                    seconds = float(frame.time) if frame.time is not None else index / info.fps
                    yield DecodedFrame(index, seconds, FramePixels(frame, info.rotation))
        except av.FFmpegError as exc:
            raise VideoError(DECODE_ERROR, f"cannot decode: {_reason(exc)}") from None


def decode_frames(path: str | os.PathLike[str], indices: Sequence[int], info: VideoInfo,
                  deadline: float | None = None, threads: int = 0, *, skip_nonref: bool = True,
                  seek: bool = True) -> Iterator[DecodedFrame]:
    """Yield the requested frames in index order, upright RGB, decoding no further than the last one."""
    # skip_nonref: drop non-reference frames between requested ones (exact for NONREF_SKIP_CODECS);
    # seek: jump to a keyframe across long gaps. Both name frames by packet-timestamp rank.
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return
    if wanted[0] < 0:
        raise ValueError(f"negative frame index {wanted[0]}")
    _check_deadline(deadline, -1)
    skip_nonref = skip_nonref and info.codec in NONREF_SKIP_CODECS
    packets = scan_packets(path, stop_after=wanted[-1]) if (skip_nonref or seek) else None
    if packets is not None and not len(packets.pts):
        packets, skip_nonref = None, False  # timestamps missing or repeated: count frames instead
    delivered = -1
    try:
        for frame in _decode_planned(path, wanted, info, packets, deadline, threads, skip_nonref, seek):
            delivered = frame.index
            yield frame
    except _SeekUnreliable:  # start again from the first frame, without seeking, for what is left
        rest = [i for i in wanted if i > delivered]
        yield from _decode_planned(path, rest, info, packets, deadline, threads, skip_nonref, False)


_END = object()  # the decode thread's last message: (_END, exception or None)


def prefetched(make: Callable[[], Iterator[T]], depth: int = PREFETCH_FRAMES) -> Generator[T, None, None]:
    """Items of `make()` produced by a decode thread, at most `depth` ahead: PyAV decodes and converts without
    the GIL, so the caller's face work runs meanwhile. The thread's errors are raised here, in order; closing
    this generator (or an error in the caller) stops the thread and closes its decoder."""
    items: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(make, items, stop), name="dfprep-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        _drain(items)  # a producer blocked on a full queue sees `stop` within its put timeout
        thread.join(_PREFETCH_JOIN_S)


def _produce(make: Callable[[], Iterator[T]], items: queue.Queue, stop: threading.Event) -> None:
    """Decode thread body: put each item (waiting while the queue is full), then the end message."""
    error: BaseException | None = None
    try:
        with closing(make()) as iterator:  # type: ignore[type-var]
            for item in iterator:
                if not _put(items, (item, None), stop):
                    return
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it in its own thread
        error = exc
    _put(items, (_END, error), stop)


def _put(items: queue.Queue, message: tuple[object, BaseException | None], stop: threading.Event) -> bool:
    """Put one message unless the consumer stopped listening; False once it has."""
    while not stop.is_set():
        try:
            items.put(message, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _drain(items: queue.Queue) -> None:
    """Drop whatever the decode thread queued and nobody will read."""
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return
