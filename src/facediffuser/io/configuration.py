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
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .files import read_toml

T = TypeVar("T")


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
    """The table of a TOML config or recipe; ``FileNotFoundError`` / ``ValueError`` (not UTF-8, not TOML) name it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    return read_toml(path)


def field_types(cls: type) -> dict[str, Any]:
    """``{key: type}`` of every setting of ``cls`` as a file gives it: its fields, those of a flattened dataclass at
    the top level (as in :func:`flag_names`)."""
    hints = typing.get_type_hints(cls)
    nested = _nested(cls)
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in nested:
            out.update(field_types(nested[field.name][0]))
        else:
            out[field.name] = hints[field.name]
    return out


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path (a string)"}


def _describe(tp: Any) -> str:
    """What a value of type ``tp`` is, in a user's words ("an integer", "a list of numbers", "one of 'a', 'b'")."""
    optional = _unwrap_optional(tp) is not tp
    tp = _unwrap_optional(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        text = "one of " + ", ".join(repr(m.value) for m in tp)
    elif typing.get_origin(tp) in (list, tuple):
        item = _describe(typing.get_args(tp)[0])
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings", "a path (a string)": "paths"}
        text = f"a list of {plural.get(item, item)}"
    else:
        text = _KINDS.get(tp, getattr(tp, "__name__", str(tp)))
    return text + " (or null)" if optional else text


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as read from JSON or TOML) is a value of the field type ``tp``. A bool is not an integer;
    an integer is a number; a string is a path; an enum takes its members' values; a list field also takes a single
    item (as ``--flag x`` does)."""
    if value is None:
        return _unwrap_optional(tp) is not tp or tp is type(None)
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is Path:
        return isinstance(value, (str, os.PathLike))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or value in {m.value for m in tp}
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        return all(_fits(v, item) for v in items)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    return True  # a type this module does not turn into a flag's type: the dataclass checks it


def check_file_values(cls: type, values: dict[str, Any], source: str) -> None:
    """Raises ``ValueError`` for the first value of ``values`` (keys are settings of ``cls``, read from ``source``:
    a file, or e.g. "the parameters recorded in x.png") whose type does not fit its field, in one sentence naming
    ``source`` and the key: "In recipe.toml, `steps` must be an integer, got 'ten'." Unknown keys are left to the
    caller."""
    types_ = field_types(cls)
    for key, value in values.items():
        if key in types_ and not _fits(value, types_[key]):
            raise ValueError(f"In {source}, `{key}` must be {_describe(types_[key])}, got {value!r}.")


def build_config(
    cls: type[T],
    namespace: argparse.Namespace | None = None,
    config_file: str | Path | None = None,
    base: dict[str, Any] | None = None,
    base_source: str = "the base settings",
    name_flags_in_errors: bool = False,
) -> T:
    """``cls`` from its defaults, then ``base`` (e.g. the settings recorded in an image), then ``config_file`` (TOML,
    keys are field names), then the flags in ``namespace``.

    The values of ``base`` (read from ``base_source``, e.g. "the parameters recorded in x.png") and of the file are
    type-checked against their fields first (:func:`check_file_values`), so that a string where a number belongs is
    one sentence naming the file and the key. Raises ``ValueError`` for unknown keys in the file and for required
    fields that were never given; an invalid value of a flattened dataclass raises its own ``ValueError``, with the
    flags named; with ``name_flags_in_errors``, so does ``cls``'s own (for a command whose settings are flags).
    """
    values: dict[str, Any] = dict(base or {})
    check_file_values(cls, values, base_source)
    if config_file is not None:
        data = load_toml(config_file)
        known = set(flag_names(cls))
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown setting(s) {unknown} in {config_file}; known: {sorted(known)}.")
        check_file_values(cls, data, str(config_file))
        values.update(data)
    if namespace is not None:
        values.update(vars(namespace))
    return _build(cls, values, {} if name_flags_in_errors else None)


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
