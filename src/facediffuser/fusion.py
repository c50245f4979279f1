"""Guidance responses, three-stage schedule and Saliency-adaptive Noise Fusion (SNF).

Pure, shape-generic tensor functions and tables; the Face-diffuser step (:mod:`facediffuser.step`) and through it the
pipeline only call them. Notation follows the paper ("High-fidelity Person-centric Subject-to-Image Synthesis", Wang et
al., CVPR 2024):

* ``eps(x | cond)`` is a UNet's noise prediction, ``w`` the guidance scale and ``0`` the empty prompt.
* Sec. 3.2.3, guidance responses (:class:`Guidance`, :data:`TEXT_MODEL_GUIDANCE`, :data:`SUBJECT_MODEL_GUIDANCE`):
    - TDM (eq. 1):   ``R_T = eps_T(c) - eps_T(0)``,       ``eps_T = eps_T(0) + w * R_T``
    - SDM:           ``R_S = eps_S(c_aug) - eps_S(c)``    (the response to the reference images alone)
      - paper eq. 2 (:attr:`SubjectGuidanceBase.NULL`): ``eps_S = eps_S(0) + w * R_S``
      - official release (:attr:`SubjectGuidanceBase.TEXT`): ``eps_S = eps_S(c) + w * R_S``
* Sec. 3.3.1, SNF (eqs. 3-5):
    - saliency:      ``Omega_T = Smooth(|w * R_T|)``, ``Omega_S = Smooth(|w * R_S|)``
    - mask:          ``M = 1`` where ``softmax(Omega_S) > softmax(Omega_T)`` (softmax over all positions of one
      image), else ``0``; ties go to the TDM
    - fused noise:   ``eps = M * eps_S + (1 - M) * eps_T``
* Sec. 3.3, three stages over the ``T`` denoising steps: stage I (TDM only) for the first ``alpha * T`` steps,
  stage II (both models, SNF) until ``beta * T``, stage III (SDM only) after.
* Person regions (this project's, off by default; docs/method.md, Person regions): the TDM's stage-I cross-attention
  to each person's class-noun token, as a soft map per person (:func:`person_regions`) and a hard assignment of each
  latent position to one person or none (:func:`assign_regions`); used by region attention
  (:func:`region_key_bias`) and region saliency (:func:`normalize_saliency_by_region`).

All maps here are ``(B, H, W)`` saliency maps or ``(B, 1, H, W)`` masks over the latent grid; noise predictions are
``(B, C, H, W)``. Nothing assumes a resolution.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# ------------------------------------------------------------------ the three stages (Sec. 3.3)
class Stage(enum.IntEnum):
    """The three sampling stages of the paper (Sec. 3.3, appendix algorithm)."""

    TEXT = 1  # stage I: the TDM draws alone (layout and scene)
    FUSION = 2  # stage II: both models, mixed by SNF
    SUBJECT = 3  # stage III: the SDM draws alone (identity details)

    @property
    def uses_text_model(self) -> bool:
        return self is not Stage.SUBJECT

    @property
    def uses_subject_model(self) -> bool:
        return self is not Stage.TEXT


class SubjectGuidanceBase(str, enum.Enum):
    """What the SDM's guided prediction is anchored on; :data:`SUBJECT_MODEL_GUIDANCE` gives each one's rule."""

    TEXT = "text"  # official release: eps_S(c) + w * R_S
    NULL = "null"  # paper eq. 2: eps_S(0) + w * R_S


class RegionSource(str, enum.Enum):
    """Which model's cross-attention the person regions are read from (docs/method.md, Person regions)."""

    TDM = "tdm"  # the TDM's attention to each class noun, summed over stage I
    SDM = "sdm"  # the SDM's attention to each fused token less its attention to the class noun, at stage I's end


class Smoothing(str, enum.Enum):
    """The ``Smooth`` operator applied to ``|w * R|`` before the softmax."""

    BOX = "box"  # as released: k x k average pool (stride 1, zero padding counted), bilinear resize back
    GAUSSIAN = "gaussian"  # separable gaussian blur with reflect padding, same size out


