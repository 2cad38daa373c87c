"""A missing or too-old dependency is one line with the install command, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from dfprep.cli import deps


def _run_blocked(module: str, *args: str) -> subprocess.CompletedProcess:
    """`dfprep ARGS` in a fresh interpreter where importing `module` fails as if it were not installed."""
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from dfprep.cli import main\n"
              f"sys.argv = ['dfprep', *{list(args)!r}]\n"
              "main()\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_demo_without_scikit_image_is_one_line_with_the_extra_to_install(tmp_path):
    result = _run_blocked("skimage", "demo", "-o", str(tmp_path / "demo"), "--workers", "0", "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dfprep: error: this command needs skimage, from an optional extra: pip install 'dfprep[demo]'"]
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").rglob("*.mp4"))


def test_a_too_old_dependency_stops_every_command_with_one_line(monkeypatch):
    real_version = metadata.version
    monkeypatch.setattr(deps.metadata, "version", lambda name: "16.1.0" if name == "av" else real_version(name))
    assert deps.dependency_problem() == "av 16.1.0 is too old (dfprep needs av>=17.1): pip install 'av>=17.1'"
    from click.testing import CliRunner

    from dfprep.cli import cli

    result = CliRunner().invoke(cli, ["stats", "nowhere"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "dfprep: error: av 16.1.0 is too old (dfprep needs av>=17.1): pip install 'av>=17.1'"]


def test_a_missing_dependency_names_the_package_and_its_bound(monkeypatch):
    def version(name: str) -> str:
        if name == "webdataset":
            raise metadata.PackageNotFoundError(name)
        return metadata.distribution(name).version

    monkeypatch.setattr(deps.metadata, "version", version)
    assert deps.dependency_problem() == ("webdataset is not installed (dfprep needs webdataset>=0.2.86): "
                                         "pip install 'webdataset>=0.2.86'")


def test_the_installed_environment_meets_every_bound_it_declares():
    assert deps.lower_bounds()["av"] == "17.1"  # the bounds come from the installed metadata (setup.cfg)
    assert deps.dependency_problem() is None
    assert deps.dependency_problem("test") is None
    assert {"pytest", "moto", "scikit-image"} <= set(deps.lower_bounds("test"))  # `moto[server]` counts as moto


@pytest.mark.parametrize("version, expected", [("17.0.1rc1", (17, 0, 1)), ("4.10.0.84", (4, 10, 0, 84)),
                                               ("2.13.0+cpu", (2, 13, 0)), ("dev", ())])
def test_release_numbers_compare_numerically(version, expected):
    assert deps.release(version) == expected
    assert deps.release("4.10.0.84") > deps.release("4.9.0.80")  # not string order
