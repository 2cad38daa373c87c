"""`dfprep stats`: what an output folder holds, from its indexes alone (never opens a tar).

Everything comes from `videos.parquet`, `dataset.json`, `plan.json` and one listing of the folder (tar sizes),
so the report costs the same on a 100-video test run and on a 100k-video DFDC output in object storage.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dfprep.errors import DfprepError, normalised_reason, one_line
from dfprep.io.integrity import file_sizes, output_problems
from dfprep.io.layout import DATASET_JSON, MAPS_FOLDER, PLAN_META, STATS_SUFFIX, TEMP_SUFFIX, VIDEOS_TABLE, shard_split
from dfprep.io.shards import commit_markers
from dfprep.io.storage import Storage

TOP_REASONS = 20
BATCH_ROWS = 1024  # videos.parquet rows turned into Python objects at a time
VIDEO_COLUMNS = ("video_id", "dataset", "method", "split", "label", "status", "error", "frames_planned",
                 "faces_written", "shard")
LABEL_NAMES = {0: "real", 1: "fake"}


def as_storage(out: str | Storage) -> Storage:
    """Accept a path, a pyarrow.fs URI or an already opened Storage."""
    return out if isinstance(out, Storage) else Storage(out)


def video_rows(storage: Storage) -> Iterator[dict[str, Any]]:
    """videos.parquet rows (only the columns reports need), a row group at a time; from the commit markers, one
    at a time, while no index exists yet. Never the whole table at once: a 100k-video output costs its batch."""
    if not storage.exists(VIDEOS_TABLE):
        for _, stats in commit_markers(storage):
            for row in stats.get("videos", []):
                yield {c: row.get(c) for c in VIDEO_COLUMNS}
        return
    try:
        with storage.fs.open_input_file(storage.path(VIDEOS_TABLE)) as handle:
            index = pq.ParquetFile(handle)
            present = [c for c in VIDEO_COLUMNS if c in index.schema_arrow.names]
            for batch in index.iter_batches(batch_size=BATCH_ROWS, columns=present, use_threads=False):
                for row in batch.to_pylist():
                    yield {c: row.get(c) for c in VIDEO_COLUMNS}
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise DfprepError(f"{storage.path(VIDEOS_TABLE)} is unreadable ({one_line(exc, limit=80)}); "
                          "rerun the extract command to rebuild it") from None


def load_video_rows(storage: Storage) -> list[dict[str, Any]]:
    """Every video's row (`video_rows`) as one list, for the tools that pick among them (preview)."""
    rows = list(video_rows(storage))
    if not rows and not storage.exists(DATASET_JSON):
        raise DfprepError(not_an_output(storage))
    return rows


def not_an_output(storage: Storage) -> str:
    """The one-line refusal for a folder with no index, no dataset.json and no committed shard."""
    return f"{storage.root} is not a dfprep output (no {VIDEOS_TABLE}, {DATASET_JSON} or shards)"


@dataclass
class VideoTally:
    """What the report counts, added one video row at a time: memory grows with the groups, not the videos."""

    groups: dict[tuple[str, str, str, Any], Counter[str]] = field(default_factory=dict)  # → videos/planned/faces
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (status, normalised error)
    faces: Counter[int] = field(default_factory=Counter)  # faces written → videos

    def add(self, row: dict[str, Any]) -> None:
        """Count one video."""
        key = (row["dataset"] or "", row["method"] or "", row["split"] or "", row["label"])
        faces = row["faces_written"] or 0
        self.groups.setdefault(key, Counter()).update(videos=1, planned=row["frames_planned"] or 0, faces=faces)
        self.statuses[row["status"]] += 1
        if row["error"]:
            self.reasons[(row["status"], normalised_reason(row["error"]))] += 1
        self.faces[faces] += 1

    def total(self, name: str) -> int:
        """A count summed over every group (videos, planned, faces)."""
        return sum(counter[name] for counter in self.groups.values())


def tally(rows: Iterable[dict[str, Any]]) -> VideoTally:
    """The rows counted."""
    counted = VideoTally()
    for row in rows:
        counted.add(row)
    return counted


def _read_json_or_empty(storage: Storage, name: str) -> dict[str, Any]:
    """A small JSON file of the output, or {} when it is absent or unreadable (an interrupted first run)."""
    return storage.read_marker(name) or {}  # absent or unreadable: as if not written yet


def _yield(planned: int, written: int) -> float | None:
    """Faces written per planned frame (None when nothing was planned)."""
    return round(written / planned, 4) if planned else None


def video_groups(counted: VideoTally) -> list[dict[str, Any]]:
    """Videos, planned frames and faces per (dataset, method, split, label)."""
    return [{"dataset": d, "method": m, "split": s, "label": LABEL_NAMES.get(lab, str(lab)), **dict(c)}
            for (d, m, s, lab), c in sorted(counted.groups.items(), key=lambda kv: tuple(map(str, kv[0])))]


def yield_by_method(counted: VideoTally) -> list[dict[str, Any]]:
    """Face yield per (dataset, method): which manipulation loses faces."""
    totals: dict[tuple[str, str], Counter[str]] = {}
    for (dataset, method, _, _), counter in counted.groups.items():
        totals.setdefault((dataset, method), Counter()).update(counter)
    return [{"dataset": d, "method": m, "videos": c["videos"], "planned": c["planned"], "faces": c["faces"],
             "yield": _yield(c["planned"], c["faces"])} for (d, m), c in sorted(totals.items())]


def split_summary(counted: VideoTally, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Per split: videos (real/fake), faces, shards and disk (sum of its tar sizes)."""
    summary: dict[str, Counter[str]] = {}
    for (_, _, split, label), counter in counted.groups.items():
        summary.setdefault(split, Counter()).update(videos=counter["videos"], faces=counter["faces"],
                                                    **{LABEL_NAMES.get(label, "other"): counter["videos"]})
    for name, size in sizes.items():
        split = shard_split(name[:-4]) if name.endswith(".tar") else None
        if split is not None:
            summary.setdefault(split, Counter()).update(shards=1, disk_bytes=size)
    columns = ("videos", "real", "fake", "faces", "shards", "disk_bytes")
    return [{"split": split, **{c: counter[c] for c in columns}} for split, counter in sorted(summary.items())]


def failure_reasons(counted: VideoTally, top: int = TOP_REASONS) -> list[dict[str, Any]]:
    """The most common (status, normalised error) pairs: what to fix first."""
    return [{"status": status, "reason": reason, "videos": count}
            for (status, reason), count in counted.reasons.most_common(top)]


def frames_per_video(counted: VideoTally) -> list[dict[str, int]]:
    """How many videos ended with each number of faces (0 = a video that gave nothing)."""
    return [{"faces": faces, "videos": videos} for faces, videos in sorted(counted.faces.items())]


def shard_state(storage: Storage, sizes: dict[str, int], dataset: dict[str, Any]) -> dict[str, Any]:
    """Planned vs committed shards, and whether the output is complete: every planned shard committed and intact.

    Intact is the cheap check (dfprep.io.integrity): markers readable, tars and indexes present with the sizes
    their markers recorded. `dfprep verify` reads the tars as well.
    """
    committed = sum(1 for n in sizes if n.endswith(STATS_SUFFIX) and shard_split(n[: -len(STATS_SUFFIX)]))
    plan = _read_json_or_empty(storage, PLAN_META)
    planned = int(plan.get("units", len(dataset.get("shards", []))))
    temporaries = sum(1 for n in sizes if n.endswith(f".tar{TEMP_SUFFIX}"))
    damaged = [d for d in output_problems(storage) if d.kind == "damaged"]
    complete = bool(dataset.get("complete")) and committed >= planned and not temporaries and not damaged
    return {"planned": planned, "committed": committed, "tars": sum(1 for n in sizes if n.endswith(".tar")),
            "temporaries": temporaries, "complete": complete, "damaged": [d.line() for d in damaged]}


def map_summary(storage: Storage) -> list[dict[str, Any]]:
    """Companion map sets under maps/<name>/: shards and bytes each."""
    totals: dict[str, Counter[str]] = {}
    for name, size in file_sizes(storage, MAPS_FOLDER, recursive=True).items():
        folder, _, base = name.rpartition("/")
        if base.endswith(".tar") and folder and "/" not in folder:
            totals.setdefault(folder, Counter()).update(shards=1, disk_bytes=size)
    return [{"name": name, "shards": c["shards"], "disk_bytes": c["disk_bytes"]} for name, c in sorted(totals.items())]


def compute_stats(out: str | Storage) -> dict[str, Any]:
    """Every number `dfprep stats` reports, as plain JSON-ready data."""
    storage = as_storage(out)
    if storage.fs.get_file_info(storage.root).type != pafs.FileType.Directory:
        raise DfprepError(f"{storage.root}: no such output folder")
    counted = tally(video_rows(storage))
    if not counted.groups and not storage.exists(DATASET_JSON):
        raise DfprepError(not_an_output(storage))
    dataset = _read_json_or_empty(storage, DATASET_JSON)
    sizes = file_sizes(storage)
    planned, faces = counted.total("planned"), counted.total("faces")
    return {
        "output": storage.display, "config_hash": dataset.get("config_hash"), "versions": dataset.get("versions", {}),
        "models": dataset.get("models", {}), "shards": shard_state(storage, sizes, dataset),
        "totals": {"videos": counted.total("videos"), "planned": planned, "faces": faces,
                   "yield": _yield(planned, faces), "disk_bytes": sum(s for n, s in sizes.items() if n.endswith(".tar"))},
        "splits": split_summary(counted, sizes), "videos": video_groups(counted),
        "yield_by_method": yield_by_method(counted), "statuses": dict(counted.statuses.most_common()),
        "reasons": failure_reasons(counted), "frames_per_video": frames_per_video(counted),
        "maps": map_summary(storage),
    }


# ---------------------------------------------------------------------------------------------- text report


def human_bytes(size: int) -> str:
    """1536 → '1.5 KB': disk sizes a person can read."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _percent(ratio: float | None) -> str:
    """A yield as a percentage ('–' when nothing was planned)."""
    return "-" if ratio is None else f"{100 * ratio:.1f}%"


def text_table(headers: list[str], rows: list[list[Any]], indent: str = "  ") -> list[str]:
    """Aligned columns: text left, numbers (and percentages, sizes) right."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or _looks_numeric(str(row[i])) for row in rows) and bool(rows)
               for i in range(len(headers))]

    def line(values: list[str]) -> str:
        """One padded row."""
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers)] + [line(r) for r in cells]


def _looks_numeric(text: str) -> bool:
    """'12', '97.5%', '1.4 MB' and '-' align right like numbers."""
    return bool(re.fullmatch(r"-|[\d.,]+( ?(%|B|KB|MB|GB|TB))?", text))


def display_bins(bins: list[dict[str, int]], most: int = 24) -> list[tuple[str, int]]:
    """Face-count bins for display: one per value, or equal-width ranges when there are too many values."""
    if len(bins) <= most:
        return [(str(b["faces"]), b["videos"]) for b in bins]
    low, high = bins[0]["faces"], bins[-1]["faces"]
    step = -(-(high - low + 1) // most)
    ranges = Counter()
    for b in bins:
        ranges[(b["faces"] - low) // step] += b["videos"]
    return [(f"{low + i * step}-{min(high, low + (i + 1) * step - 1)}", ranges[i]) for i in sorted(ranges)]


def histogram_lines(bins: list[dict[str, int]], width: int = 40, indent: str = "  ") -> list[str]:
    """A text histogram of frames per video: one bar per face count (or range)."""
    shown = display_bins(bins)
    if not shown:
        return [f"{indent}(no videos)"]
    peak = max(count for _, count in shown)
    label_width = max(len(label) for label, _ in shown)
    count_width = max(len(str(count)) for _, count in shown)
    return [f"{indent}{label:>{label_width}} faces  {count:>{count_width}} videos  "
            f"{'#' * max(1, round(width * count / peak))}" for label, count in shown]


def _header_lines(stats: dict[str, Any]) -> list[str]:
    """Where, whether complete, which config and software made it, and the totals."""
    shards, totals = stats["shards"], stats["totals"]
    damaged = shards.get("damaged", [])
    state = "yes" if shards["complete"] else "NO"
    if damaged:
        state = f"no ({len(damaged)} damaged: {damaged[0]}{'; …' if len(damaged) > 1 else ''})"
    versions = ", ".join(f"{k} {v}" for k, v in sorted(stats["versions"].items())) or "unknown (no dataset.json)"
    return [f"dfprep stats  {stats['output']}",
            f"  complete:  {state} ({shards['committed']}/{shards['planned']} planned shards committed, "
            f"{shards['tars']} tars" + (f", {shards['temporaries']} leftover .tar.tmp" if shards["temporaries"] else "")
            + ")",
            f"  config:    {stats['config_hash'] or 'unknown'}",
            f"  versions:  {versions}",
            f"  videos:    {totals['videos']}   faces: {totals['faces']} of {totals['planned']} planned "
            f"({_percent(totals['yield'])})   disk: {human_bytes(totals['disk_bytes'])}"]


def _section_tables(stats: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The report's titled tables, in reading order."""
    splits = [[s["split"], s["videos"], s["real"], s["fake"], s["faces"], s["shards"], human_bytes(s["disk_bytes"])]
              for s in stats["splits"]]
    groups = [[g["dataset"], g["method"], g["split"], g["label"], g["videos"], g["faces"], g["planned"],
               _percent(g["faces"] / g["planned"] if g["planned"] else None)] for g in stats["videos"]]
    methods = [[m["dataset"], m["method"], m["videos"], m["faces"], m["planned"], _percent(m["yield"])]
               for m in stats["yield_by_method"]]
    total = sum(stats["statuses"].values()) or 1
    statuses = [[s, n, f"{100 * n / total:.1f}%"] for s, n in stats["statuses"].items()]
    sections = [("Splits", text_table(["split", "videos", "real", "fake", "faces", "shards", "disk"], splits)),
                ("Videos by dataset / method / split / label",
                 text_table(["dataset", "method", "split", "label", "videos", "faces", "planned", "yield"], groups)),
                ("Face yield by method", text_table(["dataset", "method", "videos", "faces", "planned", "yield"],
                                                    methods)),
                ("Statuses", text_table(["status", "videos", "share"], statuses))]
    return sections + _failure_and_extra_tables(stats)


def _failure_and_extra_tables(stats: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Failure reasons, the frames-per-video histogram and companion maps (when any)."""
    reasons = [[r["videos"], r["status"], r["reason"]] for r in stats["reasons"]]
    sections = [(f"Failure reasons (top {TOP_REASONS})",
                 text_table(["videos", "status", "reason"], reasons) if reasons else ["  none"]),
                ("Faces per video", histogram_lines(stats["frames_per_video"]))]
    if stats["maps"]:
        maps = [[m["name"], m["shards"], human_bytes(m["disk_bytes"])] for m in stats["maps"]]
        sections.append(("Companion maps", text_table(["maps", "shards", "disk"], maps)))
    return sections


def format_stats(stats: dict[str, Any]) -> str:
    """The human-readable report of `compute_stats`: a header, then aligned tables."""
    lines = _header_lines(stats)
    for title, body in _section_tables(stats):
        lines += ["", title] + body
    return "\n".join(lines)
