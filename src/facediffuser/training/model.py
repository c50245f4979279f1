"""What is trained: the base pipeline loaded, the trained module assembled, and ``requires_grad`` set per the recipe.

=========  ====================================================  ===========================================
kind       trained                                               condition of the UNet
=========  ====================================================  ===========================================
``sdm``    ``subject_unet``, ``subject_fuser``, the last           ``c_aug``: the caption's embedding with each
           ``vision_trainable_layers`` layers of the vision tower  person's class noun fused with their crop
``tdm``    ``unet``                                              ``c``: the caption's embedding
``ip-      a new IP-Adapter on the frozen ``unet``: its image        ``c`` and the reference's image embedding
adapter``  projection and image key/value layers                 (decoupled cross-attention)
=========  ====================================================  ===========================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ..io.loading import base_model_name, check_pipeline_folder, read_model_index
from ..io.tiny import TinyConfig, build_tiny_pipeline
from ..pipeline import FaceDiffuserPipeline
from .config import ModelKind

TINY = "tiny"


class Denoiser(nn.Module):
    """The module that is trained: a UNet, and for the SDM the fuser and the vision tower that build ``c_aug``.

    One module, so data parallelism wraps (and synchronizes) everything trained at once.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        subject_fuser: nn.Module | None = None,
        image_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.unet = unet
        self.subject_fuser = subject_fuser
        self.image_encoder = image_encoder

    def condition(
        self, text_embeds: torch.Tensor, subject_pixels: torch.Tensor, subject_positions: torch.Tensor
    ) -> torch.Tensor:
        """``c`` for the TDM; ``c_aug`` for the SDM: ``(B, L, D)``."""
        if self.subject_fuser is None:
            return text_embeds
        if subject_positions.shape[0]:
            subject_embeds = self.image_encoder(pixel_values=subject_pixels).image_embeds  # (N, D)
        else:
            subject_embeds = text_embeds.new_zeros(0, text_embeds.shape[-1])
        return self.subject_fuser(text_embeds, subject_embeds, subject_positions)

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor,
        subject_pixels: torch.Tensor,
        subject_positions: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``added_cond_kwargs``: SDXL's pooled text embedding and size ids (``text_embeds``, ``time_ids``);
        ``condition``: ``c`` / ``c_aug`` when the caller computed it once (LCM distillation).

        The inputs take the UNet's dtype: float32 here (the trained weights are, under autocast), bfloat16 or float16
        where DeepSpeed has cast the whole module to its precision (it does not cast the inputs)."""
        dtype = self.unet.dtype
        if condition is None:
            cond = self.condition(text_embeds.to(dtype), subject_pixels, subject_positions)
        else:
            cond = condition.to(dtype)
        return self.unet(
            noisy_latents.to(dtype), timesteps, encoder_hidden_states=cond, added_cond_kwargs=added_cond_kwargs
        ).sample


class AdapterDenoiser(Denoiser):
    """An IP-Adapter on the scene UNet, read from the frozen vision tower's image embedding of each sample's one
    reference (zeros, the adapter's "no image", for a sample without one or whose image is dropped)."""

    def image_embeds(
        self, batch_size: int, subject_pixels: torch.Tensor, subject_positions: torch.Tensor
    ) -> torch.Tensor:
        """``(B, 1, D)``: row ``b`` the embedding of the reference at ``subject_positions[:, 0] == b``, else 0."""
        width = self.image_encoder.config.projection_dim
        weight = self.unet.encoder_hid_proj.image_projection_layers[0].image_embeds.weight
        out = weight.new_zeros(batch_size, 1, width)
        if subject_positions.shape[0]:
            with torch.no_grad():
                pixels = subject_pixels.to(self.image_encoder.dtype)
                embeds = self.image_encoder(pixel_values=pixels).image_embeds
            out[subject_positions[:, 0], 0] = embeds.to(out.dtype)
        return out

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor,
        subject_pixels: torch.Tensor,
        subject_positions: torch.Tensor,
    ) -> torch.Tensor:
        embeds = self.image_embeds(noisy_latents.shape[0], subject_pixels, subject_positions)
        return self.unet(
            noisy_latents, timesteps, encoder_hidden_states=text_embeds, added_cond_kwargs={"image_embeds": [embeds]}
        ).sample


