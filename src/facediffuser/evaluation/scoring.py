"""Scoring of an evaluation's images (IP, PC and, for a benchmark that asks for attributes, their accuracy), with a
per-image score cache.

A score is cached under the SHA-256 of the image file, of what it is compared with (the reference photos for IP, the
text for PC) and of the scorer's settings (the backend's :meth:`~IdentityBackend.settings`, the CLIP model), so that
a rerun, an added method or an added model scores only what is new, and a changed scorer or calibration scores
everything again. The cache is a folder of JSON-lines files, one per scorer and process (``ip-<digest>-<rank>.jsonl``);
a line cut short by a killed run is skipped when read back. Attribute scores are cached the same way
(``attributes-<digest>-<rank>.jsonl``), keyed by the image, the case's attributes and the scorer's settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from tqdm.auto import tqdm

from ..prompting import strip_placeholders
from .cases import Person
from .clip_score import ClipScorer
from .identity import IdentityBackend
from .reports import ATTRIBUTE_COLUMNS, ATTRIBUTE_METRICS, ScoreRow
from .work import WorkUnit

logger = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    return sha256_bytes(json.dumps(value, sort_keys=True, default=str).encode())


def references_digest(people: Sequence[Person]) -> str:
    """Of the people's reference photos (file contents and crop boxes), in order."""
    parts = [[(sha256_bytes(photo.path.read_bytes()), photo.box) for photo in person.photos] for person in people]
    return sha256_json(parts)


def ip_fingerprint(backend: IdentityBackend) -> str:
    return sha256_json({"backend": backend.name, "settings": backend.settings()})[:16]


def pc_fingerprint(scorer: ClipScorer) -> str:
    return sha256_json({"clip": scorer.name, "size": scorer.image_size, "dtype": str(scorer.model.dtype)})[:16]


class ScoreCache:
    """Cached scores of one scorer: ``key -> value`` read from every process's file, new ones appended to this
    process's file.

    Args:
        folder: the cache folder (``None``: a cache that remembers nothing and writes nothing).
        kind: ``"ip"`` or ``"pc"``.
        fingerprint: the scorer's settings digest (see :func:`ip_fingerprint`, :func:`pc_fingerprint`).
        rank: this process's index, which names the file it appends to.
    """

    def __init__(self, folder: Path | None, kind: str, fingerprint: str, rank: int = 0):
        self.path = None if folder is None else folder / f"{kind}-{fingerprint}-{rank}.jsonl"
        self.values: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        if folder is not None and folder.is_dir():
            for part in sorted(folder.glob(f"{kind}-{fingerprint}-*.jsonl")):
                for line in part.read_text(encoding="utf-8").splitlines():
                    try:
                        record = json.loads(line)
                        self.values[record["key"]] = record["value"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line cut short by a killed run

    def get(self, key: str) -> Any | None:
        value = self.values.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "value": value}) + "\n")


