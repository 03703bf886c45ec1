"""A group's summary (`status --group`, the console's `watch group G`) as terminal text."""

from __future__ import annotations

from typing import Any

from tcpsched.formatting import text

BAR_CELLS = 40


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def progress_bar(progress: float, cells: int = BAR_CELLS) -> str:
    """`[#########.........]  45%` for a progress between 0 and 1."""
    progress = min(max(progress, 0.0), 1.0)
    filled = int(progress * cells)
    return f"[{'#' * filled}{'.' * (cells - filled)}] {progress * 100:5.1f}%"


def group_text(summary: Any) -> str:
    """Two lines: the bar with done/total, then counts by state, throughput and ETA."""
    if not isinstance(summary, dict):
        return text(summary)
    raw_counts = summary.get("counts")
    counts: dict[Any, Any] = raw_counts if isinstance(raw_counts, dict) else {}
    progress = summary.get("progress")
    bar = progress_bar(progress if isinstance(progress, int | float) else 0.0)
    first = (f"group {text(summary.get('group'))}  {bar}  "
             f"{text(summary.get('done'))}/{text(summary.get('total'))} done")
    parts = [f"{state} {text(n)}" for state, n in counts.items()]
    throughput = summary.get("throughput")
    if isinstance(throughput, int | float):
        parts.append(f"{throughput:.3g} jobs/s")
    eta = summary.get("eta_s")
    if isinstance(eta, int | float):
        parts.append("finished" if eta == 0 else f"ETA {_duration(eta)}")
    return first + "\n" + "  ".join(parts)
