"""What `dfprep extract` pays before its first video: pandas is never imported by the command (pyarrow would
import it at its first array conversion, ~0.4 s), while torch commands and a library user's process keep it;
the command's own Arrow work runs on the system allocator, a library user's keeps its pool."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.runhelpers import REPO, write_small_dataset


def test_the_extract_command_runs_without_importing_pandas(tmp_path):
    pytest.importorskip("pandas")  # installed here (the test extra): the command must still leave it alone
    root = write_small_dataset(tmp_path / "in", faces=1)
    command = ("import atexit, runpy, sys\n"  # `python -m dfprep`, and which Arrow pool the command left set
               "def pools():\n"
               "    pa = sys.modules['pyarrow']\n"
               "    print('arrow pool:', pa.default_memory_pool().backend_name,\n"
               "          'mimalloc used:', pa.mimalloc_memory_pool().max_memory())\n"
               "atexit.register(pools)\n"
               "sys.argv = ['dfprep', *sys.argv[1:]]\n"
               "runpy.run_module('dfprep', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", command, "extract", "folder", str(root),
                           "-o", str(tmp_path / "out"), "--frames", "1", "--quiet"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")]
    assert "pyarrow" in imported and not any(name.startswith("pandas.") for name in imported)
    assert "arrow pool: system mimalloc used: 0" in done.stdout  # the driver's bookkeeping never touches mimalloc
    rows = pq.read_table(tmp_path / "out" / "videos.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["no_face", "ok"] and sum(r["faces_written"] for r in rows) == 1


def test_the_extract_command_called_from_python_leaves_pandas_alone(tmp_path):
    pytest.importorskip("pandas")
    from click.testing import CliRunner

    from dfprep.cli.app import cli

    root = write_small_dataset(tmp_path / "in", faces=1)
    pool = pa.default_memory_pool().backend_name
    result = CliRunner().invoke(cli, ["extract", "folder", str(root), "-o", str(tmp_path / "out"), "--frames", "1",
                                      "--quiet", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert pa.default_memory_pool().backend_name == pool  # the caller's process keeps its Arrow pool
    import pandas  # noqa: F401 - the test runner's own process can still import it

    assert pq.read_table(tmp_path / "out" / "videos.parquet").to_pandas().shape[0] == 2


def test_a_library_user_still_gets_pandas_from_pyarrow(tmp_path):
    pytest.importorskip("pandas")
    code = ("import sys, pyarrow as pa, dfprep.cli.app\n"
            "pa.array([1]); print('pandas' in sys.modules and sys.modules['pandas'] is not None)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr
