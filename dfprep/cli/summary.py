"""End-of-run summaries the commands (and the demo) print: extract's table and the maps lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dfprep.io.layout import OK, PARTIAL

if TYPE_CHECKING:  # the command line starts without loading the pipeline
    from dfprep.jobs.maps import MapReport
    from dfprep.runner.run import RunReport


def format_summary(report: RunReport) -> str:
    """The end-of-run table: outcomes, reasons, faces, shards, disk, wall time, stage breakdown."""
    lines = [f"dfprep extract → {report.output}", f"  plan: {report.note}"]
    if report.units_skipped == report.units_total and report.units_total:
        lines.append("  nothing to do: every shard was already committed")
    lines.append(f"  shards: {report.units_total} ({report.units_skipped} already committed)")
    lines.append(f"  videos: {report.videos}   faces written: {report.faces}")
    for status, count in sorted(report.statuses.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {status:13s} {count:7d}")
    if report.reasons:
        lines.append("  reasons (top 10):")
        lines += [f"    {count:5d}  {reason}" for reason, count in report.reasons.most_common(10)]
    if report.removed:
        lines.append(f"  removed {len(report.removed)} uncommitted leftovers")
    lines += [f"  charged to a video: {line}" for line in report.charged]
    lines += [f"  {line}" for line in report.nodes_lost]
    lines += [f"  warning: {line}" for line in report.warnings]
    total = sum(report.timings.values()) or 1.0
    stages = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(report.timings.items(), key=lambda kv: -kv[1]))
    lines.append(f"  disk: {report.disk_bytes / 1e6:.1f} MB   wall: {report.seconds:.1f} s")
    if report.timings:
        lines.append(f"  time by stage: {stages}")
    lines += [f"  {line}" for line in report.maps]
    return "\n".join(lines)


def format_map_summary(report: MapReport) -> str:
    """The end-of-run lines: shards, maps written, wall time, throughput."""
    rate = report.maps_written / report.seconds if report.seconds > 0 else 0.0
    lines = [f"dfprep maps ({report.method}) → {report.output}"]
    if report.units_skipped == report.units_total:
        lines.append("  nothing to do: every map shard was already committed")
    lines.append(f"  shards: {report.units_total} ({report.units_skipped} already committed)")
    lines.append(f"  maps written: {report.maps_written} (total {report.maps_total})")
    if report.removed:
        lines.append(f"  removed {len(report.removed)} stale, uncommitted or overwritten map files")
    lines.append(f"  wall: {report.seconds:.1f} s   {rate:.1f} maps/s")
    if report.note:
        lines.append(f"  note: {report.note}")
    lines += [f"  {line}" for line in report.nodes_lost]
    return "\n".join(lines)


def face_yield(report: RunReport) -> float:
    """The share of this output's videos that gave at least one face (1.0 when there are no videos)."""
    with_faces = report.statuses.get(OK, 0) + report.statuses.get(PARTIAL, 0)
    return with_faces / report.videos if report.videos else 1.0


def yield_warning(report: RunReport) -> str | None:
    """A warning line when no video gave a face: the run completed, but the output holds nothing to train on."""
    if report.videos and report.faces == 0:
        return (f"warning: no face written from {report.videos} videos (see the reasons above; "
                "`--min-yield` turns this into a non-zero exit)")
    return None


def summary_json(report: RunReport) -> dict[str, Any]:
    """extract's end-of-run numbers for --json (stdout): the same as the table, machine-readable."""
    return {"output": report.output, "plan": report.note, "shards": report.units_total,
            "shards_already_committed": report.units_skipped, "videos": report.videos, "faces": report.faces,
            "face_yield": round(face_yield(report), 6), "statuses": dict(report.statuses),
            "reasons": dict(report.reasons.most_common(10)), "removed": len(report.removed),
            "warnings": list(report.warnings), "charged": list(report.charged), "disk_bytes": report.disk_bytes,
            "seconds": round(report.seconds, 3), "time_by_stage": {k: round(v, 3) for k, v in report.timings.items()},
            "maps": list(report.maps)}


def map_summary_json(report: MapReport) -> dict[str, Any]:
    """maps' end-of-run numbers for --json (stdout)."""
    return {"output": report.output, "method": report.method, "shards": report.units_total,
            "shards_already_committed": report.units_skipped, "maps_written": report.maps_written,
            "maps_total": report.maps_total, "removed": len(report.removed), "seconds": round(report.seconds, 3),
            "note": report.note}
