"""Training on an SDXL base: the conditions of a batch as :class:`~facediffuser.pipeline_xl.FaceDiffuserXLPipeline`
samples with them.

The loop, the data, the losses, the checkpoints and the export are the SD1.x trainer's
(:mod:`facediffuser.training.trainer`); an SDXL base differs only in what conditions the UNet:

* the tokens are the penultimate hidden states of both CLIP text towers side by side (2048 wide for SDXL), the
  first tower reading the first tokenizer's ids and the second the second tokenizer's (which pads with ``!``);
* the UNet's added conditions (``added_cond_kwargs``) are the second tower's pooled projection (``text_embeds``) and
  the size ids (``time_ids``): the training image's original size ``(h, w)``, the corner ``(top, left)`` of the centre
  crop in the resized image, and the target size ``(resolution, resolution)`` (see
  :class:`~facediffuser.training.data.FFHQWild`);
* a caption dropped for classifier-free guidance (``uncondition_prob``) conditions on zeros, tokens and pooled
  embedding both, when the base's ``force_zeros_for_empty_prompt`` is set (SDXL base's setting, and what the
  pipeline's ``0`` is without a negative prompt); otherwise on the empty prompt, as for SD1.x;
* the SDM's fuser replaces the class-noun token over the whole 2048-wide token, its pooled embedding is the caption's
  (``c_aug``'s pooled embedding is ``c``'s in the pipeline);
* the localization loss reads the cross-attention of every SDXL block that has it (:data:`XL_LOCALIZATION_LAYERS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

TINY_XL = "tiny-xl"

# SDXL's cross-attention blocks: its first down and last up block have none. FastComposer's SD1.5 layers leave out
# the finest grid; SDXL's finest grid with cross-attention (64 x 64 at 1024 px) is SD1.5's 32 x 32 at 512 px in share
# of the image, so every cross-attention block is read.
XL_LOCALIZATION_LAYERS = ("down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0", "up_blocks.1")


def is_xl_pipeline(pipe: Any) -> bool:
    """Whether a loaded base pipeline is SDXL's (two text towers)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def is_xl_folder(folder: Path) -> bool:
    """Whether a pipeline folder's ``model_index.json`` names :class:`FaceDiffuserXLPipeline` (read, not loaded)."""
    from ..io.loading import XL_CLASS, read_model_index

    return read_model_index(Path(folder)).get("_class_name") == XL_CLASS


def load_xl_base(pretrained: str, tiny_config: Any = None):
    """The SDXL base pipeline in float32 on the CPU: ``tiny-xl`` (seeded random components) or a checked folder."""
    from ..io.tiny import TinyXLConfig, build_tiny_xl_pipeline
    from ..pipeline_xl import FaceDiffuserXLPipeline

    if pretrained == TINY_XL:
        return build_tiny_xl_pipeline(seed=0, config=tiny_config or TinyXLConfig())
    pipe = FaceDiffuserXLPipeline.from_pretrained(Path(pretrained), use_safetensors=True)
    return pipe.to(torch.float32)


class XLTextConditions:
    """SDXL's text conditions of a training batch: the second text tower (frozen, in the training precision), its
    tokenizer, and the base's ``force_zeros_for_empty_prompt``."""

    def __init__(self, base: Any, device: torch.device, dtype: torch.dtype):
        self.tokenizer_2 = base.tokenizer_2
        self.text_encoder_2 = base.text_encoder_2.requires_grad_(False).to(device, dtype).eval()
        self.force_zeros_for_empty_prompt = bool(base.config.force_zeros_for_empty_prompt)

    @torch.no_grad()
    def encode(
        self, text_encoder: nn.Module, input_ids: torch.Tensor, input_ids_2: torch.Tensor, empty: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L)`` ids of each tokenizer -> ``(B, L, D1 + D2)`` tokens and ``(B, P)`` pooled embeddings, as
        ``FaceDiffuserXLPipeline.encode_text``; rows where ``empty`` (a dropped caption) are zeros when the base
        forces zeros for an empty prompt."""
        device = self.text_encoder_2.device
        first = text_encoder(input_ids.to(device), output_hidden_states=True)
        second = self.text_encoder_2(input_ids_2.to(device), output_hidden_states=True)
        tokens = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        pooled = second.text_embeds
        if self.force_zeros_for_empty_prompt:
            empty = empty.to(device)
            tokens = torch.where(empty[:, None, None], torch.zeros_like(tokens), tokens)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return tokens, pooled

    def pipeline(self, **components: Any):
        """A :class:`~facediffuser.pipeline_xl.FaceDiffuserXLPipeline` over ``components`` (the SD1.x pipeline's
        names) and this base's second text tower, tokenizer and ``force_zeros_for_empty_prompt`` (validation)."""
        from ..pipeline_xl import FaceDiffuserXLPipeline

        return FaceDiffuserXLPipeline(
            **components,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
        )


IP_ADAPTER_ON_XL = (
    "train ip-adapter takes an SD1.x base, and --pretrained {base} is SDXL: on SDXL, use the public SDXL IP-Adapter "
    "weights with `facediffuser generate --ip-adapter`, or train sdm / tdm."
)


LCM_ON_XL = (
    "train lcm distils an SD1.x pipeline, and --pretrained {base} is SDXL: give an SD1.x Face-diffuser folder, or load "
    "a public LCM-LoRA for SDXL onto both UNets (docs/training.md, LCM)."
)


def check_base_for(kind: Any, pretrained: str) -> None:
    """Refuses, from the base's ``model_index.json`` alone (before any model loads), a model kind that an SDXL base
    cannot train: the IP-Adapter (its trainer is SD1.x's) and LCM distillation (SD1.x's conditions only)."""
    from ..io.loading import is_xl_model
    from .config import ModelKind

    refusals = {ModelKind.IP_ADAPTER: IP_ADAPTER_ON_XL, ModelKind.LCM: LCM_ON_XL}
    if ModelKind(kind) not in refusals:
        return
    if pretrained == TINY_XL or (Path(pretrained).is_dir() and is_xl_model(pretrained)):
        raise ValueError(refusals[ModelKind(kind)].format(base=pretrained))


def xl_conditions(base: Any, kind: Any, device: torch.device, dtype: torch.dtype) -> XLTextConditions | None:
    """The SDXL conditions of a run over ``base``; ``None`` for an SD1.x base."""
    from .config import ModelKind

    if not is_xl_pipeline(base):
        return None
    if ModelKind(kind) is ModelKind.IP_ADAPTER:
        raise ValueError(IP_ADAPTER_ON_XL.format(base="(the given base)"))
    return XLTextConditions(base, device, dtype)


def vae_dtype(vae: nn.Module, weight_dtype: torch.dtype) -> torch.dtype:
    """An SDXL base's frozen VAE's training dtype: the run's, but float32 for a float16 run whose VAE says
    ``force_upcast`` (SDXL's, which overflows to NaN in float16), as the XL pipeline decodes and diffusers' SDXL
    trainers encode; a VAE fine-tuned for float16 (``force_upcast`` false) takes float16."""
    if weight_dtype == torch.float16 and vae.config.get("force_upcast", False):
        return torch.float32
    return weight_dtype


def empty_captions(captions: list[str]) -> torch.Tensor:
    """``(B,)`` whether each caption of a batch is empty (dropped for classifier-free guidance)."""
    return torch.tensor([not c.strip() for c in captions], dtype=torch.bool)