@dataclass
class Scorers:
    """The scorers of a run and their caches; a scorer left ``None`` gives NaN scores.

    ``attribute_scorer`` (a benchmark's, e.g. :class:`facediffuser.lab.world.benchmark.MiniAttributeScorer`) has
    ``settings() -> dict`` and ``score(images, case) -> [{metric: value, ..., "predicted": {...}}]``.
    """

    ip_backend: IdentityBackend | None = None
    clip_scorer: ClipScorer | None = None
    cache_folder: Path | None = None
    rank: int = 0
    attribute_scorer: Any | None = None
    ip_cache: ScoreCache = field(init=False)
    pc_cache: ScoreCache = field(init=False)
    attribute_cache: ScoreCache = field(init=False)
    _references: dict[str, torch.Tensor | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        """Reads the caches: call it on every process before any process scores (and appends)."""
        ip_fp = ip_fingerprint(self.ip_backend) if self.ip_backend is not None else "none"
        pc_fp = pc_fingerprint(self.clip_scorer) if self.clip_scorer is not None else "none"
        attr_fp = sha256_json(self.attribute_scorer.settings())[:16] if self.attribute_scorer is not None else "none"
        self.ip_cache = ScoreCache(self.cache_folder, "ip", ip_fp, self.rank)
        self.pc_cache = ScoreCache(self.cache_folder, "pc", pc_fp, self.rank)
        self.attribute_cache = ScoreCache(self.cache_folder, "attributes", attr_fp, self.rank)

    def cache_counts(self) -> dict[str, dict[str, int]]:
        counts = {
            "ip": {"cached": self.ip_cache.hits, "computed": self.ip_cache.misses},
            "pc": {"cached": self.pc_cache.hits, "computed": self.pc_cache.misses},
        }
        if self.attribute_scorer is not None:
            counts["attributes"] = {"cached": self.attribute_cache.hits, "computed": self.attribute_cache.misses}
        return counts

    def score_attributes(self, unit: WorkUnit, paths: list[Path]) -> list[dict[str, Any]]:
        """Per image of ``unit``: the attribute scorer's metrics and ``predicted`` (empty dicts without a scorer or
        when the case asks for nothing)."""
        if self.attribute_scorer is None or not unit.case.attributes:
            return [{} for _ in paths]
        attributes = sha256_json(unit.case.attributes)
        keys = [f"{sha256_bytes(p.read_bytes())}:{attributes}" for p in paths]
        values: list[dict[str, Any] | None] = [self.attribute_cache.get(k) for k in keys]
        missing = [k for k, v in enumerate(values) if v is None]
        if missing:
            images = [PIL.Image.open(paths[k]).convert("RGB") for k in missing]
            for k, scored in zip(missing, self.attribute_scorer.score(images, unit.case)):
                stored = {m: (None if isinstance(v, float) and math.isnan(v) else v) for m, v in scored.items()}
                self.attribute_cache.put(keys[k], stored)
                values[k] = stored
        return [{m: (math.nan if v is None else v) for m, v in value.items()} for value in values]

    def _identities(self, people: Sequence[Person]) -> torch.Tensor | None:
        """``(P, D)`` reference identities, or ``None`` when some person's photos show no face."""
        identities = []
        for person in people:
            if person.name not in self._references:
                embedding = self.ip_backend.embed_reference([photo.load() for photo in person.photos])
                if embedding is None:
                    logger.warning(
                        "No face found in any reference photo of %r: its images get no IP score. Use photos where "
                        "the face is clearly visible.",
                        person.name,
                    )
                self._references[person.name] = embedding
            identities.append(self._references[person.name])
        return None if any(i is None for i in identities) else torch.stack(identities)

    def score_unit(self, unit: WorkUnit, paths: list[Path]) -> tuple[list[float], list[int], list[float]]:
        """``(IP, faces found, PC)`` of each image of ``unit``."""
        case = unit.case
        text = strip_placeholders(case.prompt)
        digests = [sha256_bytes(p.read_bytes()) for p in paths]
        images: dict[int, PIL.Image.Image] = {}

        def image(k: int) -> PIL.Image.Image:
            if k not in images:
                images[k] = PIL.Image.open(paths[k]).convert("RGB")
            return images[k]

        ip_values, face_counts = [math.nan] * len(paths), [0] * len(paths)
        if self.ip_backend is not None:
            references = references_digest(case.people)
            for k, digest in enumerate(digests):
                key = f"{digest}:{references}"
                cached = self.ip_cache.get(key)
                if cached is None:
                    identities = self._identities(case.people)
                    if identities is not None:
                        ip, faces = self.ip_backend.score(image(k), identities)
                    else:
                        ip, faces = math.nan, len(self.ip_backend.faces(image(k)))
                    cached = [None if math.isnan(ip) else ip, faces]
                    self.ip_cache.put(key, cached)
                ip_values[k] = math.nan if cached[0] is None else float(cached[0])
                face_counts[k] = int(cached[1])
        pc_values = [math.nan] * len(paths)
        if self.clip_scorer is not None:
            text_digest = sha256_bytes(text.encode())
            keys = [f"{digest}:{text_digest}" for digest in digests]
            missing = []
            for k, key in enumerate(keys):
                cached = self.pc_cache.get(key)
                if cached is None:
                    missing.append(k)
                else:
                    pc_values[k] = float(cached)
            if missing:
                for k, value in zip(
                    missing, self.clip_scorer.score([image(k) for k in missing], [text] * len(missing))
                ):
                    pc_values[k] = value
                    self.pc_cache.put(keys[k], value)
        return ip_values, face_counts, pc_values


def score_units(
    units: list[WorkUnit],
    out: Path,
    images_per_prompt: int,
    scorers: Scorers,
    *,
    generated: set[tuple[str, str]] | None = None,
) -> list[ScoreRow]:
    """One :class:`ScoreRow` per image of ``units``; a metric whose scorer is ``None`` is NaN."""
    rows = []
    rank = scorers.rank
    for unit in tqdm(units, desc=f"score [{rank}]", position=rank, leave=True):
        paths = unit.image_paths(out, images_per_prompt)
        ip_values, face_counts, pc_values = scorers.score_unit(unit, paths)
        attributes = scorers.score_attributes(unit, paths)
        case, variant = unit.case, unit.variant
        for k, path in enumerate(paths):
            accuracy = {ATTRIBUTE_COLUMNS[m]: float(attributes[k].get(m, math.nan)) for m in ATTRIBUTE_METRICS}
            predicted = attributes[k].get("predicted")
            rows.append(
                ScoreRow(
                    model=variant.model.name,
                    method=variant.label,
                    alpha=variant.method.alpha,
                    beta=variant.method.beta,
                    case_id=case.case_id,
                    group=case.group,
                    subjects=";".join(p.name for p in case.people),
                    prompt=case.prompt,
                    text=strip_placeholders(case.prompt),
                    image_index=k,
                    image=str(path.relative_to(out)),
                    ip=ip_values[k],
                    faces=face_counts[k],
                    pc=pc_values[k],
                    ip_backend=scorers.ip_backend.name if scorers.ip_backend is not None else "",
                    clip_model=scorers.clip_scorer.name if scorers.clip_scorer is not None else "",
                    rank=rank,
                    generated=unit.key in (generated or set()),
                    **accuracy,
                    predicted=json.dumps(predicted, sort_keys=True) if predicted else "",
                )
            )
    return rows
