"""Benchmarks: a data file of prompts plus a loader that pairs them with people.

Registered benchmarks (:data:`BENCHMARKS`; the lab's ``mini`` by name, :data:`LAZY_BENCHMARKS`):

* ``single-subject``: ``data/benchmarks/single_subject.json``, 4 groups (accessory, style, action, context) of 10
  prompts, for every person of a subject folder.
* ``multi-subject``: ``data/benchmarks/multi_subject.json``, 10 prompts for every pair of people of a subject folder
  (or the pairs listed in its ``pairs.json``).
* ``ffhq-wild``: the FFHQ-wild test split (``image_ids_test.txt``, ``<id[:5]>/<id>.jpg|.json``); each image's caption
  with a placeholder after every person, the people's bounding-box crops as references.
* ``mini``: held-out people of the procedural world in scenes the mini SDM's training data holds rarely or never,
  one and two people, each case with the attributes it asks for (:mod:`facediffuser.lab.world.benchmark`); its images
  are also scored per attribute (place, time, clothing colour, identity).

A **subject folder** holds one sub-folder of photos per person; the sub-folder's name is the person's name. An
optional ``subjects.json`` maps names to class nouns (``{"ada": "woman", "alan": "man"}``); a person not listed there
is a ``person``. Photos should be roughly square crops of the head and shoulders.

A new benchmark is a function ``loader(source, placeholder) -> Benchmark`` decorated with
:func:`register_benchmark`, optionally with :class:`BenchmarkDefaults` (the data, IP backend, CLIP model and methods
it runs with when the flags do not say). A loader that also takes ``prompts`` (a :class:`PromptSet`) accepts
``--prompts FILE``: prompt templates where ``{subject}`` (one person) or ``{subject1}``, ``{subject2}``... (several)
stand for each person's class noun and placeholder. :func:`load_prompt_file` reads them from JSON or text.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import itertools
import json
import logging
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import PIL.Image

from ..images import list_image_files, load_image
from ..io.ffhq_wild import insert_placeholders, parse_annotation, person_segments, sample_paths
from ..io.files import parse_json, read_json, read_text
from ..prompting import DEFAULT_PLACEHOLDER

logger = logging.getLogger(__name__)

DEFAULT_CLASS_NOUN = "person"
SUBJECTS_FILE = "subjects.json"
PAIRS_FILE = "pairs.json"
MAX_FFHQ_SUBJECTS = 4


@dataclass(frozen=True)
class Photo:
    """A reference photo: a file, optionally cropped to ``box = (x1, y1, x2, y2)`` pixels."""

    path: Path
    box: tuple[int, int, int, int] | None = None

    def load(self) -> PIL.Image.Image:
        image = load_image(self.path, max_side=None if self.box else 2048)
        return image.crop(self.box) if self.box else image


@dataclass(frozen=True)
class Person:
    """One subject: a name, the class noun that precedes the placeholder, and reference photos."""

    name: str
    class_noun: str
    photos: tuple[Photo, ...]


@dataclass(frozen=True)
class Case:
    """One prompt with its people: the unit that is generated ``images_per_prompt`` times per method.

    Attributes:
        case_id: unique within the benchmark and usable as a relative path (``"ada/style-03"``).
        prompt: the prompt with one placeholder after each person's class noun, people in order.
        people: the people, in placeholder order.
        group: the prompt group (``accessory``, ``style``... or ``2-person``), for per-group means.
        attributes: what the prompt asks for, for a benchmark that scores it (the mini benchmark: place, time and
            each person's clothing); ``None`` for the others. Not part of equality: the case id names the case.
    """

    case_id: str
    prompt: str
    people: tuple[Person, ...]
    group: str
    attributes: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Benchmark:
    """A named list of cases. ``kind`` is ``"single"`` or ``"multi"``, the Table 1 column its scores go in, or
    ``"mixed"``: cases of both, told apart by their group (``single`` or ``multi``).

    Attributes:
        gallery: the people among whom the attribute scorer picks each face's identity (the mini benchmark: its
            held-out people); empty for benchmarks without one.
        attribute_scorer: ``"package.module:Class"`` of the scorer of the cases' ``attributes``, imported only when
            the benchmark is evaluated (``None``: IP and PC only). The class is built by
            ``Class.from_scorers(clip_scorer, ip_backend, gallery)``.
    """

    name: str
    kind: str
    cases: tuple[Case, ...]
    images_per_prompt: int = 4
    gallery: tuple[Person, ...] = ()
    attribute_scorer: str | None = None


@dataclass(frozen=True)
class BenchmarkDefaults:
    """What a benchmark runs with when the flags leave it open (``None``: the harness's own default).

    Attributes:
        data: a function returning the default ``--data`` folder, or ``None`` when there is none to be had.
        ip_backend: the default ``--ip-backend``.
        clip_model: a function returning the default ``--clip-model`` (or raising ``ValueError`` saying which flag
            to give).
        methods: the default ``--methods``.
    """

    data: Callable[[], Path | None] | None = None
    ip_backend: str | None = None
    clip_model: Callable[[], str] | None = None
    methods: tuple[str, ...] | None = None
    data_hint: str | None = None  # what --data takes, for the message when it is missing


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


BenchmarkLoader = Callable[..., Benchmark]
BENCHMARKS: dict[str, BenchmarkLoader] = {}
BENCHMARK_DEFAULTS: dict[str, BenchmarkDefaults] = {}
# name -> the module that registers the benchmark when it is imported, for benchmarks of the layers above evaluation
# (the lab's ``mini``): this module reaches them by name, never by import.
LAZY_BENCHMARKS: dict[str, str] = {"mini": "facediffuser.lab.world.benchmark"}


def benchmark_names() -> list[str]:
    """Every benchmark that can be run: those registered and those registered when first asked for."""
    return sorted(set(BENCHMARKS) | set(LAZY_BENCHMARKS))


def is_benchmark(name: str) -> bool:
    """Whether ``name`` is a benchmark (importing the module that registers it, for a lazy one)."""
    if name not in BENCHMARKS and name in LAZY_BENCHMARKS:
        importlib.import_module(LAZY_BENCHMARKS[name])
    return name in BENCHMARKS


def unknown_benchmark(name: str) -> ValueError:
    return ValueError(f"Unknown benchmark {name!r}; choose from {', '.join(benchmark_names())}.")


def register_benchmark(
    name: str, defaults: BenchmarkDefaults | None = None
) -> Callable[[BenchmarkLoader], BenchmarkLoader]:
    """Decorator that registers ``loader(source, placeholder) -> Benchmark`` under ``name``, with the settings it
    runs with when the flags leave them open."""

    def decorate(loader: BenchmarkLoader) -> BenchmarkLoader:
        BENCHMARKS[name] = loader
        BENCHMARK_DEFAULTS[name] = defaults or BenchmarkDefaults()
        return loader

    return decorate


def benchmark_defaults(name: str) -> BenchmarkDefaults:
    """The defaults registered with the benchmark ``name`` (empty ones for an unknown name)."""
    is_benchmark(name)
    return BENCHMARK_DEFAULTS.get(name, BenchmarkDefaults())


def takes_prompts(name: str) -> bool:
    """Whether the benchmark ``name`` accepts ``--prompts`` (its loader has a ``prompts`` parameter)."""
    return is_benchmark(name) and "prompts" in inspect.signature(BENCHMARKS[name]).parameters


def benchmark_source(name: str, source: str | Path | None) -> Path:
    """``source``, or the benchmark's default data folder when ``source`` is ``None``.

    Raises:
        ValueError: no ``source`` and no default to be had (the message says what ``--data`` takes).
    """
    if source is not None:
        return Path(source)
    defaults = benchmark_defaults(name)
    found = defaults.data() if defaults.data is not None else None
    if found is None:
        what = defaults.data_hint or "a subject folder: one sub-folder of photos per person, e.g. subjects/ada/1.jpg"
        raise ValueError(f"Benchmark {name!r} needs --data: {what}.")
    return Path(found)


def load_benchmark(
    name: str, source: str | Path | None, placeholder: str = DEFAULT_PLACEHOLDER, prompts: PromptSet | None = None
) -> Benchmark:
    """The benchmark ``name`` over ``source`` (a subject folder, or a dataset root for ``ffhq-wild``; ``None``: the
    benchmark's default data, see :func:`benchmark_source`), with its own prompts or ``prompts``.

    Raises:
        ValueError: an unknown benchmark, or a source that does not fit it.
        FileNotFoundError: ``source`` does not exist.
    """
    if not is_benchmark(name):
        raise unknown_benchmark(name)
    if prompts is not None and not takes_prompts(name):
        raise ValueError(f"Benchmark {name!r} takes its prompts from its data; drop --prompts.")
    source = benchmark_source(name, source)
    if not source.exists():
        raise FileNotFoundError(f"The data folder of benchmark {name!r} does not exist: {source}")
    extra = {"prompts": prompts} if prompts is not None else {}
    benchmark = BENCHMARKS[name](source, placeholder, **extra)
    if not benchmark.cases:
        raise ValueError(f"Benchmark {name!r} found no cases in {source}.")
    return benchmark


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


def _subject_phrase(person: Person, placeholder: str) -> str:
    return f"{person.class_noun} {placeholder}"


# ---------------------------------------------------------------------------------------------------- subject folders
def load_subjects(folder: str | Path) -> list[Person]:
    """The people of a subject folder, sorted by name (see the module docstring for the layout).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no person sub-folders, a person folder without images, a bad ``subjects.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Subject folder not found: {folder}")
    nouns: dict[str, str] = {}
    nouns_file = folder / SUBJECTS_FILE
    if nouns_file.is_file():
        nouns = read_json(nouns_file)
        if not isinstance(nouns, dict) or not all(isinstance(v, str) and v.strip() for v in nouns.values()):
            raise ValueError(f'{nouns_file} must map each person\'s folder name to a class noun: {{"ada": "woman"}}.')
    folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not folders:
        raise ValueError(
            f"The subject folder {folder} has no sub-folders: give one sub-folder of photos per person "
            "(e.g. subjects/ada/1.jpg), with an optional subjects.json mapping names to class nouns."
        )
    unknown = sorted(set(nouns) - {p.name for p in folders})
    if unknown:
        raise ValueError(f"{nouns_file} names {unknown}, which are not sub-folders of {folder}.")
    people = []
    for person_folder in folders:
        try:
            photos = list_image_files(person_folder)
        except ValueError as err:
            raise ValueError(f"Subject {person_folder.name!r} has no photos: {err}") from err
        noun = nouns.get(person_folder.name, DEFAULT_CLASS_NOUN).strip()
        people.append(Person(person_folder.name, noun, tuple(Photo(p) for p in photos)))
    missing_nouns = [p.name for p in people if p.name not in nouns]
    if missing_nouns:
        logger.info("No class noun for %s in %s: using %r.", missing_nouns, nouns_file, DEFAULT_CLASS_NOUN)
    return people


@register_benchmark("single-subject")
def single_subject_benchmark(
    source: Path, placeholder: str = DEFAULT_PLACEHOLDER, prompts: PromptSet | None = None
) -> Benchmark:
    """Every prompt of ``single_subject.json`` (or of ``prompts``) for every person of the subject folder ``source``.

    Cases are ordered prompt index first, then group, then person, so that ``--limit`` takes a spread of groups:
    with one person, the first 4 cases are prompt 0 of accessory, style, action and context.
    """
    prompts = prompts or shipped_prompts("single_subject.json")
    prompts.check({"subject"})
    people = load_subjects(source)
    groups = prompts.groups
    cases = []
    for index in range(max(len(t) for t in groups.values())):
        for group, templates in groups.items():
            if index >= len(templates):
                continue
            for person in people:
                prompt = templates[index].format(subject=_subject_phrase(person, placeholder))
                cases.append(Case(f"{person.name}/{group}-{index:02d}", prompt, (person,), group))
    return Benchmark("single-subject", "single", tuple(cases), prompts.images_per_prompt or 4)


def subject_pairs(folder: Path, people: list[Person]) -> list[tuple[Person, Person]]:
    """The pairs listed in ``pairs.json`` (``[["ada", "alan"], ...]``), else every unordered pair by name."""
    by_name = {p.name: p for p in people}
    pairs_file = folder / PAIRS_FILE
    if not pairs_file.is_file():
        return list(itertools.combinations(people, 2))
    listed = read_json(pairs_file, list, "a list of pairs")
    pairs = []
    for entry in listed:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] != entry[1]):
            raise ValueError(f'{pairs_file}: each entry must be two different names, like ["ada", "alan"]: {entry!r}')
        missing = [n for n in entry if n not in by_name]
        if missing:
            raise ValueError(f"{pairs_file} names {missing}, which are not sub-folders of {folder}.")
        pairs.append((by_name[entry[0]], by_name[entry[1]]))
    return pairs


