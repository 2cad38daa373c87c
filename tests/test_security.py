"""Security rules enforced on the source: no pickle, no unsafe YAML, no shell, no escaping output paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dfprep.io.keys import sample_key
from dfprep.io.storage import Storage

PACKAGE = Path(__file__).resolve().parents[1] / "dfprep"
FORBIDDEN = {
    r"\bpickle\.loads?\(": "unpickling",
    r"allow_pickle\s*=\s*True": "pickled numpy arrays",
    r"yaml\.(load|unsafe_load|full_load)\(": "unsafe YAML loading",
    r"shell\s*=\s*True": "shell invocation",
    r"os\.(system|popen)\(": "shell invocation",
    r"(?<![.\w])(eval|exec)\(": "dynamic code execution",
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("pattern, what", FORBIDDEN.items())
def test_package_never_uses(pattern, what):
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}" for p in _sources()
                 for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not offenders, f"{what} in {offenders}"


def test_every_torch_load_is_weights_only():
    calls = [(p, line) for p in _sources() for line in p.read_text().splitlines() if "torch.load(" in line]
    assert all("weights_only=True" in line for _, line in calls), calls


@pytest.mark.parametrize("video_id", ["../../etc/passwd", "/etc/shadow", "a/../../../b", "x\0y", "..", "." * 300])
def test_dataset_ids_cannot_produce_paths_outside_the_output(video_id, tmp_path):
    storage = Storage(str(tmp_path / "out"))
    key = sample_key(video_id, 0)
    resolved = Path(storage.path(f"train-000000.{key}.jpg")).resolve()
    assert resolved.parent == (tmp_path / "out").resolve() and "\0" not in key
