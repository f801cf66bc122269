"""``write_report``: a run's self-contained HTML report (the run page with its view embedded)."""

from __future__ import annotations

import os

from handoff.observe.page import render_page
from handoff.observe.record import RunRecord
from handoff.observe.view import build_view

__all__ = ["write_report"]


def write_report(record: RunRecord, path: str | os.PathLike[str]) -> str:
    """Write the report of ``record``'s run to ``path``; returns it as a string."""
    html = render_page(build_view(record))
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    return os.fspath(path)
