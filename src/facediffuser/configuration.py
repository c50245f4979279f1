"""Command-line flags derived from dataclasses, with an optional TOML file in between.

A dataclass is the one source of truth for a command's settings: each field becomes a flag (``snake_case`` ->
``--kebab-case``), its ``metadata["help"]`` the help text. Values are layered: the dataclass defaults, then a TOML
file (``--config``), then the flags actually given.

Field metadata understood: ``help``, ``flag`` (another flag name), ``short`` (e.g. ``"-p"``), ``repeat`` (a list field
whose flag may be given several times, e.g. ``--ref a --ref b``).

A field whose type is itself a dataclass (e.g. ``sampling: SamplingSettings``) is *flattened*: each of its fields
becomes a flag of its own (``--alpha``), its help and default come from that dataclass, and ``metadata["flags"]`` on
the outer field renames some of them (``{"num_inference_steps": "--steps"}``). The inner dataclass is built from the
flags and validates itself; its error messages name the flags (a field written ```alpha``` becomes ``--alpha``).
In a TOML file and in :func:`config_to_dict` its fields stand at the top level, beside the outer ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(field: dataclasses.Field, renames: dict[str, str] | None = None) -> str:
    if renames and field.name in renames:
        return renames[field.name]
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _nested(cls: type) -> dict[str, tuple[type, dict[str, str]]]:
    """``{field name: (dataclass type, flag renames)}`` of the fields of ``cls`` that are flattened dataclasses."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(tp):
            out[field.name] = (tp, dict(field.metadata.get("flags", {})))
    return out


def flag_names(cls: type) -> dict[str, str]:
    """``{destination: flag}`` of every flag that :func:`add_dataclass_arguments` adds for ``cls``."""
    nested = _nested(cls)
    out: dict[str, str] = {}
    for field in dataclasses.fields(cls):
        if field.name in nested:
            inner, renames = nested[field.name]
            out.update({f.name: _flag(f, renames) for f in dataclasses.fields(inner)})
        else:
            out[field.name] = _flag(field)
    return out


def name_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with each ```field``` (a library message's name for a setting) written as its flag."""
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", flag)
    return message


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, renames: dict[str, str] | None = None) -> None:
    """Adds one flag per field of ``cls``. Flags not given leave no attribute (so the layers can be merged)."""
    hints = typing.get_type_hints(cls)
    nested = _nested(cls)
    for field in dataclasses.fields(cls):
        if field.name in nested:
            inner, inner_renames = nested[field.name]
            add_dataclass_arguments(parser, inner, inner_renames)
            continue
        tp = _unwrap_optional(hints[field.name])
        names = [_flag(field, renames)] + ([field.metadata["short"]] if "short" in field.metadata else [])
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        help_text = field.metadata.get("help", "")
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        if has_default and field.default is not dataclasses.MISSING and field.default is not None:
            default = field.default.value if isinstance(field.default, enum.Enum) else field.default
            help_text += f" (default: {default})"
        kwargs["help"] = help_text
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            kwargs["choices"] = [m.value for m in tp]
        elif origin in (list, tuple):
            (item,) = typing.get_args(tp)[:1]
            kwargs["type"] = _unwrap_optional(item)
            if field.metadata.get("repeat"):
                kwargs["action"] = "append"
            else:
                kwargs["nargs"] = "+"
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif tp is Path:
            kwargs["type"] = Path
        else:
            kwargs["type"] = str
        parser.add_argument(*names, **kwargs)


def _coerce(value: Any, tp: Any) -> Any:
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is Path:
        return Path(value)
    if typing.get_origin(tp) in (list, tuple):
        (item,) = typing.get_args(tp)[:1]
        values = [_coerce(v, item) for v in (value if isinstance(value, (list, tuple)) else [value])]
        return tuple(values) if typing.get_origin(tp) is tuple else values
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    with path.open("rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from err


def build_config(
    cls: type[T],
    namespace: argparse.Namespace | None = None,
    config_file: str | Path | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """``cls`` from its defaults, then ``base`` (e.g. the settings recorded in an image), then ``config_file`` (TOML,
    keys are field names), then the flags in ``namespace``.

    Raises ``ValueError`` for unknown keys in the file and for required fields that were never given; an invalid
    value of a flattened dataclass raises its own ``ValueError``, with the flags named.
    """
    values: dict[str, Any] = dict(base or {})
    if config_file is not None:
        data = load_toml(config_file)
        known = set(flag_names(cls))
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown setting(s) {unknown} in {config_file}; known: {sorted(known)}.")
        values.update(data)
    if namespace is not None:
        values.update(vars(namespace))
    return _build(cls, values)


def _build(cls: type[T], values: dict[str, Any], renames: dict[str, str] | None = None) -> T:
    hints = typing.get_type_hints(cls)
    nested = _nested(cls)
    kwargs: dict[str, Any] = {}
    missing = []
    for field in dataclasses.fields(cls):
        if field.name in nested:
            inner, inner_renames = nested[field.name]
            kwargs[field.name] = _build(inner, values, inner_renames)
        elif field.name in values:
            kwargs[field.name] = _coerce(values[field.name], hints[field.name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            missing.append(_flag(field, renames))
    if missing:
        raise ValueError(f"Missing required setting(s): {', '.join(missing)}.")
    try:
        return cls(**kwargs)
    except ValueError as err:
        if renames is None:
            raise
        flags = {f.name: _flag(f, renames) for f in dataclasses.fields(cls)}
        raise ValueError(name_flags(str(err), flags)) from err


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON/TOML-friendly dict of a config dataclass (enums as values, paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(config_to_dict(value))  # flattened, as its flags are
        else:
            out[f.name] = plain(value)
    return out
