"""Shared hermetic fixtures: synthetic face clips made at test time, the real ffpp-mini data when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfprep.synthetic import FacePlacement, linear_motion, write_clip, write_ffpp_pairs

FFPP_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ffpp-mini"


@pytest.fixture(scope="session")
def ffpp_mini() -> Path:
    """The seven real FF++ c23 videos; skipped (with the reason) on machines without them."""
    if not (FFPP_MINI / "original_sequences").is_dir():
        pytest.skip(f"real test videos not found at {FFPP_MINI} (they live beside the repo in ../shared)")
    return FFPP_MINI


def moving_face(width: int = 480, height: int = 360) -> object:
    """A face drifting right and down across the frame."""
    return linear_motion(FacePlacement(20, 20, 0.9), FacePlacement(width - 230, height - 230, 1.0))


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A few small h264 clips: a moving face, a faceless one, and a face rotated by container metadata."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "face": write_clip(folder / "face.mp4", 480, 360, 40, moving_face(), gop=12),
        "noface": write_clip(folder / "noface.mp4", 320, 240, 20, lambda i, n: [], gop=10),
        "rotated": write_clip(folder / "rotated.mp4", 480, 360, 20, moving_face(), gop=10, rotation=90,
                              store_turned=True),
    }


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory) -> Path:
    """A `folder`-adapter dataset: 3 real + 3 fake face clips, a faceless clip and a broken file."""
    root = tmp_path_factory.mktemp("folder_dataset")
    for index in range(3):
        for label in ("real", "fake"):
            motion = linear_motion(FacePlacement(10 + 20 * index, 10, 0.8), FacePlacement(120, 60 + 10 * index, 0.9))
            write_clip(root / label / f"clip{index}.mp4", 400, 300, 24, motion, gop=8, seed=index)
    write_clip(root / "real" / "empty_room.mp4", 320, 240, 16, lambda i, n: [], gop=8)
    (root / "fake" / "broken.mp4").write_text("this is not a video")
    return root


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs) per test module that asks for it, shut down after the module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def pairs_out(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny FF++ tree of fake/original pairs (dfprep.synthetic.write_ffpp_pairs), extracted once with the
    caddm-ffpp recipe as a user runs it (4 frames per video): (dataset root, output folder). Read-only."""
    from dfprep.catalog import scan
    from dfprep.config import load_config
    from dfprep.run import extract_run

    root = write_ffpp_pairs(tmp_path_factory.mktemp("ffpp_pairs"))
    out = tmp_path_factory.mktemp("pairs_out")
    config = load_config("caddm-ffpp", {"ray.workers": 0, "sampling.frames": 4})
    extract_run(scan("ffpp", root, config.dataset), config, str(out), quiet=True)
    return root, out
