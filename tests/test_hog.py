"""dlib's HOG detector comes from the user's cache after its first build: the same boxes and scores as a fresh
build, a cache file that is altered, truncated or oversized is never decoded and is replaced, a cache folder
that cannot be written (or is switched off) costs only the build, and `dfprep extract` writes and uses it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import dlib
import numpy as np
import pytest

from dfprep.vision import hog
from tests.helpers.runhelpers import FRAMES, REPO, cli, write_small_dataset
from tests.helpers.synthetic import FacePlacement, render_frame


def detections(detector, image: np.ndarray, upsample: int) -> tuple[list, list, list]:
    """Boxes, scores and sub-detector indexes exactly as dlib returns them."""
    rects, scores, kinds = detector.run(image, upsample, -0.5)
    return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects], list(scores), list(kinds)


def real_frames(ffpp_root: Path | None) -> list[np.ndarray]:
    """The first frame of each ffpp-mini video when present, and two synthetic faces always."""
    frames = [render_frame(640, 480, [FacePlacement(200, 100, 1.2)], seed=3),
              render_frame(480, 360, [FacePlacement(40, 60, 0.9), FacePlacement(260, 80, 1.0)], seed=5)]
    if ffpp_root is not None:
        import av

        for path in sorted(ffpp_root.glob("*_sequences/*/c23/videos/*.mp4")):
            with av.open(str(path)) as container:
                frames.append(next(container.decode(video=0)).to_ndarray(format="rgb24"))
    return frames


@pytest.fixture()
def counted_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each call of dlib's own build, counted."""
    builds: list[int] = []
    real_build = dlib.get_frontal_face_detector

    def counted():
        builds.append(1)
        return real_build()

    monkeypatch.setattr(hog.dlib, "get_frontal_face_detector", counted)
    return builds


