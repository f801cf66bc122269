"""LocalCluster: real ``python -m handoff.node`` processes on loopback, started and stopped by PID."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import psutil

from handoff.config import check_resources
from handoff.errors import HandoffError
from handoff.errors import TimeoutError as HandoffTimeout

__all__ = ["LocalCluster", "NodeInfo"]

START_TIMEOUT = 60.0  # seconds for one node to listen and join (a loaded 2-core box is slow)
STOP_TIMEOUT = 10.0  # seconds a SIGTERM'd node gets before SIGKILL
LOG_LINES = 2000  # lines of each node's output kept for error messages
_BIND_RETRIES = 3  # a free port can be taken between picking it and the node binding it
_live: "weakref.WeakSet[LocalCluster]" = weakref.WeakSet()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment, with its import path, so code defined in a test module
    that nodes unpickle by reference imports there too."""
    path = [p for p in sys.path if p and os.path.isdir(p)]
    path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
           "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


def _check_extra_args(args: Sequence[str]) -> None:
    """Refuse node arguments that the cluster sets itself or that would hide what it reads."""
    if isinstance(args, str):
        raise ValueError(f"extra_args must be a list of arguments, got the string {args!r}")
    for i, arg in enumerate(args):
        flag, _, value = str(arg).partition("=")
        if flag in ("--name", "--listen", "--join"):
            raise ValueError(f"extra_args may not set {flag}: LocalCluster chooses names, "
                             "addresses and joins (use names=)")
        if flag == "--log-format":
            fmt = value or (str(args[i + 1]) if i + 1 < len(args) else "")
            if fmt != "text":
                raise ValueError(f"--log-format {fmt or '(missing)'}: LocalCluster reads the "
                                 "nodes' text log lines to see them join")
        if flag == "--log-level":
            level = value or (str(args[i + 1]) if i + 1 < len(args) else "")
            if level not in ("DEBUG", "INFO"):
                raise ValueError(f"--log-level {level or '(missing)'}: LocalCluster follows the "
                                 "nodes' INFO lines to see them join; use DEBUG or INFO")


