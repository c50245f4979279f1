"""Reading reference photos safely and preparing them for the CLIP vision tower (PIL and torch only)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageInput = Image.Image | str | os.PathLike

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Reference photos only feed a 224 px encoder: larger ones are shrunk on load to keep memory bounded.
MAX_REFERENCE_SIDE = 2048
# Refuse images whose header claims more pixels than this (PIL's decompression-bomb guard, made explicit).
MAX_PIXELS = 200_000_000


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode: transparency is composited on white, 16/32-bit gray is rescaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if image.mode == "F" and arr.max() <= 1.0:
            hi = 1.0
        arr = np.clip(arr / hi * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: ImageInput, *, max_side: int | None = MAX_REFERENCE_SIDE) -> Image.Image:
    """Opens a path (or takes a PIL image) and returns an RGB image, honouring EXIF orientation.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image, or is absurdly large.
    """
    if isinstance(image, Image.Image):
        img = image
        name = "the given image"
    else:
        path = Path(image)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"Reference image not found: {path}")
        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise ValueError(
                        f"{path} is {opened.width}x{opened.height} pixels, more than {MAX_PIXELS:,}: refusing to "
                        "decode it. Downscale it first."
                    )
                opened.load()
                img = ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as err:
            raise ValueError(f"{path} cannot be read as an image ({err}). Is the file corrupt or truncated?") from err
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{name} is empty ({img.width}x{img.height}).")
    img = to_rgb(img)
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder, sorted by name. Raises ``ValueError`` when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"The folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return files


def load_person(refs: ImageInput | Sequence[ImageInput]) -> list[Image.Image]:
    """All photos of one person: an image, a path, a folder of photos, or a list of images/paths."""
    if isinstance(refs, (str, os.PathLike)) and Path(refs).is_dir():
        refs = list_image_files(refs)
    elif not isinstance(refs, (list, tuple)):
        refs = [refs]
    if not refs:
        raise ValueError("A person was given an empty list of reference photos.")
    return [load_image(r) for r in refs]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` float in ``[0, 1]``."""
    arr = np.asarray(to_rgb(image), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def clip_preprocess(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """CLIP input for the subject encoder: ``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, 3, size, size)``.

    A bilinear, antialiased resize to ``size x size`` then CLIP normalization (REFERENCE section 1). The photo is not
    cropped: give face crops that are roughly square.
    """
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def prepare_reference_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images of any sizes -> ``(N, 3, size, size)`` normalized CLIP pixels."""
    return torch.cat([clip_preprocess(pil_to_tensor(img).unsqueeze(0), size) for img in images])
