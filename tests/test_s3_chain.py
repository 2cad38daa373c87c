"""The whole chain on object storage: extract → stats → maps → train → evaluate → FaceShards, against a real
S3-compatible server (moto's) started on 127.0.0.1, addressed by URIs with a query string.

Skipped with the reason when moto[server] is not installed or its server does not start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.synthetic import FacePlacement, linear_motion, write_clip

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int, seconds: float) -> bool:
    """Whether something accepts connections on the port within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with one bucket; yields the query string that points pyarrow at it."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS})
    try:
        if not _listening(port, 30):
            pytest.skip(f"moto's S3 server did not start on 127.0.0.1:{port}")
        import pyarrow.fs as pafs

        os.environ.update(CREDENTIALS)
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                          access_key="testing", secret_key="testing", allow_bucket_creation=True).create_dir("dfprep")
        yield f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _dfprep(*args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it (credentials in the environment, as for any S3 client)."""
    result = subprocess.run([sys.executable, "-m", "dfprep", *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **CREDENTIALS, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, f"dfprep {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_the_whole_chain_reads_and_writes_s3_uris_with_a_query_string(s3_endpoint, tmp_path):
    root = tmp_path / "videos"
    for index, label in enumerate(("real", "fake", "real", "fake")):
        motion = linear_motion(FacePlacement(10 + 15 * index, 10, 0.8), FacePlacement(100, 50, 0.85))
        write_clip(root / label / f"clip{index}.mp4", 320, 240, 8, motion, gop=4, seed=index)
    out = f"s3://dfprep/out?{s3_endpoint}"

    extract = json.loads(_dfprep("extract", "folder", str(root), "-o", out, "--workers", "0", "--frames", "2",
                                 "--json").stdout)
    assert extract["output"] == "s3://dfprep/out" and extract["faces"] == 8  # scheme kept, query left out
    stats = json.loads(_dfprep("stats", out, "--json").stdout)
    assert stats["output"] == "s3://dfprep/out"
    maps = json.loads(_dfprep("maps", out, "--workers", "0", "--json").stdout)
    assert maps["output"] == "s3://dfprep/out/maps/landmarks" and maps["maps_written"] == 8

    run = tmp_path / "run"
    _dfprep("train", out, "-o", str(run), "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--max-steps-per-epoch", "2", "--device", "cpu", "--maps", "landmarks", "--region-erasing")
    assert (run / "model.pt").is_file()
    from dfprep.io.storage import Storage

    os.environ.update(CREDENTIALS)
    Storage(f"s3://dfprep/runs?{s3_endpoint}").write_bytes("model.pt", (run / "model.pt").read_bytes())
    checkpoint = f"s3://dfprep/runs/model.pt?{s3_endpoint}"  # the checkpoint may live in the bucket too
    evaluated = json.loads(_dfprep("evaluate", checkpoint, out, "--split", "train", "--workers", "0",
                                   "--device", "cpu", "--json", "-").stdout)
    assert evaluated["rows"][0]["frames"] == 8 and evaluated["rows"][0]["out"] == out

    from dfprep.torch.data import FaceShards  # the torch side reads the same URI, maps joined by key

    os.environ.update(CREDENTIALS)
    samples = list(FaceShards(out, split="train", maps="landmarks"))
    assert len(samples) == 8 and len({sample["key"] for sample in samples}) == 8
    assert all(tuple(sample["map"].shape[-2:]) == tuple(sample["image"].shape[-2:]) for sample in samples)


def test_a_query_string_stays_at_the_end_of_every_shard_uri():
    from dfprep.torch.shardlist import join, split_query

    base = "s3://b/p?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join(base, "maps", "landmarks", "train-000000.tar") == \
        "s3://b/p/maps/landmarks/train-000000.tar?endpoint_override=127.0.0.1:9000&scheme=http"
    assert split_query(base) == ("s3://b/p", "?endpoint_override=127.0.0.1:9000&scheme=http")
    assert join("/local/out", "train-000000.tar") == str(Path("/local/out/train-000000.tar"))
