"""Whether a thread is inside a given function now: for tests that must act only once another
thread is blocked in a call (a wait, a receive), instead of sleeping and hoping it got there."""

from __future__ import annotations

import sys

__all__ = ["thread_inside"]


def thread_inside(thread_id: int, function: str) -> bool:
    """True while thread ``thread_id`` has a frame of a function named ``function`` on its stack."""
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False
