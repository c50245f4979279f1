"""The cases of an evaluation: people and their photos (:class:`Person`, :class:`Photo`), a prompt with the people
it asks for (:class:`Case`), a named list of cases (:class:`Benchmark`), and the subject folders people are read
from.

A **subject folder** holds one sub-folder of photos per person; the sub-folder's name is the person's name. An
optional ``subjects.json`` maps names to class nouns (``{"ada": "woman", "alan": "man"}``); a person not listed there
is a ``person``; an optional ``pairs.json`` lists the pairs of the multi-subject benchmark. Photos should be roughly
square crops of the head and shoulders.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image

from ..images import list_image_files, load_image
from ..io.files import read_json

logger = logging.getLogger(__name__)

DEFAULT_CLASS_NOUN = "person"
SUBJECTS_FILE = "subjects.json"
PAIRS_FILE = "pairs.json"


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
        person_masks: ``"package.module:function"`` giving where each person of a case stands,
            ``function(case, size) -> (K, size, size)`` bool (the mini benchmark: the world's render of the case), for
            the ``:gt`` methods; ``None`` when the benchmark does not know.
    """

    name: str
    kind: str
    cases: tuple[Case, ...]
    images_per_prompt: int = 4
    gallery: tuple[Person, ...] = ()
    attribute_scorer: str | None = None
    person_masks: str | None = None


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
