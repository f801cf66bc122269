"""``python -m handoff.keygen [FILE]``: write a new cluster key (to stdout by default);
``--user`` makes (or finds) this user's default key and prints its path;
``--dashboard-token FILE`` prints the token of FILE's key for a node's dashboard."""

from __future__ import annotations

import argparse
import os
import sys

from handoff.config import user_runtime_dir
from handoff.errors import HandoffError
from handoff.security import USER_KEY_FILE, generate_key_text, user_key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m handoff.keygen",
        description="Make a new cluster key. Give the same key to every node and driver "
        "(--key-file / handoff.start(key_file=...)); all traffic then uses ZeroMQ CURVE and "
        "only key holders can connect.",
    )
    p.add_argument("file", nargs="?", default="-",
                   help="file to create with mode 0600; never overwritten (default: stdout)")
    p.add_argument("--user", action="store_true",
                   help="make this user's default key if it is missing (the one loopback nodes "
                   "use without --key-file) and print its path")
    p.add_argument("--dashboard-token", action="store_true",
                   help="print the dashboard token of the key in FILE (with --user: of this "
                   "user's key): what a dashboard off loopback asks for (?token=TOKEN)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dashboard_token:
        from handoff.node.dashboard import dashboard_token
        from handoff.security import read_key_file

        if args.file == "-" and not args.user:
            parser.error("--dashboard-token needs the key FILE (or --user)")
        try:
            _, secret = user_key(user_runtime_dir()) if args.user else read_key_file(args.file)
        except HandoffError as exc:
            print(f"handoff.keygen: {exc}", file=sys.stderr)
            return 1
        print(dashboard_token(secret))
        return 0
    if args.user:
        if args.file != "-":
            parser.error("--user takes no FILE: the key lives in the user's runtime directory")
        runtime_dir = user_runtime_dir()
        try:
            user_key(runtime_dir)
        except HandoffError as exc:
            print(f"handoff.keygen: {exc}", file=sys.stderr)
            return 1
        print(os.path.join(runtime_dir, USER_KEY_FILE))
        return 0
    try:
        text = generate_key_text()
    except HandoffError as exc:
        print(f"handoff.keygen: {exc}", file=sys.stderr)
        return 1
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    try:
        # O_EXCL: an existing key (maybe the one the cluster runs with) is never replaced
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"handoff.keygen: {args.file} already exists; not overwriting a key "
              "(delete it first if you really mean to replace it)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"handoff.keygen: cannot create {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w", encoding="ascii") as f:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # the umask can only take bits away; make it exact
        f.write(text)
    print(f"wrote a new cluster key to {args.file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
