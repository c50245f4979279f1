"""Pictures of the fusion masks: who drew what, step by step (paper Fig. 9), and the words that go with them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..fusion import REGION_THRESHOLD, Stage
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


# ------------------------------------------------------------------ person regions (docs/method.md, Person regions)
# One colour per person, in placeholder order (distinct on white and on each other, and for the common colour
# blindnesses between the first two); a position assigned to no one is dark gray.
PERSON_COLOURS = ((230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (70, 200, 200))
NO_ONE_COLOUR = (64, 64, 64)
COLOUR_NAMES = ("red", "blue", "green", "orange", "purple", "teal")


def regions_shown(people: int, settings, num_steps: int | None = None) -> bool:
    """Whether ``generate --save-masks`` draws the person regions of a call: with two or more people, or one person
    and a region option on (``settings.uses_regions``), when the call has a stage I to read them in. One person
    without an option draws no regions picture, so its outputs are those of the paper's sampling."""
    from ..fusion import stage_boundaries
    from ..settings import DEFAULT_STEPS

    # ``num_steps``: the model's own when the settings leave the steps to it (None: a model that names none, 50)
    steps = (settings.num_inference_steps or DEFAULT_STEPS) if num_steps is None else num_steps
    has_stage_one = stage_boundaries(steps, settings.alpha, settings.beta)[0] > 0
    return has_stage_one and (people >= 2 or (people >= 1 and settings.uses_regions))


def person_nouns(prompt: str, placeholder: str) -> list[str]:
    """The word before each placeholder of ``prompt`` (each person's class noun), in order."""
    words = []
    for segment in prompt.split(placeholder)[:-1]:
        tail = segment.split()
        words.append(tail[-1] if tail else "")
    return words


def person_colour(k: int) -> tuple[int, int, int]:
    return PERSON_COLOURS[k % len(PERSON_COLOURS)]


def _tile(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size``: enlarged with sharp pixels (NEAREST), reduced smoothly (BICUBIC)."""
    image = image.convert("RGB")
    smaller = image.width > size[0] or image.height > size[1]
    return image.resize(size, Image.Resampling.BICUBIC if smaller else Image.Resampling.NEAREST)


def _soft_region(values: torch.Tensor, colour: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    """A ``(h, w)`` soft region from white (0) to ``colour`` (the map's peak), enlarged with NEAREST."""
    values = values.float()
    peak = float(values.max()) if values.numel() else 0.0
    share = (values / peak).clamp(0, 1).numpy() if peak > 0 else np.zeros(tuple(values.shape))
    white = np.array([255.0, 255.0, 255.0])
    pixels = white * (1 - share[..., None]) + np.array(colour, dtype=np.float64) * share[..., None]
    tile = Image.fromarray(np.round(pixels).astype(np.uint8), mode="RGB")
    return tile.resize(size, Image.Resampling.NEAREST)


def _assignment_colours(assignment: torch.Tensor) -> np.ndarray:
    """``(h, w)`` person index (``-1``: no one) -> ``(h, w, 3)`` uint8 colours."""
    who = assignment.numpy()
    pixels = np.empty((*who.shape, 3), dtype=np.uint8)
    pixels[:] = NO_ONE_COLOUR
    for k in range(int(who.max()) + 1 if who.size else 0):
        pixels[who == k] = person_colour(k)
    return pixels


def region_picture(
    trace: FusionTrace,
    index: int = 0,
    image: Image.Image | None = None,
    names: list[str] | None = None,
    cell: int = 128,
) -> Image.Image:
    """The person regions of image ``index`` in one row of tiles, each captioned underneath: the image (when given);
    each person's soft region, white to the person's colour at its peak; the hard assignment (each position in its
    person's colour, dark gray: no one); the image with the assigned positions tinted by their person's colour.
    Latent maps and small images are enlarged with NEAREST, so each latent position is a visible square (a 32 px
    image and its 16 x 16 latent read at ``cell = 128``). ``names``: each person's class noun, for the captions."""
    from PIL import ImageFont

    if trace.regions is None or trace.region_assignment is None:
        raise ValueError("This fusion trace holds no person regions (no stage I, or no person in the prompt).")
    regions = trace.regions[index]  # (K, h, w)
    assignment = trace.region_assignment[index]  # (h, w)
    people, (h, w) = regions.shape[0], regions.shape[-2:]
    size = (cell, max(1, round(cell * h / w)))
    font = ImageFont.load_default()
    caption, band, gap = 14, 6, 4
    tiles: list[tuple[Image.Image, str, tuple[int, int, int]]] = []
    if image is not None:
        tiles.append((_tile(image, size), "image", (0, 0, 0)))
    for k in range(people):
        noun = names[k] if names and k < len(names) and names[k] else ""
        label = f"person {k + 1}" + (f": {noun}" if noun else "")
        if not float(regions[k].max()) > 0:
            label += " (none)"
        tiles.append((_soft_region(regions[k], person_colour(k), size), label, person_colour(k)))
    colours = _assignment_colours(assignment)
    assigned = Image.fromarray(colours, mode="RGB").resize(size, Image.Resampling.NEAREST)
    tiles.append((assigned, "assigned", (0, 0, 0)))
    if image is not None:
        base = _tile(image, size)
        tint = Image.fromarray(colours, mode="RGB").resize(size, Image.Resampling.NEAREST)
        inside = Image.fromarray(((assignment.numpy() >= 0) * 128).astype(np.uint8), mode="L")
        tiles.append(
            (Image.composite(tint, base, inside.resize(size, Image.Resampling.NEAREST)), "on the image", (0, 0, 0))
        )
    canvas = Image.new("RGB", (len(tiles) * (size[0] + gap) - gap, band + size[1] + caption), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label, colour) in enumerate(tiles):
        x = i * (size[0] + gap)
        if colour != (0, 0, 0):
            draw.rectangle([x, 0, x + size[0] - 1, band - 2], fill=colour)
        canvas.paste(tile, (x, band))
        draw.rectangle([x, band, x + size[0] - 1, band + size[1] - 1], outline=(160, 160, 160))
        draw.text((x + 2, band + size[1] + 2), label, fill=colour, font=font)
    return canvas


def region_description(
    trace: FusionTrace, index: int = 0, image_name: str | None = None, names: list[str] | None = None
) -> str:
    """What a :func:`region_picture` shows, in words, with the share of the positions assigned to each person: for
    the PNG's ``Description`` chunk."""
    assignment = trace.region_assignment[index]
    people = trace.regions.shape[1]
    total = max(1, assignment.numel())
    parts = []
    for k in range(people):
        noun = f" ({names[k]})" if names and k < len(names) and names[k] else ""
        share = float((assignment == k).sum()) / total
        parts.append(f"person {k + 1}{noun} in {COLOUR_NAMES[k % len(COLOUR_NAMES)]}, {share:.0%} of the positions")
    nobody = float((assignment < 0).sum()) / total
    of = f" of {image_name}" if image_name else ""
    return (
        f"Person regions{of}, read from the scene model's (TDM) stage-I cross-attention to each person's class noun. "
        "Tiles: the image; each person's soft region, from white (none) to the person's colour (its peak); the hard "
        "assignment, each latent position in the colour of the person whose region is strongest there (dark gray: "
        f"no one, below {REGION_THRESHOLD:g} of every peak); the image tinted by the assignment. "
        f"Assigned: {'; '.join(parts)}; no one {nobody:.0%}."
    )
