"""Seeing a run: progress on the terminal, DAG pictures as text, the per-attempt record, the
Chrome trace and the HTML report (``page`` draws it from a view document)."""

from handoff.observe.page import VIEW_VERSION, render_page

__all__ = ["render_page", "VIEW_VERSION"]
