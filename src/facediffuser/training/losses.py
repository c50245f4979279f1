"""The training losses of the SDM and the TDM (paper Sec. 4.1; docs/method.md, Training), as small pure functions.

- :func:`denoising_loss`: the MSE between the UNet's prediction and its target (noise, or velocity).
- :func:`subject_union_masks` and the ``mask`` argument of :func:`denoising_loss`: the mask loss, where prediction
  and target are multiplied by the union of the people's masks before the MSE.
- :func:`head_loss_weights` and the ``pixel_weights`` argument of :func:`denoising_loss`: an extension, the
  squared error weighted more on the people's heads, where a small image's identity lies.
- :func:`localization_loss`: for each person's class-noun token, the mean cross-attention over background pixels
  minus the mean over the person's pixels; low when the token attends to its person only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def denoising_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean((pred - target)^2)``, or ``mean((mask * pred - mask * target)^2)`` with a ``(B, 1, h, w)`` mask.

    Both are averaged over every element (masked-out positions count as zeros), as FastComposer's mask loss does.
    ``pixel_weights`` (``(B, 1, h, w)``, e.g. :func:`head_loss_weights`) scales each position's squared error before
    that mean. ``weights`` (``(B,)``, e.g. :func:`min_snr_weights`) scales each sample's mean before the batch mean.
    """
    pred, target = pred.float(), target.float()
    if mask is not None:
        mask = mask.to(pred.dtype)
        pred, target = pred * mask, target * mask
    if weights is None and pixel_weights is None:
        return F.mse_loss(pred, target, reduction="mean")
    squared = F.mse_loss(pred, target, reduction="none")
    if pixel_weights is not None:
        squared = squared * pixel_weights.to(squared)
    if weights is None:
        return squared.mean()
    per_sample = squared.mean(dim=tuple(range(1, pred.ndim)))
    return (per_sample * weights.to(per_sample)).mean()


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., ICCV 2023) for a batch of timesteps' signal-to-noise ratios.

    The weight of a timestep is ``min(SNR, gamma) / SNR`` for an epsilon target and ``min(SNR, gamma) / (SNR + 1)``
    for a velocity target: the low-noise steps, whose loss is easy and whose gradients otherwise dominate, are
    down-weighted. (``diffusers.training_utils.compute_snr`` gives ``snr``.)
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"min-SNR weighting supports 'epsilon' and 'v_prediction' targets, not {prediction_type!r}.")


def area_union(masks: torch.Tensor, positions: torch.Tensor, batch_size: int, size: tuple[int, int]) -> torch.Tensor:
    """The union of each image's ``masks`` (``(N, H, W)``, image of each in ``positions[:, 0]``) at ``size``,
    ``(B, 1, h, w)``: area-resized, so each latent cell holds the fraction of it the masks cover and a small region
    never vanishes. An image without masks is all zeros."""
    h, w = masks.shape[-2:] if masks.numel() else size
    union = torch.zeros(batch_size, h, w, device=masks.device, dtype=torch.float32)
    if masks.shape[0]:
        union.index_add_(0, positions[:, 0], masks.float())
    return F.interpolate(union.clamp(max=1.0)[:, None], size=size, mode="area")


def subject_union_masks(
    subject_masks: torch.Tensor, subject_positions: torch.Tensor, batch_size: int, size: tuple[int, int]
) -> torch.Tensor:
    """The union of each image's people masks at ``size``: ``(N, H, W), (N, 2) -> (B, 1, h, w)``.

    The union is area-resized (:func:`area_union`). An image with no person gets an all-ones mask, so unconditional
    and person-less samples keep their full loss.
    """
    union = area_union(subject_masks, subject_positions, batch_size, size)
    has_people = torch.zeros(batch_size, dtype=torch.bool, device=union.device)
    has_people[subject_positions[:, 0]] = True
    return torch.where(has_people.view(-1, 1, 1, 1), union, torch.ones_like(union))


def head_loss_weights(
    head_masks: torch.Tensor, subject_positions: torch.Tensor, batch_size: int, size: tuple[int, int], weight: float
) -> torch.Tensor:
    """Per-position loss weights ``(B, 1, h, w)``: 1, plus ``weight`` times the share of each latent cell the people's
    heads cover (``head_masks`` ``(N, H, W)``, :func:`area_union`). An image without people, or whose people have no
    head, is weighted 1 everywhere."""
    return 1.0 + weight * area_union(head_masks, subject_positions, batch_size, size)


def attention_grid(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` of an attention layer with ``tokens = h * w`` queries inside a UNet whose input is
    ``latent_size``: the latent halved (rounding up) by each down-sampling."""
    h, w = latent_size
    for _ in range(16):
        if h * w == tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise ValueError(f"{tokens} attention queries do not match any down-sampling of a {latent_size} latent.")


def localization_loss(
    attention_maps: Sequence[torch.Tensor],
    subject_masks: torch.Tensor,
    subject_positions: torch.Tensor,
    latent_size: tuple[int, int],
    eps: float = 1e-6,
) -> torch.Tensor:
    """FastComposer's cross-attention localization loss.

    Args:
        attention_maps: per layer, ``(B, heads, HW, L)`` softmax probabilities over the ``L`` text tokens.
        subject_masks: ``(N, H, W)`` float masks of the people (any resolution; area-resized to each layer).
        subject_positions: ``(N, 2)`` ``(batch index, token index)`` of each person's class-noun token.
        latent_size: ``(h, w)`` of the UNet's input, to recover each layer's grid.

    Returns:
        ``mean over layers, people and heads of (mean_bg(A) - mean_fg(A))`` where ``A`` is the token's attention
        column; a scalar in ``[-1, 1]``, ``0`` when there are no people.
    """
    if subject_positions.shape[0] == 0 or not attention_maps:
        return torch.zeros((), device=subject_masks.device)
    b_idx, tok_idx = subject_positions[:, 0], subject_positions[:, 1]
    scores = []
    for probs in attention_maps:
        h, w = attention_grid(probs.shape[2], latent_size)
        columns = probs[b_idx, :, :, tok_idx].float()  # (N, heads, HW)
        fg = F.interpolate(subject_masks[:, None].float(), size=(h, w), mode="area").flatten(1)  # (N, HW)
        fg = fg.to(columns.device)[:, None]  # (N, 1, HW)
        bg = 1.0 - fg
        mean_fg = (columns * fg).sum(-1) / fg.sum(-1).clamp_min(eps)
        mean_bg = (columns * bg).sum(-1) / bg.sum(-1).clamp_min(eps)
        scores.append((mean_bg - mean_fg).mean())  # mean over people and heads
    return torch.stack(scores).mean()
