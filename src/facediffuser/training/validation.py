"""Validation grids: a few held-out samples drawn with the real pipeline while a model trains.

Each row is ``target | references | generated``. The trained model draws alone (the SDM with ``alpha = beta = 0``,
the TDM with ``alpha = beta = 1``) with the :class:`~facediffuser.settings.SamplingSettings` that
:meth:`TrainConfig.validation_settings <facediffuser.training.config.TrainConfig.validation_settings>` builds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..images import CLIP_MEAN, CLIP_STD
from ..io.ffhq_wild import split_file
from ..pipeline import FaceDiffuserPipeline
from ..settings import SamplingSettings
from .config import ModelKind, TrainConfig
from .data import FFHQWild

logger = logging.getLogger(__name__)

# How many samples are read, per sample wanted, to find ones with a person.
SEARCH_FACTOR = 16


def pick_validation_samples(
    kind: ModelKind, config: TrainConfig, make_dataset: Callable[[str], FFHQWild]
) -> list[dict[str, Any]]:
    """Up to ``config.num_validation_samples`` un-augmented samples of the validation split (the training split when
    there is none); for the SDM only samples with a person. ``[]`` (with a warning) when none can serve."""
    split = config.validation_split
    if not split_file(config.data_root, split).is_file():
        logger.warning("No %s split in %s: validation samples come from %s.", split, config.data_root, config.split)
        split = config.split
    wanted = config.num_validation_samples
    picked: list[dict[str, Any]] = []
    try:
        dataset = make_dataset(split)
        for i in range(min(len(dataset), SEARCH_FACTOR * max(1, wanted))):
            if len(picked) >= wanted:
                break
            sample = dataset[i]
            if kind is ModelKind.TDM or len(sample["subject_token_indices"]):
                picked.append(sample)
    except ValueError as err:
        logger.warning("Validation grids are off: the %s split cannot serve (%s)", split, err)
        return []
    if not picked:
        logger.warning("No validation sample with a person was found; validation grids are off.")
    return picked


def clip_pixels_to_pil(pixels: torch.Tensor) -> Image.Image:
    """Undoes the CLIP normalization of one ``(3, S, S)`` reference."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    arr = ((pixels.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def target_to_pil(pixel_values: torch.Tensor) -> Image.Image:
    """A ``(3, R, R)`` training target in ``[-1, 1]`` as an image."""
    return Image.fromarray(((pixel_values.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy())


def make_grid(rows: list[list[Image.Image]], cell: int) -> Image.Image:
    """Rows of images, each resized into a ``cell x cell`` square, on a white canvas."""
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * cell, len(rows) * cell), "white")
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            grid.paste(img.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC), (j * cell, i * cell))
    return grid


@torch.no_grad()
def draw_validation_grid(
    pipe: FaceDiffuserPipeline,
    samples: list[dict[str, Any]],
    settings: SamplingSettings,
    *,
    resolution: int,
    seed: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Image.Image:
    """One row per sample: the target, its references, and the image ``pipe`` draws from its caption (sample ``k``
    with generator seed ``seed + k``)."""
    rows = []
    for k, sample in enumerate(samples):
        refs = [clip_pixels_to_pil(p) for p in sample["subject_pixels"]]
        with autocast():
            image = pipe(
                sample["caption"],
                reference_images=refs if refs else None,
                height=resolution,
                width=resolution,
                generator=torch.Generator(device=device).manual_seed(seed + k),
                **settings.pipeline_kwargs(),
            ).images[0]
        rows.append([target_to_pil(sample["pixel_values"]), *refs, image])
    return make_grid(rows, cell=min(resolution, 256))


def write_validation_grid(folder: Path, step: int, grid: Image.Image, captions: list[str]) -> Path:
    """Writes ``step-N.png`` and the captions beside it, ``step-N.txt``; returns the PNG's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.png"
    grid.save(path)
    (folder / f"step-{step:07d}.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return path
