"""The benchmark registry and the built-in benchmarks: a data file of prompts plus a loader that pairs them with people.

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

The people and cases are :mod:`facediffuser.evaluation.cases` (with the subject folders they are read from), the
prompt files :mod:`facediffuser.evaluation.prompts`; this module keeps the registry and the built-in loaders, and
names both modules' contents for the callers that reach them here.

A new benchmark is a function ``loader(source, placeholder) -> Benchmark`` decorated with
:func:`register_benchmark`, optionally with :class:`BenchmarkDefaults` (the data, IP backend, CLIP model and methods
it runs with when the flags do not say). A loader that also takes ``prompts`` (a :class:`PromptSet`) accepts
``--prompts FILE``: prompt templates where ``{subject}`` (one person) or ``{subject1}``, ``{subject2}``... (several)
stand for each person's class noun and placeholder. :func:`load_prompt_file` reads them from JSON or text.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..io.ffhq_wild import insert_placeholders, parse_annotation, person_segments, sample_paths
from ..io.files import read_json, read_text
from ..prompting import DEFAULT_PLACEHOLDER
from .cases import (  # noqa: F401 (the cases and prompt files, reached here by the harness, the lab and tests)
    DEFAULT_CLASS_NOUN,
    PAIRS_FILE,
    SUBJECTS_FILE,
    Benchmark,
    Case,
    Person,
    Photo,
    load_subjects,
    subject_pairs,
)
from .prompts import (  # noqa: F401
    PromptSet,
    _check_template,
    load_prompt_file,
    prompt_set_from_json,
    prompt_set_from_text,
    read_benchmark_file,
    shipped_prompts,
)

logger = logging.getLogger(__name__)

MAX_FFHQ_SUBJECTS = 4


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


def _subject_phrase(person: Person, placeholder: str) -> str:
    return f"{person.class_noun} {placeholder}"


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
