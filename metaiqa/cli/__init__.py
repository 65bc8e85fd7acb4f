"""`metaiqa` command line: argv -> calls. The only place that parses flags.

Each sub-module registers its sub-commands; heavy imports happen inside the command
functions so `metaiqa --help` stays fast. Errors derived from MetaIQAError become a
one-line message and exit code 2; a closed stdout pipe (`| head`) stops quietly with 141;
other exit codes are the command's own.
"""

import argparse
import logging
import sys
from collections.abc import Sequence

from metaiqa import __version__
from metaiqa.errors import MetaIQAError

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for a writer whose reader left

_COMMAND_MODULES = ("data", "train", "adapt", "score", "calibrate", "serve")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="metaiqa",
        description="No-reference image quality assessment: meta-train a quality prior, fine-tune it "
        "on a few labelled images, score images, gate pipelines and serve a REST API.",
    )
    parser.add_argument("--version", action="version", version=f"metaiqa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"metaiqa.cli.{name}").register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose, args.quiet)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at interpreter exit
        return code
    except MetaIQAError as exc:
        sys.stderr.write(f"metaiqa {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `metaiqa score - | head -1`: the reader left; stop quietly, like other tools
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so Python's final flush does not complain about the closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured in tests)
        pass
