"""The FFHQ-wild data set as released for FastComposer (``mit-han-lab/ffhq-fastcomposer``), read as it is.

The layout (docs/method.md, Training data) and its file-format helpers are in :mod:`facediffuser.io.ffhq_wild`.

For the SDM, a placeholder is inserted at each kept ``person`` segment's ``end`` offset (the character just after
its noun phrase), so ``"a man riding a horse"`` with a segment ending at 5 reads ``"a man <|image|> riding a
horse"``; the class-noun token before it receives that person's reference embedding. For the TDM the caption is
used as it is.

Every sample is a pure function of ``(seed, epoch, index)``: the keep/drop decisions and the augmentations draw
from a generator seeded with those three numbers, so resuming, changing the number of data-loader workers or of
processes never changes what a given step sees. A missing or corrupt file is skipped (with a logged warning) and
replaced by the next readable sample; the skipped ids travel with the batch so the trainer can count them. For the
SDM, a readable annotation whose people cannot be placed (no ``segments`` list, or a ``person`` segment whose
``end`` is not after a word of the caption) trains without them; it is warned about once per image id (for the first
:data:`FLAW_WARNINGS` ids), and its id travels with the batch (``flawed``) to be counted every time.

The recipe cuts each person's reference from the training image itself. Where the data set names who each person is
(a segment's ``identity``, :mod:`facediffuser.io.ffhq_wild`), ``other_image_reference_prob`` cuts it instead from
another image of the same person in the split, so that the reference shares only the person with the target: not
the clothing, light or pose of that one image, which the model could otherwise copy instead of the identity. With
``reference_region = "head"`` the reference is cut to the person's ``head_box`` (another extension) instead of their
whole box, noise still outside their segment: the face and hair, without clothes or body. With ``head_masks`` each
sample also holds each person's head region in the target geometry (their segment inside their ``head_box``), for a
denoising loss weighted toward the heads.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from ..images import clip_preprocess, pil_to_tensor
from ..io.ffhq_wild import (
    PERSON_LABEL,
    Segment,
    box_inside,
    insert_placeholders,
    misplaced_people,
    parse_annotation,
    person_segments,
    read_split,
    sample_paths,
)
from ..io.files import read_json
from ..prompting import DEFAULT_PLACEHOLDER, TokenizedPrompt, tokenize_prompt
from .augment import (
    ReferenceAugmentation,
    map_geometry,
    noise_background_crop,
    plain_reference,
    short_side_size,
    target_geometry,
)
from .config import REFERENCE_REGIONS

logger = logging.getLogger(__name__)

# How many captions are read up front to check that the data set has people in it at all.
PERSON_SCAN_LIMIT = 512
# Image ids warned about one by one for people that cannot be placed; further ones are only counted.
FLAW_WARNINGS = 20


class SampleUnreadable(Exception):
    """A sample's files are missing or corrupt."""


