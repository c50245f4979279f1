"""``facediffuser``: generate, convert released weights, train, evaluate, and run the demo."""

from __future__ import annotations

import argparse
import errno
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


# The system refused a path the user chose (an existing file, a file where a folder belongs, a read-only place, no
# permission): the user's input, refused like any other (exit 2). Other OSErrors (a full disk, a lost mount) are not
# the user's input: exit 1.
USER_PATH_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
USER_PATH_ERRNOS = (errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP)


def exit_status(err: OSError) -> int:
    """2 for an ``OSError`` that refuses a path the user gave, 1 for a failure of the system."""
    return 2 if isinstance(err, USER_PATH_ERRORS) or err.errno in USER_PATH_ERRNOS else 1


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status: 0 done, 2 refused input, 1 a failure of the system, 130 Ctrl-C.

    A Ctrl-C anywhere, also while a command's modules (torch, diffusers) are still being imported, ends with one
    line and status 130; the commands leave their work resumable (atomic writes, stage markers, checkpoints).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
        )
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"facediffuser{' ' + command if command else ''}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"facediffuser {command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        print(f"facediffuser {command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return exit_status(err)


if __name__ == "__main__":
    sys.exit(main())
