"""The FFHQ-wild layout as released for FastComposer (``mit-han-lab/ffhq-fastcomposer``;
docs/method.md, Training data).

File-format helpers shared by the training reader (:mod:`facediffuser.training.data`) and the ``ffhq-wild``
evaluation benchmark (:mod:`facediffuser.evaluation.benchmarks`)::

    root/image_ids_train.txt          one image id per line (image_ids_test.txt for the test split)
    root/<id[:5]>/<id>.jpg            the photo
    root/<id[:5]>/<id>.npy            integer segmentation map (H, W), values are segment ids
    root/<id[:5]>/<id>.json           {"caption": ..., "segments": [{"id", "bbox": [x1, y1, x2, y2],
                                                                    "coco_label", "end"}, ...]}

A ``person`` segment may also carry an ``"identity"`` (a string or an integer naming who the person is, the same
in every image of them) and a ``"head_box"`` (``[x1, y1, x2, y2]`` of the head: face and hair); the procedural
world writes both. The released data set has neither; the SDM trainer's ``other_image_reference_prob`` uses the
identity to cut a person's reference from another image of them, its ``reference_region = "head"`` the head box.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..prompting import DEFAULT_PLACEHOLDER

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
PERSON_LABEL = "person"
# How many samples are checked up front for their three files.
LAYOUT_PROBE = 8


def split_file(root: Path, split: str) -> Path:
    return root / f"image_ids_{split}.txt"


def sample_paths(root: Path, image_id: str) -> tuple[Path, Path, Path]:
    """``(jpg, npy, json)`` of one image id."""
    folder = root / image_id[:5]
    return folder / f"{image_id}.jpg", folder / f"{image_id}.npy", folder / f"{image_id}.json"


def read_split(root: str | Path, split: str) -> list[str]:
    """The image ids of a split, checking the layout on the way.

    Raises:
        FileNotFoundError: the root does not exist.
        ValueError: the root is not in the FFHQ-wild layout; the message names what is missing.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; the FFHQ-wild layout has {', '.join(SPLITS)}.")
    if not root.is_dir():
        raise FileNotFoundError(f"The data root {root} does not exist.")
    path = split_file(root, split)
    if not path.is_file():
        present = [p.name for p in sorted(root.glob("image_ids_*.txt"))]
        raise ValueError(
            f"{root} is not an FFHQ-wild data root: it has no {path.name} (found: {present or 'no split files'}). "
            "Expected image_ids_train.txt, image_ids_test.txt and, per image id, <id[:5]>/<id>.jpg, .npy and .json."
        )
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no image ids.")
    probe = ids[:: max(1, len(ids) // LAYOUT_PROBE)][:LAYOUT_PROBE]
    missing = [p for image_id in probe for p in sample_paths(root, image_id) if not p.is_file()]
    if len(missing) == 3 * len(probe):
        raise ValueError(
            f"{root} is not an FFHQ-wild data root: none of the {len(probe)} probed ids of {path.name} has its files "
            f"(e.g. {missing[0].relative_to(root)} is missing). Each id needs <id[:5]>/<id>.jpg, .npy and .json."
        )
    for p in missing:
        logger.warning("FFHQ-wild sample file missing (the sample will be skipped): %s", p)
    return ids


def insert_placeholders(caption: str, ends: Sequence[int], placeholder: str = DEFAULT_PLACEHOLDER) -> str:
    """Inserts ``" " + placeholder`` at each character offset of ``ends`` (offsets into the original caption)."""
    out, last = [], 0
    for end in sorted(ends):
        out.append(caption[last:end])
        out.append(" " + placeholder)
        last = end
    out.append(caption[last:])
    return "".join(out)


@dataclass(frozen=True)
class Segment:
    id: int
    bbox: tuple[float, float, float, float]
    label: str
    end: int
    identity: str | None = None  # who the person is across images, when the data set says (an extension)
    head_box: tuple[float, float, float, float] | None = None  # the head (face and hair), when given (an extension)


def parse_annotation(data: Any, image_id: str) -> tuple[str, list[Segment]]:
    """``(caption, segments)`` from a sample's json; ``ValueError`` when a field is missing or malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("caption"), str):
        raise ValueError(f"{image_id}.json has no 'caption' string.")
    caption = data["caption"]
    listed = data.get("segments", [])
    if not isinstance(listed, list):
        raise ValueError(f"{image_id}.json has 'segments' of type {type(listed).__name__}, not a list.")
    segments = []
    for k, seg in enumerate(listed):
        try:
            bbox = tuple(float(v) for v in seg["bbox"])
            head_box = seg.get("head_box")
            head_box = None if head_box is None else tuple(float(v) for v in head_box)
            identity = seg.get("identity")
            segment_id, label, end = int(seg["id"]), str(seg["coco_label"]), int(seg["end"])
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{image_id}.json segment {k} is malformed ({err!r}).") from err
        if identity is not None and (isinstance(identity, bool) or not isinstance(identity, (str, int))):
            raise ValueError(
                f"{image_id}.json segment {k} has an 'identity' of type {type(identity).__name__}, not a string or an "
                "integer."
            )
        if len(bbox) != 4:
            raise ValueError(f"{image_id}.json segment {k} has a bbox of {len(bbox)} numbers, not 4.")
        if head_box is not None and len(head_box) != 4:
            raise ValueError(f"{image_id}.json segment {k} has a head_box of {len(head_box)} numbers, not 4.")
        identity = None if identity is None else str(identity)
        segments.append(Segment(segment_id, bbox, label, end, identity, head_box))
    return caption, segments


def person_segments(caption: str, segments: Sequence[Segment]) -> list[Segment]:
    """The ``person`` segments whose ``end`` falls inside the caption (after a word), sorted by ``end``."""
    people = [s for s in segments if s.label == PERSON_LABEL and 0 < s.end <= len(caption) and caption[: s.end].strip()]
    return sorted(people, key=lambda s: s.end)


def misplaced_people(caption: str, segments: Sequence[Segment]) -> list[Segment]:
    """The ``person`` segments that :func:`person_segments` leaves out: ``end`` beyond the caption, or not after a
    word of it. Such a person cannot get a placeholder and trains as no one."""
    placed = set(person_segments(caption, segments))
    return [s for s in segments if s.label == PERSON_LABEL and s not in placed]


def box_inside(bbox: tuple[float, float, float, float], width: int, height: int) -> bool:
    """Whether an ``[x1, y1, x2, y2]`` box keeps at least one pixel once clipped to the image."""
    x1, y1, x2, y2 = bbox
    return min(x2, width) - max(x1, 0) >= 1 and min(y2, height) - max(y1, 0) >= 1
