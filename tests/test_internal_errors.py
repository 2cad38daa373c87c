"""Any exception inside one video becomes that video's `internal_error` row; the unit's other videos keep their faces.

Failures are injected (monkeypatch) into each stage of the middle video of a three-video unit, on that
video's second call where a stage runs more than once, so the faces written before the failure are kept.
"""

from __future__ import annotations

import errno
import shutil
import tarfile
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import dfprep.jobs.extract as extract_module
import dfprep.jobs.pairs as pairs_module
from dfprep.catalog.base import VideoRecord
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.jobs.extract import ExtractionModels, VideoExtractor
from dfprep.vision.faces import FaceAnalyzer
from dfprep.io.shards import ShardWriter
from dfprep.io.storage import Storage
from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip

FRAMES = 3
NAMES = ("first", "bad", "last")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    """Three small face clips (real/first, real/bad, real/last) in a folder-adapter layout."""
    root = tmp_path_factory.mktemp("internal")
    motion = linear_motion(FacePlacement(10, 10, 0.8), FacePlacement(60, 40, 0.85))
    clip = write_clip(root / "real" / "first.mp4", 320, 240, 12, motion, gop=6)
    for name in NAMES[1:]:
        shutil.copy(clip, root / "real" / f"{name}.mp4")
    return root


@pytest.fixture(scope="module")
def extractor() -> VideoExtractor:
    """One extractor (models loaded once) for every injected failure."""
    config = load_config(None, {"sampling.frames": FRAMES, "sampling.neighbour_retry": 0})
    return VideoExtractor(config, ExtractionModels.resolve(config))


def _record(root: Path, name: str) -> VideoRecord:
    video_id = f"folder/real/raw/{name}"
    return VideoRecord(video_id, str(root / "real" / f"{name}.mp4"), "folder", "real", "raw", "train", 0, video_id)


class Injector:
    """Makes one stage raise for the 'bad' video only, on its `nth` call (earlier calls pass through)."""

    def __init__(self, monkeypatch, exception: BaseException, nth: int = 2):
        self.monkeypatch, self.exception, self.nth = monkeypatch, exception, nth
        self.current: str = ""
        self.calls = 0
        real_probe = extract_module.probe

        def probe_and_remember(path, *args, **kwargs):
            self.current, self.calls = Path(path).stem, 0
            return real_probe(path, *args, **kwargs)

        monkeypatch.setattr(extract_module, "probe", probe_and_remember)

    def wrap(self, owner, name: str) -> None:
        """Replace owner.name by a version that raises on the bad video's nth call."""
        real = getattr(owner, name)

        def failing(*args, **kwargs):
            if self.current == "bad":
                self.calls += 1
                if self.calls >= self.nth:
                    raise self.exception
            return real(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, failing)


def _inject_decode(monkeypatch, injector: Injector) -> None:
    """The decoder yields one frame of the bad video, then fails (like an FFmpeg error mid-stream)."""
    real = extract_module.decode_frames

    def decode(path, *args, **kwargs):
        for number, frame in enumerate(real(path, *args, **kwargs)):
            if injector.current == "bad" and number == 1:
                raise injector.exception
            yield frame

    monkeypatch.setattr(extract_module, "decode_frames", decode)


def _inject_probe(monkeypatch, injector: Injector) -> None:
    """Probing the bad video fails with something other than a VideoError."""
    real = extract_module.probe

    def probe(path, *args, **kwargs):
        if Path(path).stem == "bad":
            raise injector.exception
        return real(path, *args, **kwargs)

    monkeypatch.setattr(extract_module, "probe", probe)


