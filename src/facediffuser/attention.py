"""Cross-attention through diffusers attention processors: capturing its probabilities, and steering it.

Two users share this code: the localization loss of training (:mod:`facediffuser.training.losses`), which needs the
softmax attention maps of a few cross-attention layers of the SDM with their gradients, and the per-person regions
of sampling (:class:`~facediffuser.pipeline.FaceDiffuserPipeline`), which read the TDM's or the SDM's attention to
each person's token by the end of stage I and may then restrict where those tokens are attended to.

* :class:`AttentionStore`, :class:`CrossAttentionCaptureProcessor` and :func:`install_attention_capture`: plain
  (non-fused) attention that records its whole probability tensor (training).
* :class:`SideAttentionProcessor`: wraps the processor a layer already has (SDPA's ``AttnProcessor2_0`` for SD1.x)
  and calls it unchanged, so the layer's output stays bit-identical; beside it, it may compute the probabilities of a
  few key columns from the same ``q`` and ``k`` (:func:`token_attention_probabilities`) and hand them to a
  :class:`SideAttentionControl`, and it may add the control's bias to the attention logits.
* :func:`attention_processors` installs processors for one block of code and puts the old ones back afterwards,
  also when the block raises: nothing is left on the UNet.

Everything goes through ``unet.set_attn_processor``; nothing is patched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

# The cross-attention layers of the localization loss (paper Sec. 4.1; docs/method.md, Training), also those the
# sampling regions are read from.
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


def _prepare(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None, temb=None):
    """The inputs of ``to_q`` and ``to_k`` as diffusers' processors prepare them: ``(hidden (B, HW, C), context,
    spatial shape or None)``."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = None
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        shape = (b, c, h, w)
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    return hidden_states, context, shape


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
        hidden_states, context, shape = _prepare(attn, hidden_states, encoder_hidden_states, temb)
        batch, seq_len, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, HW, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B*heads, L, d)
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, HW, L)
        self.store.record(self.name, probs.view(batch, attn.heads, *probs.shape[1:]))

        out = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, HW, C)
        out = attn.to_out[1](attn.to_out[0](out))
        if shape is not None:
            b, c, h, w = shape
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_names(
    unet: UNet2DConditionModel, layers: tuple[str, ...] = LOCALIZATION_LAYERS, strict: bool = True
) -> list[str]:
    """The processor names of the cross-attention (``attn2``) layers of the blocks named in ``layers``.

    Raises ``ValueError`` when a requested block has no cross-attention layer (the UNet is not SD1.x-shaped); with
    ``strict=False`` it gives those it finds instead, or every cross-attention layer when it finds none.
    """
    every = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    names = [name for name in every if name.split(".attentions.")[0] in layers]
    absent = [layer for layer in layers if not any(n.startswith(layer + ".") for n in names)]
    if not strict:
        return names or every
    if absent:
        raise ValueError(
            f"The UNet has no cross-attention in {absent}: the localization loss and the person regions need an "
            "SD1.x-shaped UNet (or set the localization weight to 0)."
        )
    return names


def install_attention_capture(
    unet: UNet2DConditionModel, store: AttentionStore, layers: tuple[str, ...] = LOCALIZATION_LAYERS
) -> list[str]:
    """Routes the cross-attention (``attn2``) of the blocks named in ``layers`` through the capture processor, for
    good (training); :func:`attention_processors` does it for one block of code.

    Returns the processor names that now capture. Raises ``ValueError`` when a requested block has no
    cross-attention layer (the UNet is not SD1.x-shaped).
    """
    captured = cross_attention_names(unet, layers)
    processors = dict(unet.attn_processors)
    for name in captured:
        processors[name] = CrossAttentionCaptureProcessor(store, name.removesuffix(".processor"))
    unet.set_attn_processor(processors)
    return captured


