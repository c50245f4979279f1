"""An IP-Adapter trained on a frozen UNet (Ye et al. 2023, "IP-Adapter"): what is created, trained and written.

The adapter is diffusers' own: :func:`attach_fresh_ip_adapter` builds a state dict in the layout of the released
``ip-adapter_sd15`` files (an image projection ``proj`` + ``norm`` giving 4 tokens, and one ``to_k_ip``/``to_v_ip``
pair per cross-attention layer) and loads it with the UNet's ``_load_ip_adapter_weights``, the same call
``load_ip_adapter`` ends in. So the UNet trains with diffusers' ``ImageProjection`` and IP-Adapter attention
processors, and :func:`adapter_file_state` writes the trained tensors back in the file layout, which
``load_ip_adapter`` reads (diffusers' and :class:`~facediffuser.pipeline.FaceDiffuserPipeline`'s).

Initialization follows the paper's training script: the image key/value layers start as copies of the text
key/value layers of the same attention, the projection as a freshly seeded ``nn.Linear`` and an identity
``LayerNorm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# The file the export writes (beside it: ``image_encoder/``), and the tokens the image projection gives.
WEIGHT_NAME = "ip-adapter.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"
NUM_TOKENS = 4
_PROJECTION = "encoder_hid_proj.image_projection_layers.0."


def cross_attention_names(unet: Any) -> list[str]:
    """The UNet's cross-attention processors' names, in the order of the adapter file's keys (``1, 3, 5, ...``)."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def fresh_ip_adapter_state(unet: Any, image_embed_dim: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """A new adapter for ``unet`` in the nested file layout: ``image_proj`` (``proj`` seeded by ``seed``, ``norm``
    the identity) and ``ip_adapter`` (each ``to_k_ip``/``to_v_ip`` a copy of its attention's ``to_k``/``to_v``)."""
    cross = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = nn.Linear(image_embed_dim, NUM_TOKENS * cross)
    image_proj = {
        "proj.weight": proj.weight.detach().clone(),
        "proj.bias": proj.bias.detach().clone(),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    modules = dict(unet.named_modules())
    layers: dict[str, torch.Tensor] = {}
    for i, name in enumerate(cross_attention_names(unet)):
        attention = modules[name.removesuffix(".processor")]
        layers[f"{2 * i + 1}.to_k_ip.weight"] = attention.to_k.weight.detach().float().clone()
        layers[f"{2 * i + 1}.to_v_ip.weight"] = attention.to_v.weight.detach().float().clone()
    return {"image_proj": image_proj, "ip_adapter": layers}


def attach_fresh_ip_adapter(unet: Any, image_embed_dim: int, seed: int) -> None:
    """Puts a new adapter (:func:`fresh_ip_adapter_state`) on ``unet`` the diffusers way."""
    state = fresh_ip_adapter_state(unet, image_embed_dim, seed)
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)


def is_adapter_parameter(name: str) -> bool:
    """Whether a UNet parameter name belongs to the adapter: the image projection or an image key/value layer."""
    return name.startswith(_PROJECTION) or ".to_k_ip." in name or ".to_v_ip." in name


def adapter_file_state(unet: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained adapter tensors of ``unet`` (UNet parameter names -> tensors, e.g. the trainer's ``unet`` part)
    in the flat layout of the ``.safetensors`` files: ``image_proj.*`` and ``ip_adapter.<2i+1>.to_{k,v}_ip.weight``.

    Raises ``KeyError`` naming a tensor the adapter needs and ``tensors`` lacks."""
    out = {}
    for key in ("image_embeds.weight", "image_embeds.bias", "norm.weight", "norm.bias"):
        out[f"image_proj.{key.replace('image_embeds', 'proj')}"] = tensors[_PROJECTION + key]
    for i, name in enumerate(cross_attention_names(unet)):
        for part in ("to_k_ip", "to_v_ip"):
            out[f"ip_adapter.{2 * i + 1}.{part}.weight"] = tensors[f"{name}.{part}.0.weight"]
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def write_adapter_folder(unet: Any, tensors: dict[str, torch.Tensor], image_encoder: Any, folder: Path) -> Path:
    """Writes ``folder/ip-adapter.safetensors`` (:func:`adapter_file_state`) and ``folder/image_encoder`` (the vision
    tower the adapter was trained with, float32): what ``load_ip_adapter(folder, weight_name="ip-adapter.safetensors")``
    reads, here and in diffusers."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_file_state(unet, tensors), folder / WEIGHT_NAME, metadata={"format": "pt"})
    image_encoder.to(torch.float32).save_pretrained(folder / IMAGE_ENCODER_FOLDER, safe_serialization=True)
    return folder / WEIGHT_NAME
