"""``python -m handoff.node``: run a node in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from handoff.config import NodeConfig, parse_resources, parse_size
from handoff.errors import HandoffError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m handoff.node",
        description="Run a Handoff node: it joins the cluster, runs functions on its workers "
        "and serves its results to peers.",
    )
    p.add_argument("--name", default="", help="unique node name (default: host name + random suffix)")
    p.add_argument("--listen", default="tcp://127.0.0.1:0",
                   help="address to listen on, tcp://HOST:PORT (default: loopback, a free port)")
    p.add_argument("--join", action="append", default=[], metavar="ADDRESS",
                   help="address of any node of the cluster to join (repeatable)")
    p.add_argument("--advertise", default="", metavar="ADDRESS",
                   help="address peers connect to when it is not the --listen one (a relay or "
                   "NAT in between), tcp://HOST:PORT (default: the listen address)")
    p.add_argument("--resources", default="", metavar="cpu=8,memory=16000,gpu=1",
                   help="capacities (default: detected cpu count and memory in MB, gpu=0)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: cpu count)")
    p.add_argument("--executor", choices=("process", "thread"), default="process")
    p.add_argument("--key-file", default=None,
                   help="cluster key (python -m handoff.keygen); default on loopback: this "
                   "user's key in the runtime directory, made on first use")
    p.add_argument("--no-shared-memory", action="store_true",
                   help="send large values over the socket even to processes on this host")
    p.add_argument("--store-limit", type=_size, default=None, metavar="SIZE",
                   help="bytes of values kept in memory before the least recently used spill "
                   "to disk, e.g. 2G, 500M or 10%% (default: a quarter of physical memory)")
    p.add_argument("--cache-dir", default="", metavar="DIR",
                   help="the result cache's directory (default: $XDG_CACHE_HOME/handoff or "
                   "~/.cache/handoff)")
    p.add_argument("--cache-size", type=_size, default=None, metavar="SIZE",
                   help="bytes the result cache may hold on disk before the least recently "
                   "used entries are removed, e.g. 1G (default 4G)")
    p.add_argument("--insecure", action="store_true",
                   help="no CURVE at all: any process that can reach the address, other "
                   "users' too, can run code here (prints a warning)")
    p.add_argument("--suspect-after", type=float, default=1.0, help="seconds (default 1)")
    p.add_argument("--dead-after", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--join-timeout", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--log-format", default="text", choices=("text", "json"),
                   help="text lines, or one JSON object per line (time, level, node, logger, "
                   "message); every record names the node (default text)")
    p.add_argument("--dashboard", default=None, metavar="HOST:PORT",
                   help="serve the live dashboard there, e.g. 127.0.0.1:8787 (off a loopback "
                   "address it needs the cluster key's token: python -m handoff.keygen "
                   "--dashboard-token KEYFILE)")
    return p


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from handoff.logs import configure

    configure(args.log_level, args.log_format)
    from handoff.node.server import Node
    from handoff.security import load_curve

    try:
        config = NodeConfig(
            name=args.name, listen=args.listen, join=args.join, advertise=args.advertise,
            resources=parse_resources(args.resources) if args.resources else {},
            workers=args.workers, executor=args.executor, key_file=args.key_file,
            insecure=args.insecure, suspect_after=args.suspect_after,
            dead_after=args.dead_after, join_timeout=args.join_timeout,
            shared_memory=not args.no_shared_memory, store_limit=args.store_limit,
            cache_dir=args.cache_dir, cache_size=args.cache_size,
            dashboard=args.dashboard,
        )
        curve = load_curve(config)
        node = Node(config, curve)
        node.start(background=True)
    except (ValueError, HandoffError) as exc:
        print(f"handoff.node: {exc}", file=sys.stderr)
        return 2

    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        deadline = time.monotonic() + config.join_timeout
        while not node.call(node.joined).result():
            join_error = node.call(lambda: node.join_error).result()
            if join_error or time.monotonic() > deadline or stopping:
                reason = join_error or (
                    f"no node answered at {', '.join(config.join)} within {config.join_timeout:g} s"
                )
                print(f"handoff.node: could not join the cluster: {reason}", file=sys.stderr)
                return 3
            time.sleep(0.02)
        caps = ",".join(f"{k}={v:g}" for k, v in config.resources.items())
        relayed = f" (peers connect to {node.address})" if config.advertise else ""
        print(f"handoff node {node.name} listening on {config.listen if relayed else node.address}"
              f"{relayed} resources {caps} workers {config.workers}", flush=True)
        if node.dashboard is not None:
            print(f"handoff node {node.name} dashboard at {node.dashboard.url}", flush=True)
        while not stopping:
            time.sleep(0.1)
            if node._stopped.is_set():
                return 1
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