@contextmanager
def attention_processors(
    unet: UNet2DConditionModel, make: Callable[[str, Any], Any], names: list[str]
) -> Iterator[list[str]]:
    """Within the block, the layers ``names`` run ``make(name, old_processor)``; afterwards (also after an error)
    every layer has its old processor object back."""
    old = dict(unet.attn_processors)
    new = dict(old)
    for name in names:
        new[name] = make(name, old[name])
    unet.set_attn_processor(new)
    try:
        yield names
    finally:
        unet.set_attn_processor(old)


def token_attention_probabilities(
    attn: Attention,
    hidden_states: torch.Tensor,
    context: torch.Tensor,
    columns: torch.Tensor,
) -> torch.Tensor:
    """Softmax cross-attention probabilities of the key ``columns`` only, averaged over heads, in float32.

    ``hidden_states`` ``(R, HW, C)`` and ``context`` ``(R, L, D)`` as the layer's ``to_q`` / ``to_k`` read them,
    ``columns`` ``(R, K)`` the key index of each wanted token per row. Returns ``(R, HW, K)``: the same numbers as
    the plain attention's probabilities (the softmax runs over all ``L`` keys), computed beside the layer's own
    processor, which is left to compute the output.
    """
    r = hidden_states.shape[0]
    query = attn.head_to_batch_dim(attn.to_q(hidden_states)).float()  # (R*heads, HW, d)
    key = attn.head_to_batch_dim(attn.to_k(context)).float()  # (R*heads, L, d)
    probs = torch.softmax(torch.bmm(query, key.transpose(1, 2)) * attn.scale, dim=-1)
    probs = probs.view(r, attn.heads, *probs.shape[1:]).mean(dim=1)  # (R, HW, L)
    index = columns.to(probs.device)[:, None, :].expand(-1, probs.shape[1], -1)
    return probs.gather(-1, index)


class SideAttentionControl:
    """What the :class:`SideAttentionProcessor` of a UNet does during one UNet call; set before each call.

    Attributes:
        capture: ``None``, or ``(rows, columns, record)``: the batch ``rows`` (a slice) whose probabilities of the key
            ``columns`` ``(R, K)`` are computed and passed to ``record(name, probs (R, HW, K))``.
        bias: ``None``, or ``bias(query_length, batch, dtype, device)`` -> an additive ``(batch, query_length, L)``
            attention bias (``0`` or ``-inf``), or ``None`` for a layer it leaves alone.
    """

    def __init__(self) -> None:
        self.capture: tuple[slice, torch.Tensor, Callable[[str, torch.Tensor], None]] | None = None
        self.bias: Callable[[int, int, torch.dtype, torch.device], torch.Tensor | None] | None = None


class SideAttentionProcessor:
    """Calls the layer's own processor ``inner`` unchanged; beside it, does what ``control`` asks (see
    :class:`SideAttentionControl`). With nothing asked, it is ``inner``."""

    def __init__(self, inner: Any, name: str, control: SideAttentionControl):
        self.inner = inner
        self.name = name
        self.control = control

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ip_adapter_masks: Any = None,
        **kwargs,
    ) -> torch.Tensor:
        # diffusers hands a processor only the keywords its signature names: an IP-Adapter's masks are named here
        if ip_adapter_masks is not None:
            kwargs["ip_adapter_masks"] = ip_adapter_masks
        control = self.control
        if control.capture is not None and encoder_hidden_states is not None:
            rows, columns, record = control.capture
            # an IP-Adapter's layers get (text, image tokens): the text's columns are the tokens' ones
            text = encoder_hidden_states[0] if isinstance(encoder_hidden_states, tuple) else encoder_hidden_states
            hidden, context, _ = _prepare(attn, hidden_states[rows], text[rows], temb)
            record(self.name, token_attention_probabilities(attn, hidden, context, columns))
        if control.bias is not None and encoder_hidden_states is not None:
            queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states[0, 0].numel()
            bias = control.bias(queries, hidden_states.shape[0], hidden_states.dtype, hidden_states.device)
            if bias is not None:
                attention_mask = bias if attention_mask is None else attention_mask + bias
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
