"""Pictures of the fusion masks: who drew what, step by step (paper Fig. 9)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .fusion import Stage
from .pipeline import FusionTrace

STAGE_COLOURS = {Stage.TEXT: (66, 135, 245), Stage.FUSION: (245, 166, 35), Stage.SUBJECT: (214, 48, 49)}


def _gray(tile: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    arr = (tile.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr, mode="L").resize(size, Image.Resampling.NEAREST)


def mask_strip(trace: FusionTrace, index: int = 0, image: Image.Image | None = None, cell: int = 48) -> Image.Image:
    """One row of per-step masks for image ``index`` (white: the SDM drew there), each under a band coloured by
    stage (blue I, orange II, red III); last, the image with stage II's mean mask tinted red, when given."""
    masks = trace.masks[:, index]  # (T, h, w)
    h, w = masks.shape[-2:]
    cw, ch = cell, max(1, round(cell * h / w))
    band = 6
    columns = len(trace.stages) + (image is not None)
    canvas = Image.new("RGB", (columns * (cw + 2), ch + band + 2), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, stage in enumerate(trace.stages):
        x = i * (cw + 2)
        draw.rectangle([x, 0, x + cw - 1, band - 1], fill=STAGE_COLOURS[stage])
        canvas.paste(_gray(masks[i], (cw, ch)).convert("RGB"), (x, band + 1))
    if image is not None:
        mean = trace.stage_mean(Stage.FUSION)[index]
        mean = torch.nan_to_num(mean, nan=0.0)
        base = image.convert("RGB").resize((cw, ch), Image.Resampling.BICUBIC)
        tint = Image.new("RGB", (cw, ch), (255, 0, 0))
        alpha = _gray(mean * 0.6, (cw, ch))
        canvas.paste(Image.composite(tint, base, alpha), (len(trace.stages) * (cw + 2), band + 1))
    return canvas
