"""``facediffuser world build``: the whole world in stages, seeded and resumable per stage.

Stages, in order (each writes under ``--out`` and a marker ``stages/<stage>.json`` with its settings and wall time):

- ``identities``: ``world.json``, the people, their features and the split into training and held-out people;
- ``scenes``, ``portraits``: the two data sets in the FFHQ-wild layout (train split: training people only; test
  split: held-out people only);
- ``references``: subject folders of the held-out people (``facediffuser evaluate --data``);
- ``clip``: the world's CLIP (``clip/``, a transformers folder), trained on both train splits;
- ``faces``: the face detector and identity embedder (``faces/detector``, ``faces/embedder``);
- ``report``: the held-out figures (``report/metrics.json`` and plots).

A stage whose marker holds the same settings, and whose input stages were not rebuilt after it, is skipped; one
built with other settings is refused unless it is named in ``redo``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ...io.output_folders import check, claim, own
from ...io.outputs import atomic_write
from ..stages import StageBook, changed_keys
from ..stages import marker_path as marker_path  # (where the world's markers lie, for scripts)
from .attributes import Identity, load_people, make_identities, split_identities

logger = logging.getLogger(__name__)

STAGES = ("identities", "scenes", "portraits", "references", "clip", "faces", "report")


def _f(help_text: str) -> dict:
    return {"help": help_text}


@dataclass
class WorldConfig:
    """Settings of ``facediffuser world``: one dataclass, the source of the flags."""

    out: Path = field(metadata=_f("folder of the world (data sets, references, networks, figures)"))
    seed: int = field(default=0, metadata=_f("seed of everything: people, renders, training"))
    size: int = field(default=64, metadata=_f("side of the rendered images in pixels"))
    identities: int = field(default=1200, metadata=_f("people in the world (at most 1296)"))
    heldout: int = field(default=200, metadata=_f("people held out of every training set"))
    scenes_train: int = field(default=12000, metadata=_f("training images of the `scenes` data set (TDM)"))
    scenes_test: int = field(default=600, metadata=_f("test images of `scenes` (held-out people)"))
    portraits_train: int = field(default=6000, metadata=_f("training images of the `portraits` data set (SDM)"))
    portraits_test: int = field(default=600, metadata=_f("test images of `portraits` (held-out people)"))
    references_per_person: int = field(default=3, metadata=_f("reference photos per held-out person"))
    clip_steps: int = field(default=4000, metadata=_f("training steps of the world's CLIP"))
    clip_batch: int = field(default=64, metadata=_f("images per CLIP step"))
    detector_steps: int = field(default=1000, metadata=_f("training steps of the face detector"))
    embedder_steps: int = field(default=1000, metadata=_f("training steps of the identity embedder"))
    threads: int = field(default=1, metadata=_f("torch threads (the machine may be shared)"))
    redo: list[str] = field(default_factory=list, metadata=_f("stages to rebuild even when already built"))

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("scenes_train", "portraits_train", "clip_steps", "clip_batch", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        for name in ("scenes_test", "portraits_test", "references_per_person", "detector_steps", "embedder_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}.")
        unknown = sorted(set(self.redo) - set(STAGES))
        if unknown:
            raise ValueError(f"Unknown stage(s) {unknown} in --redo; the stages are {', '.join(STAGES)}.")
        if self.size < 16 or self.size % 8:
            raise ValueError(f"--size must be a multiple of 8 and at least 16, got {self.size}.")
        split_identities(self.identities, self.heldout, self.seed)  # validates the counts
        if self.identities > 1296:
            raise ValueError(f"The world has at most 1296 distinct people, got --identities {self.identities}.")


DATA_KEYS = ("seed", "identities", "heldout", "size")
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "identities": ("seed", "identities", "heldout"),
    "scenes": (*DATA_KEYS, "scenes_train", "scenes_test"),
    "portraits": (*DATA_KEYS, "portraits_train", "portraits_test"),
    "references": (*DATA_KEYS, "references_per_person"),
    "clip": (*DATA_KEYS, "scenes_train", "portraits_train", "clip_steps", "clip_batch"),
    "faces": (*DATA_KEYS, "scenes_train", "portraits_train", "detector_steps", "embedder_steps"),
}
STAGE_KEYS["report"] = tuple(dict.fromkeys(k for keys in STAGE_KEYS.values() for k in keys)) + (
    "scenes_test",
    "portraits_test",
    "references_per_person",
)


# stage -> the stages whose output it reads; a stage is rebuilt when one of them was rebuilt after it
DEPENDS: dict[str, tuple[str, ...]] = {
    "identities": (),
    "scenes": ("identities",),
    "portraits": ("identities",),
    "references": ("identities",),
    "clip": ("scenes", "portraits"),
    "faces": ("scenes", "portraits"),
    "report": ("references", "clip", "faces"),
}

# stage -> what it writes in --out (``name/``: a whole sub-folder); every stage also writes its marker in stages/
ENTRIES: dict[str, tuple[str, ...]] = {
    "identities": ("world.json",),
    "scenes": ("scenes/",),
    "portraits": ("portraits/",),
    "references": ("references/",),
    "clip": ("clip/",),
    "faces": ("faces/",),
    "report": ("report/",),
}
COMMAND = "world"  # the command named in the folder's marker (see facediffuser.io.output_folders)
LEGACY = tuple(f"stages/{s}.json" for s in STAGES)  # a world folder written before the marker existed


def stage_settings(config: WorldConfig, stage: str) -> dict[str, Any]:
    return {k: getattr(config, k) for k in STAGE_KEYS[stage]}


def _refuse(config: WorldConfig, stage: str, recorded: dict[str, Any], wanted: dict[str, Any], what: str) -> None:
    raise ValueError(
        f"Stage {stage!r} of {config.out} was built with other settings ({', '.join(changed_keys(recorded, wanted))}). "
        f"Rebuild it with --redo {stage} (its files are overwritten), or build into another --out."
    )


def stage_book(config: WorldConfig) -> StageBook:
    """The bookkeeping of the world's stages in ``--out`` (:mod:`facediffuser.lab.stages`)."""
    return StageBook(
        out=config.out,
        label="world",
        refuse=lambda *args: _refuse(config, *args),
        marker_hint=lambda stage: f"rebuild the stage with --redo {stage}",
        depends=DEPENDS,
    )