def stage_boundaries(num_steps: int, alpha: float, beta: float) -> tuple[int, int]:
    """Step indices where stage II and stage III begin.

    With ``T = num_steps`` loop iterations indexed ``i = 0 .. T-1``::

        stage I    for  i <  floor(alpha * T)
        stage II   for  floor(alpha * T) <= i < floor(beta * T)
        stage III  for  i >= floor(beta * T)

    (``floor`` forgives float error: ``0.29 * 100`` counts as 29.)

    Example: ``T = 50`` with :class:`~facediffuser.settings.SamplingSettings`' default fractions (the paper's
    Fig. 8) gives 15 / 15 / 20 steps (docs/method.md, Cost per image).
    ``alpha = beta = 1`` is the TDM alone (plain Stable Diffusion); ``alpha = beta = 0`` the SDM alone.
    """
    check_stage_fractions(alpha, beta)
    if num_steps < 1:
        raise ValueError(f"The number of denoising steps must be at least 1, got {num_steps}.")
    return _floor_steps(alpha * num_steps), _floor_steps(beta * num_steps)


def _floor_steps(x: float) -> int:
    return math.floor(x + 1e-6)


def check_stage_fractions(alpha: float, beta: float) -> None:
    """Raises ``ValueError`` unless ``0 <= alpha <= beta <= 1``."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` is a fraction of the denoising steps and must lie in [0, 1], got {value!r}.")
    if alpha > beta:
        raise ValueError(
            f"`alpha` ({alpha}) must not exceed `beta` ({beta}): stage I (TDM only) ends at alpha * T and stage III "
            "(SDM only) begins at beta * T."
        )


def stage_schedule(num_steps: int, alpha: float, beta: float) -> list[Stage]:
    """The stage of every step, ``[Stage.TEXT, ..., Stage.FUSION, ..., Stage.SUBJECT, ...]``."""
    end_text, end_fusion = stage_boundaries(num_steps, alpha, beta)
    return [Stage.TEXT if i < end_text else Stage.FUSION if i < end_fusion else Stage.SUBJECT for i in range(num_steps)]


# ------------------------------------------------------------------ guidance responses, eqs. 1-2 (Sec. 3.2.3)
class Condition(str, enum.Enum):
    """The prompt embeddings a UNet is evaluated on (Sec. 3.2.3)."""

    NULL = "0"  # the empty (or negative) prompt
    TEXT = "c"  # the prompt with its placeholders removed
    SUBJECT = "c_aug"  # the prompt with each class-noun token replaced by fuse(t, o)


def guidance_response(eps_cond: torch.Tensor, eps_base: torch.Tensor) -> torch.Tensor:
    """``R = eps(cond) - eps(base)``: ``R_T`` with ``(c, 0)``, ``R_S`` with ``(c_aug, c)``."""
    return eps_cond - eps_base


@dataclass(frozen=True)
class Guidance:
    """One model's guided prediction ``eps = eps(base) + w * R`` with ``R = eps(positive) - eps(negative)``.

    ``conditions`` is the batch order of the model's one UNet call per step: its length is the number of UNet
    evaluations the model costs per step and image.
    """

    conditions: tuple[Condition, ...]
    base: Condition
    positive: Condition
    negative: Condition

    @property
    def evaluations(self) -> int:
        return len(self.conditions)

    def __call__(self, predictions: Sequence[torch.Tensor], guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``predictions`` (one ``(B, C, H, W)`` chunk per condition, in order) -> ``(eps, w * R)``."""
        if len(predictions) != len(self.conditions):
            raise ValueError(
                f"Got {len(predictions)} noise predictions for the {len(self.conditions)} conditions "
                f"{[c.value for c in self.conditions]}: pass one chunk per condition, in that order."
            )
        eps = dict(zip(self.conditions, predictions))
        scaled_response = guidance_scale * guidance_response(eps[self.positive], eps[self.negative])
        return eps[self.base] + scaled_response, scaled_response