def _process(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _signal_all(procs: Iterable[psutil.Process], signum: int) -> None:
    for p in procs:
        try:
            p.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def _wait_status(procs: list[psutil.Process], stopped: bool, timeout: float = STOP_TIMEOUT) -> None:
    """Return once the kernel shows every live one of ``procs`` stopped (or none stopped):
    a signal is delivered asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pending = [p.pid for p in procs if p.is_running()
                       and (p.status() == psutil.STATUS_STOPPED) != stopped]
        except psutil.NoSuchProcess:
            continue  # one ended between the two looks: look again
        if not pending:
            return
        if time.monotonic() > deadline:
            state = "stopped" if stopped else "running"
            raise HandoffError(f"processes {pending} are not {state} after {timeout:g} s")
        time.sleep(0.01)


@dataclass
class NodeInfo:
    """One node process of a LocalCluster: what it is called, where it listens, its process."""

    name: str
    address: str
    resources: dict[str, float]
    process: subprocess.Popen | None = None
    output: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES), repr=False)
    sees: set = field(default_factory=set, repr=False)  # peers its own log says it knows
    listening: bool = field(default=False, repr=False)
    paused: bool = field(default=False, repr=False)
    join: str | None = field(default=None, repr=False)  # the address it was told to join

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """The node's recent output (stdout and stderr), for error messages."""
        return "".join(self.output)


class LocalCluster:
    """``n`` Handoff nodes in processes of their own on loopback, joined into one cluster.

    The first node starts alone, the others join it; construction returns once every node
    listens and each one's own log says it knows every other. Nodes use the per-user CURVE
    key like any node started without flags (or ``key_file``, or none with ``insecure``).
    Every process it starts (nodes and their workers) is stopped by PID in ``close()``, which
    ``with``, the pytest fixtures and an exit handler call.

    Parameters
    ----------
    n:
        Number of nodes.
    resources:
        Each node's capacities: one dict for all, or a list of ``n`` dicts (default ``cpu=1``).
    workers:
        Worker processes (or threads) per node.
    names:
        Node names (default ``node0`` ... ``node{n-1}``).
    key_file, insecure, executor:
        As ``python -m handoff.node`` takes them.
    extra_args:
        More ``python -m handoff.node`` arguments for every node, e.g. ``["--dead-after", "4"]``.
    env:
        Extra environment variables for the node processes.
    cache_dir:
        A directory for the nodes' result caches: each node gets ``cache_dir/<name>``
        (default: each node's default, shared by every node of this user).
    timeout:
        Seconds for a node to start, and for the cluster to converge.
    """

    def __init__(
        self,
        n: int = 2,
        resources: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
        workers: int = 1,
        names: Sequence[str] | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        executor: str = "process",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = START_TIMEOUT,
        cache_dir: str | os.PathLike[str] | None = None,
    ):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"a LocalCluster needs n >= 1 nodes, got {n!r}")
        if isinstance(names, str):
            raise ValueError(f"names must be a list of node names, got the string {names!r}")
        names = list(names) if names is not None else [f"node{i}" for i in range(n)]
        if len(names) != n or len(set(names)) != n:
            raise ValueError(f"names must be {n} distinct node names, got {names!r}")
        for name in names:
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise ValueError(f"a node name must be a non-empty string without spaces, got {name!r}")
        per_node: list[Mapping[str, float]]
        if resources is None or isinstance(resources, Mapping):
            per_node = [dict(resources) if resources is not None else {"cpu": 1}] * n
        else:
            per_node = list(resources)
            if len(per_node) != n:
                raise ValueError(f"resources must be one dict or a list of {n} dicts, got {len(per_node)}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        _check_extra_args(extra_args)
        self.key_file = key_file
        self.insecure = insecure
        self.timeout = timeout
        self._args = ["--workers", str(workers), "--executor", executor, "--log-level", "INFO"]
        if key_file:
            self._args += ["--key-file", os.fspath(key_file)]
        if insecure:
            self._args.append("--insecure")
        self._args += list(extra_args)
        self._env = _child_env(env)
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self._lock = threading.Condition()
        self._nodes: dict[str, NodeInfo] = {
            name: NodeInfo(name, "", check_resources(caps)) for name, caps in zip(names, per_node)
        }
        self._closed = False
        self._driver: str | None = None
        _live.add(self)
        try:
            first, *others = self._nodes.values()
            self._launch(first, join=None)
            self._wait_listening(first)
            for node in others:
                self._launch(node, join=first.address)
            for node in others:
                self._wait_listening(node)
            self.wait_converged()
        except BaseException:
            self.close()
            raise

    # ---- what it is ------------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, NodeInfo]:
        """``{name: NodeInfo}`` of every node, running or not, in start order."""
        return dict(self._nodes)

    @property
    def names(self) -> list[str]:
        return list(self._nodes)

    @property
    def address(self) -> str:
        """A running node's address, for ``handoff.start(join=...)``."""
        for node in self._nodes.values():
            if node.running:
                return node.address
        raise HandoffError("no node of this LocalCluster is running")

    def __getitem__(self, name: str) -> NodeInfo:
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r} in this LocalCluster; nodes: {self.names}") from None

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = {n.name: ("running" if n.running else "stopped") for n in self._nodes.values()}
        return f"LocalCluster({state})"

    # ---- starting ----------------------------------------------------------------------------

    def _launch(self, node: NodeInfo, join: str | None) -> None:
        if self._closed:
            raise HandoffError("this LocalCluster is closed")
        if not node.address:
            node.address = f"tcp://127.0.0.1:{_free_port()}"
        caps = ",".join(f"{k}={v:g}" for k, v in node.resources.items())
        cmd = [sys.executable, "-m", "handoff.node", "--name", node.name,
               "--listen", node.address, "--resources", caps, *self._args]
        if self.cache_dir is not None:
            cmd += ["--cache-dir", os.path.join(self.cache_dir, node.name)]
        if join:
            cmd += ["--join", join]
        with self._lock:
            node.sees.clear()
            node.listening = node.paused = False
            node.output.clear()
            node.join = join
            node.process = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, env=self._env,
            )
        threading.Thread(target=self._pump, args=(node, node.process), daemon=True,
                         name=f"handoff-testing-{node.name}").start()

    def _pump(self, node: NodeInfo, proc: subprocess.Popen) -> None:
        """Read a node's output: keep it for errors, and follow who its log says it knows."""
        me = f": {node.name}: node "
        assert proc.stdout is not None  # started with stdout=PIPE
        for line in proc.stdout:
            with self._lock:
                if node.process is not proc:
                    continue
                node.output.append(line)
                if "listening on" in line and f"node {node.name} " in line:
                    node.listening = True
                at = line.find(me)
                if at >= 0:
                    peer, _, rest = line[at + len(me):].partition(" ")
                    if rest.startswith("joined at"):
                        node.sees.add(peer)
                    elif rest.startswith(("is dead", "is left")):
                        node.sees.discard(peer)
                self._lock.notify_all()
        proc.stdout.close()
        with self._lock:
            self._lock.notify_all()

    def _wait_listening(self, node: NodeInfo) -> None:
        for attempt in range(_BIND_RETRIES):
            deadline = time.monotonic() + self.timeout
            proc = node.process
            assert proc is not None  # _launch started it
            with self._lock:
                while not node.listening and proc.poll() is None and time.monotonic() < deadline:
                    self._lock.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                if node.listening:
                    return
                exited = proc.poll() is not None
            if exited and "Address already in use" in node.log() and attempt + 1 < _BIND_RETRIES:
                node.address = ""
                self._launch(node, join=node.join)
                continue
            self._end(node, signal.SIGKILL)
            what = "exited" if exited else f"did not start within {self.timeout:g} s"
            raise HandoffError(f"node {node.name!r} {what}:\n{node.log()}")

    def wait_converged(self, timeout: float | None = None) -> None:
        """Wait until every running node's log says it knows every other running node;
        ``handoff.TimeoutError`` names who does not see whom."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                missing = self._missing()
                if not missing:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(0.1, left))
        detail = "; ".join(f"{name} does not see {', '.join(sorted(m))}" for name, m in missing.items())
        raise HandoffTimeout(f"waiting for the LocalCluster to converge ({detail})", timeout)

    def _missing(self) -> dict[str, set]:
        running = {n.name for n in self._nodes.values() if n.running}
        return {name: gap for name in running
                if (gap := running - {name} - self._nodes[name].sees)}

    # ---- faults ----------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL the node and its worker processes (a crash: no goodbye to its peers)."""
        self._end(self[name], signal.SIGKILL)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the node (it tells its peers it leaves); SIGKILL after ``timeout`` s."""
        self._end(self[name], signal.SIGTERM, timeout)

    def restart(self, name: str, timeout: float | None = None) -> NodeInfo:
        """Stop the node if it runs, start it again on its address, joined to a running
        node, and wait until it and every running node see each other."""
        node = self[name]
        if node.running:
            self.stop(name)
        peers = [n for n in self._nodes.values() if n.running and n is not node]
        with self._lock:
            for other in peers:  # each must log it joining again
                other.sees.discard(name)
        self._launch(node, join=peers[0].address if peers else None)
        self._wait_listening(node)
        self.wait_converged(timeout)
        return node

    def pause(self, name: str) -> None:
        """SIGSTOP the node and its workers: a frozen machine (peers will suspect it)."""
        node = self[name]
        pid = node.pid
        if not node.running or pid is None:
            raise HandoffError(f"node {name!r} is not running")
        procs = [*_process(pid), *_descendants(pid)]
        _signal_all(procs, signal.SIGSTOP)
        node.paused = True
        _wait_status(procs, stopped=True)

    def resume(self, name: str) -> None:
        """SIGCONT a paused node and its workers."""
        node = self[name]
        pid = node.pid
        if node.running and pid is not None:
            procs = [*_process(pid), *_descendants(pid)]
            _signal_all(procs, signal.SIGCONT)
            _wait_status(procs, stopped=False)
        node.paused = False

    def node_stats(self, name: str, timeout: float = 10.0) -> dict:
        """``handoff.node_stats(name)`` for one of this cluster's nodes: asked over the wire
        through this process's node, which must be running and joined to the cluster."""
        import handoff

        return handoff.node_stats(self[name].name, timeout)

    def connect(self, name: str = "driver", resources: Mapping[str, float] | None = None,
                timeout: float | None = None, **start_options: Any) -> str:
        """Start this process's embedded node joined to the cluster (with no resources of its
        own unless given, so work goes to the cluster) and wait until it sees every running
        node; returns its name. ``handoff.stop()`` or ``close()`` stops it."""
        import handoff
        from handoff.testing.members import wait_for_members

        start_options.setdefault("workers", 1)
        start_options.setdefault("key_file", self.key_file)
        start_options.setdefault("insecure", self.insecure)
        driver = handoff.start(name=name, join=self.address,
                               resources=resources if resources is not None else {"cpu": 0},
                               **start_options)
        self._driver = driver
        try:
            wait_for_members([n.name for n in self._nodes.values() if n.running],
                             self.timeout if timeout is None else timeout)
        except BaseException:
            handoff.stop()
            raise
        return driver

    # ---- ending ------------------------------------------------------------------------------

    def _end(self, node: NodeInfo, signum: int, timeout: float = STOP_TIMEOUT) -> None:
        self._reap(node, *self._signal(node, signum), timeout)

    def _signal(
        self, node: NodeInfo, signum: int
    ) -> tuple[subprocess.Popen[str] | None, list[psutil.Process], int]:
        """Send ``signum`` to a running node; returns what ``_reap`` waits for."""
        proc = node.process
        children = _descendants(proc.pid) if proc is not None else []
        if proc is not None and proc.poll() is None:
            if node.paused:  # a stopped process does not act on SIGTERM until it continues
                _signal_all([*_process(proc.pid), *children], signal.SIGCONT)
            proc.send_signal(signum)
        return proc, children, signum

    def _reap(self, node: NodeInfo, proc: subprocess.Popen[str] | None,
              children: list[psutil.Process], signum: int, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for a signalled node and its workers to end; SIGKILL what outlives ``timeout``."""
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        # workers leave on their own when their node goes; a SIGKILL'd node cannot tell them
        _, alive = psutil.wait_procs(children, timeout=timeout if signum != signal.SIGKILL else 0)
        _signal_all(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT)
        with self._lock:
            node.paused = False
            node.sees.clear()
            self._lock.notify_all()

    def pids(self) -> list[int]:
        """Process ids of the running nodes and their workers."""
        found = []
        for node in self._nodes.values():
            pid = node.pid
            if node.running and pid is not None:
                found.append(pid)
                found += [p.pid for p in _descendants(pid)]
        return found

    def close(self) -> None:
        """Stop the embedded node if ``connect`` started it, then every node (SIGTERM, then
        SIGKILL), and their workers; safe to call twice."""
        if self._driver is not None:
            import handoff

            if handoff.api._node is not None and handoff.api._node.name == self._driver:
                handoff.stop()
            self._driver = None
        self._closed = True
        errors, signalled = [], []
        for node in reversed(list(self._nodes.values())):  # all at once: they stop in parallel
            try:
                signalled.append((node, self._signal(node, signal.SIGTERM)))
            except Exception as exc:  # keep stopping the others
                errors.append(f"{node.name}: {exc}")
        for node, how in signalled:
            try:
                self._reap(node, *how)
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
        _live.discard(self)
        if errors:
            raise HandoffError("could not stop every node: " + "; ".join(errors))


@atexit.register
def _close_leftovers() -> None:
    """A cluster nobody closed (an interpreter leaving on an exception) still leaves no process."""
    for cluster in list(_live):
        try:
            cluster.close()
        except Exception:
            pass
