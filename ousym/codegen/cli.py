"""``python -m ousym codegen [--check]``: write the generated kernels, or check they are current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``codegen`` options to ``parser`` (a subcommand parser)."""
    parser.description = ("Generate numeric/_generated/ from the SymPy theory "
                          "(NumPy and Torch kernels).")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated module is stale or missing")
    parser.add_argument("--directory", type=Path, default=None,
                        help="where the generated modules live (default: numeric/_generated)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the process exit status (0 ok, 1 stale)."""
    from .generate import GENERATED_DIR, check_all, write_all

    directory = args.directory or GENERATED_DIR
    if args.check:
        stale = check_all(directory)
        if stale:
            names = ", ".join(str(p) for p in stale)
            print(f"stale generated kernels: {names}\n"
                  "regenerate with `python -m ousym codegen` (or `make codegen`) and commit them",
                  file=sys.stderr)
            return 1
        print("generated kernels are up to date")
        return 0
    changed = write_all(directory)
    print(f"wrote {len(changed)} generated module(s)" + (": " + ", ".join(map(str, changed)) if changed else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (the ``python -m ousym codegen`` wiring calls :func:`run`)."""
    parser = configure_parser(argparse.ArgumentParser(prog="ousym codegen"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
