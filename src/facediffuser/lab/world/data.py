"""Writing the world's data sets in the FFHQ-wild layout, its reference folders, and reading them back.

A data set is an FFHQ-wild root (docs/method.md, Training data): ``image_ids_{train,test}.txt``
and, per image, ``<id[:5]>/<id>.jpg`` (4:4:4 JPEG, so that small flat colours keep their hue), ``.npy`` (uint8
segment ids) and ``.json``. The json has the ``caption`` and ``segments`` of the released format (each ``person``
segment with the ``identity`` id of who it is and its ``head_box``, :mod:`facediffuser.io.ffhq_wild`'s extensions),
plus an ``attributes`` record: the scene's attributes and, per person, their identity id, features, clothing and
face box.

The train split shows training identities only; the test split shows held-out identities only. Every image is a
pure function of ``(seed, distribution, split, index)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...io.ffhq_wild import read_split, sample_paths, split_file
from ...io.files import read_json
from .attributes import (
    DISTRIBUTIONS,
    OBJECTS,
    PORTRAITS,
    Distribution,
    Identity,
    SceneSpec,
    caption,
    sample_scene,
)
from .render import OBJECT_SEGMENT, Rendered, object_label, render

logger = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "test": 1}
DISTRIBUTION_CODES = {"scenes": 0, "portraits": 1}
TEST_ID_OFFSET = 10_000_000  # test image ids start here, so the two splits never share an id
JPEG_OPTIONS = {"quality": 95, "subsampling": 0}
REFERENCES_PER_PERSON = 3


def image_id(split: str, index: int) -> str:
    return f"{index + (TEST_ID_OFFSET if split == 'test' else 0):08d}"


def scene_for(
    distribution: Distribution,
    identities: Sequence[Identity],
    seed: int,
    split: str,
    index: int,
    size: int,
) -> SceneSpec:
    """The scene of image ``index`` of a split: its people are drawn from ``identities`` (that split's people)."""
    rng = np.random.default_rng([seed, 10 + DISTRIBUTION_CODES[distribution.name], SPLIT_CODES[split], index])
    count = 2 if rng.uniform() < distribution.two_people else 1
    chosen = rng.choice(len(identities), size=count, replace=False)
    return sample_scene(distribution, [identities[int(i)] for i in chosen], rng, size)


def annotation(scene: SceneSpec, rendered: Rendered, distribution: str) -> dict[str, Any]:
    """The json of one image: the FFHQ-wild ``caption`` and ``segments``, plus the ``attributes`` record."""
    text, ends = caption(scene)
    segments = []
    for k, (end, box, person, head) in enumerate(zip(ends, rendered.person_boxes, scene.people, rendered.face_boxes)):
        if box is not None:
            segments.append(
                {
                    "id": k + 1,
                    "bbox": box,
                    "coco_label": "person",
                    "end": end,
                    "identity": person.identity.id,
                    "head_box": [round(v, 2) for v in head],
                }
            )
    label = object_label(scene)
    if label is not None and rendered.object_box is not None:
        phrase = OBJECTS[scene.object]
        segments.append(
            {
                "id": OBJECT_SEGMENT,
                "bbox": rendered.object_box,
                "coco_label": label,
                "end": text.index(phrase) + len(phrase),
            }
        )
    people = []
    for person, face_box in zip(scene.people, rendered.face_boxes):
        people.append(
            {
                "identity": person.identity.id,
                **person.identity.features(),
                "clothing": person.clothing,
                "garment": person.garment,
                "face_box": [round(v, 2) for v in face_box],
                "turn": round(person.turn, 3),
                "tilt": round(person.tilt, 2),
            }
        )
    attributes = {
        "distribution": distribution,
        "place": scene.place,
        "time": scene.time,
        "weather": scene.weather,
        "object": scene.object,
        "people": people,
    }
    return {"caption": text, "segments": segments, "attributes": attributes}


def write_sample(root: Path, image_id_: str, rendered: Rendered, data: dict[str, Any]) -> None:
    jpg, npy, js = sample_paths(root, image_id_)
    jpg.parent.mkdir(parents=True, exist_ok=True)
    rendered.image.save(jpg, **JPEG_OPTIONS)
    np.save(npy, rendered.segmap)
    js.write_text(json.dumps(data), encoding="utf-8")


def write_dataset(
    root: str | Path,
    distribution: str | Distribution,
    identities: dict[str, Sequence[Identity]],
    counts: dict[str, int],
    *,
    seed: int = 0,
    size: int = 64,
    progress: bool = True,
) -> Path:
    """Renders one distribution into an FFHQ-wild root.

    Args:
        root: the folder to write (created).
        distribution: ``"scenes"``, ``"portraits"`` or a :class:`Distribution`.
        identities: the people of each split, ``{"train": [...], "test": [...]}`` (test = held-out people).
        counts: images per split, e.g. ``{"train": 20000, "test": 1000}``.
    """
    dist = DISTRIBUTIONS[distribution] if isinstance(distribution, str) else distribution
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        if split not in SPLIT_CODES:
            raise ValueError(f"Unknown split {split!r}; the FFHQ-wild layout has train and test.")
        people = identities[split]
        if len(people) < 2:
            raise ValueError(f"The {split} split needs at least two people, got {len(people)}.")
        ids = []
        for index in tqdm(range(count), desc=f"{dist.name}/{split}", disable=not progress, mininterval=2):
            scene = scene_for(dist, people, seed, split, index, size)
            rendered = render(scene)
            ids.append(image_id(split, index))
            write_sample(root, ids[-1], rendered, annotation(scene, rendered, dist.name))
        split_file(root, split).write_text("\n".join(ids) + "\n", encoding="utf-8")
    return root


def reference_scene(identity: Identity, seed: int, index: int, size: int) -> SceneSpec:
    """Reference photo ``index`` of a person: a single-person portrait render with its own seed, never a crop of a
    data-set image."""
    rng = np.random.default_rng([seed, 20, identity.id, index])
    return sample_scene(PORTRAITS, [identity], rng, size)


def write_references(
    root: str | Path,
    identities: Sequence[Identity],
    *,
    seed: int = 0,
    size: int = 64,
    per_person: int = REFERENCES_PER_PERSON,
    progress: bool = True,
) -> Path:
    """Subject folders in the format of ``facediffuser evaluate --data``: ``<name>/1.png ...`` and ``subjects.json``
    with each person's class noun."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    nouns = {}
    for identity in tqdm(identities, desc="references", disable=not progress, mininterval=2):
        folder = root / identity.name
        folder.mkdir(exist_ok=True)
        for j in range(per_person):
            render(reference_scene(identity, seed, j, size)).image.save(folder / f"{j + 1}.png")
        nouns[identity.name] = identity.noun
    (root / "subjects.json").write_text(json.dumps(nouns, indent=1), encoding="utf-8")
    return root


@dataclass
class WorldSample:
    image_id: str
    image: np.ndarray  # (H, W, 3) uint8
    data: dict[str, Any]


def read_samples(root: str | Path, split: str, limit: int | None = None, progress: bool = False) -> list[WorldSample]:
    """The images and jsons of a split, in memory (the world's images are small)."""
    root = Path(root)
    ids = read_split(root, split)[:limit]
    out = []
    for image_id_ in tqdm(ids, desc=f"read {root.name}/{split}", disable=not progress, mininterval=2):
        jpg, _, js = sample_paths(root, image_id_)
        with Image.open(jpg) as opened:
            image = np.asarray(opened.convert("RGB"))
        out.append(WorldSample(image_id_, image, read_json(js, dict, "a rendered sample's record")))
    return out
