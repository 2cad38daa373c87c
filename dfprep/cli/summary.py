"""End-of-run summaries the commands (and the demo) print: extract's table and the maps lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
