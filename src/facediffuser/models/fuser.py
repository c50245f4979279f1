"""The subject fuser of the SDM: it writes a reference face into the class-noun token of the prompt.

For a marked token embedding ``t`` and the subject embedding ``o`` of its reference image(s)
(docs/method.md, The two models, after FastComposer's post-fuse module)::

    MLP(x)  = fc2(GELU(fc1(LayerNorm(x))))          (+ x when residual)
    h       = mlp1(concat(t, o)) + t                 mlp1: D + E -> D -> D, no residual
    h       = mlp2(h)                                mlp2: D -> D -> D, residual
    fuse    = LayerNorm(h)

``D`` is the text token's width, ``E`` the subject embedding's: both 768 on SD1.x with CLIP ViT-L/14 (``E = D``,
the release's fuser); on SDXL the token is 2048 wide (both text towers' hidden states side by side) and ``E`` is the
image encoder's projection (768 for ViT-L/14, 1024 for ViT-H/14, 1280 for ViT-bigG/14).

Parameter names (``mlp1.layernorm``, ``mlp1.fc1``, ``mlp1.fc2``, ``mlp2.*``, ``layer_norm``) are those of the
released checkpoints, so their ``postfuse_module.*`` weights load without renaming.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class FuserMLP(nn.Module):
    """``fc2(GELU(fc1(LayerNorm(x))))``, plus ``x`` when ``residual``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, residual: bool):
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError(f"A residual MLP needs in_dim == out_dim, got {in_dim} and {out_dim}.")
        self.residual = residual
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(self.act(self.fc1(self.layernorm(x))))
        return h + x if self.residual else h


class SubjectFuser(ModelMixin, ConfigMixin):
    """Fuses subject embeddings into the text embeddings of their class-noun tokens.

    Args:
        embed_dim: width ``D`` of the text-encoder hidden states, the token the fuser writes (768 for SD1.x, 2048
            for SDXL).
        image_embed_dim: width ``E`` of the projected image embedding ``o``; ``None`` (the default, and what a
            config without the entry means) is ``embed_dim``, as for SD1.x with CLIP ViT-L/14.
    """

    @register_to_config
    def __init__(self, embed_dim: int = 768, image_embed_dim: int | None = None):
        super().__init__()
        self.image_width = embed_dim if image_embed_dim is None else image_embed_dim
        self.mlp1 = FuserMLP(embed_dim + self.image_width, embed_dim, embed_dim, residual=False)
        self.mlp2 = FuserMLP(embed_dim, embed_dim, embed_dim, residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def fuse(self, token_embeds: torch.Tensor, subject_embeds: torch.Tensor) -> torch.Tensor:
        """``fuse(t, o)`` for matched pairs: ``(N, D), (N, E) -> (N, D)``."""
        h = self.mlp1(torch.cat([token_embeds, subject_embeds], dim=-1)) + token_embeds
        h = self.mlp2(h)
        return self.layer_norm(h)

    def forward(
        self,
        text_embeds: torch.Tensor,
        subject_embeds: torch.Tensor,
        subject_positions: torch.Tensor,
    ) -> torch.Tensor:
        """Returns the augmented prompt ``c_aug``: ``text_embeds`` with the marked tokens replaced.

        Args:
            text_embeds: ``(B, L, D)`` text-encoder output ``c``.
            subject_embeds: ``(N, E)`` one embedding per subject.
            subject_positions: ``(N, 2)`` long tensor of ``(batch index, token index)``, one row per subject, in
                the same order as ``subject_embeds``.
        """
        if subject_embeds.shape[0] and subject_embeds.shape[-1] != self.image_width:
            raise ValueError(
                f"The subject embeddings are {subject_embeds.shape[-1]} wide but this fuser reads {self.image_width}: "
                "the image encoder is not the one the subject model was trained with."
            )
        if subject_embeds.shape[0] != subject_positions.shape[0]:
            raise ValueError(
                f"Got {subject_embeds.shape[0]} subject embeddings for {subject_positions.shape[0]} marked tokens."
            )
        if subject_embeds.shape[0] == 0:
            return text_embeds
        rows, cols = subject_positions[:, 0], subject_positions[:, 1]
        fused = self.fuse(text_embeds[rows, cols], subject_embeds.to(text_embeds.dtype))  # (N, D)
        out = text_embeds.clone()
        out[rows, cols] = fused.to(out.dtype)
        return out
