"""Capturing cross-attention probabilities for the localization loss.

The capture itself (the store, the plain-attention processor that fills it, and its installation through
``unet.set_attn_processor``) lives in :mod:`facediffuser.attention`, which the sampling's person regions use too; this
module names what training uses of it. The layers not captured keep the processor they had.
"""

from __future__ import annotations

from ..attention import (
    LOCALIZATION_LAYERS,
    AttentionStore,
    CrossAttentionCaptureProcessor,
    install_attention_capture,
)

__all__ = ["LOCALIZATION_LAYERS", "AttentionStore", "CrossAttentionCaptureProcessor", "install_attention_capture"]
