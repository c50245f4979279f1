"""Prompt consistency (PC): the cosine similarity of CLIP image and text features.

Images are resized so that their short side is the model's input size (bicubic), centre-cropped to a square and
CLIP-normalized, the preprocessing of the original CLIP release (paper Sec. 4.1, FastComposer's protocol). It is
written here with PIL and torch so that it does not depend on an image-processor backend.
The text is the prompt with its placeholders removed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import CLIPModel, CLIPTokenizer

from ..images import CLIP_MEAN, CLIP_STD, to_rgb
from .metrics import prompt_consistency

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
MINI_CLIP_MODEL = "mini"  # the world's CLIP shipped in the package (facediffuser/data/world/clip)


def packaged_world_clip() -> Path:
    """The folder of the shipped world CLIP, whether or not this installation has it."""
    from ..io.package_data import WORLD_CLIP, packaged

    return packaged(WORLD_CLIP)


def resolve_clip_model(name_or_path: str | Path) -> str | Path:
    """``"mini"`` -> the shipped world CLIP's folder (a ``ValueError`` when it is not there); anything else as given."""
    if str(name_or_path) != MINI_CLIP_MODEL:
        return name_or_path
    folder = packaged_world_clip()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"This installation has no shipped world CLIP ({folder}): put one there with `facediffuser mini ship`, "
            "or pass --clip-model DIR/clip, the CLIP of `facediffuser world build --out DIR`."
        )
    return folder


def resize_center_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Short side to ``size`` (bicubic; the long side scaled and truncated to an integer), then the central
    ``size x size`` square. A 300x200 image becomes 336x224, then 224x224 from column 56."""
    image = to_rgb(image)
    width, height = image.size
    new_size = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    image = image.resize(new_size, PIL.Image.Resampling.BICUBIC)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def clip_pixels(
    images: Sequence[PIL.Image.Image],
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """PIL images -> ``(N, 3, size, size)`` CLIP input: :func:`resize_center_crop`, ``[0, 1]``, normalized."""
    arrays = [np.asarray(resize_center_crop(img, size), dtype=np.float32) / 255.0 for img in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class ClipScorer:
    """CLIP image and text features through transformers' :class:`~transformers.CLIPModel`.

    Args:
        model: any CLIP model (ViT-L/14 for the paper's numbers).
        tokenizer: its tokenizer.
        name: what the outputs record as the PC model.
        batch_size: images or texts per forward pass.
    """

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer, *, name: str = "", batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or "clip"
        self.batch_size = batch_size
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_CLIP_MODEL,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 16,
    ) -> ClipScorer:
        """Loads a CLIP model and tokenizer from a hub id, a local folder or ``"mini"`` (the world's CLIP shipped in
        the package, :func:`packaged_world_clip`), in ``dtype`` whatever the stored precision.

        A local folder without tokenizer files takes the project's CLIP tokenizer
        (:func:`facediffuser.io.tokenizer.load_clip_tokenizer`, the vocabulary of every OpenAI CLIP and of the world's).

        Raises:
            ValueError: the weights cannot be had (no network and no local copy); the message says how to get them.
        """
        name = str(name_or_path)
        local = Path(resolve_clip_model(name))
        if local.exists() and not (local / "config.json").is_file():
            raise ValueError(f"{local} is not a CLIP model folder: it has no config.json.")
        source = str(local) if local.exists() else name
        try:
            model = CLIPModel.from_pretrained(source, dtype=dtype)
            if local.is_dir():
                from ..io.tokenizer import load_folder_tokenizer

                tokenizer = load_folder_tokenizer(local, model.config.text_config.max_position_embeddings)
            else:
                tokenizer = CLIPTokenizer.from_pretrained(source)
        except OSError as err:
            raise ValueError(
                f"Could not load the CLIP model {name!r} for prompt consistency ({err}). On a machine with a network, "
                f"run `hf download {DEFAULT_CLIP_MODEL} --local-dir clip-vit-large-patch14` (or let it download into "
                "the Hugging Face cache), then pass that folder with `--clip-model PATH`. Without CLIP weights, "
                "score identity only with `--metrics ip`."
            ) from err
        return cls(model.to(device=device, dtype=dtype), tokenizer, name=name, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_features(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """``(N, D)``: the projected pooled vision output (class token after the post layer norm)."""
        feats = []
        for start in range(0, len(images), self.batch_size):
            pixels = clip_pixels(images[start : start + self.batch_size], self.image_size)
            pixels = pixels.to(device=self.device, dtype=self.model.dtype)
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # (n, hidden)
            feats.append(self.model.visual_projection(pooled).float().cpu())  # (n, D)
        return torch.cat(feats)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, D)``: the projected pooled text output (the end-of-text token), prompts truncated to 77 tokens."""
        feats = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.model.config.text_config.max_position_embeddings,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).pooler_output
            feats.append(self.model.text_projection(pooled).float().cpu())
        return torch.cat(feats)

    def score(self, images: Sequence[PIL.Image.Image], texts: Sequence[str]) -> list[float]:
        """PC of each image against its text (placeholders already removed)."""
        if len(images) != len(texts):
            raise ValueError(f"Got {len(images)} images but {len(texts)} texts.")
        if not images:
            return []
        unique = sorted(set(texts))
        text_feats = self.text_features(unique)
        index = {t: i for i, t in enumerate(unique)}
        text_rows = text_feats[[index[t] for t in texts]]
        return prompt_consistency(self.image_features(images), text_rows).tolist()
