"""Image geometry and augmentations for training, in PIL and torch only (no torchvision).

Two pipelines (paper Sec. 4.1; docs/method.md, Training):

- the **target** image and its segmentation map share one geometry: the short side resized to the training
  resolution, a random horizontal flip, then a centre crop (or a pad when a side falls short);
- each **reference crop** (one person, background replaced by noise, cropped to its box) goes through random
  zoom-in, pad to square, resize, random rotation, colour jitter, gaussian blur, grayscale, horizontal flip and an
  elastic warp, each with its own probability.

Images are ``(3, H, W)`` float tensors in ``[0, 1]``; randomness comes from an explicit ``torch.Generator`` so a
sample is a pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..fusion import gaussian_blur as blur
from ..images import pil_to_tensor

# ITU-R BT.601 luma weights, as PIL's "L" conversion uses.
LUMA = (0.299, 0.587, 0.114)


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _chance(generator: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=generator)) < p


# ----------------------------------------------------------------------------- target geometry
def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(W', H')`` of a ``width x height`` image with its short side resized to ``size`` (each side >= ``size``)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def resize_map(segmap: np.ndarray, width: int, height: int) -> torch.Tensor:
    """A 2-D integer map resized nearest to ``height x width``, as a long tensor."""
    seg = torch.from_numpy(np.ascontiguousarray(segmap).astype(np.int64))
    return F.interpolate(seg[None, None].double(), size=(height, width), mode="nearest-exact")[0, 0].long()


def resize_short_side(image: Image.Image, segmap: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resizes so the short side is ``size``: the image bilinear (antialiased), the map nearest.

    Returns ``(3, H', W')`` in ``[0, 1]`` and the ``(H', W')`` long map.
    """
    if segmap.shape != (image.height, image.width):
        raise ValueError(
            f"The segmentation map is {segmap.shape[0]}x{segmap.shape[1]} but the image is "
            f"{image.height}x{image.width}."
        )
    new_w, new_h = short_side_size(image.width, image.height, size)
    pixels = pil_to_tensor(image.resize((new_w, new_h), Image.Resampling.BILINEAR))
    return pixels, resize_map(segmap, new_w, new_h)


