"""Command line for the store: `python -m store upgrade` applies migrations to DATABASE_URL."""

from __future__ import annotations

import argparse
import sys

from config import Config
from config import ConfigError
from store.migrate import downgrade
from store.migrate import upgrade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="apply migrations up to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="revert migrations down to a revision")
    down.add_argument("revision")
    args = parser.parse_args(argv)
    try:
        url = Config.from_env().database_url
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (upgrade if args.command == "upgrade" else downgrade)(url, args.revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