def stage_done(config: WorldConfig, stage: str) -> bool:
    """Whether ``stage`` is built with these settings; ``ValueError`` when it was built with others."""
    state = stage_book(config).state(stage, stage_settings(config, stage), redo=stage in config.redo)
    if state == "stale":
        logger.info("world %s: a stage it reads was rebuilt since, rebuilding", stage)
    return state == "done"


def world_settings(out: Path) -> dict[str, Any]:
    """What the world in ``out`` was built with: the settings of the stages a model trained on it reads (its data
    sets and its CLIP), from their markers; empty for a world without markers."""
    book = StageBook(
        out=out,
        label="world",
        refuse=lambda *args: None,
        marker_hint=lambda stage: f"rebuild the world's {stage} with `facediffuser world build --redo {stage}`",
    )
    settings: dict[str, Any] = {}
    for stage in ("scenes", "portraits", "clip"):
        marker = book.read_marker(stage)
        settings.update(marker["settings"] if marker is not None else {})
    return dict(sorted(settings.items()))


def clip_sha256(folder: Path) -> str | None:
    """sha256 of the CLIP in ``folder`` as ``mini ship`` stores it: each tensor by name, its floating-point values
    rounded to float16 (so the float32 CLIP of a world folder and its shipped float16 copy hash alike, as
    ``mini build --from`` compares them); ``None`` when the folder holds no CLIP."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors")) if (folder / "config.json").is_file() else []
    if not files:
        return None
    tensors = {k: v for path in files for k, v in load_file(path).items()}
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key]
        value = value.to(torch.float16) if value.is_floating_point() else value
        digest.update(f"{key}\0{value.dtype}\0{list(value.shape)}\0".encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def world_record(out: Path) -> dict[str, Any]:
    """The world in ``out`` by what it is, not where it lies: its settings (:func:`world_settings`) and the sha256 of
    its CLIP (:func:`clip_sha256`). What a model trained on it records of it (``mini build``'s stage settings)."""
    return {"settings": world_settings(out), "clip_sha256": clip_sha256(out / "clip")}


# ------------------------------------------------------------------------------------------------------ people
def build_identities(config: WorldConfig) -> None:
    people = make_identities(config.identities, config.seed)
    split = split_identities(config.identities, config.heldout, config.seed)
    data = {"seed": config.seed, "split": split, "people": [p.to_dict() for p in people]}
    (path,) = own(config.out, "world.json", command=COMMAND)
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), overwrite=True)


