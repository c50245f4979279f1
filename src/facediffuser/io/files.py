"""Reading the JSON and TOML files a user hands the package, with errors that name the file.

Configs, recipes, stage markers, prompt files, run records and model indexes are read through :func:`read_json`
and :func:`read_toml`, so that a broken file is one sentence naming it, never a bare ``Expecting value: line 1
column 1 (char 0)`` or ``'utf-8' codec can't decode byte 0xef``. Text is UTF-8; a byte-order mark (as some Windows
editors write) is accepted.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not UTF-8 text (the byte and where it is are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found.")
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start  # in the file, byte-order mark included
        raise ValueError(
            f"{path} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}): save it as UTF-8."
        ) from None


def parse_json(text: str, source: str) -> Any:
    """``text`` parsed as JSON; ``ValueError`` naming ``source`` (a file, or e.g. "the parameters recorded in
    x.png") and where the text goes wrong."""
    if not text.strip():
        raise ValueError(f"{source} is empty: it should hold JSON.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}).") from None


def read_json(path: str | os.PathLike, expect: type | None = None, what: str = "") -> Any:
    """The JSON value in ``path``; with ``expect`` (``dict`` or ``list``), one of that kind.

    ``what`` says what the file should be, for the message when it is of the wrong kind (e.g. ``"a stage
    marker"``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8, not JSON, or not of the expected kind; the file is named.
    """
    value = parse_json(read_text(path), str(path))
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "a JSON object ({...})", list: "a JSON list ([...])"}.get(expect, expect.__name__)
        described = f" {what}," if what else ""
        raise ValueError(f"{path} is not{described} {kind}: it holds a {type(value).__name__}.")
    return value


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The TOML table in ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8 or not TOML; the file is named.
    """
    text = read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML ({err}).") from None


def read_stage_marker(path: str | os.PathLike, rebuild_hint: str) -> dict[str, Any]:
    """The marker of a built stage (``stages/<stage>.json``: an object whose ``settings`` is an object).

    ``rebuild_hint`` says how to rebuild the stage (e.g. ``"rebuild the stage with --redo scenes"``): a marker that
    cannot be read is refused with it, since what the stage was built with is then unknown.
    """
    try:
        marker = read_json(path, dict, "a stage marker")
    except ValueError as err:
        raise ValueError(f"{str(err).rstrip('.')}; {rebuild_hint}.") from None
    if not isinstance(marker.get("settings"), dict):
        raise ValueError(
            f"{path} is not a stage marker (it records no `settings`, so what the stage was built with is unknown): "
            f"{rebuild_hint}."
        )
    return marker