@register_benchmark("multi-subject")
def multi_subject_benchmark(
    source: Path, placeholder: str = DEFAULT_PLACEHOLDER, prompts: PromptSet | None = None
) -> Benchmark:
    """Every prompt of ``multi_subject.json`` (or of ``prompts``) for every pair of people of the subject folder
    ``source``. The shipped prompts form one group, ``pair``."""
    if prompts is None:
        shipped = read_benchmark_file("multi_subject.json")
        prompts = PromptSet({"pair": tuple(shipped["prompts"])}, shipped.get("images_per_prompt"), "multi_subject")
    prompts.check({"subject1", "subject2"})
    people = load_subjects(source)
    if len(people) < 2:
        raise ValueError(f"The multi-subject benchmark needs at least two people in {source}, found {len(people)}.")
    pairs = subject_pairs(source, people)
    several_groups = len(prompts.groups) > 1
    cases = []
    for group, templates in prompts.groups.items():
        for index, template in enumerate(templates):
            for first, second in pairs:
                prompt = template.format(
                    subject1=_subject_phrase(first, placeholder), subject2=_subject_phrase(second, placeholder)
                )
                local = f"{group}-{index:02d}" if several_groups else f"{index:02d}"
                cases.append(Case(f"{first.name}+{second.name}/{local}", prompt, (first, second), group))
    return Benchmark("multi-subject", "multi", tuple(cases), prompts.images_per_prompt or 4)


