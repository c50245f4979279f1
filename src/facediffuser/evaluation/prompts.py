"""Prompt files of the benchmarks: prompt templates by group (:class:`PromptSet`), read from ``--prompts FILE``
(JSON or text, :func:`load_prompt_file`) or shipped in ``facediffuser/data/benchmarks`` (:func:`shipped_prompts`).
``{subject}`` (one person) or ``{subject1}``, ``{subject2}``... (several) stand for each person's class noun and
placeholder.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..io.files import parse_json, read_text


@dataclass(frozen=True)
class PromptSet:
    """Prompt templates by group, e.g. ``{"style": ("a watercolor painting of a {subject}", ...)}``.

    Attributes:
        groups: group name -> templates; the group is the row of the per-group results.
        images_per_prompt: the file's own count, when it gives one.
        source: where the templates came from (for messages).
    """

    groups: dict[str, tuple[str, ...]]
    images_per_prompt: int | None = None
    source: str = ""

    def sha256(self) -> str:
        """Of the templates by group: recorded in ``run.json``, so that new prompts never reuse old images."""
        return hashlib.sha256(json.dumps(self.groups, sort_keys=True).encode()).hexdigest()

    def check(self, fields: set[str]) -> None:
        """Raises ``ValueError`` unless every template uses exactly ``fields`` (each once)."""
        for templates in self.groups.values():
            for template in templates:
                _check_template(template, fields, self.source)


def prompt_set_from_json(data: Any, source: str) -> PromptSet:
    """``{"groups": {name: [templates]}}``, ``{"prompts": [templates]}`` (one group, named after the file) or a
    plain list of templates; either object may give ``images_per_prompt``."""
    name = Path(source).stem or "prompts"
    count = None
    if isinstance(data, dict):
        count = data.get("images_per_prompt")
        if "groups" in data:
            groups = data["groups"]
        elif "prompts" in data:
            groups = {data.get("group", name): data["prompts"]}
        else:
            groups = None
    else:
        groups = {name: data}
    ok = (
        isinstance(groups, dict)
        and groups
        and all(
            isinstance(ts, list) and ts and all(isinstance(t, str) and t.strip() for t in ts) for ts in groups.values()
        )
    )
    if not ok:
        raise ValueError(
            f'{source}: expected a list of prompt templates, {{"prompts": [...]}} or {{"groups": {{"name": '
            '[...]}}, each template a non-empty string such as "a photo of a {subject} at the beach".'
        )
    if count is not None:
        from ..settings import MAX_NUM_IMAGES

        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_NUM_IMAGES:
            raise ValueError(
                f"In {source}, `images_per_prompt` must be a whole number from 1 to {MAX_NUM_IMAGES} (a case's images "
                f"are one batch), got {count!r}."
            )
    return PromptSet({str(g): tuple(t.strip() for t in ts) for g, ts in groups.items()}, count, source)


def prompt_set_from_text(text: str, source: str) -> PromptSet:
    """One template per line; ``# ...`` lines and blank lines are skipped; a ``[name]`` line starts a group (lines
    before any group go to a group named after the file)."""
    groups: dict[str, list[str]] = {}
    group = Path(source).stem or "prompts"
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            continue
        groups.setdefault(group, []).append(line)
    if not groups:
        raise ValueError(f"{source} holds no prompts: write one template per line, e.g. a photo of a {{subject}}.")
    return PromptSet({g: tuple(ts) for g, ts in groups.items()}, None, source)


def load_prompt_file(path: str | Path) -> PromptSet:
    """A ``--prompts`` file: JSON (``.json``) or text (anything else); see :func:`prompt_set_from_json` and
    :func:`prompt_set_from_text`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that holds no usable templates.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file not found: {path}. Give a .json or .txt file of prompt templates.")
    text = read_text(path)
    if path.suffix.lower() == ".json":
        return prompt_set_from_json(parse_json(text, str(path)), str(path))
    return prompt_set_from_text(text, str(path))


def shipped_prompts(filename: str) -> PromptSet:
    """A prompt file shipped in ``facediffuser/data/benchmarks``."""
    return prompt_set_from_json(read_benchmark_file(filename), filename)


def read_benchmark_file(filename: str) -> dict[str, Any]:
    """A prompt file shipped in ``facediffuser/data/benchmarks``."""
    text = (resources.files("facediffuser") / "data" / "benchmarks" / filename).read_text(encoding="utf-8")
    return json.loads(text)


def _check_template(template: str, fields: set[str], source: str = "") -> None:
    try:
        used = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"{source}: the prompt template {template!r} is not a valid template ({err}).") from err
    if set(used) != fields or len(used) != len(fields):
        wanted = ", ".join("{" + f + "}" for f in sorted(fields))
        raise ValueError(
            f"{source + ': ' if source else ''}the prompt template {template!r} must use {wanted} once each, where "
            "each person's class noun and placeholder go (e.g. 'a photo of a {subject} at the beach')."
        )
