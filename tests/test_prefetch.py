"""The decode thread: frames arrive in order, at most a few ahead, errors in place, and it stops when told."""

from __future__ import annotations

import threading
import time

import pytest

from dfprep.vision.video import PREFETCH_FRAMES, VideoError, decode_frames, prefetched, probe
from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip


def _counting(limit: int, produced: list[int], closed: threading.Event, fail_at: int | None = None):
    """A generator that records what it produced and whether it was closed."""
    try:
        for item in range(limit):
            if item == fail_at:
                raise VideoError("decode_error", f"bad frame {item}")
            produced.append(item)
            yield item
    finally:
        closed.set()


def test_items_arrive_in_order_and_the_thread_runs_at_most_a_few_ahead():
    produced, closed = [], threading.Event()
    frames = prefetched(lambda: _counting(100, produced, closed))
    seen = []
    for item in frames:
        seen.append(item)
        time.sleep(0.002)  # the consumer is slower: the producer must wait, not run away
        assert len(produced) - len(seen) <= PREFETCH_FRAMES + 1  # queue + the one being put: memory stays flat
    assert seen == list(range(100)) and closed.is_set()


def test_an_error_in_the_decode_thread_is_raised_after_the_items_before_it():
    produced, closed = [], threading.Event()
    seen = []
    with pytest.raises(VideoError, match="bad frame 5"):
        for item in prefetched(lambda: _counting(10, produced, closed, fail_at=5)):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4] and closed.is_set()


def test_stopping_early_stops_the_thread_and_closes_its_decoder():
    produced, closed = [], threading.Event()
    frames = prefetched(lambda: _counting(10**6, produced, closed))
    assert [next(frames) for _ in range(3)] == [0, 1, 2]
    frames.close()  # what a timeout or an error in the face work does
    assert closed.wait(5) and not any(t.name == "dfprep-decode" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + PREFETCH_FRAMES + 1


def test_decoded_frames_through_the_thread_equal_the_direct_decode(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, 320, 240, 30, linear_motion(FacePlacement(10, 10, 0.8), FacePlacement(100, 50, 0.85)), gop=8)
    info = probe(path)
    plan = [0, 7, 8, 20, 29]
    direct = list(decode_frames(path, plan, info))
    threaded = list(prefetched(lambda: decode_frames(path, plan, info)))
    assert [f.index for f in threaded] == plan
    assert all((a.image == b.image).all() and a.pts_seconds == b.pts_seconds for a, b in zip(direct, threaded))
