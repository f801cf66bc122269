"""``python -m handoff.keygen [FILE]``: write a new cluster key (to stdout by default)."""

from __future__ import annotations

import os
import sys

from handoff.security import generate_key_text


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    text = generate_key_text()
    if not args or args[0] == "-":
        sys.stdout.write(text)
        return
    fd = os.open(args[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"wrote a new cluster key to {args[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
