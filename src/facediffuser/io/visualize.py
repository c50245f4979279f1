"""Pictures of the fusion masks: who drew what, step by step (paper Fig. 9), and the words that go with them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..fusion import Stage
from ..pipeline import FusionTrace

STAGE_COLOURS = {Stage.TEXT: (66, 135, 245), Stage.FUSION: (245, 166, 35), Stage.SUBJECT: (214, 48, 49)}


FLAT = 1e-3  # a map whose max - min is below this share of its mean level is drawn as flat


def map_to_image(values, *, stretch: bool, size: int | tuple[int, int] = 256) -> Image.Image:
    """A ``(h, w)`` map (array or tensor) as a gray image of ``size`` (pixels, or ``(width, height)``), NaN as black.

    ``stretch=False`` maps ``[0, 1]`` to ``[0, 255]`` (the SNF masks); ``stretch=True`` maps the map's own minimum to
    0 and its maximum to 255 (the saliency maps). A map whose spread is below :data:`FLAT` of its level is flat: it
    is drawn mid-gray rather than stretching rounding noise to full contrast.
    """
    values = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    finite = np.isfinite(values)
    if stretch and finite.any():
        low, high = values[finite].min(), values[finite].max()
        flat = high - low <= FLAT * np.abs(values[finite]).mean()
        values = np.full_like(values, 0.5) if flat else (values - low) / (high - low)
    values = np.where(finite, values, 0.0)
    pixels = np.clip(np.round(values * 255), 0, 255).astype(np.uint8)
    size = (size, size) if isinstance(size, int) else size
    return Image.fromarray(pixels, mode="L").resize(size, Image.Resampling.NEAREST)


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
        canvas.paste(map_to_image(masks[i], stretch=False, size=(cw, ch)).convert("RGB"), (x, band + 1))
    if image is not None:
        mean = trace.stage_mean(Stage.FUSION)[index]
        mean = torch.nan_to_num(mean, nan=0.0)
        base = image.convert("RGB").resize((cw, ch), Image.Resampling.BICUBIC)
        tint = Image.new("RGB", (cw, ch), (255, 0, 0))
        alpha = map_to_image(mean * 0.6, stretch=False, size=(cw, ch))
        canvas.paste(Image.composite(tint, base, alpha), (len(trace.stages) * (cw + 2), band + 1))
    return canvas


def mask_strip_description(trace: FusionTrace, image_name: str | None = None, with_image: bool = True) -> str:
    """What a :func:`mask_strip` shows, in words: for the PNG's ``Description`` chunk."""
    steps = len(trace.stages)
    spans = []
    for stage, colour, name in (
        (Stage.TEXT, "blue", "stage I, TDM only"),
        (Stage.FUSION, "orange", "stage II, fusion"),
        (Stage.SUBJECT, "red", "stage III, SDM only"),
    ):
        indices = [i + 1 for i, s in enumerate(trace.stages) if s is stage]
        if indices:
            spans.append(f"{colour}: {name} (steps {indices[0]}-{indices[-1]})")
    of = f" of {image_name}" if image_name else ""
    text = (
        f"Fusion masks{of}, one column per denoising step ({steps} steps): white where the subject model (SDM) drew, "
        f"black where the text model (TDM) drew. Bands: {'; '.join(spans)}."
    )
    if with_image:
        text += " Last column: the image, tinted red where stage II's mean mask gave it to the SDM."
    return text
