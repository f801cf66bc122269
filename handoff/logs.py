"""Logging with the node's name on every record, as text or one JSON object per line.

Every record of Handoff's loggers (``handoff.*``) gets a ``node`` attribute (the node whose
thread logged it, else the process's node, else ``"-"``), so ``%(node)s`` works in a user's
own format string; ``NodeFilter`` on a handler gives every other record one too.
``python -m handoff.node --log-format json`` writes ``{"time", "level", "node", "logger",
"message"}`` (and ``"exception"``) per line.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import datetime, timezone
from typing import Any, Callable

__all__ = ["JsonFormatter", "NodeFilter", "TEXT_FORMAT", "configure", "node_started", "node_stopped"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(node)s %(name)s: %(message)s"
THREAD_PREFIXES = ("handoff-node-", "handoff-dashboard-")  # threads a node names after itself

_lock = threading.Lock()
_nodes: list[str] = []  # nodes running in this process, oldest first
_installed: Callable[..., logging.LogRecord] | None = None


def _node_of_thread() -> str | None:
    name = threading.current_thread().name
    for prefix in THREAD_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return None


def _install() -> None:
    """Wrap the record factory once: every record gets ``node``."""
    global _installed
    if _installed is not None:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        # only Handoff's own records: a `node` set here would make logging refuse another
        # library's extra={"node": ...} ("Attempt to overwrite 'node' in LogRecord")
        name = record.name
        if name.startswith("handoff") and (len(name) == 7 or name[7] == ".") and not hasattr(record, "node"):
            record.node = _node_of_thread() or (_nodes[0] if _nodes else "-")
        return record

    logging.setLogRecordFactory(factory)
    _installed = factory


def node_started(name: str) -> None:
    """A node of this process started: records name it (see the module's docstring)."""
    with _lock:
        _install()
        _nodes.append(name)


def node_stopped(name: str) -> None:
    with _lock:
        if name in _nodes:
            _nodes.remove(name)


class NodeFilter(logging.Filter):
    """Sets ``node`` on records made before the factory was installed (or past it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = _node_of_thread() or (_nodes[0] if _nodes else "-")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, node, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "node": getattr(record, "node", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """The node command's logging: records to stderr, as text or JSON lines."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    with _lock:
        _install()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(NodeFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
