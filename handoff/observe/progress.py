"""The live progress display on stderr: one row per function group (done/total, running,
failed, rate, ETA) and a total row, drawn with ``rich`` by the caller's thread while it waits.

The event loop only bumps counters in the run's ``RunRecord``; the display reads them four
times a second (less often when a draw would take over 2% of the time, as on a busy
machine: drawing holds the GIL the node's loop needs), so a run pays nothing per
completion for being watched.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, wait
from typing import Any, TextIO

from handoff.observe.record import RunRecord

__all__ = ["wait_for_result", "ProgressDisplay", "AUTO_AFTER", "REFRESH", "MAX_GROUP_ROWS"]

AUTO_AFTER = 1.0  # seconds: progress="auto" draws only for runs that last longer
REFRESH = 0.25  # seconds between draws at least: a draw takes a few ms of the GIL the loop needs
DRAW_SHARE = 0.02  # ... and more when drawing would take more than this share of the time
SLOWEST_REFRESH = 1.0
MAX_GROUP_ROWS = 12  # past this, the smallest groups share one row


def wait_for_result(future: Future, record: RunRecord | None, progress: Any,
                    stream: TextIO | None = None) -> Any:
    """``future.result()``, drawing the run's progress meanwhile: ``progress`` True always,
    ``"auto"`` when ``stream`` (stderr) is a terminal and the run outlasts ``AUTO_AFTER``."""
    stream = stream if stream is not None else sys.stderr
    auto = isinstance(progress, str) and progress == "auto"
    if record is None or not (progress is True or auto):
        return future.result()
    if auto:
        if not _is_terminal(stream):
            return future.result()
        done, _ = wait([future], timeout=AUTO_AFTER)
        if done:
            return future.result()
    display = ProgressDisplay(record, stream)
    display.start()
    try:
        while not wait([future], timeout=display.interval())[0]:
            display.update()
    finally:
        display.update()
        display.stop()
    return future.result()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced by something without a tty
        return False


class ProgressDisplay:
    """A ``rich.progress.Progress`` with a row per group and a total row, fed from ``record``."""

    def __init__(self, record: RunRecord, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text("" if speed is None else f"{speed:,.0f}/s", style="cyan")

        self.record = record
        self.console = Console(file=stream, stderr=stream is sys.stderr)
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"), BarColumn(bar_width=24),
            MofNCompleteColumn(), TextColumn("[blue]{task.fields[running]} running"),
            TextColumn("{task.fields[failed]}"), RateColumn(), TimeRemainingColumn(),
            console=self.console, auto_refresh=False, transient=False,
        )
        totals = record.group_total
        order = sorted((g for g in range(len(totals)) if totals[g]), key=lambda g: -totals[g])
        shown = order if len(order) <= MAX_GROUP_ROWS else order[:MAX_GROUP_ROWS - 1]
        self.rows: list[tuple[Any, list[int]]] = []  # (rich task id, groups it sums)
        width = max([len(record.group_names[g]) for g in shown] + [5])
        for g in shown:
            self.rows.append((self._add(record.group_names[g][:40].ljust(min(width, 40)), totals[g]), [g]))
        rest = order[len(shown):]
        if rest:
            label = f"({len(rest)} more groups)"
            self.rows.append((self._add(label, sum(totals[g] for g in rest)), rest))
        self.total = self._add("[bold]total".ljust(min(width, 40) + 6), record.total)
        self.draw_seconds = 0.0  # how long the last draw took

    def interval(self) -> float:
        """Seconds until the next draw: ``REFRESH``, longer if drawing is slow (a busy machine)."""
        return min(max(REFRESH, self.draw_seconds / DRAW_SHARE), SLOWEST_REFRESH)

    def _add(self, description: str, total: int) -> Any:
        return self.progress.add_task(description, total=max(total, 1), running=0, failed="")

    def start(self) -> None:
        self.progress.start()

    def update(self) -> None:
        t0 = time.perf_counter()
        r = self.record
        done_all = running_all = failed_all = 0
        for task, groups in self.rows:
            done = sum(r.group_done[g] for g in groups)
            running = sum(r.running(g) for g in groups)
            failed = sum(r.group_failed[g] for g in groups)
            done_all, running_all, failed_all = done_all + done, running_all + running, failed_all + failed
            self.progress.update(task, completed=done, running=running, failed=_failed(failed))
        self.progress.update(self.total, completed=done_all, running=running_all, failed=_failed(failed_all))
        self.progress.refresh()
        self.draw_seconds = time.perf_counter() - t0

    def stop(self) -> None:
        self.progress.stop()


def _failed(n: int) -> str:
    return f"[red]{n} failed" if n else ""
