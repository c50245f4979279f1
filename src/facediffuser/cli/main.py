"""``facediffuser``: generate, convert released weights, train, evaluate, and run the demo."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-command modules of this package; each defines register(subparsers) and sets `func` on its parser. A module is
# imported only when its sub-command runs (all of them only for `facediffuser --help`), so that `generate` does not
# pay for importing the trainer or the evaluation harness.
COMMANDS = ("generate", "convert", "train", "evaluate", "demo", "world", "mini")


def chosen_command(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option), or ``None``."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command; with ``command``, only that sub-command's module is imported (the others
    get a bare parser that is never used)."""
    parser = argparse.ArgumentParser(
        prog="facediffuser",
        description="Face-diffuser: person-centric subject-to-image generation with two collaborating models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if command is None or name == command:
            importlib.import_module(f"facediffuser.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(chosen_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"facediffuser {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the system refused (a full disk, a lost mount): not the user's input, but no traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"facediffuser {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"facediffuser {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