def seeded_generator(values: Sequence[int], device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from a tuple of integers (e.g. seed, epoch, index) through numpy's ``SeedSequence``, so
    that nearby tuples give unrelated streams."""
    seed = int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def annotation_flaws(data: Any, caption: str, segments: Sequence[Segment]) -> list[str]:
    """What in a readable annotation leaves people out of SDM training, in words (``[]`` when nothing does)."""
    if isinstance(data, dict) and "segments" not in data:
        return ["it has no 'segments' list, so no person in it can be a subject"]
    return [
        f"person segment {s.id} has 'end' {s.end}, which is not after a word of its {len(caption)}-character caption"
        for s in misplaced_people(caption, segments)
    ]


@dataclass
class FFHQWild(Dataset):
    """FFHQ-wild samples for SDM (``with_subjects=True``) or TDM training.

    Indexed by ``(epoch, index)`` pairs (see :class:`EpochSampler`) or a plain index (epoch 0). A sample is a dict:

    - ``image_id``: the id actually read (the next readable one when the requested sample was skipped);
    - ``caption``: the caption as encoded, with placeholders for the kept people (``""`` when unconditional);
    - ``input_ids``: ``(L,)`` token ids, placeholders removed;
    - ``subject_token_indices``: ``(K,)`` the class-noun token of each kept person, in caption order;
    - ``subject_pixels``: ``(K, 3, S, S)`` CLIP-normalized reference crops;
    - ``subject_masks``: ``(K, R, R)`` float 0/1 masks of those people in the target geometry;
    - ``head_masks`` (only with ``head_masks=True``): ``(K, R, R)`` float 0/1 masks of their heads (their segment
      inside their ``head_box``; all zeros for a person without one) in the same geometry;
    - ``pixel_values``: ``(3, R, R)`` the target in ``[-1, 1]``;
    - ``skipped``: ids that were unreadable and skipped to reach this sample;
    - ``flawed``: ``[image_id]`` when the SDM reads an annotation whose people cannot be placed (see
      :func:`annotation_flaws`), else ``[]``.

    Args:
        root, split: the data root and ``"train"`` or ``"test"``.
        tokenizer: the SD1.x CLIP tokenizer.
        resolution: side ``R`` of the target image.
        reference_size: side ``S`` of the reference crops (the vision tower's input size).
        with_subjects: SDM samples (placeholders and references) rather than TDM samples.
        max_subjects: at most this many people per sample (a random subset when there are more, as in
            FastComposer's recipe).
        subject_keep_prob: each person is kept with this probability (dropped people stay in the caption as text).
        other_image_reference_prob: with this probability (when ``augment``), a person's reference is cut from another
            image of the same ``identity`` in the split, when there is one; else from this image.
        reference_region: ``"person"`` (the recipe's: the segment's box) or ``"head"`` (its ``head_box``; a person
            without one keeps the whole box).
        head_masks: add each person's head mask to the sample (``head_masks``).
        uncondition_prob: the caption is empty, with no people, with this probability.
        augment: augment the references and flip the targets (off for validation).
        seed: base seed of every random decision.
        placeholder: the placeholder string.
        tokenizer_2: SDXL's second tokenizer: each sample also holds ``input_ids_2`` ``(L,)``, the caption (placeholders
            removed) in its ids, and ``time_ids`` ``(6,)``, SDXL's size conditions: the image's original
            ``(height, width)``, the ``(top, left)`` corner of the centre crop in the resized image, and
            ``(resolution, resolution)``.
    """

    root: Path
    split: str
    tokenizer: Any
    resolution: int = 512
    reference_size: int = 224
    with_subjects: bool = True
    max_subjects: int = 4
    subject_keep_prob: float = 0.9
    other_image_reference_prob: float = 0.0
    reference_region: str = "person"
    head_masks: bool = False
    uncondition_prob: float = 0.1
    augment: bool = True
    seed: int = 0
    placeholder: str = DEFAULT_PLACEHOLDER
    augmentation: ReferenceAugmentation = field(default_factory=ReferenceAugmentation)
    tokenizer_2: Any = None
    _warned: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        for name in ("subject_keep_prob", "other_image_reference_prob", "uncondition_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be within [0, 1], got {value}.")
        if self.reference_region not in REFERENCE_REGIONS:
            raise ValueError(
                f"`reference_region` must be one of {', '.join(REFERENCE_REGIONS)}, got {self.reference_region!r}."
            )
        if self.max_subjects < 1:
            raise ValueError(f"`max_subjects` must be at least 1, got {self.max_subjects}.")
        self.image_ids = read_split(self.root, self.split)
        # identity -> [(image id, segment id)]: where each named person appears (read only when it is used).
        self.appearances: dict[str, list[tuple[str, int]]] = {}
        if self.with_subjects:
            self.check_has_people()
            if self.reference_region == "head":
                self.check_has_head_boxes("`reference_region` is 'head'", "Use 'person' (the recipe's)")
            if self.head_masks:
                self.check_has_head_boxes("Head masks are asked for", "Set `head_loss_weight` to 0 (the recipe's)")
            if self.other_image_reference_prob > 0 and self.augment:
                self.appearances = self.index_identities()

    def __len__(self) -> int:
        return len(self.image_ids)

    def readable_annotations(self) -> Iterator[tuple[str, str, list[Segment]]]:
        """``(image id, caption, segments)`` of the split's captions in order, leaving out those that cannot be read
        (their samples are skipped when read)."""
        for image_id in self.image_ids:
            try:
                data = read_json(sample_paths(self.root, image_id)[2])
                caption, segments = parse_annotation(data, image_id)
            except (OSError, ValueError):
                continue
            yield image_id, caption, segments

    def check_has_people(self) -> None:
        """Raises ``ValueError`` when no caption among the first :data:`PERSON_SCAN_LIMIT` readable ones has a
        ``person`` segment: SDM training would have no subject to learn from."""
        read = 0
        labels: set[str] = set()
        for _, caption, segments in islice(self.readable_annotations(), PERSON_SCAN_LIMIT):
            read += 1
            if person_segments(caption, segments):
                return
            labels.update(s.label for s in segments)
        if read == 0:
            raise ValueError(f"No caption json of the {self.split} split of {self.root} could be read.")
        raise ValueError(
            f"None of the {read} captions read from the {self.split} split of {self.root} has a '{PERSON_LABEL}' "
            f"segment with an 'end' offset inside its caption (labels seen: {sorted(labels) or 'none'}). SDM "
            "training needs people; train the TDM instead, or fix the segments."
        )

    def check_has_head_boxes(self, why: str, instead: str) -> None:
        """Raises ``ValueError`` when no ``person`` segment among the first :data:`PERSON_SCAN_LIMIT` readable
        captions has a ``head_box``: ``reference_region = "head"`` would cut every reference to the whole person, and
        head masks would all be empty. ``why`` and ``instead`` word the error: what asked for head boxes, and what to
        do without them."""
        read = 0
        for _, caption, segments in islice(self.readable_annotations(), PERSON_SCAN_LIMIT):
            read += 1
            if any(s.head_box is not None for s in person_segments(caption, segments)):
                return
        raise ValueError(
            f"{why}, but no '{PERSON_LABEL}' segment of the {read} captions read from the {self.split} split of "
            f"{self.root} has a 'head_box'. {instead}, or add head boxes."
        )

    def index_identities(self) -> dict[str, list[tuple[str, int]]]:
        """Where each person with an ``identity`` appears in the split: ``{identity: [(image id, segment id)]}``.

        Reads every readable caption json of the split once. Raises ``ValueError`` when no person segment names an
        identity: there is nothing to cut other references from."""
        appearances: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for image_id, caption, segments in self.readable_annotations():
            for segment in person_segments(caption, segments):
                if segment.identity is not None:
                    appearances[segment.identity].append((image_id, segment.id))
        if not appearances:
            raise ValueError(
                f"`other_image_reference_prob` is {self.other_image_reference_prob}, but no '{PERSON_LABEL}' segment "
                f"of the {self.split} split of {self.root} has an 'identity': references can only be cut from other "
                "images of a person the data set names. Set it to 0 (the recipe's references from the image itself)."
            )
        return dict(appearances)

    # ------------------------------------------------------------------ reading
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (0, key) if isinstance(key, int) else key
        skipped: list[str] = []
        for attempt in range(len(self.image_ids)):
            i = (index + attempt) % len(self.image_ids)
            image_id = self.image_ids[i]
            try:
                sample = self.read_sample(image_id, epoch, i)
            except SampleUnreadable as err:
                logger.warning("Skipping FFHQ-wild sample %s: %s", image_id, err)
                skipped.append(image_id)
                continue
            sample["skipped"] = skipped
            return sample
        raise ValueError(f"No sample of the {self.split} split of {self.root} is readable.")

    def load_files(self, image_id: str) -> tuple[Image.Image, np.ndarray, str, list[Segment], list[str]]:
        """The image, the segmentation map, the caption, its segments and the annotation's flaws."""
        jpg, npy, js = sample_paths(self.root, image_id)
        try:
            with Image.open(jpg) as opened:
                image = opened.convert("RGB")
            segmap = np.load(npy, allow_pickle=False)
            annotation = read_json(js)  # a broken one names itself
            caption, segments = parse_annotation(annotation, image_id)
        except FileNotFoundError as err:
            raise SampleUnreadable(f"missing file {err.filename or js}") from err
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise SampleUnreadable(f"corrupt file ({err})") from err
        if segmap.ndim != 2 or not np.issubdtype(segmap.dtype, np.integer):
            raise SampleUnreadable(f"the segmentation map is {segmap.dtype} {segmap.shape}, not a 2-D integer map")
        if segmap.shape != (image.height, image.width):
            raise SampleUnreadable(
                f"the segmentation map is {segmap.shape[0]}x{segmap.shape[1]}, the image {image.height}x{image.width}"
            )
        flaws = annotation_flaws(annotation, caption, segments) if self.with_subjects else []
        return image, segmap, caption, segments, flaws

    def generator(self, epoch: int, index: int) -> torch.Generator:
        return seeded_generator([self.seed, epoch, index])

    def read_sample(self, image_id: str, epoch: int, index: int) -> dict[str, Any]:
        image, segmap, caption, segments, flaws = self.load_files(image_id)
        if flaws and image_id not in self._warned and len(self._warned) < FLAW_WARNINGS:
            self._warned.add(image_id)  # once per id: the same file is read again every epoch
            more = (
                " (further such samples are counted as data/flawed_annotations, not warned about one by one)"
                if len(self._warned) == FLAW_WARNINGS
                else ""
            )
            logger.warning("FFHQ-wild sample %s trains without its people: %s.%s", image_id, "; ".join(flaws), more)
        g = self.generator(epoch, index)

        # 1. Caption and people: unconditional, or the kept person segments with their placeholders.
        unconditional = torch.rand((), generator=g).item() < self.uncondition_prob
        people: list[Segment] = []
        if unconditional:
            caption = ""
        elif self.with_subjects:
            keep = [
                s for s in person_segments(caption, segments) if torch.rand((), generator=g) < self.subject_keep_prob
            ]
            people = [s for s in keep if box_inside(s.bbox, image.width, image.height) and (segmap == s.id).any()]
            if len(people) > self.max_subjects:  # a random subset, kept in caption order
                chosen = torch.randperm(len(people), generator=g)[: self.max_subjects].sort().values
                people = [people[i] for i in chosen.tolist()]
        text = insert_placeholders(caption, [s.end for s in people], self.placeholder)
        tokenized = self.tokenize(text, len(people))
        people = people[: len(tokenized.subject_token_indices)]

        # 2. Target image and map, one geometry.
        flip = self.augment and torch.rand((), generator=g).item() < 0.5
        pixel_values, seg = target_geometry(image, segmap, self.resolution, flip)

        # 3. References: noise outside the person, crop to the box, augment, CLIP-normalize.
        full = pil_to_tensor(image)
        seg_full = torch.from_numpy(segmap.astype(np.int64))
        refs, masks = [], []
        heads = self.head_map(segmap, people, flip) if self.head_masks else None
        head_masks = []
        for person in people:
            crop = self.other_reference(person, image_id, g)
            if crop is None:
                try:
                    crop = noise_background_crop(full, seg_full == person.id, self.reference_box(person), g)
                except ValueError as err:
                    raise SampleUnreadable(str(err)) from err
            crop = (
                self.augmentation(crop, self.reference_size, g)
                if self.augment
                else plain_reference(crop, self.reference_size)
            )
            refs.append(crop)
            masks.append((seg == person.id).float())
            if heads is not None:
                head_masks.append((heads == person.id).float())
        size, res = self.reference_size, self.resolution
        subject_pixels = clip_preprocess(torch.stack(refs), size) if refs else torch.zeros(0, 3, size, size)
        sample = {
            "image_id": image_id,
            "caption": text,
            "input_ids": torch.tensor(tokenized.input_ids, dtype=torch.long),
            "subject_token_indices": torch.tensor(tokenized.subject_token_indices, dtype=torch.long),
            "subject_pixels": subject_pixels,
            "subject_masks": torch.stack(masks) if masks else torch.zeros(0, res, res),
            "pixel_values": pixel_values,
            "flawed": [image_id] if flaws else [],
        }
        if heads is not None:
            sample["head_masks"] = torch.stack(head_masks) if head_masks else torch.zeros(0, res, res)
        if self.tokenizer_2 is not None:
            ids_2 = tokenize_prompt(self.tokenizer_2, tokenized.text, self.placeholder).input_ids
            sample["input_ids_2"] = torch.tensor(ids_2, dtype=torch.long)
            sample["time_ids"] = torch.tensor(size_ids(image.width, image.height, res), dtype=torch.float32)
        return sample

    def head_map(self, segmap: np.ndarray, people: Sequence[Segment], flip: bool) -> torch.Tensor:
        """A map of the people's heads in the target geometry: a person's segment id where their segment lies inside
        their ``head_box``, else ``-1``."""
        heads = np.full(segmap.shape, -1, dtype=np.int64)
        height, width = segmap.shape
        for person in people:
            if person.head_box is None:
                continue
            x1, y1, x2, y2 = person.head_box
            top, bottom = max(0, math.floor(y1)), min(height, math.ceil(y2))
            left, right = max(0, math.floor(x1)), min(width, math.ceil(x2))
            region = segmap[top:bottom, left:right] == person.id
            heads[top:bottom, left:right][region] = person.id
        return map_geometry(heads, self.resolution, flip)

    def reference_box(self, person: Segment) -> tuple[float, float, float, float]:
        """The box a person's reference is cut to: their head box for ``reference_region = "head"`` when they have
        one, else their whole box."""
        if self.reference_region == "head" and person.head_box is not None:
            return person.head_box
        return person.bbox

    def other_reference(self, person: Segment, image_id: str, g: torch.Generator) -> torch.Tensor | None:
        """With probability ``other_image_reference_prob``, ``person``'s reference crop (noise outside them, cut to
        their box) from another image of the same identity, drawn with ``g``; ``None`` for the recipe's crop from
        this image: when the coin says so, when the person has no identity or no other image, or when that image
        cannot be read (warned)."""
        if not self.appearances or torch.rand((), generator=g).item() >= self.other_image_reference_prob:
            return None
        others = [a for a in self.appearances.get(person.identity, ()) if a[0] != image_id]
        if not others:
            return None
        other_id, segment_id = others[int(torch.randint(len(others), (), generator=g))]
        try:
            other, other_map, _, other_segments, _ = self.load_files(other_id)
            (box,) = [self.reference_box(s) for s in other_segments if s.id == segment_id]
            return noise_background_crop(
                pil_to_tensor(other), torch.from_numpy(other_map.astype(np.int64)) == segment_id, box, g
            )
        except (SampleUnreadable, ValueError) as err:
            logger.warning(
                "The reference of %s for %s could not be cut from %s (%s); it is cut from %s itself.",
                person.identity,
                image_id,
                other_id,
                err,
                image_id,
            )
            return None

    def tokenize(self, text: str, num_people: int) -> TokenizedPrompt:
        """Tokenizes, dropping the last people when the caption is too long to keep their class nouns."""
        try:
            return tokenize_prompt(self.tokenizer, text, self.placeholder)
        except ValueError:
            if num_people == 0:
                raise
        # A person beyond the token limit: keep the people that fit, as text.
        parts = text.split(self.placeholder)
        for keep in range(num_people - 1, -1, -1):
            shorter = self.placeholder.join(parts[: keep + 1]) + "".join(parts[keep + 1 :])
            try:
                return tokenize_prompt(self.tokenizer, shorter, self.placeholder)
            except ValueError:
                continue
        raise SampleUnreadable("the caption cannot be tokenized")


def size_ids(width: int, height: int, size: int) -> list[int]:
    """SDXL's ``time_ids`` of a ``width x height`` image under :func:`target_geometry`: original ``(h, w)``, the centre
    crop's ``(top, left)`` in the image resized to a short side of ``size`` (the same after a flip: the crop is
    centred), target ``(size, size)``."""
    new_w, new_h = short_side_size(width, height, size)
    return [height, width, (new_h - size) // 2, (new_w - size) // 2, size, size]


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks samples; people of all images are flattened in order, with ``subject_positions`` ``(N, 2)`` holding
    ``(batch index, token index)`` for :class:`~facediffuser.models.SubjectFuser`."""
    positions = [[b, int(t)] for b, s in enumerate(samples) for t in s["subject_token_indices"]]
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "input_ids": torch.stack([s["input_ids"] for s in samples]),
        "subject_pixels": torch.cat([s["subject_pixels"] for s in samples]),
        "subject_masks": torch.cat([s["subject_masks"] for s in samples]),
        **({"head_masks": torch.cat([s["head_masks"] for s in samples])} if "head_masks" in samples[0] else {}),
        **{k: torch.stack([s[k] for s in samples]) for k in ("input_ids_2", "time_ids") if k in samples[0]},
        "subject_positions": torch.tensor(positions, dtype=torch.long).reshape(-1, 2),
        "captions": [s["caption"] for s in samples],
        "image_ids": [s["image_id"] for s in samples],
        "skipped": [i for s in samples for i in s["skipped"]],
        "flawed": [i for s in samples for i in s["flawed"]],
    }


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a fresh permutation per epoch, the same on every process for a given seed.

    Call :meth:`set_epoch` before iterating an epoch.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        for index in order:
            yield (self.epoch, index)