def load_base_pipeline(pretrained: str, tiny_config: Any = None) -> FaceDiffuserPipeline:
    """The base pipeline in float32 on the CPU: ``tiny`` or ``tiny-xl`` (seeded random components), or a pipeline
    folder (SD1.x's or SDXL's, as its ``model_index.json`` names it)."""
    from .model_xl import TINY_XL, is_xl_folder, load_xl_base

    if pretrained == TINY:
        return build_tiny_pipeline(seed=0, config=tiny_config or TinyConfig())
    if pretrained == TINY_XL:
        return load_xl_base(pretrained, tiny_config)
    folder = Path(pretrained)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The base model {folder} does not exist. Give a Face-diffuser pipeline folder (see `facediffuser "
            "convert`), or 'tiny' / 'tiny-xl' (the random SD1.x / SDXL test components)."
        )
    check_pipeline_folder(folder)
    plain = base_model_name(read_model_index(folder))
    if plain is not None:
        raise ValueError(
            f"The base model {folder} is a plain {plain} pipeline folder, without the subject model's parts "
            "(image_encoder, subject_unet, subject_fuser) that training starts from. Build a Face-diffuser pipeline "
            "folder from it with `facediffuser convert` and give that as --pretrained."
        )
    if is_xl_folder(folder):
        return load_xl_base(pretrained)
    pipe = FaceDiffuserPipeline.from_pretrained(folder, use_safetensors=True)
    return pipe.to(torch.float32)


def build_denoiser(kind: ModelKind, base: FaceDiffuserPipeline, seed: int = 0) -> Denoiser:
    """The trained module over ``base``'s own components (no copies): the subject UNet, fuser and vision tower for
    the SDM, the scene UNet for the TDM, and for the IP-Adapter the scene UNet with a new adapter (seeded by
    ``seed``) and the vision tower that reads the references."""
    if kind is ModelKind.SDM:
        return Denoiser(base.subject_unet, base.subject_fuser, base.image_encoder)
    if kind is ModelKind.IP_ADAPTER:
        from .adapter import attach_fresh_ip_adapter

        if base.image_encoder is None:
            raise ValueError("The base model has no image_encoder: the IP-Adapter reads its references with it.")
        attach_fresh_ip_adapter(base.unet, base.image_encoder.config.projection_dim, seed)
        return AdapterDenoiser(base.unet, image_encoder=base.image_encoder)
    return Denoiser(base.unet)


def parameter_groups(kind: ModelKind, denoiser: Denoiser, fuser_learning_rate: float | None) -> list[dict[str, Any]]:
    """The optimizer's parameter groups of the trained parameters: one (every group takes the optimizer's learning
    rate), or for the SDM with ``fuser_learning_rate`` two: the fuser's at that rate, then the rest."""
    trained = [p for p in denoiser.parameters() if p.requires_grad]
    if kind is not ModelKind.SDM or fuser_learning_rate is None:
        return [{"params": trained}]
    fuser = {id(p) for p in denoiser.subject_fuser.parameters() if p.requires_grad}
    return [
        {"params": [p for p in trained if id(p) in fuser], "lr": fuser_learning_rate},
        {"params": [p for p in trained if id(p) not in fuser]},
    ]


def freeze_and_list_trainable(kind: ModelKind, denoiser: Denoiser, vision_layers: int) -> list[str]:
    """Sets ``requires_grad`` exactly as the recipe says and returns the trained parameters' names."""
    denoiser.requires_grad_(False)
    if kind is ModelKind.IP_ADAPTER:  # the UNet and the vision tower frozen; the adapter's layers trained
        from .adapter import is_adapter_parameter

        for name, p in denoiser.unet.named_parameters():
            p.requires_grad_(is_adapter_parameter(name))
        return [name for name, p in denoiser.named_parameters() if p.requires_grad]
    denoiser.unet.requires_grad_(True)
    if kind is ModelKind.SDM:
        denoiser.subject_fuser.requires_grad_(True)
        layers = denoiser.image_encoder.vision_model.encoder.layers
        if vision_layers > len(layers):
            raise ValueError(f"`vision_trainable_layers` is {vision_layers} but the vision tower has {len(layers)}.")
        for layer in layers[len(layers) - vision_layers :]:
            layer.requires_grad_(True)
    return [name for name, p in denoiser.named_parameters() if p.requires_grad]
