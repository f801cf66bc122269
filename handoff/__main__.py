"""``python -m handoff``: the package's command line (``demo``, ``status``)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
related commands:
  python -m handoff.node --name N --listen tcp://HOST:PORT [--join tcp://PEER:PORT]
                         [--resources cpu=8,memory=16000,gpu=1] [--workers K] [--key-file F]
                         run a node of a cluster (see python -m handoff.node --help)
  python -m handoff.keygen [FILE]
                         write a new cluster key (to stdout by default)
"""


def build_parser() -> argparse.ArgumentParser:
    from handoff import __version__

    parser = argparse.ArgumentParser(
        prog="python -m handoff",
        description="Handoff: build DAGs of Python functions and run them on one machine "
        "or a cluster of nodes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"handoff {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    demo = commands.add_parser(
        "demo",
        help="run the example pipelines on an embedded local node",
        description="Run the getting-started, simple data and image-processing pipelines on "
        "an embedded local node and print their results, allocations and timing; the image "
        "run shows its progress and ends by writing its images, HTML report and trace. If no node "
        "has a gpu, the local node is registered with gpu=1 so the image pipeline's gpu "
        "step can be placed.",
    )
    demo.add_argument("--images", type=int, default=5, metavar="N",
                      help="number of images in the image pipeline (default 5)")
    demo.add_argument("--out", default=None, metavar="DIR",
                      help="directory for the images, the report and the trace "
                      "(default: a new temporary directory)")
    demo.add_argument("--workers", type=int, default=None, metavar="K",
                      help="worker processes of the embedded node (default: cpu count)")
    demo.set_defaults(command_parser=demo)
    status = commands.add_parser(
        "status",
        help="show a cluster's nodes, load, runs in flight and recent failures",
        description="Ask one node of a cluster for the cluster's state: each node's state "
        "(alive, suspect, dead), resources used/total, running and queued work, the runs in "
        "flight with their progress and why waiting work waits, and recent failures.",
    )
    status.add_argument("--join", default=None, metavar="ADDRESS",
                        help="address of any node of the cluster, tcp://HOST:PORT (default: "
                        "this user's newest node on this machine)")
    status.add_argument("--key-file", default=None,
                        help="cluster key (default: this user's key, as loopback nodes use)")
    status.add_argument("--insecure", action="store_true",
                        help="connect without CURVE, to nodes started with --insecure")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long to wait for the node's answer (default 5)")
    status.set_defaults(command_parser=status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "status":
        if args.timeout <= 0:
            args.command_parser.error("--timeout must be a positive number of seconds")
        from handoff.status import main as status_main

        return status_main(args)
    if args.command == "demo":
        if args.images < 1:
            args.command_parser.error("--images must be at least 1")
        if args.workers is not None and args.workers < 1:
            args.command_parser.error("--workers must be at least 1")
        import handoff
        from handoff.demo import run_demo

        try:
            if args.workers is not None:
                handoff.start(workers=args.workers)
            run_demo(n_images=args.images, out_dir=args.out)
        except handoff.HandoffError as exc:
            print(f"handoff demo: {exc}", file=sys.stderr)
            return 1
        finally:
            handoff.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