# stage → (what to patch, the exception, faces the bad video keeps)
STAGES = {
    "probe": (_inject_probe, ValueError("bad frame count"), 0),
    "plan": (lambda mp, inj: inj.wrap(pairs_module, "frame_plan"), ZeroDivisionError("division by zero"), 0),
    "decode": (_inject_decode, RuntimeError("FFmpeg exploded"), 1),
    "detect": (lambda mp, inj: inj.wrap(FaceAnalyzer, "_run_detector"), RuntimeError("Unsupported image type"), 1),
    "landmarks": (lambda mp, inj: inj.wrap(FaceAnalyzer, "landmarks"), RuntimeError("dlib shape predictor"), 1),
    "align": (lambda mp, inj: inj.wrap(extract_module, "align_face"), ValueError("five_points: bad shape"), 1),
    "encode": (lambda mp, inj: inj.wrap(extract_module, "encode_image"), cv2.error("imencode failed"), 1),
}


def _run_unit(extractor: VideoExtractor, root: Path, out: Path) -> tuple[dict[str, dict], list[str]]:
    """The three videos into one shard, committed; returns rows by name and the tar's json member names."""
    storage = Storage(str(out))
    storage.makedirs()
    writer = ShardWriter(storage, "train-000000")
    rows = {name: extractor.extract(_record(root, name), None, writer.add).row for name in NAMES}
    writer.commit({"unit": "train-000000"})
    with tarfile.open(out / "train-000000.tar") as tar:
        return rows, [m.name for m in tar.getmembers() if m.name.endswith(".json")]


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_exception_in_any_stage_becomes_the_videos_row(stage, extractor, clip_folder, tmp_path, monkeypatch):
    patch, exception, kept = STAGES[stage]
    injector = Injector(monkeypatch, exception, nth=1 if stage in ("probe", "plan") else 2)
    patch(monkeypatch, injector)
    rows, members = _run_unit(extractor, clip_folder, tmp_path / "out")
    for name in ("first", "last"):
        assert (rows[name]["status"], rows[name]["faces_written"]) == ("ok", FRAMES), rows[name]
    bad = rows["bad"]
    assert bad["status"] == "internal_error" and bad["faces_written"] == kept
    assert bad["error"].startswith(f"internal error in {stage}: {type(exception).__name__}: ")
    assert "\n" not in bad["error"]
    assert len(members) == 2 * FRAMES + kept == len(set(members))
    assert sum(name.startswith("folder-real-raw-bad-") for name in members) == kept


@pytest.mark.parametrize("exception", [KeyboardInterrupt(), SystemExit(3), MemoryError()])
def test_interrupts_and_memory_errors_still_propagate(exception, extractor, clip_folder, tmp_path, monkeypatch):
    injector = Injector(monkeypatch, exception)
    injector.wrap(extract_module, "align_face")
    with pytest.raises(type(exception)):
        _run_unit(extractor, clip_folder, tmp_path / "out")
    assert not (tmp_path / "out" / "train-000000_stats.json").exists()


def test_a_failing_output_is_not_blamed_on_the_video(extractor, clip_folder, tmp_path, monkeypatch):
    def full_disk(self, sample):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardWriter, "add", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _run_unit(extractor, clip_folder, tmp_path / "out")


def test_the_extract_command_records_the_row_and_completes(clip_folder, tmp_path, monkeypatch):
    injector = Injector(monkeypatch, ValueError("five_points: expected 5, 68 or more landmarks"))
    injector.wrap(extract_module, "align_face")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["extract", "folder", str(clip_folder), "-o", str(out), "--workers", "0",
                                      "--frames", str(FRAMES), "--quiet", "--set", "sampling.neighbour_retry=0"])
    assert result.exit_code == 0, result.output
    assert "internal_error" in result.output and "internal error in align: ValueError" in result.output
    rows = {r["video_id"].rsplit("/", 1)[1]: r for r in pq.read_table(out / "videos.parquet").to_pylist()}
    assert [rows[n]["status"] for n in NAMES] == ["ok", "internal_error", "ok"]
    assert [rows[n]["faces_written"] for n in NAMES] == [FRAMES, 1, FRAMES]
