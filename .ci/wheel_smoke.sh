#!/usr/bin/env bash
# A wheel that runs anywhere: build dfprep's wheel from the checkout's files, install it (not editable) into a
# fresh venv, and from a folder outside the checkout run `dfprep models` and an extract with the caddm-ffpp
# recipe on a tiny synthetic FF++ tree, asserting that faces come out.
#   .ci/wheel_smoke.sh            (or `make wheel-smoke`); PYTHON picks the interpreter (default python3);
#   DEV_PYTHON (default .venv/bin/python, made by `make install-test`) only writes the synthetic input.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
dev_python="${DEV_PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/dfprep-wheel-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT
step() { printf '== %s (%ss)\n' "$1" "$SECONDS"; }

step "copy the checkout's files (tracked and new, not ignored) to $work/src"
mkdir "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf -) | tar -C "$work/src" -xf -

step "build the wheel"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/dfprep-*.whl)"
"$work/venv/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["dfprep/config/resources/pipelines.yaml", "dfprep/config/resources/pipelines/caddm-ffpp.yaml",
        "dfprep/config/resources/landmarks/models.yaml"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), "no LICENSE"
assert not any(n.endswith(".dat") or n.startswith("tests/") for n in names), "wheel ships a model or the tests"
print(f"wheel {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, resources and LICENSE present")
EOF

step "install it, not editable, into the fresh venv"
"$work/venv/bin/pip" install --quiet "$wheel"

step "write a tiny FF++ tree (tests/helpers/synthetic.py)"
PYTHONPATH="$repo" "$dev_python" -c 'import sys; from pathlib import Path
from tests.helpers.synthetic import write_ffpp_pairs
write_ffpp_pairs(Path(sys.argv[1]), frames=8)' "$work/ffpp"

step "run the installed dfprep from a folder outside the checkout"
mkdir "$work/run" && cd "$work/run"
export XDG_CONFIG_HOME="$work/xdg"
unset PYTHONPATH DFPREP_HOME DFPREP_LANDMARKS
dfprep="$work/venv/bin/dfprep"
"$work/venv/bin/python" -c 'import dfprep, sys; assert dfprep.__file__.startswith(sys.prefix), dfprep.__file__'
"$dfprep" models | tee models.txt
grep -Eq '^dlib68 +68 pts  fbdc2cb80eb9aa7a' models.txt
grep -q "landmark folders, first wins: .*$work/venv/.*/dfprep/config/resources/landmarks" models.txt
"$dfprep" extract --pipeline caddm-ffpp --set "dataset.root=$work/ffpp" --set sampling.frames=4 \
  -o out --workers 0 --quiet
"$dfprep" stats out --json > stats.json
"$work/venv/bin/python" - <<'EOF'
import json, tarfile
import cv2, numpy as np
totals = json.load(open("stats.json"))["totals"]
with tarfile.open("out/train-000000.tar") as tar:
    faces = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.count(".") == 1
             and m.name.endswith(".png")}  # <key>.png: the aligned face (not context/original crops)
assert totals["videos"] == 4 and totals["faces"] == totals["planned"] == 16 == len(faces), (totals, len(faces))
shapes = {cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).shape for b in faces.values()}
assert shapes == {(224, 224, 3)}, shapes  # caddm: 224 px crops
print(f"extract from the wheel: {totals['videos']} videos, {len(faces)} 224x224 faces in out/train-000000.tar")
EOF
step "wheel smoke test passed"
