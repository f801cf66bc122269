"""Hosts: several Linux hosts on one machine, to test a cluster across hosts (needs root).

Each host is a network namespace with UTS, IPC and mount namespaces of its own (its own
host name and its own ``/dev/shm``) and one address on a private bridge that the harness
makes in a namespace of its own. The machine itself gets an address on the bridge too (one
veth), so the process that made the hosts is a host as well: a driver started here reaches
every host and every host reaches it. Nothing outside the machine is addressed: the subnet
is ``10.213.X.0/24`` with ``X`` picked so that no address or route of the machine is in it.

    with Hosts(3) as hosts:
        key = hosts.keygen("/tmp/cluster.key")
        h1 = hosts.start_node("h1", key_file=key)
        hosts.start_node("h2", key_file=key, join=h1.address)
        handoff.start(listen=hosts.listen_here(), join=h1.address, key_file=key)

Every name carries a random token (namespaces ``hf-<token>-h1``, links ``hf<token>r0``)
so two runs never collide. ``close()`` ends every process by PID (whatever still runs in a
host's namespace too), then deletes the namespaces and links; :func:`remove_leftovers` (a
session finalizer, and an exit handler) does the same for hosts a failed test left open.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import psutil

from handoff.errors import HandoffError
from handoff.testing.cluster import _child_env

__all__ = ["Hosts", "Host", "HostProcess", "HostsError", "remove_leftovers", "NODE_PORT"]

NODE_PORT = 5555  # every host has its own ports: nodes listen on the README's port
COMMAND_TIMEOUT = 10.0  # seconds for one ip/keygen command
START_TIMEOUT = 60.0  # seconds for a host to come up, or a node to listen and join
STOP_TIMEOUT = 10.0  # seconds a SIGTERM'd process gets before SIGKILL
LOG_LINES = 4000
SUBNET_PREFIX = "10.213."
FIRST_HOST = 11  # host i has address 10.213.X.(10 + i); the machine itself is .1
NEEDS = ("ip", "unshare", "nsenter")

_made: set[str] = set()  # tokens of every Hosts this process made, for remove_leftovers
_open: "weakref.WeakSet[Hosts]" = weakref.WeakSet()


class HostsError(HandoffError):
    """The hosts could not be made, or a process on one did not do what it should."""


def _run(args: Sequence[str], timeout: float = COMMAND_TIMEOUT, check: bool = True) -> str:
    """Run a command to completion; HostsError with its output if it fails (``check``)."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HostsError(f"`{' '.join(args)}` did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise HostsError(f"cannot run `{' '.join(args)}`: {exc}") from None
    if check and done.returncode != 0:
        raise HostsError(f"`{' '.join(args)}` failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def _cannot(reason: str) -> HostsError:
    return HostsError(
        f"cannot make hosts here: {reason}. The multi-host harness needs Linux with network "
        "namespaces, the ip (iproute2), unshare and nsenter (util-linux) commands, and root "
        "(CAP_SYS_ADMIN and CAP_NET_ADMIN) to create namespaces, a bridge and veth links")


def _pick_subnet() -> str:
    """``10.213.X.`` for an X that no address or route of this machine uses."""
    used = _run(["ip", "-o", "-4", "addr", "show"]) + _run(["ip", "-4", "route", "show", "table", "all"])
    taken = {int(m) for m in re.findall(r"\b10\.213\.(\d+)\.", used)}
    if "10.0.0.0/8" in used or "10.213.0.0/16" in used:
        raise _cannot("this machine routes 10.0.0.0/8 or 10.213.0.0/16 already, where the "
                      "harness puts its private bridge")
    free = [x for x in range(1, 255) if x not in taken]
    if not free:
        raise _cannot("every 10.213.X.0/24 subnet is in use on this machine")
    return f"{SUBNET_PREFIX}{random.choice(free)}."


class HostProcess:
    """A process running on a host: its output kept (and followed), stopped by PID."""

    def __init__(self, host: "Host", argv: Sequence[str], env: Mapping[str, str],
                 label: str, cwd: str | None = None) -> None:
        self.host = host
        self.label = label
        self.argv = list(argv)
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self._seen = threading.Condition()
        self.process = subprocess.Popen(
            [*host.enter(cwd), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, env=dict(env),
        )
        threading.Thread(target=self._pump, daemon=True, name=f"hosts-{host.name}-{label}").start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def _pump(self) -> None:
        assert self.process.stdout is not None  # started with stdout=PIPE
        for line in self.process.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        self.process.stdout.close()
        with self._seen:
            self._seen.notify_all()

    def output(self) -> str:
        with self._seen:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """The first output line containing ``text``; HostsError with the output if the
        process ends, or ``timeout`` s pass, without printing it."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                ended = self.process.poll() is not None and self.process.stdout is not None \
                    and self.process.stdout.closed
                left = deadline - time.monotonic()
                if ended or left <= 0:
                    break
                self._seen.wait(min(0.1, left))
        what = "exited" if self.process.poll() is not None else f"ran {timeout:g} s"
        raise HostsError(f"{self.label} on {self.host.name} {what} without printing {text!r}:\n"
                         f"{self.output()}")

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the process to end (HostsError after ``timeout`` s); its exit status."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HostsError(f"{self.label} on {self.host.name} still runs after {timeout:g} s:\n"
                             f"{self.output()}") from None
        wait_until_closed = time.monotonic() + STOP_TIMEOUT
        while self.process.stdout is not None and not self.process.stdout.closed \
                and time.monotonic() < wait_until_closed:
            with self._seen:
                self._seen.wait(0.05)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; its own child processes too."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        _, alive = psutil.wait_procs(children, timeout=timeout)
        _kill_all(alive)


def _kill_all(procs: Iterable[psutil.Process]) -> None:
    procs = list(procs)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT)
    if alive:
        raise HostsError(f"processes {[p.pid for p in alive]} outlived SIGKILL")


@dataclass
class Host:
    """One host: a namespace with its address on the bridge, its host name and ``/dev/shm``."""

    name: str
    namespace: str
    address: str  # the bare IPv4 address, e.g. 10.213.7.11
    device: str  # its link inside the namespace
    hostname: str
    holder: subprocess.Popen | None = field(default=None, repr=False)  # keeps the namespaces
    processes: list[HostProcess] = field(default_factory=list, repr=False)

    def url(self, port: int = NODE_PORT) -> str:
        """``tcp://ADDRESS:PORT`` on this host."""
        return f"tcp://{self.address}:{port}"

    def enter(self, cwd: str | None = None) -> list[str]:
        """The command prefix that runs a program on this host (every namespace of it), in
        ``cwd`` (default: this process's working directory)."""
        if self.holder is None or self.holder.poll() is not None:
            raise HostsError(f"host {self.name} is down")
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--uts", "--ipc", "--mount",
                f"--wd={cwd or os.getcwd()}", "--"]

    def link_down(self) -> None:
        """Take this host's link down (a cut cable: nothing reaches it, nothing is killed)."""
        _run(["ip", "-n", self.namespace, "link", "set", self.device, "down"])

    def link_up(self) -> None:
        _run(["ip", "-n", self.namespace, "link", "set", self.device, "up"])

    def pids(self) -> list[int]:
        """Every process in this host's network namespace (the kernel's view)."""
        out = _run(["ip", "netns", "pids", self.namespace], check=False)
        return [int(p) for p in out.split()]


class Hosts:
    """``n`` hosts (``h1`` ... ``hn`` unless ``names``) on a private bridge; ``close()`` (or
    ``with``) removes them and everything that runs on them.

    Parameters
    ----------
    n:
        Number of hosts.
    names:
        Host names (also each host's host name and the name of its node by default).
    timeout:
        Seconds for a host to come up and for a node to start.
    """

    def __init__(self, n: int = 3, names: Sequence[str] | None = None,
                 timeout: float = START_TIMEOUT) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 200:
            raise ValueError(f"Hosts needs 1 <= n <= 200 hosts, got {n!r}")
        names = list(names) if names is not None else [f"h{i}" for i in range(1, n + 1)]
        if len(names) != n or len(set(names)) != n or not all(
                re.fullmatch(r"[a-z][a-z0-9-]{0,30}", h) for h in names):
            raise ValueError(f"names must be {n} distinct lowercase host names, got {names!r}")
        if not sys.platform.startswith("linux"):
            raise _cannot(f"this is {sys.platform}, not Linux")
        missing = [c for c in NEEDS if shutil.which(c) is None]
        if missing:
            raise _cannot(f"{', '.join(missing)} not found on PATH")
        self.token = secrets.token_hex(3)
        self.timeout = timeout
        self.switch = f"hf-{self.token}-switch"
        self.bridge = "br0"  # in the switch namespace
        self.hosts: dict[str, Host] = {}
        self.env = _child_env(None)
        self._closed = False
        _made.add(self.token)
        _open.add(self)
        try:
            # The bridge lives in a namespace of its own, a switch: the machine's firewall
            # (a FORWARD policy of DROP with br_netfilter, as Docker sets) never sees the
            # hosts' traffic. The machine joins it through one veth of its own.
            try:
                _run(["ip", "netns", "add", self.switch])
            except HostsError as exc:
                raise _cannot(str(exc)) from None
            _run(["ip", "-n", self.switch, "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "-n", self.switch, "link", "set", self.bridge, "up"])
            here = f"hf{self.token}r0"
            self._plug(here, f"hf{self.token}s0")
            self._subnet = self._claim_subnet(here)
            self.root_address = f"{self._subnet}1"
            _run(["ip", "link", "set", here, "up"])
            for i, name in enumerate(names, start=1):
                self.hosts[name] = self._make_host(i, name)
        except BaseException:
            self.close()
            raise

    def _make_host(self, i: int, name: str) -> Host:
        ns = f"hf-{self.token}-{name}"
        inside = f"hf{self.token}h{i}"
        host = Host(name, ns, f"{self._subnet}{FIRST_HOST - 1 + i}", "eth0", name)
        _run(["ip", "netns", "add", ns])
        self._plug(inside, f"hf{self.token}p{i}")
        _run(["ip", "link", "set", inside, "netns", ns])
        _run(["ip", "-n", ns, "link", "set", inside, "name", host.device])
        _run(["ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", host.device])
        _run(["ip", "-n", ns, "link", "set", host.device, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The holder owns the host's UTS, IPC and mount namespaces (host name, a /dev/shm of
        # its own) for as long as the host lives; every process on the host enters them.
        script = ('hostname "$1" && mount -t tmpfs -o mode=1777 tmpfs /dev/shm '
                  '&& echo ready && exec sleep infinity')
        host.holder = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--uts", "--ipc", "--mount",
             "--propagation", "private", "sh", "-c", script, "sh", host.hostname],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert host.holder.stdout is not None  # started with stdout=PIPE
        ready, _, _ = select.select([host.holder.stdout], [], [], self.timeout)
        line = host.holder.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            rest = b"" if host.holder.poll() is None else host.holder.stdout.read()
            raise _cannot(f"host {name} did not come up: {(line + rest).decode(errors='replace').strip()}")
        return host

    def _claim_subnet(self, link: str) -> str:
        """A free ``10.213.X.`` with this machine's address on ``link``; if another run
        took the same X at the same moment, one of the two picks again."""
        for _ in range(5):
            subnet = _pick_subnet()
            _run(["ip", "addr", "add", f"{subnet}1/24", "dev", link])
            owners = [line.split()[1] for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines()
                      if f" inet {subnet}" in line]
            if owners == [link]:
                return subnet
            _run(["ip", "addr", "del", f"{subnet}1/24", "dev", link])
            time.sleep(random.uniform(0.01, 0.2))  # back off so the other run keeps it
        raise _cannot("no 10.213.X.0/24 subnet stayed free (other runs take them)")

    def _plug(self, end: str, port: str) -> None:
        """A veth pair: ``end`` stays here (to be moved or addressed), ``port`` goes into
        the switch namespace as a port of the bridge."""
        _run(["ip", "link", "add", end, "type", "veth", "peer", "name", port])
        _run(["ip", "link", "set", port, "netns", self.switch])
        _run(["ip", "-n", self.switch, "link", "set", port, "master", self.bridge])
        _run(["ip", "-n", self.switch, "link", "set", port, "up"])

    # ---- what it is ------------------------------------------------------------------
    def __getitem__(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r}; hosts: {list(self.hosts)}") from None

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def listen_here(self, port: int = 0) -> str:
        """An address for a node in this process: the machine's own address on the bridge."""
        return f"tcp://{self.root_address}:{port}"

    def made(self) -> list[str]:
        """Every namespace and link this instance made (those that still exist)."""
        return _leftovers([self.token])

    # ---- running things --------------------------------------------------------------
    def run(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
            label: str = "", cwd: str | None = None) -> HostProcess:
        """Start ``argv`` on ``host`` (with this process's import path, in ``cwd``);
        ``close()`` stops it."""
        if self._closed:
            raise HostsError("these hosts are closed")
        h = self[host]
        proc = HostProcess(h, argv, {**self.env, **(env or {})}, label or os.path.basename(argv[0]),
                           cwd)
        h.processes.append(proc)
        return proc

    def python(self, host: str, *args: str, env: Mapping[str, str] | None = None,
               label: str = "python") -> HostProcess:
        """``python ARGS`` on ``host``, with this interpreter."""
        return self.run(host, [sys.executable, *args], env, label)

    def start_node(self, host: str, name: str | None = None, join: str | None = None,
                   key_file: str | None = None, port: int = NODE_PORT,
                   args: Sequence[str] = ()) -> "NodeProcess":
        """``python -m handoff.node`` on ``host``, listening on its address; returns once it
        listens (and joined ``join``)."""
        h = self[host]
        argv = ["-m", "handoff.node", "--name", name or host, "--listen", h.url(port)]
        if join:
            argv += ["--join", join]
        if key_file:
            argv += ["--key-file", key_file]
        proc = self.python(host, *argv, *args, label=f"node {name or host}")
        proc.wait_for(f"node {name or host} listening on", self.timeout)
        return NodeProcess(proc, name or host, h.url(port))

    def keygen(self, path: str) -> str:
        """A new cluster key at ``path`` (``python -m handoff.keygen``); returns the path."""
        _run([sys.executable, "-m", "handoff.keygen", path], timeout=60)
        return path

    # ---- ending ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process on every host, delete the namespaces and links; safe twice.
        HostsError if something this instance made is still there afterwards."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        procs = [p for h in self.hosts.values() for p in h.processes]
        for p in procs:  # all at once, so they stop in parallel
            if p.running:
                p.process.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.stop()
            except Exception as exc:
                errors.append(f"{p.label}: {exc}")
        for h in self.hosts.values():
            try:
                _kill_all(psutil.Process(pid) for pid in h.pids() if psutil.pid_exists(pid))
            except (HostsError, psutil.Error) as exc:
                errors.append(f"{h.name}: {exc}")
            if h.holder is not None:
                if h.holder.stdout is not None:
                    h.holder.stdout.close()
                try:
                    h.holder.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    errors.append(f"{h.name}: its namespace holder {h.holder.pid} outlived SIGKILL")
        try:
            _remove([self.token])
        except HostsError as exc:
            errors.append(str(exc))
        _open.discard(self)
        if errors:
            raise HostsError("could not remove every host: " + "; ".join(errors))


@dataclass
class NodeProcess:
    """A node started by ``Hosts.start_node``: its process, name and address."""

    process: HostProcess
    name: str
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()


def _leftovers(tokens: Iterable[str]) -> list[str]:
    tokens = list(tokens)
    found = []
    for ns in _run(["ip", "netns", "list"], check=False).splitlines():
        name = ns.split()[0] if ns.split() else ""
        if any(name.startswith(f"hf-{t}-") for t in tokens):
            found.append(f"netns {name}")
    for line in _run(["ip", "-o", "link", "show"], check=False).splitlines():
        parts = line.split(":")
        link = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if any(link.startswith(f"hf{t}") for t in tokens):
            found.append(f"link {link}")
    return found


def _remove(tokens: Iterable[str]) -> None:
    """Delete the namespaces and links of these tokens (processes in them killed by PID)."""
    tokens = list(tokens)
    for item in _leftovers(tokens):
        kind, name = item.split(" ", 1)
        if kind == "netns":
            pids = _run(["ip", "netns", "pids", name], check=False).split()
            _kill_all(psutil.Process(int(p)) for p in pids if psutil.pid_exists(int(p)))
            _run(["ip", "netns", "delete", name], check=False)
        else:
            _run(["ip", "link", "delete", name], check=False)
    left = _leftovers(tokens)
    if left:
        raise HostsError(f"could not delete {', '.join(left)}")


def remove_leftovers() -> None:
    """Remove whatever the hosts this process made left behind (a session finalizer)."""
    for hosts in list(_open):
        try:
            hosts.close()
        except HostsError:
            pass
    if _made:
        _remove(_made)


atexit.register(lambda: remove_leftovers() if _made else None)
