"""The output contract in one place: every file dfprep writes, member types, shard names, statuses, and the
schema of every parquet table (the writers write through these schemas; readers may rely on them).

An output folder OUT holds, per work unit `<split>-NNNNNN`: `<unit>.tar` (WebDataset shard), `<unit>.parquet`
(its index) and `<unit>_stats.json` (the commit marker, written last); beside them the run's indexes
(`plan.parquet`, `plan.json`, `videos.parquet`, `dataset.json`), the ownership file and the lock, and
companion map sets under `maps/<name>/` (same unit names, one `<key>.prmap.png` per face, a manifest).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Iterable

import pyarrow as pa

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
READ_IMAGE_TYPES = ("jpg", "jpeg", "png", "webp")  # what every reader accepts (.jpeg: other tools' name for jpg)
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


# ---------------------------------------------------------------- attempt markers (_attempts/<unit>-NNNNN.json)

ATTEMPT_MARKER = re.compile(rf"^(?P<unit>{SHARD_PATTERN})-(?P<position>\d{{5}})\.json(?P<temporary>\.tmp)?$")


def marker_name(unit: str, position: int) -> str:
    """Attempt marker of one video of a unit."""
    return f"{ATTEMPTS_DIR}/{unit}-{position:05d}.json"


def marker_unit(name: str) -> str | None:
    """The unit an attempt marker (or its temporary) belongs to; None for a file dfprep did not name."""
    match = ATTEMPT_MARKER.match(name)
    return match["unit"] if match else None


# ---------------------------------------------------------------- statuses of videos.parquet


class VideoStatus(StrEnum):
    """The `status` column of videos.parquet: one value per outcome of a video (a str: it compares and
    serialises as its value)."""

    OK = "ok"  # every planned frame gave a face
    PARTIAL = "partial"  # some planned frames (or their neighbours) gave no face
    NO_FACE = "no_face"  # decoded, but no face in any planned frame
    MISSING = "missing"  # the catalog names a file that is absent
    UNSUPPORTED = "unsupported"  # not a video, or no decoder for it
    DECODE_ERROR = "decode_error"  # corrupt, or its worker died on it twice
    TIMEOUT = "timeout"  # over sampling.video_timeout_s, or hung the decoder
    INTERNAL_ERROR = "internal_error"  # a bug or library failure inside one stage


OK, PARTIAL, NO_FACE = VideoStatus.OK, VideoStatus.PARTIAL, VideoStatus.NO_FACE
MISSING, UNSUPPORTED, DECODE_ERROR = VideoStatus.MISSING, VideoStatus.UNSUPPORTED, VideoStatus.DECODE_ERROR
TIMEOUT, INTERNAL_ERROR = VideoStatus.TIMEOUT, VideoStatus.INTERNAL_ERROR
VIDEO_STATUSES = (MISSING, UNSUPPORTED, DECODE_ERROR, TIMEOUT)  # what a VideoError may carry
STATUSES = tuple(VideoStatus)
FOUND = "found"  # the catalog's status of a record whose file exists (any other is MISSING)

# ---------------------------------------------------------------- parquet schemas

# A catalog record's columns (dfprep.catalog.base.VideoRecord, in field order): the plan and videos.parquet
# both start with them.
RECORD_FIELDS = (("video_id", pa.string()), ("path", pa.string()), ("dataset", pa.string()), ("method", pa.string()),
                 ("compression", pa.string()), ("split", pa.string()), ("label", pa.int64()),
                 ("family_id", pa.string()), ("source_id", pa.string()), ("target_id", pa.string()),
                 ("mask_path", pa.string()), ("fold", pa.string()), ("status", pa.string()), ("error", pa.string()))
# videos.parquet: one row per input video (failures included); `pair` only with output.registered_original,
# `identity` and `identity_faces` only with detection.identity.
# `faces_cnn`: how many of faces_written dlib's CNN found (detection.detector cascade or cnn; 0 with hog).
VIDEO_FIELDS = (*RECORD_FIELDS, ("frames_planned", pa.int64()), ("faces_written", pa.int64()),
                ("faces_cnn", pa.int64()), ("plan", pa.string()), ("frame_count", pa.int64()), ("fps", pa.float64()),
                ("shard", pa.string()))
OPTIONAL_VIDEO_FIELDS = (("pair", pa.string()), ("identity", pa.list_(pa.float64())), ("identity_faces", pa.int64()))
# <unit>.parquet of a face shard: one row per sample, in tar order; `has_original` only with registered originals.
SAMPLE_FIELDS = (("key", pa.string()), ("video_id", pa.string()), ("dataset", pa.string()), ("method", pa.string()),
                 ("split", pa.string()), ("label", pa.int64()), ("family_id", pa.string()), ("frame", pa.int64()),
                 ("planned_frame", pa.int64()), ("pts", pa.float64()), ("track_id", pa.int64()),
                 ("score", pa.float64()), ("bbox_x0", pa.float64()), ("bbox_y0", pa.float64()),
                 ("bbox_x1", pa.float64()), ("bbox_y1", pa.float64()), ("pair_key", pa.string()),
                 ("detector", pa.string()))  # which detector found the face: hog | cnn (detection.detector cascade)
# maps/<name>/<unit>.parquet: one row per map, same keys and order as the face shard.
MAP_INDEX_SCHEMA = pa.schema([("key", pa.string()), ("coverage", pa.float64()), ("peak", pa.float64())])
# plan.parquet: one row per planned video: its unit, its position there, the record, its original's path.
PLAN_SCHEMA = pa.schema([("unit", pa.string()), ("position", pa.int64()), *RECORD_FIELDS,
                         ("original_path", pa.string())])


def sample_index_schema(registered_original: bool) -> pa.Schema:
    """The schema of a face shard's index."""
    return pa.schema([*SAMPLE_FIELDS, *([("has_original", pa.bool_())] if registered_original else [])])


def videos_schema(columns: Iterable[str]) -> pa.Schema:
    """The schema of videos.parquet for rows holding `columns`: every required column, the optional ones present."""
    present = set(columns)
    schema = pa.schema([*VIDEO_FIELDS, *(f for f in OPTIONAL_VIDEO_FIELDS if f[0] in present)])
    check_columns(present, schema, VIDEOS_TABLE)
    return schema


def check_columns(columns: Iterable[str], schema: pa.Schema, table: str) -> None:
    """A column the contract does not name would be dropped by the writer: refuse it instead (a bug)."""
    unknown = sorted(set(columns) - set(schema.names))
    if unknown:
        raise ValueError(f"{table}: columns {unknown} are not in the output contract (dfprep.io.layout)")


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
