"""How the demo reports a run: where functions ran, how long they took, image quality."""

from __future__ import annotations

import statistics
from collections import Counter

from handoff import ExecutionResult


# ---- reporting -------------------------------------------------------------------------------


def format_allocations(result: ExecutionResult) -> str:
    """``result.allocations`` as ``function -> node`` lines and a count per node."""
    lines = [f"  {fid!s:<18} -> {node}" for fid, node in result.allocations.items()]
    counts = Counter(result.allocations.values())
    lines += [f"  {node}: {n} function(s)" for node, n in sorted(counts.items())]
    return "\n".join(lines)


def format_timing(result: ExecutionResult, wall: float) -> str:
    """Wall time of the run, the summed busy time of its functions, and the slowest one."""
    spans = {
        fid: s.finished_at - s.started_at
        for fid, s in result.stats.items()
        if s.started_at is not None and s.finished_at is not None
    }
    text = f"  wall {wall:.3f} s"
    if spans:
        slowest = max(spans, key=spans.__getitem__)
        text += (f", functions busy {sum(spans.values()):.3f} s in total"
                 f" (slowest: {slowest} {spans[slowest]:.3f} s)")
    return text


def format_image_report(result: ExecutionResult, *, per_image: bool = True) -> str:
    """The saved collage and thumbnails, and quality metrics per image (or per effect)."""
    res = result.results
    collage = res["save_collage"]
    thumbs = list(res["save_thumbnails"].values())
    size = f"{collage['shape'][1]}x{collage['shape'][0]}"
    if collage["saved_path"]:
        lines = [f"Collage written to: {collage['saved_path']} ({size} PNG, {collage['bytes']:,} bytes)",
                 f"Thumbnails written: {', '.join(t['saved_path'] for t in thumbs)}"]
    else:
        lines = [f"Collage encoded as a {size} PNG of {collage['bytes']:,} bytes (no output directory)",
                 f"Thumbnails encoded as {len(thumbs)} PPM files (no output directory)"]
    lines.append("Quality metrics:" if per_image else "Quality metrics (mean per effect):")
    metrics = sorted(res["quality_report"].items())
    if not per_image:
        groups: dict[str, list] = {}
        for image_id, m in metrics:
            groups.setdefault(image_id.split("_", 1)[0], []).append(m)
        metrics = [
            (effect, {k: statistics.mean(m[k] for m in ms) for k in ms[0]})
            for effect, ms in groups.items()
        ]
    lines += [f"  {image_id}: Sharpness: {m['sharpness']:.1f}, Noise: {m['noise_level']:.1f}"
              for image_id, m in metrics]
    return "\n".join(lines)
