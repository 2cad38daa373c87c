"""Shared hermetic fixtures: synthetic face clips made at test time, the real ffpp-mini data when present."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from dfprep.io.shards import encode_image, encode_npy
from tests.helpers.synthetic import FacePlacement, linear_motion, moving_face, write_clip, write_ffpp_pairs

FFPP_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ffpp-mini"


@pytest.fixture(scope="session", autouse=True)
def no_user_config(tmp_path_factory):
    """The suite never reads the developer's ~/.config/dfprep, $DFPREP_HOME or $DFPREP_LANDMARKS, nor writes to
    their ~/.cache/dfprep (every test and every dfprep it starts shares one temporary cache folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg_config")))
        patch.setenv("DFPREP_CACHE_DIR", str(tmp_path_factory.mktemp("dfprep_cache")))
        patch.delenv("DFPREP_HOME", raising=False)
        patch.delenv("DFPREP_LANDMARKS", raising=False)
        yield


@pytest.fixture(scope="session")
def ffpp_mini() -> Path:
    """The seven real FF++ c23 videos; skipped (with the reason) on machines without them."""
    if not (FFPP_MINI / "original_sequences").is_dir():
        pytest.skip(f"real test videos not found at {FFPP_MINI} (they live beside the repo in ../shared)")
    return FFPP_MINI


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
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- hand-made hostile shard members

GIGANTIC_SIDE = 30000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def gigantic_png(side: int = GIGANTIC_SIDE) -> bytes:
    """A PNG whose header declares side x side gray pixels (30000² = 900 MB gray, 2.7 GB as BGR).

    Only the first rows' data are included: readers must refuse it from its header, never decode it. The
    full file (all rows of zeros) is the issue's 875 KB PNG that took 13 GB to load.
    """
    rows = zlib.compress(b"\0" * (side + 1) * 64)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def face_members(key: str, label: int = 0, size: int = 32, points: int = 68, **meta_fields) -> dict[str, bytes]:
    """A well-formed sample's members (jpg, ldm.npy, json); `meta_fields` override json fields."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    meta = {"key": key, "label": label, "video_id": f"v/{key}", "dataset": "d", "method": "m", "split": "train",
            "frame": 0, **meta_fields}
    return {"jpg": encode_image(image, "jpg", 90), "ldm.npy": encode_npy(np.zeros((points, 2), np.float32)),
            "json": json.dumps(meta).encode()}


def write_raw_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar of exactly these members, written without ShardWriter (so nothing is fixed up on the way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for extension, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def write_sparse_member_tar(path: Path, declared: int = 2**31) -> Path:
    """A tar whose one member declares `declared` bytes of data, stored sparse (it costs no disk)."""
    info = tarfile.TarInfo("a-000000.jpg")
    info.size = declared
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.seek(len(header) + declared)
        handle.write(b"\0" * 2 * tarfile.BLOCKSIZE)
    return path


def write_pax_bomb_tar(path: Path, declared: int = 2**31) -> Path:
    """A tar starting with a pax extended header that declares `declared` bytes (sparse on disk)."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, declared
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.seek(len(header) + declared)
        handle.write(b"\0" * 2 * tarfile.BLOCKSIZE)
    return path


class HostileKit:
    """The hostile-member helpers above, as one fixture."""

    gigantic_png = staticmethod(gigantic_png)
    face_members = staticmethod(face_members)
    write_raw_tar = staticmethod(write_raw_tar)
    write_sparse_member_tar = staticmethod(write_sparse_member_tar)
    write_pax_bomb_tar = staticmethod(write_pax_bomb_tar)


@pytest.fixture()
def hostile() -> HostileKit:
    """Helpers that write hostile shards (huge image headers, sparse members, odd json) without ShardWriter."""
    return HostileKit()


@pytest.fixture(scope="session")
def pairs_out(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny FF++ tree of fake/original pairs (tests.helpers.synthetic.write_ffpp_pairs), extracted once with the
    caddm-ffpp recipe as a user runs it (4 frames per video): (dataset root, output folder). Read-only."""
    from dfprep.catalog import scan
    from dfprep.config import load_config
    from dfprep.runner.run import extract_run

    root = write_ffpp_pairs(tmp_path_factory.mktemp("ffpp_pairs"))
    out = tmp_path_factory.mktemp("pairs_out")
    config = load_config("caddm-ffpp", {"ray.workers": 0, "sampling.frames": 4})
    extract_run(scan("ffpp", root, config.dataset), config, str(out), quiet=True)
    return root, out
