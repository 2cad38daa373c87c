"""dfprep preview: the sheet's geometry, dots, borders, frame order and map overlay, checked pixel by pixel."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.inspect import preview
from dfprep.catalog import scan
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.errors import DfprepError
from dfprep.inspect.preview import TITLE_HEIGHT, TileLayout, choose_samples, find_video, make_sheet
from dfprep.runner.run import extract_run
from dfprep.io.keys import sample_key
from dfprep.io.shards import Sample, ShardWriter, encode_npy
from dfprep.io.storage import Storage

CROP = 64
FRAMES = 5
MAP_BOX = (8, 40, 56, 60)  # x0, y0, x1, y1 (exclusive) of the non-zero region of every map, in crop pixels
VIDEOS = {"test": [0, 1, 0, 1, 1, 0], "train": [0, 1, 1, 0]}  # labels, two videos per shard


def _landmarks(video: int, frame: int) -> np.ndarray:
    """Points in the crop's upper part (clear of the map box), different for every sample."""
    xs = np.array([10, 20, 32, 44, 54], np.float32) + video * 0.7
    ys = np.array([8, 14, 20, 26, 30], np.float32) + frame * 0.9
    return np.stack([xs, ys], 1)


def _crop(frame: int) -> np.ndarray:
    """A flat grey crop whose brightness encodes the frame, so the sheet shows the time order."""
    return np.full((CROP, CROP, 3), 40 + 30 * frame, np.uint8)


def _region_map() -> np.ndarray:
    region = np.zeros((CROP, CROP), np.uint8)
    x0, y0, x1, y1 = MAP_BOX
    region[y0:y1, x0:x1] = np.linspace(60, 255, x1 - x0).astype(np.uint8)[None, :]
    return region


def _write_shard(out: Path, name: str, videos: list[dict]) -> dict[str, np.ndarray]:
    """One committed face shard plus its companion map shard (same keys, same order)."""
    faces, maps = ShardWriter(Storage(str(out)), name), ShardWriter(Storage(str(out / "maps" / "prtest")), name)
    landmarks = {}
    map_png = cv2.imencode(".png", _region_map())[1].tobytes()
    for video in videos:
        for frame in range(FRAMES):
            key = sample_key(video["video_id"], frame * 3)
            landmarks[key] = _landmarks(video["number"], frame)
            members = {"png": cv2.imencode(".png", _crop(frame))[1].tobytes(), "ldm.npy": encode_npy(landmarks[key]),
                       "json": json.dumps({"label": video["label"]}).encode()}
            row = {k: video[k] for k in ("video_id", "split", "label")} | {"frame": frame * 3, "track_id": 0}
            faces.add(Sample(key, members, row))
            maps.add(Sample(key, {"prmap.png": map_png}, {}))
        video["shard"] = name
    faces.commit({"unit": name})
    maps.commit({"unit": name})
    return landmarks