def center_crop_or_pad(x: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Centre-crops the last two dims of ``x`` to ``size x size``, padding with ``fill`` where a side is short."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, size - h), max(0, size - w)
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def target_geometry(image: Image.Image, segmap: np.ndarray, size: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The target image in ``[-1, 1]`` ``(3, size, size)`` and its map ``(size, size)`` under the same geometry.

    Padded map pixels get the id ``-1`` (no segment).
    """
    pixels, seg = resize_short_side(image, segmap, size)
    if flip:
        pixels, seg = pixels.flip(-1), seg.flip(-1)
    pixels = center_crop_or_pad(pixels, size, fill=0.5)
    seg = center_crop_or_pad(seg, size, fill=-1)
    return pixels * 2.0 - 1.0, seg


def map_geometry(segmap: np.ndarray, size: int, flip: bool) -> torch.Tensor:
    """Another map of the same image under :func:`target_geometry`'s geometry (the same resize, flip and crop), with
    ``-1`` where padded: e.g. the people's head regions beside their segments."""
    height, width = segmap.shape
    seg = resize_map(segmap, *short_side_size(width, height, size))
    if flip:
        seg = seg.flip(-1)
    return center_crop_or_pad(seg, size, fill=-1)


# ----------------------------------------------------------------------------- reference crop
def noise_background_crop(
    image: torch.Tensor, mask: torch.Tensor, bbox: tuple[float, float, float, float], generator: torch.Generator
) -> torch.Tensor:
    """One person's reference: pixels outside ``mask`` become uniform noise, then the ``[x1, y1, x2, y2]`` box is cut.

    Raises:
        ValueError: the box is empty once clipped to the image.
    """
    _, h, w = image.shape
    x1, y1, x2, y2 = bbox
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(w, math.ceil(x2)), min(h, math.ceil(y2))
    if right <= left or bottom <= top:
        raise ValueError(f"The box {list(bbox)} is empty inside a {w}x{h} image.")
    noise = torch.rand(image.shape, generator=generator)
    out = torch.where(mask.bool().unsqueeze(0), image, noise)
    return out[:, top:bottom, left:right]


def random_zoom_in(x: torch.Tensor, generator: torch.Generator, max_zoom: float = 2.0) -> torch.Tensor:
    """Cuts a window ``1/s`` of each side (``s ~ U[1, max_zoom]``) at a random place: a zoom of ``s``."""
    _, h, w = x.shape
    s = _uniform(generator, 1.0, max_zoom)
    ch, cw = max(1, round(h / s)), max(1, round(w / s))
    top = int(torch.randint(0, h - ch + 1, (), generator=generator))
    left = int(torch.randint(0, w - cw + 1, (), generator=generator))
    return x[:, top : top + ch, left : left + cw]


def pad_to_square(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Pads the short side evenly on both ends."""
    _, h, w = x.shape
    side = max(h, w)
    return center_crop_or_pad(x, side, fill)


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize to ``size x size``."""
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Samples ``x (3, H, W)`` at ``grid (H, W, 2)`` (normalized xy), zeros outside."""
    return F.grid_sample(x[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _identity_grid(h: int, w: int) -> torch.Tensor:
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)  # (H, W, 2)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotates about the centre by ``degrees`` (counter-clockwise), filling with black."""
    _, h, w = x.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    grid = _identity_grid(h, w)
    px, py = grid[..., 0] * w / 2, grid[..., 1] * h / 2  # pixel offsets from the centre
    src_x = cos * px - sin * py
    src_y = sin * px + cos * py
    return _warp(x, torch.stack([src_x / (w / 2), src_y / (h / 2)], dim=-1))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma, repeated on the three channels."""
    weights = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
    return (x * weights).sum(0, keepdim=True).expand_as(x).clone()


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each scaled by a factor in ``[1 - s, 1 + s]``, in random order."""
    for k in torch.randperm(3, generator=generator).tolist():
        factor = _uniform(generator, max(0.0, 1 - strength), 1 + strength)
        if k == 0:
            x = x * factor
        elif k == 1:
            mean = grayscale(x).mean()
            x = (x - mean) * factor + mean
        else:
            gray = grayscale(x)
            x = (x - gray) * factor + gray
        x = x.clamp(0.0, 1.0)
    return x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of ``(C, H, W)`` with replicated borders, 3 sigma (at least 1 pixel) each side."""
    radius = max(1, math.ceil(3 * sigma))
    return blur(x[None], 2 * radius + 1, sigma, "replicate")[0]


def elastic(x: torch.Tensor, alpha: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Elastic warp: a uniform random displacement field, smoothed with ``sigma`` pixels, scaled to ``alpha`` pixels."""
    _, h, w = x.shape
    field = torch.rand(2, h, w, generator=generator) * 2 - 1
    field = gaussian_blur(field, sigma) * alpha  # (2, H, W) pixels
    grid = _identity_grid(h, w)
    offset = torch.stack([field[0] * 2 / w, field[1] * 2 / h], dim=-1)
    return _warp(x, grid + offset)


@dataclass(frozen=True)
class ReferenceAugmentation:
    """The reference-crop augmentations of FastComposer's recipe (docs/method.md, Training), with probabilities.

    Blur and elastic strengths are fractions of the output side, so a 224 px crop gets a blur sigma in
    ``[0.1, 2]`` px and an elastic warp of alpha 50 px / sigma 5 px (the usual defaults), and smaller encoders get
    the same look.
    """

    zoom_prob: float = 0.5
    max_zoom: float = 2.0
    rotate_prob: float = 0.75
    rotate_degrees: float = 30.0
    jitter_prob: float = 0.5
    jitter_strength: float = 0.5
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1 / 224, 2.0 / 224)
    grayscale_prob: float = 0.1
    flip_prob: float = 0.5
    elastic_prob: float = 0.5
    elastic_alpha: float = 50.0 / 224
    elastic_sigma: float = 5.0 / 224

    def __call__(self, crop: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        """``(3, h, w)`` crop in ``[0, 1]`` -> ``(3, size, size)`` augmented."""
        x = crop
        if _chance(generator, self.zoom_prob):
            x = random_zoom_in(x, generator, self.max_zoom)
        x = resize_square(pad_to_square(x), size)
        if _chance(generator, self.rotate_prob):
            x = rotate(x, _uniform(generator, -self.rotate_degrees, self.rotate_degrees))
        if _chance(generator, self.jitter_prob):
            x = color_jitter(x, self.jitter_strength, generator)
        if _chance(generator, self.blur_prob):
            x = gaussian_blur(x, _uniform(generator, *self.blur_sigma) * size)
        if _chance(generator, self.grayscale_prob):
            x = grayscale(x)
        if _chance(generator, self.flip_prob):
            x = x.flip(-1)
        if _chance(generator, self.elastic_prob):
            x = elastic(x, self.elastic_alpha * size, max(self.elastic_sigma * size, 0.5), generator)
        return x.clamp(0.0, 1.0)


def plain_reference(crop: torch.Tensor, size: int) -> torch.Tensor:
    """The un-augmented reference (validation): pad to square, resize."""
    return resize_square(pad_to_square(crop), size).clamp(0.0, 1.0)