def split_people(config: WorldConfig) -> dict[str, list[Identity]]:
    people, split = load_people(config.out)
    return {"train": [people[i] for i in split["train"]], "test": [people[i] for i in split["heldout"]]}


def build_data(config: WorldConfig, name: str) -> None:
    from .data import write_dataset

    counts = {"train": getattr(config, f"{name}_train"), "test": getattr(config, f"{name}_test")}
    write_dataset(config.out / name, name, split_people(config), counts, seed=config.seed, size=config.size)


def build_references(config: WorldConfig) -> None:
    from .data import write_references

    heldout = split_people(config)["test"]
    write_references(
        config.out / "references", heldout, seed=config.seed, size=config.size, per_person=config.references_per_person
    )


# -------------------------------------------------------------------------------------------------- networks
def read_train(config: WorldConfig) -> list:
    from .data import read_samples

    samples = []
    for name in ("scenes", "portraits"):
        samples += read_samples(config.out / name, "train", progress=True)
    return samples


def build_clip_stage(config: WorldConfig) -> None:
    from .clip import ClipSettings, train_clip

    samples = read_train(config)
    images = np.stack([s.image for s in samples])
    settings = ClipSettings(steps=config.clip_steps, batch_size=config.clip_batch, seed=config.seed)
    train_clip(images, [s.data["attributes"] for s in samples], config.out / "clip", settings)


def build_faces_stage(config: WorldConfig) -> None:
    from .faces import FaceSettings, at_detector_size, train_detector, train_embedder

    samples = read_train(config)
    settings = FaceSettings(
        detector_steps=config.detector_steps, embedder_steps=config.embedder_steps, seed=config.seed
    )
    images, boxes = at_detector_size(samples)
    train_detector(images, boxes, config.out / "faces" / "detector", settings)
    faces, identities = [], []
    for k, s in enumerate(samples):
        for p in s.data["attributes"]["people"]:
            faces.append((k, p["face_box"]))
            identities.append(int(p["identity"]))
    train_embedder([s.image for s in samples], faces, identities, config.out / "faces" / "embedder", settings)


def build_report(config: WorldConfig) -> None:
    from .report import write_report

    write_report(config.out)


BUILDERS: dict[str, Callable[[WorldConfig], None]] = {
    "identities": build_identities,
    "scenes": lambda c: build_data(c, "scenes"),
    "portraits": lambda c: build_data(c, "portraits"),
    "references": build_references,
    "clip": build_clip_stage,
    "faces": build_faces_stage,
    "report": build_report,
}


def check_output(config: WorldConfig) -> None:
    """Everything ``run_stages`` could refuse, before anything is written: the folder (a new or empty one, or a world
    folder; never one of a user's), and each stage's recorded settings."""
    check(config.out, command=COMMAND, legacy=LEGACY)


def run_stages(config: WorldConfig, stages: Sequence[str] = STAGES) -> dict[str, float]:
    """Runs the named stages in order (skipping those already built); returns the wall seconds of each run.

    ``--out`` is claimed (:func:`facediffuser.io.output_folders.claim`) only once every check has passed, and each stage
    writes only the entries it owns there."""
    import torch

    check_output(config)
    for stage in stages:  # a stage built with other settings is refused before anything is written
        stage_done(config, stage)
    if "identities" not in stages and not (config.out / "world.json").is_file():
        raise FileNotFoundError(
            f"{config.out} has no world.json: run `facediffuser world build --out {config.out}` (or the "
            "`identities` stage) first."
        )
    claim(config.out, command=COMMAND, legacy=LEGACY, entries=[*(e for v in ENTRIES.values() for e in v), "stages/"])
    torch.set_num_threads(config.threads)
    return stage_book(config).run(
        stages,
        {stage: stage_settings(config, stage) for stage in stages},
        build=lambda stage: BUILDERS[stage](config),
        own=lambda stage: own(config.out, *ENTRIES[stage], "stages/", command=COMMAND),
        redo=config.redo,
    )


def config_fields() -> list[str]:
    return [f.name for f in fields(WorldConfig)]


def config_dict(config: WorldConfig) -> dict[str, Any]:
    data = asdict(config)
    data["out"] = str(config.out)
    return data