@pytest.fixture(scope="module")
def sheet_out(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A hand-written output: two splits, three test shards, known landmarks, a map set `prtest`."""
    out = tmp_path_factory.mktemp("preview") / "out"
    (out / "maps" / "prtest").mkdir(parents=True)
    rows, landmarks = [], {}
    for split, labels in VIDEOS.items():
        videos = [{"video_id": f"synth/{'fake' if label else 'real'}/raw/{split}_{i}", "split": split, "label": label,
                   "number": i} for i, label in enumerate(labels)]
        for start in range(0, len(videos), 2):
            landmarks.update(_write_shard(out, f"{split}-{start // 2:06d}", videos[start:start + 2]))
        rows += [{"video_id": v["video_id"], "dataset": "synth", "method": v["video_id"].split("/")[1],
                  "split": split, "label": v["label"], "status": "ok", "error": "", "frames_planned": FRAMES,
                  "faces_written": FRAMES, "shard": v["shard"]} for v in videos]
    pq.write_table(pa.Table.from_pylist(rows), out / "videos.parquet")
    return out, landmarks


def _tile(sheet: np.ndarray, position: int, cols: int, tile: int) -> np.ndarray:
    row, col = divmod(position, cols)
    return sheet[TITLE_HEIGHT + row * tile:TITLE_HEIGHT + (row + 1) * tile, col * tile:(col + 1) * tile]


def test_sheet_has_the_requested_grid(sheet_out):
    out, _ = sheet_out
    assert make_sheet(str(out), n=7, split="test", cols=3, tile=96).shape == (TITLE_HEIGHT + 3 * 96, 3 * 96, 3)
    everything = make_sheet(str(out), n=48, split="test", tile=80)  # 30 faces in the split: a 6 × 5 grid
    assert everything.shape == (TITLE_HEIGHT + 5 * 80, 6 * 80, 3)


def test_sampling_is_seeded_and_spread_over_videos(sheet_out):
    out, _ = sheet_out
    picks = choose_samples(str(out), n=6, split="test", seed=1)
    assert len({p.video_id for p in picks}) == 6 and {p.split for p in picks} == {"test"}
    assert len({p.shard for p in picks}) == 3
    assert choose_samples(str(out), n=6, split="test", seed=1) == picks
    assert any(choose_samples(str(out), n=6, split="test", seed=s) != picks for s in range(2, 6))
    per_video = [sum(p.video_id == v for p in choose_samples(str(out), n=8, split="test"))
                 for v in {p.video_id for p in picks}]
    assert sorted(per_video) == [1, 1, 1, 1, 2, 2]


def test_landmark_dots_sit_on_the_landmarks_and_borders_show_labels(sheet_out):
    out, landmarks = sheet_out
    tile, cols = 120, 4
    sheet = make_sheet(str(out), n=8, split="test", seed=3, cols=cols, tile=tile)
    layout = TileLayout(tile)
    x0, y0, side = *layout.face_origin, layout.face_side
    for position, pick in enumerate(choose_samples(str(out), n=8, split="test", seed=3)):
        cell = _tile(sheet, position, cols, tile)
        expected = np.rint((landmarks[pick.key] + 0.5) * side / CROP - 0.5 + [x0, y0]).astype(int)
        for x, y in expected:
            assert tuple(cell[y, x]) == preview.LANDMARK_COLOUR, (pick.key, x, y)
        assert tuple(cell[y0 + side - 4, x0 + side // 2]) != preview.LANDMARK_COLOUR  # no dot below the face
        colour = preview.FAKE_COLOUR if pick.label else preview.REAL_COLOUR
        assert tuple(cell[1, 1]) == tuple(cell[tile - 2, tile // 2]) == tuple(cell[tile // 2, tile - 2]) == colour


def test_video_shows_all_its_frames_in_time_order(sheet_out, tmp_path):
    out, _ = sheet_out
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for tar_path in copy.glob("*.tar"):
        if tar_path.name != "test-000001.tar":
            tar_path.write_bytes(b"\xff" * 1024)  # shards the video is not in are never opened
    picks = choose_samples(str(copy), video="synth/real/raw/test_2")
    assert [p.frame for p in picks] == [0, 3, 6, 9, 12] and {p.video_id for p in picks} == {"synth/real/raw/test_2"}
    assert choose_samples(str(copy), video="test_2") == picks  # a unique ending is enough
    sheet = make_sheet(str(copy), video="synth/real/raw/test_2", cols=5, tile=64)
    assert sheet.shape == (TITLE_HEIGHT + 64, 5 * 64, 3)
    layout = TileLayout(64)
    centre_y, centre_x = layout.face_origin[1] + 2, layout.face_origin[0] + layout.face_side // 2
    brightness = [int(_tile(sheet, i, 5, 64)[centre_y, centre_x].mean()) for i in range(5)]
    assert brightness == sorted(brightness) and brightness[-1] - brightness[0] > 100


def test_unknown_ambiguous_or_faceless_video_is_a_clear_error(sheet_out):
    out, _ = sheet_out
    with pytest.raises(DfprepError, match="no video 'nope'"):
        choose_samples(str(out), video="nope")
    rows = [{"video_id": f"ffpp/{method}/c23/000_003", "faces_written": 4, "shard": "test-000000", "status": "ok",
             "error": ""} for method in ("Deepfakes", "FaceSwap")]
    with pytest.raises(DfprepError, match="matches 2 videos"):
        find_video(rows, "000_003", "out")
    assert find_video(rows, "ffpp-FaceSwap-c23-000_003", "out") is rows[1]  # the key slug form
    rows[0].update(faces_written=0, shard="", status="no_face", error="no face found")
    with pytest.raises(DfprepError, match="has no faces .status no_face"):
        find_video(rows, "ffpp/Deepfakes/c23/000_003", "out")


def test_maps_change_pixels_only_where_the_map_is_nonzero(sheet_out):
    out, _ = sheet_out
    tile, cols = 128, 3
    plain = make_sheet(str(out), n=6, split="train", cols=cols, tile=tile)
    heat = make_sheet(str(out), n=6, split="train", cols=cols, tile=tile, maps="prtest")
    layout = TileLayout(tile)
    x0, y0, side = *layout.face_origin, layout.face_side
    scale = side / CROP
    bx0, by0, bx1, by1 = (round(v * scale) for v in MAP_BOX)
    for position in range(6):
        a, b = _tile(plain, position, cols, tile), _tile(heat, position, cols, tile)
        changed = np.any(a != b, axis=2)
        inside = np.zeros_like(changed)
        inside[y0 + by0 + 2:y0 + by1 - 2, x0 + bx0 + 2:x0 + bx1 - 2] = True
        near = np.zeros_like(changed)
        near[y0 + by0 - 2:y0 + by1 + 2, x0 + bx0 - 2:x0 + bx1 + 2] = True
        assert changed[inside].all()
        assert not changed[~near].any()


def test_a_missing_map_set_is_a_clear_error(sheet_out):
    out, _ = sheet_out
    with pytest.raises(DfprepError, match=r"no map set 'other'.*available: prtest"):
        make_sheet(str(out), n=4, maps="other")


def test_cli_writes_the_png(sheet_out, tmp_path):
    out, _ = sheet_out
    target = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli, ["preview", str(out), "-o", str(target), "--n", "4", "--split", "train",
                                      "--cols", "2", "--tile", "64", "--maps", "prtest", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(target)).shape == (TITLE_HEIGHT + 2 * 64, 2 * 64, 3)


def test_sheet_of_a_real_extraction(folder_dataset, tmp_path):
    config = load_config(None, {"sampling.frames": 3, "output.videos_per_shard": 4, "ray.workers": 0})
    out = tmp_path / "out"
    extract_run(scan("folder", folder_dataset, config.dataset), config, str(out), quiet=True)
    tile, cols = 128, 3
    sheet = make_sheet(str(out), n=6, cols=cols, tile=tile, seed=0)
    assert sheet.shape == (TITLE_HEIGHT + 2 * tile, cols * tile, 3)
    picks = choose_samples(str(out), n=6, seed=0)
    assert len({p.video_id for p in picks}) == 6
    layout = TileLayout(tile)
    for position, pick in enumerate(picks):
        with tarfile.open(out / f"{pick.shard}.tar") as tar:
            ldm = np.load(io.BytesIO(tar.extractfile(f"{pick.key}.ldm.npy").read()), allow_pickle=False)
            crop = cv2.imdecode(np.frombuffer(tar.extractfile(f"{pick.key}.jpg").read(), np.uint8), cv2.IMREAD_COLOR)
        scaled = (ldm + 0.5) * layout.face_side / crop.shape[1] - 0.5 + layout.face_origin
        (x0, y0), side = layout.face_origin, layout.face_side
        inside = [(x, y) for x, y in np.rint(scaled).astype(int) if x0 <= x < x0 + side and y0 <= y < y0 + side]
        cell = _tile(sheet, position, cols, tile)
        assert inside and all(tuple(cell[y, x]) == preview.LANDMARK_COLOUR for x, y in inside)