# eq. 1: eps_T = eps_T(0) + w * (eps_T(c) - eps_T(0)), classifier-free guidance as in Stable Diffusion.
TEXT_MODEL_GUIDANCE = Guidance(
    conditions=(Condition.NULL, Condition.TEXT), base=Condition.NULL, positive=Condition.TEXT, negative=Condition.NULL
)
SUBJECT_MODEL_GUIDANCE: dict[SubjectGuidanceBase, Guidance] = {
    # Official release: eps_S = eps_S(c) + w * (eps_S(c_aug) - eps_S(c)); the SDM never sees the empty prompt.
    SubjectGuidanceBase.TEXT: Guidance(
        conditions=(Condition.TEXT, Condition.SUBJECT),
        base=Condition.TEXT,
        positive=Condition.SUBJECT,
        negative=Condition.TEXT,
    ),
    # Paper eq. 2: eps_S = eps_S(0) + w * (eps_S(c_aug) - eps_S(c)).
    SubjectGuidanceBase.NULL: Guidance(
        conditions=(Condition.NULL, Condition.TEXT, Condition.SUBJECT),
        base=Condition.NULL,
        positive=Condition.SUBJECT,
        negative=Condition.TEXT,
    ),
}


def stage_guidance(stage: Stage, base: SubjectGuidanceBase | str) -> tuple[Guidance | None, Guidance | None]:
    """The guidance of the TDM and of the SDM at ``stage``; ``None`` for a model that the stage does not run."""
    text = TEXT_MODEL_GUIDANCE if stage.uses_text_model else None
    subject = SUBJECT_MODEL_GUIDANCE[SubjectGuidanceBase(base)] if stage.uses_subject_model else None
    return text, subject


def unet_evaluations(stage: Stage, base: SubjectGuidanceBase | str) -> tuple[int, int]:
    """UNet evaluations per image of one step of ``stage``: ``(TDM, SDM)``."""
    return tuple(0 if g is None else g.evaluations for g in stage_guidance(stage, base))


def unet_evaluations_per_image(stages: Sequence[Stage], base: SubjectGuidanceBase | str) -> int:
    """UNet evaluations of both models per image over a stage schedule (plain SD with CFG: ``2 * T``).

    docs/method.md, Cost per image: ``T = 50`` with 15 / 15 / 20 steps, 130 with the release's base and 165 with eq. 2.
    """
    return sum(sum(unet_evaluations(stage, base)) for stage in stages)


