"""Capturing cross-attention probabilities through diffusers attention processors.

The localization loss needs the softmax attention maps of a few cross-attention layers of the SDM's UNet.
:func:`install_attention_capture` gives those layers a :class:`CrossAttentionCaptureProcessor` (via
``unet.set_attn_processor``; nothing is patched) that computes attention exactly like diffusers' plain processor and
hands its probabilities to an :class:`AttentionStore`. The other layers keep the processor they had.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

# The cross-attention layers of the localization loss (paper Sec. 4.1; docs/method.md, Training).
LOCALIZATION_LAYERS = ("down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.1", "up_blocks.2")


class AttentionStore:
    """Holds ``(B, heads, HW, L)`` attention probabilities per layer name, for one forward pass.

    Only the first write of a layer after :meth:`reset` is kept: gradient checkpointing re-runs the forward pass
    during backward, and those re-computations must not replace the maps the loss was built from.
    """

    def __init__(self) -> None:
        self.enabled = True
        self.probs: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.probs = {}

    def record(self, name: str, probs: torch.Tensor) -> None:
        if self.enabled and name not in self.probs:
            self.probs[name] = probs

    def maps(self) -> list[torch.Tensor]:
        return list(self.probs.values())


class CrossAttentionCaptureProcessor:
    """Plain (non-fused) attention that also records its probabilities in ``store`` under ``name``."""

    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, seq_len, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, HW, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B*heads, L, d)
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, HW, L)
        self.store.record(self.name, probs.view(batch, attn.heads, *probs.shape[1:]))

        out = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, HW, C)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_attention_capture(
    unet: UNet2DConditionModel, store: AttentionStore, layers: tuple[str, ...] = LOCALIZATION_LAYERS
) -> list[str]:
    """Routes the cross-attention (``attn2``) of the blocks named in ``layers`` through the capture processor.

    Returns the processor names that now capture. Raises ``ValueError`` when a requested block has no
    cross-attention layer (the UNet is not SD1.x-shaped).
    """
    processors = dict(unet.attn_processors)
    captured = []
    for name in processors:
        block = name.split(".attentions.")[0]
        if name.endswith("attn2.processor") and block in layers:
            processors[name] = CrossAttentionCaptureProcessor(store, name.removesuffix(".processor"))
            captured.append(name)
    absent = [layer for layer in layers if not any(n.startswith(layer + ".") for n in captured)]
    if absent:
        raise ValueError(
            f"The UNet has no cross-attention in {absent}: the localization loss needs an SD1.x-shaped UNet (or set "
            "the localization weight to 0)."
        )
    unet.set_attn_processor(processors)
    return captured
