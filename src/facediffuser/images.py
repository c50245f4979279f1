"""Reading reference photos safely and preparing them for the CLIP vision tower (PIL and torch only)."""

from __future__ import annotations

import logging
import os
import warnings
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

# Reference photos only feed a 224 px encoder: a few megapixels is plenty. Accepted photos are shrunk on load to
# MAX_REFERENCE_SIDE; a file whose header promises more decoded pixel memory than MAX_DECODED_BYTES is refused before
# any pixel is decoded (a small, well-compressed PNG can unpack to gigabytes).
MAX_REFERENCE_SIDE = 2048
MAX_DECODED_BYTES = 100 * 2**20


def decoded_bytes_per_pixel(mode: str) -> int:
    """Memory per pixel of a decoded PIL image in ``mode``: PIL keeps every multi-band mode at 32 bits per pixel."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def check_decoded_size(name: str, size: tuple[int, int], mode: str, limit: int | None = None) -> None:
    """Raises ``ValueError`` when an image of ``size`` and ``mode`` would take more than ``limit`` bytes decoded."""
    limit = MAX_DECODED_BYTES if limit is None else limit
    width, height = size
    needed = width * height * decoded_bytes_per_pixel(mode)
    if needed > limit:
        raise ValueError(
            f"{name} is too large: {width}x{height} pixels ({mode}) would take {needed / 2**20:,.0f} MB of memory "
            f"once decoded, more than the {limit / 2**20:,.0f} MB allowed for a reference photo. The encoder sees "
            "224x224 pixels, so a photo of about 1024 pixels on its longer side is plenty: downscale it first."
        )


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


# Modes that PIL resizes without losing information (palette and bi-level images are converted first).
_RESIZABLE_MODES = ("L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F")


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """A new image at most ``max_side`` on its longer side (``image`` itself when it is small enough)."""
    width, height = image.size
    if max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def load_image(image: ImageInput, *, max_side: int | None = MAX_REFERENCE_SIDE) -> Image.Image:
    """Opens a path (or takes a PIL image) and returns an RGB image, honouring EXIF orientation.

    The file's header is read first: an image that would take more than :data:`MAX_DECODED_BYTES` once decoded is
    refused before decoding. A JPEG is decoded directly at a reduced scale when it is much larger than ``max_side``;
    the image is shrunk to ``max_side`` on its longer side before it is converted to RGB.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image, or is too large.
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
            with warnings.catch_warnings():  # PIL's bomb warning: the size check below decides, in words
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(path)
            with opened:
                if max_side is not None and opened.format == "JPEG" and max(opened.size) > max_side:
                    scale = max_side / max(opened.size)
                    opened.draft(None, (max(1, int(opened.width * scale)), max(1, int(opened.height * scale))))
                check_decoded_size(name, opened.size, opened.mode)
                opened.load()
                img = ImageOps.exif_transpose(opened, in_place=True) or opened
        except Image.DecompressionBombError as err:
            raise ValueError(f"{path} is too large to decode safely ({err}). Downscale it first.") from err
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"{path} cannot be read as an image ({err}). Is the file corrupt or truncated?") from err
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{name} is empty ({img.width}x{img.height}).")
    if max_side is not None and img.mode in _RESIZABLE_MODES:
        img = _shrink(img, max_side)
    img = to_rgb(img)
    if max_side is not None:
        img = _shrink(img, max_side)
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

    A bilinear, antialiased resize to ``size x size`` then CLIP normalization (docs/method.md, The two models). The
    photo is not cropped: give face crops that are roughly square.
    """
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def crop_to_square(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The pixels of ``image`` that ``[x1, y1, x2, y2]`` touches (clipped to the image), centred on a black square:
    the form of a head reference in training (:func:`facediffuser.training.augment.plain_reference`).

    Raises:
        ValueError: the box is empty once clipped to the image.
    """
    x1, y1, x2, y2 = box
    left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    right, bottom = min(image.width, int(np.ceil(x2))), min(image.height, int(np.ceil(y2)))
    if right <= left or bottom <= top:
        raise ValueError(f"The box {list(box)} is empty inside a {image.width}x{image.height} image.")
    crop = image.crop((left, top, right, bottom))
    side = max(crop.size)
    square = Image.new(crop.mode, (side, side))
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return square


def prepare_reference_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images of any sizes -> ``(N, 3, size, size)`` normalized CLIP pixels."""
    return torch.cat([clip_preprocess(pil_to_tensor(img).unsqueeze(0), size) for img in images])
