"""Probe, frame plans and exact planned-frame decoding (seek, non-reference skipping, rotation, errors)."""

import pickle
import time
from pathlib import Path

import av
import numpy as np
import pytest

from dfprep.config import SamplingConfig
from tests.helpers.synthetic import background, write_clip
from dfprep.vision.video import (VideoError, VideoInfo, decode_frames, decode_runs, frame_plan, keyframe_gap, probe,
                          scan_packets)

WIDTH, HEIGHT = 160, 120
BITS, BLOCK = 9, 16  # frame index stamped as 9 black/white blocks along the top row (up to 511)


def stamp_index(index: int, frame: np.ndarray) -> np.ndarray:
    """Write the frame index into the pixels, so a decoded frame names itself."""
    frame = frame.copy()
    for bit in range(BITS):
        frame[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255 if index >> bit & 1 else 0
    frame[BLOCK:, :] = np.roll(frame[BLOCK:, :], index, axis=1)  # and move the texture: every frame differs
    return frame


def read_index(image: np.ndarray) -> int:
    """The index stamped by `stamp_index`."""
    centre = BLOCK // 2
    return sum(1 << bit for bit in range(BITS) if image[centre, bit * BLOCK + centre].mean() > 128)


def marked(index: int, frame: np.ndarray) -> np.ndarray:
    """A bright square in the top-left corner: shows which way a rotated frame comes out."""
    frame = frame.copy()
    frame[:30, :30] = 250
    return frame


def sequential_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The oracle: plain PyAV decode from the first frame, counting frames, no seeking or skipping."""
    wanted, found = set(indices), {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= max(indices):
                break
    return found


def remux(source: Path, target: Path, **options: str) -> Path:
    """Copy a clip's packets into another container (mkv: no frame count; faststart mp4: index first)."""
    with av.open(str(source)) as src, av.open(str(target), "w", options=options) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return target


@pytest.fixture(scope="module")
def video_clips(tmp_path_factory) -> dict[str, Path]:
    """Clips shared by the tests of this file (generated once, under a second)."""
    root = tmp_path_factory.mktemp("video-clips")
    long = write_clip(root / "long.mp4", WIDTH, HEIGHT, 300, None, gop=25, frame_filter=stamp_index)
    return {
        "short": write_clip(root / "short.mp4", WIDTH, HEIGHT, 40, None, gop=10, frame_filter=stamp_index),
        "long": long,
        "mkv": remux(long, root / "long.mkv"),
        "ts": remux(long, root / "long.ts"),
        "faststart": remux(long, root / "faststart.mp4", movflags="faststart"),
    }


def test_probe_reads_count_rate_size_and_gop(video_clips):
    info = probe(video_clips["short"])
    assert (info.frame_count, info.fps, info.width, info.height) == (40, 25.0, WIDTH, HEIGHT)
    assert info.duration == pytest.approx(1.6)
    assert (info.rotation, info.codec, info.gop, info.frame_count_source) == (0, "h264", 10, "metadata")
    assert probe(video_clips["long"]).gop == 25


def test_probe_counts_packets_when_the_container_has_no_frame_count(video_clips):
    with av.open(str(video_clips["mkv"])) as container:
        assert container.streams.video[0].frames == 0  # matroska stores no count: metadata cannot be used
    info = probe(video_clips["mkv"])
    assert (info.frame_count, info.frame_count_source, info.gop) == (300, "packets", 25)
    packets = scan_packets(video_clips["mkv"])
    assert packets.frame_count == 300 and packets.complete
    assert packets.keyframes == tuple(range(0, 300, 25))


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotated_clips_come_out_the_way_players_show_them(tmp_path, rotation):
    path = write_clip(tmp_path / f"rot{rotation}.mp4", WIDTH, HEIGHT, 5, None, rotation=rotation, crf=4,
                      frame_filter=marked)
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (rotation, HEIGHT, WIDTH)
    image = next(iter(decode_frames(path, [2], info))).image
    rendered = marked(0, background(WIDTH, HEIGHT)).astype(int)
    quarter_turns = rotation // 90  # counterclockwise, as the display matrix says
    assert image.shape == (WIDTH, HEIGHT, 3)
    assert np.abs(image - np.rot90(rendered, quarter_turns)).mean() < 2
    assert np.abs(image - np.rot90(rendered, quarter_turns + 2)).mean() > 20  # the opposite turn is far off
    corner = {90: image[-30:, :30], 270: image[:30, -30:]}[rotation]  # where the top-left marker must land
    assert corner.mean() > 240
    portrait = write_clip(tmp_path / f"phone{rotation}.mp4", WIDTH, HEIGHT, 5, None, rotation=rotation, crf=4,
                          frame_filter=marked, store_turned=True)  # stored sideways, displayed upright
    info = probe(portrait)
    assert (info.rotation, info.width, info.height) == (rotation, WIDTH, HEIGHT)
    upright = next(iter(decode_frames(portrait, [2], info))).image
    assert np.abs(upright - rendered).mean() < 2 and upright[:30, :30].mean() > 240


def info_of(frame_count: int, fps: float = 25.0) -> VideoInfo:
    """A VideoInfo for plans that need no file."""
    return VideoInfo("unused.mp4", frame_count, fps, frame_count / fps, WIDTH, HEIGHT, 0, "h264", 25, "metadata")


def test_uniform_plan_is_linspace_and_takes_all_of_a_short_video():
    plan = frame_plan(info_of(100), SamplingConfig(mode="uniform", frames=32))
    assert plan == np.linspace(0, 99, 32, dtype=int).tolist() and len(plan) == 32
    assert frame_plan(info_of(10), SamplingConfig(mode="uniform", frames=32)) == list(range(10))
    assert frame_plan(info_of(0), SamplingConfig(mode="uniform")) == []


def test_stride_fps_all_plans_and_their_cap():
    assert frame_plan(info_of(100), SamplingConfig(mode="stride", stride=7)) == list(range(0, 100, 7))
    assert frame_plan(info_of(100), SamplingConfig(mode="fps", fps=5.0)) == list(range(0, 100, 5))
    # 2 per second at 25 fps: the frame nearest 0, 0.5, 1.0 … 3.5 s (ties round to even)
    assert frame_plan(info_of(100), SamplingConfig(mode="fps", fps=2.0)) == [0, 12, 25, 38, 50, 62, 75, 88]
    assert frame_plan(info_of(30, fps=30.0), SamplingConfig(mode="fps", fps=60.0)) == list(range(30))
    assert frame_plan(info_of(100), SamplingConfig(mode="all")) == list(range(100))
    capped = frame_plan(info_of(100), SamplingConfig(mode="all", max_frames=10))
    assert capped == np.linspace(0, 99, 10, dtype=int).tolist()
    assert frame_plan(info_of(100), SamplingConfig(mode="stride", stride=7, max_frames=3)) == [0, 49, 98]


def test_keyframe_plan_matches_the_encoder_gop(video_clips):
    info = probe(video_clips["long"])
    assert frame_plan(info, SamplingConfig(mode="keyframes")) == list(range(0, 300, 25))
    assert frame_plan(info, SamplingConfig(mode="keyframes", max_frames=3)) == [0, 125, 275]
    assert keyframe_gap([0, 25, 50], 60) == 25 and keyframe_gap([0, 40], 100) == 60 and keyframe_gap([], 7) == 7


def test_long_gaps_become_keyframe_seeks(video_clips):
    packets = scan_packets(video_clips["long"], stop_after=290)
    runs = decode_runs([5, 150, 290], packets)
    assert runs == [(None, [5]), (150, [150]), (275, [290])]
    assert decode_runs([5, 10, 20, 30], packets) == [(None, [5, 10, 20, 30])]  # no keyframe worth the jump
    assert decode_runs([5, 150], None) == [(None, [5, 150])]  # nothing to seek with


@pytest.mark.parametrize("plan", [[5, 150, 290], [0, 1, 2, 3, 4, 5, 6], [24, 25, 26, 99, 100, 101, 299],
                                  [33, 34, 35, 36, 37, 38, 39, 40, 41], [199]])
@pytest.mark.parametrize("skip_nonref,seek", [(True, True), (False, False), (True, False), (False, True)])
def test_decoded_frames_are_exactly_the_planned_ones(video_clips, plan, skip_nonref, seek):
    info = probe(video_clips["long"])
    frames = list(decode_frames(video_clips["long"], plan, info, skip_nonref=skip_nonref, seek=seek))
    assert [f.index for f in frames] == plan
    assert [read_index(f.image) for f in frames] == plan  # each frame's own pixels name it
    oracle = sequential_frames(video_clips["long"], plan)
    for frame in frames:
        assert frame.image.shape == (HEIGHT, WIDTH, 3) and frame.image.dtype == np.uint8
        assert np.abs(frame.image.astype(int) - oracle[frame.index]).mean() < 1
        assert frame.pts_seconds == pytest.approx(frame.index / 25.0)


@pytest.mark.parametrize("kind", ["mkv", "ts"])  # matroska seeks by pts, MPEG-TS by dts and without an index
def test_other_containers_seek_exactly_too(video_clips, kind):
    info = probe(video_clips[kind])
    assert (info.frame_count, info.frame_count_source) == (300, "packets")
    frames = list(decode_frames(video_clips[kind], [5, 150, 290], info))
    assert [(f.index, read_index(f.image)) for f in frames] == [(5, 5), (150, 150), (290, 290)]


def test_a_demuxer_that_cannot_land_on_keyframes_falls_back_to_sequential_decoding(video_clips, monkeypatch):
    info = probe(video_clips["long"])
    monkeypatch.setattr("dfprep.vision.video._land_on_keyframe", lambda *args: None)
    frames = list(decode_frames(video_clips["long"], [5, 150, 290], info))
    assert [(f.index, read_index(f.image)) for f in frames] == [(5, 5), (150, 150), (290, 290)]


def test_unsorted_and_repeated_indices_come_back_sorted_once(video_clips):
    info = probe(video_clips["short"])
    assert [f.index for f in decode_frames(video_clips["short"], [30, 3, 3, 17], info)] == [3, 17, 30]
    assert list(decode_frames(video_clips["short"], [], info)) == []


def test_a_passed_deadline_stops_decoding(video_clips, monkeypatch):
    info = probe(video_clips["long"])
    with pytest.raises(VideoError) as caught:
        list(decode_frames(video_clips["long"], [5], info, deadline=time.monotonic() - 1))
    assert caught.value.status == "timeout"
    clock = [100.0]
    monkeypatch.setattr("dfprep.vision.video.time.monotonic", lambda: clock[0])
    frames = decode_frames(video_clips["long"], [1, 250], info, deadline=110.0)
    assert next(frames).index == 1  # frames before the deadline still arrive
    clock[0] = 111.0
    with pytest.raises(VideoError, match="deadline") as caught:
        next(frames)
    assert caught.value.status == "timeout" and "\n" not in str(caught.value)


def test_frames_past_the_end_are_a_decode_error(video_clips):
    info = probe(video_clips["short"])
    frames = decode_frames(video_clips["short"], [38, 45], info)
    assert next(frames).index == 38
    with pytest.raises(VideoError, match="ended") as caught:
        next(frames)
    assert caught.value.status == "decode_error"


def audio_only(path: Path) -> Path:
    """An mp4 holding a tenth of a second of silence and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            container.mux(packet)
    return path


def test_unreadable_files_have_a_status_and_a_one_line_reason(tmp_path, video_clips):
    data = video_clips["long"].read_bytes()
    cases = {
        "missing": (tmp_path / "absent.mp4", "missing"),
        "empty": (tmp_path / "empty.mp4", "decode_error"),
        "text": (tmp_path / "notes.mp4", "unsupported"),
        "truncated": (tmp_path / "truncated.mp4", "decode_error"),  # moov index was at the end: cut off
        "audio": (audio_only(tmp_path / "audio.mp4"), "unsupported"),
    }
    cases["empty"][0].write_bytes(b"")
    cases["text"][0].write_text("this is not a video\n" * 50)
    cases["truncated"][0].write_bytes(data[: len(data) // 3])
    for name, (path, status) in cases.items():
        for attempt in (lambda: probe(path), lambda: list(decode_frames(path, [0], info_of(300)))):
            with pytest.raises(VideoError) as caught:
                attempt()
            assert caught.value.status == status, name
            assert str(caught.value) and "\n" not in str(caught.value) and str(path) not in str(caught.value)
    assert "no video stream" in str(pytest.raises(VideoError, probe, cases["audio"][0]).value)


def test_truncated_stream_yields_what_decodes_then_a_decode_error(tmp_path, video_clips):
    data = video_clips["faststart"].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 3])  # the index survives at the front, the pictures are cut
    info = probe(path)
    assert info.frame_count == 300  # the container still claims every frame
    assert [f.index for f in decode_frames(path, [0, 10], info)] == [0, 10]  # stops before the damage
    got = []
    with pytest.raises(VideoError) as caught:
        for frame in decode_frames(path, [0, 20, 150, 299], info):
            got.append(frame.index)
    assert caught.value.status == "decode_error" and "\n" not in str(caught.value)
    assert got == [0, 20]


def test_video_errors_survive_pickling():
    error = VideoError("timeout", "decode deadline passed after frame 3")
    error.faces_written = 4
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, str(copy), copy.faces_written) == ("timeout", str(error), 4)
    with pytest.raises(ValueError):
        VideoError("weird", "x")


@pytest.mark.integration
def test_real_ffpp_video_decodes_exactly_with_skipping_and_seeking(ffpp_mini):
    # An x264 < 151 4:4:4 stream: after a seek the decoder must still have seen the first packet's SEI.
    path = ffpp_mini / "manipulated_sequences" / "Deepfakes" / "c23" / "videos" / "519_515.mp4"
    info = probe(path)
    assert (info.frame_count, info.fps, info.width, info.height, info.gop) == (751, 25.0, 640, 480, 250)
    uniform = frame_plan(info, SamplingConfig(mode="uniform", frames=32))
    sparse = [260, 261, 520, 749]  # opens with a seek to keyframe 250, then to 500
    oracle = sequential_frames(path, sorted(set(uniform + sparse)))
    for plan in (uniform, sparse):
        frames = list(decode_frames(path, plan, info))
        assert [f.index for f in frames] == plan
        assert all(np.array_equal(f.image, oracle[f.index]) for f in frames)
