"""The ``gatezoo`` command line.

Each subcommand lives in a function ``_cmd_NAME(args) -> int`` registered in ``_build_parser``.
Errors a user can cause (unknown names, bad numbers) are reported as one line on stderr with a
non-zero exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "UsageError"]


class UsageError(ValueError):
    """A mistake in the command line; printed as one line, exit status 2."""


def _cmd_list(args: argparse.Namespace) -> int:
    from gatezoo.models.registry import CELLS

    sections = [("cells", {n: e.description for n, e in CELLS.items()})]
    for title, loader in _LIST_SECTIONS:
        sections.append((title, loader()))
    for title, entries in sections:
        if args.what not in (None, title):
            continue
        print(f"{title}:")
        width = max((len(n) for n in entries), default=0)
        for name in sorted(entries):
            print(f"  {name.ljust(width)}  {entries[name]}")
    return 0


# Other packages append (title, loader) pairs here so `gatezoo list` shows what they register.
_LIST_SECTIONS: list = []


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatezoo",
        description=(
            "Gated recurrent cells as data-driven preconditioners: train a zoo of Flax cells "
            "with Optax, measure how gates rescale the gradient by lag and direction, and "
            "compare with what schedules, momentum and Adam do."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("list", help="list the cells (and tasks, optimizers, instruments)")
    p.add_argument(
        "what", nargs="?", default=None, help="only this section (cells, tasks, optimizers, ...)"
    )
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"gatezoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gatezoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