# ---------------------------------------------------------------------------------------------------- FFHQ-wild
def ffhq_case(root: Path, image_id: str, placeholder: str = DEFAULT_PLACEHOLDER) -> Case | None:
    """One FFHQ-wild image as a case, or ``None`` when it shows no person.

    The caption gets a placeholder at each person segment's ``end`` offset (segments sorted by ``end``, at most 4
    people); each person's reference is the image cropped to the segment's ``bbox``.
    """
    image_path, _, json_path = sample_paths(root, image_id)
    for path in (image_path, json_path):
        if not path.is_file():
            raise FileNotFoundError(f"FFHQ-wild file missing: {path} (expected <root>/<id[:5]>/<id>.jpg and .json).")
    try:
        record = read_json(json_path)
    except ValueError as err:
        raise ValueError(
            f"{str(err).rstrip('.')}: it should be an FFHQ-wild caption file (caption, segments)."
        ) from None
    caption, segments = parse_annotation(record, image_id)
    chosen = person_segments(caption, segments)[:MAX_FFHQ_SUBJECTS]
    if not chosen:
        return None
    people = tuple(
        Person(
            f"{image_id}-{k}",
            caption[: segment.end].split()[-1],  # the class noun just before the placeholder
            (Photo(image_path, tuple(int(round(v)) for v in segment.bbox)),),
        )
        for k, segment in enumerate(chosen)
    )
    prompt = insert_placeholders(caption, [s.end for s in chosen], placeholder)
    return Case(image_id, prompt, people, f"{len(people)}-person")


@register_benchmark(
    "ffhq-wild",
    BenchmarkDefaults(data_hint="the FFHQ-wild dataset root (image_ids_test.txt, <id[:5]>/<id>.jpg|.json)"),
)
def ffhq_wild_benchmark(source: Path, placeholder: str = DEFAULT_PLACEHOLDER) -> Benchmark:
    """The FFHQ-wild test split at ``source`` (docs/method.md, Training data); images without people skipped."""
    ids_file = source / "image_ids_test.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(
            f"{ids_file} not found: the ffhq-wild benchmark takes the dataset root holding image_ids_test.txt and "
            "the <id[:5]>/<id>.jpg|.json files."
        )
    ids = [line.strip() for line in read_text(ids_file).splitlines() if line.strip()]
    cases = [c for c in (ffhq_case(source, i, placeholder) for i in ids) if c is not None]
    if len(cases) < len(ids):
        logger.info("ffhq-wild: %d of %d test images show no person and are skipped.", len(ids) - len(cases), len(ids))
    return Benchmark("ffhq-wild", "multi", tuple(cases), 1)