# ------------------------------------------------------------------ SNF, eqs. 3-5 (Sec. 3.3.1)
def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float, padding_mode: str = "reflect") -> torch.Tensor:
    """Separable gaussian blur of ``(B, C, H, W)``, same size out: ``kernel_size`` taps of standard deviation
    ``sigma`` pixels, centred (an even kernel takes its extra tap on the right/bottom), borders padded with
    ``padding_mode`` (``"reflect"`` or ``"replicate"``). Also the blur of the training augmentations."""
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - (kernel_size - 1) / 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    left, right = (kernel_size - 1) // 2, kernel_size // 2
    y = F.pad(x, (left, right, 0, 0), mode=padding_mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    y = F.pad(y, (0, 0, left, right), mode=padding_mode)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def smooth(
    x: torch.Tensor,
    smoothing: Smoothing | str = Smoothing.BOX,
    kernel_size: int = 4,
    sigma: float = 1.0,
) -> torch.Tensor:
    """``Smooth``: ``(B, C, H, W) -> (B, H, W)``, spatial smoothing then the mean over channels.

    * ``box`` (as released): ``avg_pool2d(kernel_size, stride=1, padding=(kernel_size - 1) // 2)`` with zero padding
      counted, a bilinear resize back to ``(H, W)`` (the even kernel shrinks the map by one), then the channel mean.
    * ``gaussian``: a separable gaussian of ``kernel_size`` taps and ``sigma``, reflect padding, then the channel
      mean.

    The channel mean makes the mask shared by all latent channels.
    """
    smoothing = Smoothing(smoothing)
    if kernel_size < 1:
        raise ValueError(f"`smoothing_kernel_size` must be at least 1, got {kernel_size}.")
    h, w = x.shape[-2:]
    if smoothing is Smoothing.BOX:
        pad = (kernel_size - 1) // 2
        if h + 2 * pad < kernel_size or w + 2 * pad < kernel_size:
            raise ValueError(
                f"A {kernel_size}x{kernel_size} box filter does not fit a {h}x{w} latent; use a smaller "
                "`smoothing_kernel_size` or a larger image."
            )
        y = F.avg_pool2d(x, kernel_size, stride=1, padding=pad, count_include_pad=True)
        if y.shape[-2:] != (h, w):
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    else:
        if sigma <= 0:
            raise ValueError(f"`smoothing_sigma` must be positive, got {sigma}.")
        # reflect padding needs more rows and columns than the kernel's half-width
        mode = "reflect" if min(h, w) > kernel_size // 2 else "replicate"
        y = gaussian_blur(x, kernel_size, sigma, mode)
    return y.mean(dim=1)


def saliency_map(scaled_response: torch.Tensor, **smooth_kwargs) -> torch.Tensor:
    """``Omega = Smooth(|w * R|)``: ``(B, C, H, W) -> (B, H, W)``, computed in float32."""
    return smooth(scaled_response.float().abs(), **smooth_kwargs)


def normalize_saliency(omega: torch.Tensor) -> torch.Tensor:
    """Softmax over all spatial positions of each image: ``(B, H, W) -> (B, H, W)``, each map sums to 1."""
    b = omega.shape[0]
    return torch.softmax(omega.float().reshape(b, -1), dim=-1).reshape(omega.shape)


def fusion_mask(normalized_text: torch.Tensor, normalized_subject: torch.Tensor) -> torch.Tensor:
    """``M``: ``True`` (the SDM draws) where the SDM's normalized saliency is strictly larger; ties go to the TDM.

    ``(B, H, W), (B, H, W) -> (B, 1, H, W)`` bool, broadcast over channels.
    """
    return (normalized_subject > normalized_text).unsqueeze(1)


def fuse_noise(eps_text: torch.Tensor, eps_subject: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``eps = M * eps_S + (1 - M) * eps_T`` with a hard mask (a select, so values are copied exactly)."""
    return torch.where(mask, eps_subject, eps_text)


def saliency_adaptive_noise_fusion(
    eps_text: torch.Tensor,
    eps_subject: torch.Tensor,
    scaled_response_text: torch.Tensor,
    scaled_response_subject: torch.Tensor,
    assignment: torch.Tensor | None = None,
    **smooth_kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SNF in one call (Sec. 3.3.1).

    Args:
        eps_text, eps_subject: guided predictions ``eps_T`` and ``eps_S``, ``(B, C, H, W)``.
        scaled_response_text, scaled_response_subject: ``w * R_T`` and ``w * R_S``, ``(B, C, H, W)``.
        assignment: ``None`` (the paper), or ``(B, H, W)`` person regions: region saliency, each map normalised by
            :func:`normalize_saliency_by_region`.
        smooth_kwargs: ``smoothing``, ``kernel_size``, ``sigma`` of :func:`smooth`.

    Returns:
        ``(eps, mask, normalized_text, normalized_subject)``: the fused prediction, ``M`` as ``(B, 1, H, W)`` bool,
        and the two softmax-normalized saliency maps ``(B, H, W)``.
    """
    if assignment is None:
        norm_t = normalize_saliency(saliency_map(scaled_response_text, **smooth_kwargs))
        norm_s = normalize_saliency(saliency_map(scaled_response_subject, **smooth_kwargs))
    else:
        norm_t = normalize_saliency_by_region(saliency_map(scaled_response_text, **smooth_kwargs), assignment)
        norm_s = normalize_saliency_by_region(saliency_map(scaled_response_subject, **smooth_kwargs), assignment)
    mask = fusion_mask(norm_t, norm_s)
    return fuse_noise(eps_text, eps_subject, mask), mask, norm_t, norm_s


# ------------------------------------------------------------------ person regions (docs/method.md, Person regions)
# A latent position belongs to the person whose region map, scaled to a peak of 1, is largest there, when that value
# is at least this share of the peak; else to no one.
REGION_THRESHOLD = 0.3
NO_PERSON = -1


def person_regions(attention: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Soft region maps: ``(B, K, h, w)`` summed (or averaged) attention to each person's token -> each map scaled to
    sum to 1 over its positions. A person that is not ``present`` (``(B, K)`` bool: a prompt with fewer people than
    ``K``) gets an all-zero map."""
    maps = attention.float().clamp_min(0)
    total = maps.flatten(2).sum(-1)[..., None, None]
    maps = torch.where(total > 0, maps / total.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(maps))
    if present is not None:
        maps = maps * present[..., None, None].to(maps)
    return maps


def assign_regions(regions: torch.Tensor, threshold: float = REGION_THRESHOLD) -> torch.Tensor:
    """Hard assignment: ``(B, K, h, w)`` soft maps -> ``(B, h, w)`` long, the index of the person whose map (scaled
    to a peak of 1) is largest at each position, or :data:`NO_PERSON` where that is below ``threshold`` (and where
    there are no people). Ties go to the earlier person."""
    b, k, h, w = regions.shape
    if k == 0:
        return torch.full((b, h, w), NO_PERSON, dtype=torch.long, device=regions.device)
    peak = regions.flatten(2).amax(-1)[..., None, None]
    scaled = torch.where(peak > 0, regions / peak.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(regions))
    best, who = scaled.max(dim=1)
    return torch.where((best >= threshold) & (best > 0), who, torch.full_like(who, NO_PERSON))


def region_masks(assignment: torch.Tensor, num_people: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, h, w)`` assignment -> ``(B, K, h', w')`` bool, person ``k``'s region at ``size`` (default: the same):
    a cell of a coarser grid is inside when any part of it is (area resize, then ``> 0``)."""
    people = torch.arange(num_people, device=assignment.device)
    onehot = (assignment[:, None] == people[None, :, None, None]).float()
    if size is None or tuple(size) == tuple(onehot.shape[-2:]):
        return onehot > 0
    return F.interpolate(onehot, size=size, mode="area") > 0


def region_key_bias(
    inside: torch.Tensor, columns: torch.Tensor, num_keys: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The additive attention bias of region attention: ``(B, h*w, L)``, ``-inf`` at person ``k``'s key column
    (``columns`` ``(B, K)``) for the query positions outside ``inside[:, k]`` (``(B, K, h, w)`` bool), ``0``
    elsewhere. A person whose region is empty is not restricted (their token would attend nowhere)."""
    b, k = columns.shape
    outside = ~inside.flatten(2)  # (B, K, HW)
    outside = outside & inside.flatten(2).any(-1, keepdim=True)  # an empty region restricts nothing
    blocked = torch.zeros(b, outside.shape[-1], num_keys, device=inside.device)
    index = columns.to(inside.device)[:, None, :].expand(-1, outside.shape[-1], -1)
    blocked.scatter_(-1, index, outside.transpose(1, 2).float())
    bias = torch.zeros(b, outside.shape[-1], num_keys, dtype=dtype, device=inside.device)
    return bias.masked_fill(blocked > 0, float("-inf"))


def normalize_saliency_by_region(omega: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Region saliency: like :func:`normalize_saliency`, but the softmax runs over the positions of each person's
    region separately (``assignment`` ``(B, h, w)`` from :func:`assign_regions`), so one person's strong response
    does not take the other's positions; positions of no person keep the softmax over the whole image.

    ``(B, h, w), (B, h, w) -> (B, h, w)``; each region's values sum to 1.
    """
    out = normalize_saliency(omega)
    flat = omega.float().reshape(omega.shape[0], -1)
    who = assignment.reshape(assignment.shape[0], -1)
    for k in who.unique().tolist():
        if k == NO_PERSON:
            continue
        inside = who == k
        local = torch.softmax(flat.masked_fill(~inside, float("-inf")), dim=-1)
        out = torch.where(inside.reshape(out.shape), local.reshape(out.shape), out)
    return out
