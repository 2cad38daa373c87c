"""Evaluation: the cross-dataset rows, face-less videos scored 0.5 and counted, JSON output."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dfprep.torch.evaluate import FrameScores, evaluate, format_table, score_table_row  # noqa: E402
from dfprep.torch.metrics import auc  # noqa: E402
from dfprep.torch.train import train  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(learnable_out, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval-run")
    train([learnable_out], run, epochs=3, batch_size=8, lr=3e-3, seed=4, progress=False)
    return run / "model.pt"


def test_rows_per_out_with_face_less_videos_counted(checkpoint, learnable_out, shared_out, tmp_path):
    rows = evaluate(checkpoint, [learnable_out, shared_out], json_path=tmp_path / "table.json")
    first, second = rows
    assert first["dataset"] == "synthetic" and first["frames"] == 24 and first["videos"] == 7
    assert first["videos_without_faces"] == 1 and second["videos_without_faces"] == 2
    assert second["frames"] == 16 and second["videos"] == 6
    assert first["frame_auc"] > 0.8 and 0 <= first["eer"] <= 0.5 and 0.5 <= first["acc"] <= 1
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["rows"] == rows and saved["checkpoint"] == str(checkpoint)
    table = format_table(rows)
    assert table.splitlines()[0].split() == ["dataset", "frames", "videos", "frame_auc", "video_auc", "acc", "eer",
                                            "videos_without_faces"]
    assert len(table.splitlines()) == 3


def test_video_auc_scores_videos_without_faces_at_one_half(shared_out):
    # shared_out's test split: 4 videos with faces + 2 face-less ones (labels 0 and 1) in videos.parquet
    frames = FrameScores(np.array([0.9, 0.7, 0.2, 0.4, 0.6, 0.8]), np.array([1, 1, 0, 0, 1, 0]),
                         ["synthetic/Fake/raw/test_001"] * 2 + ["synthetic/original/raw/test_000"] * 2
                         + ["synthetic/Fake/raw/test_003", "synthetic/original/raw/test_002"], ["synthetic"] * 6)
    row = score_table_row(str(shared_out), frames, "test", "mean")
    assert row["videos"] == 6 and row["videos_without_faces"] == 2
    # video scores: fakes 0.8, 0.6 and 0.5 (face-less); reals 0.3, 0.8 and 0.5 (face-less)
    assert row["video_auc"] == pytest.approx(auc([1, 1, 1, 0, 0, 0], [0.8, 0.6, 0.5, 0.3, 0.8, 0.5]))
    assert row["video_auc"] == pytest.approx((2.5 + 2 + 1.5) / 9)  # pairs won, ties count one half
    assert row["frame_auc"] == pytest.approx(auc(frames.labels, frames.scores))
    assert row["acc"] == pytest.approx(5 / 6)


def test_a_split_without_samples_gives_an_empty_row(checkpoint, learnable_out):
    (row,) = evaluate(checkpoint, [learnable_out], split="unassigned")
    assert row["frames"] == 0 and row["frame_auc"] is None and row["videos"] == 0
