"""``python -m handoff status``: ask one node for the cluster's state and print it.

The client is not a member: it opens one connection to the node (CURVE with the cluster key,
or this user's key on loopback), sends a ``StatusQuery`` and reads the ``StatusReport`` that
comes back on that connection (``handoff.node.status`` builds it).
"""

from __future__ import annotations

import json
import time
from typing import Any

import zmq

from handoff.config import user_runtime_dir
from handoff.errors import AuthenticationError, HandoffError, ProtocolError
from handoff.errors import TimeoutError as HandoffTimeout
from handoff.protocol import decode, encode
from handoff.protocol.messages import StatusQuery, StatusReport

__all__ = ["query_status", "format_status", "local_address", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 5.0  # seconds; a node answers within its peers' timeout (1.5 s)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def query_status(address: str, key_file: str | None = None, insecure: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, runtime_dir: str | None = None) -> dict:
    """The status document of the cluster of the node at ``address``.

    Raises ``AuthenticationError`` when the node rejects the key, ``handoff.TimeoutError``
    when it does not answer in ``timeout`` seconds.
    """
    from handoff.security import read_key_file, user_key

    if not address.startswith("tcp://"):
        raise ValueError(f"the node's address must look like tcp://HOST:PORT, got {address!r}")
    keys = None
    if key_file:
        keys = read_key_file(key_file)
    elif not insecure:
        keys = user_key(runtime_dir or user_runtime_dir())
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        monitor = None
        if keys is not None:
            public, secret = keys
            sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, public
            monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        sock.connect(address)
        sock.send_multipart(encode(StatusQuery(1)))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HandoffTimeout(f"status of the node at {address} (is it up, and is this "
                                     "the cluster's key?)", timeout)
            for ready, _ in poller.poll(int(left * 1000) + 1):
                if ready is monitor:
                    monitor.recv_multipart()
                    source = f"key file {key_file!r}" if key_file else (
                        "no key (--insecure)" if insecure else "this user's default key")
                    raise AuthenticationError(
                        f"the node at {address} rejected this client's key ({source}): pass "
                        "the cluster's --key-file (or --insecure for a node started so)")
                msg = decode(sock.recv_multipart(), pickles=False)
                if isinstance(msg, StatusReport) and msg.request == 1:
                    return msg.report
                raise ProtocolError(f"the node at {address} answered with {msg.op}")
    finally:
        ctx.destroy(linger=0)


def _amount(value: float) -> str:
    return f"{value:g}"


def _resources(node: dict, names: list[str]) -> list[str]:
    cells = []
    for name in names:
        total = node["capacity"].get(name)
        if total is None:
            cells.append("-")
        else:
            cells.append(f"{_amount(node['used'].get(name, 0.0))}/{_amount(total)}")
    return cells


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def format_status(doc: dict) -> str:
    """The status document as text: a table of nodes, the runs in flight with what waits and
    why, and the recent failures."""
    nodes = doc["nodes"]
    states: dict[str, int] = {}
    for node in nodes.values():
        state = "left" if node.get("left") else node["state"]
        states[state] = states.get(state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    lines = [f"cluster seen from {doc['node']}: {len(nodes)} nodes ({summary})", ""]
    resources = sorted({r for n in nodes.values() for r in n["capacity"]})
    rows = []
    for name, node in nodes.items():
        state = "left" if node.get("left") else node["state"]
        if node["state"] != "dead" and not node["answered"]:
            state += " (no answer)"
        load = ["-", "-"] if node["running"] is None else [str(node["running"]), str(node["queued"])]
        rows.append([name, state, *load, *_resources(node, resources), node["address"]])
    header = ["NODE", "STATE", "RUNNING", "QUEUED", *[f"{r} used/total".upper() for r in resources],
              "ADDRESS"]
    lines += _table(header, rows)
    runs = doc["runs"]
    lines += ["", f"runs in flight: {len(runs)}" if runs else "runs in flight: none"]
    for run in runs:
        lines.append(f"  {run['dag_id']} (driver {run['driver']}): {run['done']}/{run['total']} done, "
                     f"{run['running']} running, {run['waiting_count']} waiting, "
                     f"{run['elapsed']:.1f} s")
        for fid, why in run["waiting"].items():
            lines.append(f"    {fid} waits: {why}")
        hidden = run["waiting_count"] - len(run["waiting"])
        if hidden > 0:
            lines.append(f"    ... and {hidden} more waiting")
    failures = doc.get("recent_failures") or []
    if failures:
        lines += ["", "recent failures:"]
        for f in failures[:10]:
            when = time.strftime("%H:%M:%S", time.localtime(f["time"]))
            lines.append(f"  {when} {f['node']}: {f['dag_id']}/{f['function_id']} attempt "
                         f"{f['attempt']}: {f['error']}")
    return "\n".join(lines)


def local_address(runtime_dir: str | None = None) -> str:
    """The address of this user's newest running node on this machine."""
    from handoff.node.announce import local_nodes

    found = local_nodes(runtime_dir or user_runtime_dir())
    if not found:
        raise HandoffError("no node of this user runs on this machine: pass --join ADDRESS "
                           "(any node of the cluster)")
    return str(found[0]["address"])


def main(args: Any) -> int:
    """``python -m handoff status`` with its parsed arguments; the exit status."""
    import sys

    try:
        address = args.join or local_address()
        doc = query_status(address, key_file=args.key_file, insecure=args.insecure,
                           timeout=args.timeout)
    except (HandoffError, ValueError, zmq.ZMQError) as exc:
        print(f"handoff status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else format_status(doc))
    return 0
