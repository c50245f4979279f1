"""World renders as arrays for the mini VAE: the train splits (training people) and the test splits (held-out)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DATASETS = ("scenes", "portraits")


def world_images(world: str | Path, split: str, size: int | None = None, names: Sequence[str] = DATASETS) -> np.ndarray:
    """uint8 (N, size, size, 3) images of ``split`` of the world's data sets, resized (PIL bilinear, as the trainer
    resizes on read) when ``size`` differs from the rendered side."""
    from ..world.data import read_samples

    world = Path(world)
    images = []
    for name in names:
        if not (world / name / f"image_ids_{split}.txt").is_file():
            raise FileNotFoundError(
                f"{world / name} has no {split} split: run `facediffuser world build --out {world}` first."
            )
        for sample in read_samples(world / name, split, progress=True):
            image = sample.image
            if size is not None and image.shape[0] != size:
                image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
            images.append(image)
    return np.stack(images)
