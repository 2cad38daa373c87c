"""The output contract's names in one place: every file dfprep writes, member types, shard names, statuses.

An output folder OUT holds, per work unit `<split>-NNNNNN`: `<unit>.tar` (WebDataset shard), `<unit>.parquet`
(its index) and `<unit>_stats.json` (the commit marker, written last); beside them the run's indexes
(`plan.parquet`, `plan.json`, `videos.parquet`, `dataset.json`), the ownership file and the lock, and
companion map sets under `maps/<name>/` (same unit names, one `<key>.prmap.png` per face, a manifest).
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- files of an output folder

VIDEOS_TABLE = "videos.parquet"  # one row per input video and its status
DATASET_JSON = "dataset.json"  # config, versions, models, shards, completeness
PLAN_TABLE = "plan.parquet"  # the persisted work units
PLAN_META = "plan.json"  # the plan's config hash and inputs
INDEX_FILES = (PLAN_META, PLAN_TABLE, VIDEOS_TABLE, DATASET_JSON)  # dfprep's own files besides the shards
OWNERSHIP_FILE = "_dfprep_output.json"  # says dfprep owns this folder (it deletes only in folders it owns)
LOCK_FILE = "_dfprep.lock"  # one run per output folder
ATTEMPTS_DIR = "_attempts"  # per-video attempt markers of units in progress
STATS_SUFFIX = "_stats.json"  # <unit>_stats.json: the commit marker
TEMP_SUFFIX = ".tmp"  # every file is written as <name>.tmp, then renamed
UNIT_SUFFIXES = (STATS_SUFFIX, ".tar", ".parquet")  # a unit's files; the marker is deleted first
MAPS_FOLDER = "maps"  # companion map sets: OUT/maps/<name>/
MANIFEST = "manifest.json"  # how a map set was made

# ---------------------------------------------------------------- members of a sample (<key>.<type>)

IMAGE_TYPES = ("jpg", "png", "webp")  # face crops as extract writes them (output.image_format)
LANDMARKS_MEMBER = "ldm.npy"
MAP_MEMBER = "prmap.png"  # a primary-region map in a companion shard

# ---------------------------------------------------------------- names

SHARD_PATTERN = r"(?P<split>[A-Za-z0-9_]+)-\d{6}"  # <split>-NNNNNN, for any split name
SHARD_NAME = re.compile(rf"^{SHARD_PATTERN}$")
MAP_SET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # --name of a map set: a single safe folder name


def shard_split(name: str) -> str | None:
    """The split a shard name carries (`train-000003` → train); None for other files."""
    match = SHARD_NAME.match(name)
    return match.group("split") if match else None


def unit_files(unit: str) -> list[str]:
    """Every file name a unit may leave: marker, tar, parquet and their temporaries (marker first)."""
    return [f"{unit}{suffix}{temp}" for suffix in UNIT_SUFFIXES for temp in ("", TEMP_SUFFIX)]


# ---------------------------------------------------------------- statuses of videos.parquet

OK = "ok"  # at least one face written
NO_FACE = "no_face"  # decoded, but no face in any planned frame
MISSING = "missing"  # the catalog names a file that is absent
UNSUPPORTED = "unsupported"  # not a video, or no decoder for it
DECODE_ERROR = "decode_error"  # corrupt, or its worker died on it twice
TIMEOUT = "timeout"  # over sampling.video_timeout_s, or hung the decoder
INTERNAL_ERROR = "internal_error"  # a bug or library failure inside one stage
VIDEO_STATUSES = (MISSING, UNSUPPORTED, DECODE_ERROR, TIMEOUT)  # what a VideoError may carry
STATUSES = (OK, NO_FACE, *VIDEO_STATUSES, INTERNAL_ERROR)


# ---------------------------------------------------------------- how readers reach each kind of file
# One glob per kind, relative to OUT, matching that kind and nothing else (README: "Read the output with…").
# Give readers these globs, not OUT itself: OUT also holds the run's JSON files and maps/ below it.
SAMPLE_SHARDS = "*.tar"  # faces as WebDataset shards (not recursive: maps/ is not matched)
SAMPLE_INDEXES = "*-??????.parquet"  # one row per sample; videos.parquet and plan.parquet do not match
MAP_SHARDS = MAPS_FOLDER + "/{name}/*.tar"  # a map set's companion shards: same keys, same order
MAP_INDEXES = MAPS_FOLDER + "/{name}/*-??????.parquet"  # one row per map (key, coverage, peak)
# String fields every sample's json carries, "" where they do not apply: readers that infer one schema from the
# first samples (Hugging Face datasets) keep them, where a missing field is dropped and a null one fails to cast.
SAMPLE_JSON_STRINGS = ("pair_key",)
