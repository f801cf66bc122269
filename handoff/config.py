"""NodeConfig: a node's settings, parsed once from the command line or ``handoff.start``."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Mapping, Sequence

__all__ = [
    "NodeConfig", "parse_resources", "parse_size", "detect_resources", "is_loopback",
    "user_runtime_dir", "default_store_limit", "default_cache_dir",
]

EXECUTORS = ("process", "thread")
DEFAULT_CACHE_SIZE = 4 << 30  # bytes of the result cache on disk (--cache-size)
STORE_FRACTION = 0.25  # of physical memory: the default budget of a node's value store
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"2G"``, ``"500M"``, ``"64MiB"``, ``"1048576"`` (bytes) or ``"10%"`` (of physical
    memory) -> bytes; ValueError says what is accepted."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    elif isinstance(text, str):
        raw = text.strip().upper()
        try:
            if raw.endswith("%"):
                size = int(float(raw[:-1]) / 100 * _total_memory())
            else:
                number = raw.removesuffix("IB").removesuffix("B")
                unit = number[-1:] if number[-1:] in _UNITS else ""
                size = int(float(number[:len(number) - len(unit)]) * _UNITS[unit])
        except (ValueError, OverflowError):
            size = -1
    else:
        size = -1
    if size <= 0:
        raise ValueError(f"a size must be a positive number of bytes like 2G, 500M or 10%, got {text!r}")
    return size


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def default_store_limit() -> int:
    return int(STORE_FRACTION * _total_memory())


def detect_resources() -> dict[str, float]:
    """What this machine has: cpu count, memory in MB, no gpu unless told."""
    import psutil

    return {
        "cpu": float(os.cpu_count() or 1),
        "memory": float(psutil.virtual_memory().total // (1024 * 1024)),
        "gpu": 0.0,
    }


def parse_resources(text: str) -> dict[str, float]:
    """``"cpu=8,memory=16000,gpu=1"`` -> ``{"cpu": 8.0, ...}``; ValueError names the bad item."""
    caps: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"resource {item!r} is not NAME=AMOUNT")
        try:
            amount = float(value)
        except ValueError:
            raise ValueError(f"resource {name.strip()!r} has a non-numeric amount {value!r}") from None
        if amount < 0 or not math.isfinite(amount):
            raise ValueError(f"resource {name.strip()!r} must be a non-negative number, got {value!r}")
        caps[name.strip()] = amount
    return caps


def check_resources(caps: Mapping) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, amount in caps.items():
        if not isinstance(name, str):
            raise ValueError(f"resource names must be strings, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0 or not math.isfinite(amount):
            raise ValueError(f"resource {name!r} must be a non-negative number, got {amount!r}")
        out[name] = float(amount)
    return out


def is_loopback(address: str) -> bool:
    """Whether a ``tcp://host:port`` address only accepts connections from this machine."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def user_runtime_dir() -> str:
    """Where this user's default node key lives: ``$XDG_RUNTIME_DIR/handoff`` when that is
    set and writable, else ``handoff-<uid>`` in the temp dir (handoff.security checks it)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return os.path.join(xdg, "handoff")
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"handoff-{uid}")


def default_cache_dir() -> str:
    """Where a node keeps its result cache: ``$XDG_CACHE_HOME/handoff``, else
    ``~/.cache/handoff``."""
    base = os.environ.get("XDG_CACHE_HOME", "") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "handoff")


def _check_address(address: str, what: str) -> str:
    if not address.startswith("tcp://") or ":" not in address[len("tcp://"):]:
        raise ValueError(f"{what} must look like tcp://HOST:PORT, got {address!r}")
    port = address.rpartition(":")[2]
    if port not in ("0", "*") and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{what} has a bad port: {address!r}")
    return address


def _check_advertise(address: str) -> str:
    _check_address(address, "advertised address")
    if address.rpartition(":")[2] in ("0", "*"):
        raise ValueError(f"an advertised address needs the port peers connect to, got {address!r}")
    return address


def _check_dashboard(bind: str) -> str:
    """``HOST:PORT`` (port 0: any free port) for the dashboard's HTTP server."""
    host, sep, port = bind.removeprefix("http://").rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"dashboard must look like HOST:PORT (e.g. 127.0.0.1:8787), got {bind!r}")
    return f"{host}:{int(port)}"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def debug_state_from_env() -> bool:
    """``HANDOFF_DEBUG_STATE=1``: nodes validate the scheduler's state after every event."""
    return _env_flag("HANDOFF_DEBUG_STATE")


def pure_python_from_env() -> bool:
    """``HANDOFF_PURE_PYTHON=1``: ``handoff._core`` uses its pure-Python twin (read at import)."""
    return _env_flag("HANDOFF_PURE_PYTHON")


@dataclass(frozen=True)
class NodeConfig:
    """A node's settings, checked and settled once; frozen (the capacity a node advertises
    later, after ``register_node``, is its membership row's, not this)."""

    name: str = ""
    listen: str = "tcp://127.0.0.1:0"
    join: Sequence[str] = ()
    advertise: str = ""  # the address peers are told to connect to (default: the bound one)
    resources: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    executor: str = "process"
    key_file: str | None = None
    insecure: bool = False
    runtime_dir: str = ""  # per-user key dir used without key_file (default: user_runtime_dir())
    suspect_after: float = 1.0
    dead_after: float = 2.0
    gossip_interval: float = 0.2
    join_timeout: float = 10.0
    shared_memory: bool = True  # large values go through /dev/shm between processes of one host
    store_limit: int | str | None = None  # bytes of values in memory; past it they spill to disk
    cache_dir: str = ""  # the result cache's directory (default: default_cache_dir())
    cache_size: int | str | None = None  # bytes the result cache may hold (default 4 GiB)
    # check the scheduler's invariants after every event (slow; HANDOFF_DEBUG_STATE=1)
    debug_state: bool = field(default_factory=debug_state_from_env)
    dashboard: str | None = None  # HOST:PORT of the live dashboard (handoff.node.dashboard)

    def __post_init__(self) -> None:
        name = self.name or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        if not isinstance(name, str):
            raise ValueError(f"node name must be a string, got {name!r}")
        join = [self.join] if isinstance(self.join, str) else self.join
        workers = self.workers or os.cpu_count() or 1
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if not (0 < self.suspect_after < self.dead_after):
            raise ValueError("need 0 < suspect_after < dead_after")
        settle = {
            "name": name,
            "listen": _check_address(self.listen, "listen address"),
            "runtime_dir": self.runtime_dir or user_runtime_dir(),
            "join": tuple(_check_address(a, "join address") for a in join),
            "advertise": self.advertise and _check_advertise(self.advertise),
            "resources": check_resources(self.resources) if self.resources else detect_resources(),
            "workers": workers,
            "store_limit": default_store_limit() if self.store_limit is None else parse_size(self.store_limit),
            "cache_dir": os.path.abspath(os.path.expanduser(self.cache_dir or default_cache_dir())),
            "cache_size": DEFAULT_CACHE_SIZE if self.cache_size is None else parse_size(self.cache_size),
            "dashboard": self.dashboard and _check_dashboard(self.dashboard),
        }
        for field_name, value in settle.items():  # frozen: settled once, here
            object.__setattr__(self, field_name, value)
