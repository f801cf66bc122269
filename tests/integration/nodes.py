"""Helpers beyond handoff.testing: nodes started by hand (broken configs, tree joins), workloads."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import handoff
from handoff import DAG, Function
from handoff.testing import wait_until

PACKAGE_ROOT = Path(handoff.__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def child_env(extra: dict | None = None) -> dict[str, str]:
    path = [str(PACKAGE_ROOT), str(Path(__file__).resolve().parent),
            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


@contextlib.contextmanager
def private_dir(variable: str, prefix: str) -> Iterator[str]:
    """A directory of its own (mode 0700) as the environment variable ``variable``; processes
    started inside inherit it. Removed at the end."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o700)
    patch = pytest.MonkeyPatch()
    patch.setenv(variable, path)
    try:
        yield path
    finally:
        patch.undo()
        shutil.rmtree(path, ignore_errors=True)


def private_runtime_dir(prefix: str) -> contextlib.AbstractContextManager[str]:
    """A runtime directory of its own as XDG_RUNTIME_DIR, so the per-user node key is made
    there, not in the user's real one."""
    return private_dir("XDG_RUNTIME_DIR", prefix)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeProcess:
    name: str
    address: str
    proc: subprocess.Popen
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    log: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """kill -9 the node and (by their PIDs) its worker processes."""
        children = _children(self.pid)
        self.proc.kill()
        self.proc.wait(10)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def start_node(name: str, resources: str = "cpu=2", workers: int = 1, join: str | None = None,
               extra: list[str] | None = None, wait: bool = True, env: dict | None = None) -> NodeProcess:
    args = ["--resources", resources, "--workers", str(workers), "--log-level", "WARNING"]
    if join:
        args += ["--join", join]
    return launch(name, f"tcp://127.0.0.1:{free_port()}", args + (extra or []), wait=wait, env=env)


def launch(name: str, address: str, args: list[str], wait: bool = True,
           env: dict | None = None) -> NodeProcess:
    """``python -m handoff.node --name NAME --listen ADDRESS *args``, its output collected."""
    cmd = [sys.executable, "-m", "handoff.node", "--name", name, "--listen", address, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=child_env(env), stdin=subprocess.DEVNULL)
    node = NodeProcess(name, address, proc)

    def pump() -> None:
        for line in proc.stdout:
            node.log.append(line)
            node.lines.put(line)
        node.lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    if wait:
        wait_listening(node)
    return node


def end_process(proc: subprocess.Popen, close_stdin: bool = False, timeout: float = 15.0) -> None:
    """Let ``proc`` end (closing its stdin first if asked), killing it past ``timeout``."""
    if proc.poll() is not None:
        return
    if close_stdin and proc.stdin is not None:
        proc.stdin.close()
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(10)


def wait_listening(node: NodeProcess, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = node.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if "listening on" in line:
            return
        if line == "":
            raise RuntimeError(f"node {node.name} exited: {''.join(node.log)}")
    node.stop()
    raise RuntimeError(f"node {node.name} did not start in {timeout} s: {''.join(node.log)}")


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05) -> bool:
    return wait_until(predicate, timeout, interval)


def seen_heartbeat(name: str) -> int | None:
    """``name``'s heartbeat in this process's node's membership table; None unless alive."""
    row = handoff.node_stats()["membership"].get(name)
    return row["heartbeat"] if row is not None and row["status"] == "alive" else None


def keeps_gossiping(name: str, rounds: int, timeout: float = 30.0) -> bool:
    """Whether the embedded node sees ``name``'s heartbeat advance ``rounds`` times while it
    stays alive: a node whose gossip timer died never gets there."""
    first = seen_heartbeat(name)
    if first is None:
        return False
    return wait_for(lambda: (seen_heartbeat(name) or -1) >= first + rounds, timeout=timeout)


def peer_members(name: str) -> list[str] | None:
    """The live members node ``name`` reports over the wire; None if it does not answer."""
    try:
        return handoff.node_stats(name)["members"]
    except Exception:  # not (or no longer) a member the driver can ask
        return None


# ---- workloads and what their stats show ------------------------------------------------------
def nap(seconds: float, value=None):
    """Workload: user code that takes ``seconds`` (what a test runs, not how it waits)."""
    return time.sleep(seconds) or value


def add(a, b):
    return a + b


def one(i):
    return i


def layered_sums(layers: int, width: int, dag_id: str | None = None) -> DAG:
    """``layers`` x ``width`` functions: the first layer returns its extra argument, every
    other function adds two results of the layer before (``(layer - 1, j)`` and the next)."""
    dag = DAG(dag_id or f"scale-{layers}x{width}")
    for j in range(width):
        dag.add_function(Function(id=(0, j), code=one, extra_args=[j]))
    for layer in range(1, layers):
        for j in range(width):
            dag.add_function(Function(id=(layer, j), code=add,
                                      args=[(layer - 1, j), (layer - 1, (j + 1) % width)]))
    return dag


def hang(pid_file: str | None = None):
    """Workload: never returns in a test's lifetime; writes its process id first, so a test
    can see the process end when the attempt is cancelled."""
    if pid_file:
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
    return time.sleep(3600)


def process_gone(pid_file: str, timeout: float = 15.0) -> bool:
    """Whether the process whose id ``hang`` wrote ends (or is a zombie) within ``timeout``."""
    import psutil

    if not wait_for(lambda: os.path.exists(pid_file), timeout=timeout):
        return False
    with open(pid_file) as f:
        pid = int(f.read())

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return wait_for(gone, timeout=timeout)


def max_overlap(stats) -> int:
    """The most functions whose FunctionStats spans (started_at, finished_at) overlap at once."""
    edges = sorted([(s.started_at, 1) for s in stats] + [(s.finished_at, -1) for s in stats],
                   key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def seen_status(name: str) -> str | None:
    """``name``'s status ("alive", "suspect", "dead", "left") in this process's node's table."""
    row = handoff.node_stats()["membership"].get(name)
    return row["status"] if row is not None else None


def ledger_idle() -> bool:
    """Whether this process's node's ledger (the claims of the runs it orchestrates) is empty."""
    return not any(row["claimed"] for row in handoff.node_stats()["ledger"].values())
