"""Synthetic OUT folders for the torch-side tests, written with the real ShardWriter."""

import json
import shutil
from pathlib import Path

import pytest

from dfprep.io.shards import Sample, ShardWriter, encode_image, encode_npy
from dfprep.io.storage import Storage
from tests.helpers.torch_synthetic import SyntheticSpec, synthetic_face, write_synthetic_out  # needs no torch

SMALL = SyntheticSpec(videos={"train": (4, 4), "val": (2, 2), "test": (2, 2)}, frames=4, size=32,
                      videos_per_shard=2, maps="landmarks", videos_without_faces=2)


@pytest.fixture(scope="session")
def shared_out(tmp_path_factory) -> Path:
    """A read-only synthetic OUT: 32 train / 16 val / 16 test samples in 2-video shards, with landmark maps."""
    folder = tmp_path_factory.mktemp("out") / "synthetic"
    write_synthetic_out(str(folder), SMALL)
    return folder


@pytest.fixture()
def out_copy(shared_out, tmp_path) -> Path:
    """A private copy of the synthetic OUT that a test may damage."""
    target = tmp_path / "synthetic"
    shutil.copytree(shared_out, target)
    return target


@pytest.fixture(scope="session")
def learnable_out(tmp_path_factory) -> Path:
    """A slightly larger OUT for the training tests (fakes carry a learnable stripe artefact)."""
    folder = tmp_path_factory.mktemp("learn") / "learnable"
    write_synthetic_out(str(folder), SyntheticSpec(videos={"train": (6, 6), "val": (2, 2), "test": (3, 3)},
                                                   frames=4, size=32, videos_per_shard=3, maps="landmarks",
                                                   videos_without_faces=1, seed=1))
    return folder


def make_sample(key: str, label: int = 0, extra: dict[str, bytes] | None = None, size: int = 16,
                split: str = "train") -> Sample:
    """A minimal face sample (jpg, landmarks, json) plus any extra members."""
    import numpy as np

    meta = {"key": key, "label": label, "video_id": f"v/{key}", "split": split, "method": "m", "dataset": "d",
            "frame": 0}
    members = {"jpg": encode_image(synthetic_face(label, size, np.random.default_rng(0)), "jpg", 90),
               "ldm.npy": encode_npy(np.zeros((68, 2), np.float32)), "json": json.dumps(meta).encode()}
    members.update(extra or {})
    return Sample(key, members, {"video_id": meta["video_id"], "label": label, "split": split})


def write_shard(folder: Path, name: str, samples: list[Sample]) -> Path:
    """Commit one shard of hand-made samples; returns its tar path."""
    storage = Storage(str(folder))
    storage.makedirs()
    writer = ShardWriter(storage, name)
    for sample in samples:
        writer.add(sample)
    writer.commit({"unit": name})
    return folder / f"{name}.tar"


class ShardKit:
    """Hand-made shards for tests: `kit.sample(...)`, `kit.shard(folder, name, samples)`."""

    sample = staticmethod(make_sample)
    shard = staticmethod(write_shard)


@pytest.fixture()
def kit() -> ShardKit:
    """Helpers that write hand-made samples and shards."""
    return ShardKit()
