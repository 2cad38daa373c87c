"""Evaluation: the cross-dataset rows, face-less videos scored 0.5 or dropped, per-method FF++ rows, JSON output."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from dfprep.errors import DfprepError  # noqa: E402
from dfprep.torch.evaluate import FrameScores, evaluate, format_table, score_rows, score_table_row  # noqa: E402
from dfprep.torch.metrics import auc, average_precision  # noqa: E402
from dfprep.torch.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(learnable_out, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval-run")
    train(TrainConfig((learnable_out,), epochs=3, batch_size=8, lr=3e-3, seed=4), run, progress=False)
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
    assert table.splitlines()[0].split() == ["dataset", "frames", "videos", "frame_auc", "video_auc", "ap", "acc",
                                            "eer", "videos_without_faces", "faceless"]
    assert len(table.splitlines()) == 3  # one fake method per OUT: no per-method rows
    assert all(row["faceless"] == "scored 0.5" and 0 <= row["ap"] <= 1 for row in rows)
    assert table.splitlines()[1].rstrip().endswith("scored 0.5")  # the table says what happened to them


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
    # frames by score: 0.9 F, 0.8 R, 0.7 F, 0.6 F, 0.4 R, 0.2 R → AP = 1/3·1 + 1/3·2/3 + 1/3·3/4
    assert row["ap"] == pytest.approx(29 / 36) and row["faceless"] == "scored 0.5"
    dropped = score_table_row(str(shared_out), frames, "test", "mean", faceless="drop")
    assert dropped["videos"] == 4 and dropped["videos_without_faces"] == 2 and dropped["faceless"] == "dropped"
    # only the videos with faces: fakes 0.8, 0.6; reals 0.3, 0.8 → 0.8 ties 0.8, beats 0.3; 0.6 beats 0.3
    assert dropped["video_auc"] == pytest.approx((0.5 + 1 + 1) / 4)
    assert dropped["frame_auc"] == row["frame_auc"]  # frames never include face-less videos
    with pytest.raises(ValueError, match="faceless"):
        score_table_row(str(shared_out), frames, "test", "mean", faceless="ignore")


def _ffpp_like_out(folder) -> FrameScores:
    """An FF++-shaped test split: videos.parquet (3 youtube, 2 actors, Deepfakes, FaceSwap, DFD) and frame scores."""
    videos = [  # video_id, label, method, family_id, frame scores ([] = no face found)
        ("ffpp/youtube/c23/000", 0, "youtube", "ffpp/youtube/c23/000", [0.1, 0.3]),
        ("ffpp/youtube/c23/001", 0, "youtube", "ffpp/youtube/c23/001", [0.5]),
        ("ffpp/youtube/c23/002", 0, "youtube", "ffpp/youtube/c23/002", []),
        ("ffpp/actors/c23/01__talk", 0, "actors", "ffpp/actors/c23/01__talk", [0.35]),
        ("ffpp/actors/c23/02__walk", 0, "actors", "ffpp/actors/c23/02__walk", [0.55]),
        ("ffpp/Deepfakes/c23/000_001", 1, "Deepfakes", "ffpp/youtube/c23/000", [0.9, 0.7]),
        ("ffpp/Deepfakes/c23/001_000", 1, "Deepfakes", "ffpp/youtube/c23/001", [0.6]),
        ("ffpp/FaceSwap/c23/000_001", 1, "FaceSwap", "ffpp/youtube/c23/000", [0.4]),
        ("ffpp/FaceSwap/c23/001_000", 1, "FaceSwap", "ffpp/youtube/c23/001", []),
        ("ffpp/DeepFakeDetection/c23/01_02__talk__X", 1, "DeepFakeDetection", "ffpp/actors/c23/01__talk", [0.45]),
    ]
    table = {"video_id": [v[0] for v in videos], "label": [v[1] for v in videos], "method": [v[2] for v in videos],
             "family_id": [v[3] for v in videos], "split": ["test"] * len(videos)}
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), folder / "videos.parquet")
    frames = [(score, v) for v in videos for score in v[4]]
    return FrameScores(np.array([f[0] for f in frames]), np.array([f[1][1] for f in frames]),
                       [f[1][0] for f in frames], ["ffpp"] * len(frames), [f[1][2] for f in frames])


def test_ffpp_gets_a_row_per_method_against_the_originals_it_derives_from(tmp_path):
    frames = _ffpp_like_out(tmp_path / "ffpp")
    rows = {row["dataset"]: row for row in score_rows(str(tmp_path / "ffpp"), frames, "test", "mean")}
    assert list(rows) == ["ffpp", "DFD", "FF-DF", "FF-FS"]  # pooled first, then by method name
    pooled, dfd, deepfakes, faceswap = rows["ffpp"], rows["DFD"], rows["FF-DF"], rows["FF-FS"]
    assert pooled["frames"] == 10 and pooled["videos"] == 10 and pooled["videos_without_faces"] == 2
    # FF-DF: youtube frames 0.1 0.3 0.5 against Deepfakes 0.9 0.7 0.6 (the actors are not its originals)
    assert (deepfakes["frames"], deepfakes["videos"], deepfakes["videos_without_faces"]) == (6, 5, 1)
    assert deepfakes["frame_auc"] == 1.0 and deepfakes["ap"] == 1.0 and deepfakes["video_auc"] == 1.0
    # FF-FS: 0.4 beats 0.1 and 0.3, loses to 0.5 → 2/3; videos: reals 0.2 0.5 0.5*, fakes 0.4 0.5* (*no face)
    assert (faceswap["frames"], faceswap["videos"]) == (4, 5)
    assert faceswap["frame_auc"] == pytest.approx(2 / 3) and faceswap["ap"] == pytest.approx(1 / 2)
    # pairs: 0.4 beats 0.2, loses to 0.5 and 0.5*; 0.5* beats 0.2, ties 0.5 and 0.5* → 3 of 6
    assert faceswap["video_auc"] == pytest.approx((1 + 0 + 0 + 1 + 0.5 + 0.5) / 6)
    # DFD against the actors only: 0.45 beats 0.35, loses to 0.55
    assert (dfd["frames"], dfd["videos"]) == (3, 3) and dfd["frame_auc"] == pytest.approx(1 / 2)
    dropped = {row["dataset"]: row for row in score_rows(str(tmp_path / "ffpp"), frames, "test", "mean", "drop")}
    assert dropped["FF-FS"]["videos"] == 3 and dropped["FF-FS"]["video_auc"] == pytest.approx(1 / 2)
    assert all(row["faceless"] == "dropped" for row in dropped.values())
    assert len(score_rows(str(tmp_path / "ffpp"), frames, "test", "mean", per_method=False)) == 1


def test_deepfakebench_grouping_by_folder_name_merges_same_named_ffpp_videos(tmp_path):
    """DeepfakeBench's video AUC groups frames by their folder name: FF++'s 000_001 under Deepfakes and under
    FaceSwap become one 'video'. dfprep groups by video_id; here the merge turns a 0.80 video AUC into 1.0."""
    from dfprep.torch.metrics import video_scores

    ids = ["ffpp/youtube/c23/000", "ffpp/youtube/c23/001", "ffpp/Deepfakes/c23/000_001",
           "ffpp/FaceSwap/c23/000_001", "ffpp/Deepfakes/c23/001_000", "ffpp/FaceSwap/c23/001_000"]
    labels, scores = [0, 0, 1, 1, 1, 1], [0.4, 0.1, 0.9, 0.2, 0.9, 0.3]
    by_video_id = video_scores(ids, labels, scores)
    by_folder = video_scores([video_id.rsplit("/", 1)[1] for video_id in ids], labels, scores)
    assert len(by_video_id) == 6 and len(by_folder) == 4  # 4 fakes collapse into 2
    assert by_folder["000_001"] == (1, pytest.approx(0.55)) and by_folder["001_000"] == (1, pytest.approx(0.6))
    assert auc(*zip(*by_video_id.values())) == pytest.approx(6 / 8)  # FaceSwap's 0.2 and 0.3 lose to 0.4
    assert auc(*zip(*by_folder.values())) == 1.0
    assert average_precision([1, 0], [0.5, 0.5]) == 0.5


def test_an_unknown_split_is_refused_naming_the_splits_there(checkpoint, learnable_out):
    from click.testing import CliRunner

    from dfprep.cli import cli

    with pytest.raises(DfprepError, match=r"no split 'unassigned' in .* \(its splits: .*test.*train"):
        evaluate(checkpoint, [learnable_out], split="unassigned")
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(learnable_out), "--split", "nosuch"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no split 'nosuch'" in result.output


def test_json_dash_prints_only_the_rows_as_json_on_stdout(checkpoint, learnable_out, tmp_path):
    from click.testing import CliRunner

    from dfprep.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), str(learnable_out), "--json", "-", "--workers",
                                      "0", "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["rows"][0]["frames"] > 0 and payload["checkpoint"] == str(checkpoint)
    assert not (tmp_path / "-").exists() and not os.path.exists("-")
