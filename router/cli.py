"""The ``modelrouter`` command: each subcommand registers itself and its handler."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from router.loop.cli import add_export_parser, add_label_parser
from router.server.cli import add_config_parser, add_keys_parser, add_serve_parser
from router.store.cli import add_stats_parser
from router.training.cli import (
    EXIT_USAGE,
    EXTRAS,
    add_calibrate_parser,
    add_eval_parser,
    add_route_parser,
    add_train_parser,
    extra_needed,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="modelrouter", description="Route each LLM query to the right model tier."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_parser(subparsers)
    add_config_parser(subparsers)
    add_keys_parser(subparsers)
    add_route_parser(subparsers)
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    add_calibrate_parser(subparsers)
    add_stats_parser(subparsers)
    add_export_parser(subparsers)
    add_label_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ModuleNotFoundError as exc:
        # A command reached an optional dependency its extra was to bring.
        module = (exc.name or "").partition(".")[0]
        extra = next((e for e, modules in EXTRAS.items() if module in modules), None)
        if extra is None:
            raise
        print(extra_needed(args.command, extra, [module]), file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
