"""Identity descriptors per video and the leakage report: planted shared identities are found, clean sets pass."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dfprep.catalog import scan
from dfprep.cli import cli
from dfprep.config import load_config
from dfprep.inspect.leakage import IdentityVideo, cluster_identities, find_leaks
from dfprep.runner.run import extract_run
from tests.helpers.synthetic import FacePlacement, linear_motion, lfw_face, render_frame, write_clip


def _clip(path, patch=None, seed=0):
    motion = linear_motion(FacePlacement(20, 20, 1.0), FacePlacement(120, 60, 1.0))
    redraw = None
    if patch is not None:
        redraw = lambda i, frame: render_frame(400, 300, motion(i, 12), seed, patch)  # noqa: E731
    return write_clip(path, 400, 300, 12, motion, gop=6, seed=seed, frame_filter=redraw)


@pytest.fixture(scope="module")
def identity_sets(tmp_path_factory):
    """Two folder datasets: the astronaut in train and test (planted leak), and astronaut vs another person."""
    root = tmp_path_factory.mktemp("identity")
    _clip(root / "leaky/train/real/astronaut_a.mp4", seed=1)
    _clip(root / "leaky/test/real/astronaut_b.mp4", seed=2)
    _clip(root / "clean/train/real/astronaut_a.mp4", seed=1)
    _clip(root / "clean/test/real/someone_else.mp4", patch=lfw_face(1), seed=2)
    outputs = {}
    config = load_config(None, {"sampling.frames": 4, "detection.identity": True, "ray.workers": 0})
    for name in ("leaky", "clean"):
        outputs[name] = str(root / f"out_{name}")
        extract_run(scan("folder", root / name, config.dataset), config, outputs[name], quiet=True)
    return outputs


def test_videos_carry_a_median_descriptor(identity_sets):
    leaky = pq.read_table(f"{identity_sets['leaky']}/videos.parquet").to_pylist()
    clean = pq.read_table(f"{identity_sets['clean']}/videos.parquet").to_pylist()
    for row in leaky + clean:
        assert len(row["identity"]) == 128 and row["identity_faces"] == 4
    same_person = np.linalg.norm(np.subtract(leaky[0]["identity"], leaky[1]["identity"]))
    other_person = np.linalg.norm(np.subtract(clean[0]["identity"], clean[1]["identity"]))
    assert same_person < 0.4 < 0.6 < other_person


def test_planted_shared_identity_is_found_and_strict_fails(identity_sets):
    result = CliRunner().invoke(cli, ["leakage", identity_sets["leaky"], "--strict"])
    assert result.exit_code == 1, result.output
    assert "across splits test, train" in result.output
    assert "folder/real/raw/train__astronaut_a" in result.output and "test__astronaut_b" in result.output


def test_clean_set_has_no_leakage(identity_sets):
    result = CliRunner().invoke(cli, ["leakage", identity_sets["clean"], "--strict"])
    assert result.exit_code == 0, result.output
    assert "no identity is shared" in result.output


def test_leakage_across_outputs(identity_sets):
    result = CliRunner().invoke(cli, ["leakage", identity_sets["leaky"], identity_sets["clean"], "--json"])
    assert result.exit_code == 0
    assert '"datasets"' in result.output


def _video(vid: str, split: str, vector) -> IdentityVideo:
    return IdentityVideo("out", vid, "d", split, 0, np.asarray(vector, np.float32))


def test_clustering_is_transitive_and_respects_the_threshold():
    vectors = np.array([[0, 0], [0.5, 0], [1.0, 0], [5, 5], [5.7, 5]], np.float32)
    labels = cluster_identities(vectors, threshold=0.6, chunk=2)
    assert labels[0] == labels[1] == labels[2] and labels[3] != labels[4] and labels[3] != labels[0]
    leaks = find_leaks([_video("a", "train", [0, 0]), _video("b", "test", [0.5, 0]),
                        _video("c", "train", [5, 5]), _video("d", "train", [5.1, 5])], 0.6)
    assert len(leaks) == 1 and [v.video_id for v in leaks[0].videos] == ["b", "a"]
    assert leaks[0].splits == ["test", "train"]
