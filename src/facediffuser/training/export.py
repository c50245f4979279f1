"""The trained pipeline folder: the trained parameters loaded into a fresh float32 copy of the base model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..pipeline import FaceDiffuserPipeline
from .config import ModelKind

logger = logging.getLogger(__name__)


def trained_tensors(denoiser: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The parameters of ``denoiser`` that require a gradient, float32 on the CPU, grouped by part (``unet``,
    ``subject_fuser``, ``image_encoder``)."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in denoiser.named_parameters():
        if p.requires_grad:
            part, _, key = name.partition(".")
            state.setdefault(part, {})[key] = p.detach().float().cpu().clone()
    return state


def export_pipeline(
    kind: ModelKind, state: dict[str, dict[str, torch.Tensor]], base: FaceDiffuserPipeline, output_dir: Path
) -> Path:
    """Loads ``state`` into ``base`` (the trained UNet goes to ``subject_unet`` for the SDM, ``unet`` for the TDM)
    and saves it to ``output_dir`` as safetensors. Raises ``RuntimeError`` when a tensor does not fit the base."""
    targets = {"unet": "subject_unet" if kind is ModelKind.SDM else "unet"}
    for part, tensors in state.items():
        module = getattr(base, targets.get(part, part))
        unexpected = module.load_state_dict(tensors, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"The trained {part} does not fit the base model: {unexpected[:3]} ...")
    base.save_pretrained(output_dir, safe_serialization=True)
    logger.info("Wrote the trained pipeline to %s", output_dir)
    return output_dir