def test_the_cached_detector_finds_the_same_faces_with_the_same_scores_as_a_fresh_build(
        tmp_path, monkeypatch, counted_builds, request):
    ffpp_root = request.getfixturevalue("ffpp_mini") if (REPO.parent / "shared" / "data" / "ffpp-mini").is_dir() \
        else None
    monkeypatch.setenv("DFPREP_CACHE_DIR", str(tmp_path / "cache"))
    first = hog.frontal_hog()
    cached = hog.cache_file(tmp_path / "cache")
    assert counted_builds == [1] and cached.stat().st_size < hog.MAX_CACHE_BYTES
    assert hog.digest_file(cached).read_text().strip() == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert sorted(p.name for p in cached.parent.iterdir()) == sorted([cached.name, hog.digest_file(cached).name])
    second = hog.frontal_hog()
    assert counted_builds == [1] and second is not first  # loaded from the file, not built
    built = dlib.get_frontal_face_detector()
    frames = real_frames(ffpp_root)
    found = 0
    for image in frames:
        for upsample in (0, 1):
            expected = detections(built, image, upsample)
            assert detections(second, image, upsample) == expected
            found += len(expected[0])
    assert found >= len(frames)  # the comparison covers real detections, not empty lists


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "oversized", "missing digest", "digest of another"])
def test_a_damaged_cache_file_is_never_decoded_and_is_replaced_by_a_fresh_build(
        tmp_path, monkeypatch, counted_builds, damage):
    monkeypatch.setenv("DFPREP_CACHE_DIR", str(tmp_path))
    hog.frontal_hog()
    cached, digest = hog.cache_file(tmp_path), hog.digest_file(hog.cache_file(tmp_path))
    good = cached.read_bytes()
    if damage == "flipped byte":
        cached.write_bytes(good[:500] + bytes([good[500] ^ 0xFF]) + good[501:])
    elif damage == "truncated":
        cached.write_bytes(good[: len(good) // 2])
    elif damage == "oversized":  # even with a matching digest, a file over the bound is not read into dlib
        big = good + b"\0" * hog.MAX_CACHE_BYTES
        cached.write_bytes(big)
        digest.write_text(hashlib.sha256(big).hexdigest())
    elif damage == "missing digest":
        digest.unlink()
    else:
        digest.write_text(hashlib.sha256(b"another file").hexdigest())
    decoded: list[str] = []
    real_load = dlib.fhog_object_detector
    monkeypatch.setattr(hog.dlib, "fhog_object_detector", lambda path: decoded.append(path) or real_load(path))
    detector = hog.frontal_hog()
    assert decoded == [] and counted_builds == [1, 1]
    assert cached.read_bytes() == good and digest.read_text().strip() == hashlib.sha256(good).hexdigest()
    image = render_frame(640, 480, [FacePlacement(200, 100, 1.2)], seed=3)
    assert detections(detector, image, 0) == detections(real_load(str(cached)), image, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cached.name, digest.name])  # no temporaries


def test_an_unwritable_or_switched_off_cache_costs_only_the_build(tmp_path, monkeypatch, counted_builds):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DFPREP_CACHE_DIR", str(blocker / "cache"))
    image = render_frame(640, 480, [FacePlacement(200, 100, 1.2)], seed=3)
    expected = detections(dlib.get_frontal_face_detector(), image, 0)
    assert detections(hog.frontal_hog(), image, 0) == expected and len(expected[0]) == 1
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        monkeypatch.setenv("DFPREP_CACHE_DIR", str(readonly))
        assert detections(hog.frontal_hog(), image, 0) == expected and list(readonly.iterdir()) == []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DFPREP_CACHE_DIR", "none")
    assert detections(hog.frontal_hog(), image, 0) == expected and not (tmp_path / "xdg").exists()
    monkeypatch.delenv("DFPREP_CACHE_DIR")
    hog.frontal_hog()
    assert hog.cache_file(tmp_path / "xdg" / "dfprep").is_file()  # the XDG default once the switch is gone


def test_dfprep_extract_writes_the_cache_and_a_run_from_it_writes_the_same_shards(tmp_path):
    root = write_small_dataset(tmp_path / "in", faces=2)
    env = {**os.environ, "DFPREP_CACHE_DIR": str(tmp_path / "cache")}
    outputs, stamps = [], []
    for run in ("built", "cached"):
        out = tmp_path / run
        done = subprocess.run(cli(root, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        stamps.append(hog.cache_file(tmp_path / "cache").stat().st_mtime_ns)
        members = {}
        for shard in sorted(out.rglob("*.tar")):
            with tarfile.open(shard) as tar:
                members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()})
        outputs.append(members)
    assert stamps[0] == stamps[1]  # the second run loaded the file (a failed load would have replaced it)
    faces = [name for name in outputs[0] if name.endswith((".png", ".jpg"))]
    assert outputs[0] == outputs[1] and len(faces) == 2 * FRAMES


def test_the_cache_folder_follows_the_user_settings(monkeypatch):
    from dfprep.config.paths import cache_dir

    monkeypatch.setenv("DFPREP_CACHE_DIR", "~/somewhere")
    assert cache_dir() == Path(os.path.expanduser("~/somewhere"))
    monkeypatch.setenv("DFPREP_CACHE_DIR", "none")
    assert cache_dir() is None
    monkeypatch.delenv("DFPREP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert cache_dir() == Path("/x/cache/dfprep")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert cache_dir() == Path("/home/someone/.cache/dfprep")


def test_processes_building_the_cache_at_once_all_get_the_detector_and_leave_one_verified_copy(tmp_path):
    """Four commands started together on a machine with no cache: each builds and saves; the renames leave one
    whole file and its sha256, no temporary, and every later process loads it."""
    code = ("import sys\n"
            "from dfprep.vision import hog\n"
            "from tests.test_hog import detections\n"
            "from tests.helpers.synthetic import FacePlacement, render_frame\n"
            "image = render_frame(640, 480, [FacePlacement(200, 100, 1.2)], seed=3)\n"
            "print(detections(hog.frontal_hog(), image, 0))\n")
    env = {**os.environ, "DFPREP_CACHE_DIR": str(tmp_path)}
    racing = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO.parent, env=env, stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    printed = [process.communicate(timeout=120)[0] for process in racing]
    assert all(process.returncode == 0 for process in racing)
    image = render_frame(640, 480, [FacePlacement(200, 100, 1.2)], seed=3)
    expected = str(detections(dlib.get_frontal_face_detector(), image, 0))
    assert [line.strip() for line in printed] == [expected] * 4
    cached = hog.cache_file(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cached.name, hog.digest_file(cached).name])
    assert hog._load_verified(cached) is not None
