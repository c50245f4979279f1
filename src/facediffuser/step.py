"""The Face-diffuser step: from the two models' noise predictions at one denoising step to the one the scheduler takes.

:func:`face_diffuser_step` is the body of the paper's sampling loop (Sec. 3.3 and its appendix algorithm) as a pure
function over tensors, in the manner of k-diffusion's samplers: the stage of the step, the chunks of each model's one
batched UNet call, and the :class:`~facediffuser.settings.SamplingSettings` go in; the noise prediction and, when
asked, a :class:`StepTrace` (the mask ``M`` and both normalised saliency maps) come out. It knows nothing of UNets,
schedulers or prompts: the pipeline evaluates each model on the conditions :func:`~facediffuser.fusion.stage_guidance`
names for the stage, in that order, and passes the chunks here.

* stage I: ``eps = eps_T`` (eq. 1);
* stage II: ``eps = M * eps_S + (1 - M) * eps_T`` (SNF, eqs. 3-5);
* stage III: ``eps = eps_S`` (eq. 2, or the release's base).

:class:`FusionTrace` stacks the traces of all steps of a call (paper Fig. 9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .fusion import (
    Stage,
    check_stage_fractions,
    normalize_saliency,
    saliency_adaptive_noise_fusion,
    saliency_map,
    stage_guidance,
    stage_schedule,
)
from .settings import SamplingSettings, StageBoundaries


def sampling_stages(
    timesteps: Sequence[float] | torch.Tensor, settings: SamplingSettings, num_train_timesteps: int = 1000
) -> list[Stage]:
    """The stage of every step of a call, by the rule ``settings.stage_boundaries`` names.

    * ``"steps"`` (the paper's): :func:`~facediffuser.fusion.stage_schedule` over ``len(timesteps)`` steps: stage I
      while the step index ``i < floor(alpha * T)``, stage II while ``i < floor(beta * T)``.
    * ``"noise"``: by each step's timestep ``t`` (the scheduler's own, a noise level of its training schedule of
      ``N = num_train_timesteps`` levels, fractional for sigma-based samplers)::

          stage I    t >= (1 - alpha) * N
          stage II   (1 - beta) * N <= t < (1 - alpha) * N
          stage III  t < (1 - beta) * N

      so alpha and beta are the fractions of the noise range passed when each stage ends, whatever the sampler, its
      timestep spacing or the number of steps. DDIM with ``"leading"`` spacing at 50 steps (timesteps 981, 961, ...,
      1) gives the paper's 15 / 15 / 20 steps at alpha 0.3, beta 0.6; ``alpha = beta = 1`` is the TDM alone and
      ``alpha = beta = 0`` the SDM alone, as with steps. A sampler that comes back to a noise level (a stochastic one
      that adds noise) is staged by the level, step by step.
    """
    if settings.stage_boundaries is StageBoundaries.STEPS:
        return stage_schedule(len(timesteps), settings.alpha, settings.beta)
    check_stage_fractions(settings.alpha, settings.beta)
    values = timesteps.tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
    # A hair of tolerance: (1 - 0.3) * 1000 is 700.0000000000001 in floats and must still take t = 700.
    end_text = (1.0 - settings.alpha) * num_train_timesteps - 1e-6
    end_fusion = (1.0 - settings.beta) * num_train_timesteps - 1e-6
    return [Stage.TEXT if t >= end_text else Stage.FUSION if t >= end_fusion else Stage.SUBJECT for t in values]


class StepTrace(NamedTuple):
    """Who drew what at one step.

    Attributes:
        mask: ``(B, 1, h, w)`` bool ``M``, ``True`` where the SDM's prediction was taken (all ``False`` in stage I,
            all ``True`` in stage III).
        saliency_text: ``(B, h, w)`` ``softmax(Omega_T)``, or ``None`` when the TDM was not evaluated.
        saliency_subject: ``(B, h, w)`` ``softmax(Omega_S)``, or ``None`` when the SDM was not evaluated.
    """

    mask: torch.Tensor
    saliency_text: torch.Tensor | None
    saliency_subject: torch.Tensor | None


def face_diffuser_step(
    stage: Stage,
    text_predictions: Sequence[torch.Tensor] | None,
    subject_predictions: Sequence[torch.Tensor] | None,
    settings: SamplingSettings,
    *,
    trace: bool = False,
    regions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, StepTrace | None]:
    """One step's noise prediction from both models' predictions.

    Args:
        stage: the stage of this step (:func:`~facediffuser.fusion.stage_schedule`).
        text_predictions: the TDM's ``(B, C, h, w)`` predictions, one per condition of
            :data:`~facediffuser.fusion.TEXT_MODEL_GUIDANCE`, in its order (``eps_T(0), eps_T(c)``); ``None`` in
            stage III.
        subject_predictions: the SDM's, one per condition of ``SUBJECT_MODEL_GUIDANCE[settings.subject_guidance_base]``
            (``eps_S(c), eps_S(c_aug)``, or ``eps_S(0), eps_S(c), eps_S(c_aug)`` for eq. 2); ``None`` in stage I.
        settings: the guidance scales, the SDM's guidance base and the SNF smoothing.
        trace: also return the :class:`StepTrace` (in stages I and III this computes saliency maps the step itself
            does not need).
        regions: ``(B, h, w)`` person index of each latent position (:func:`~facediffuser.fusion.assign_regions`):
            with ``settings.region_saliency``, SNF normalises the saliency per person region; ``None``: as the paper.

    Returns:
        ``(eps, trace)``: the ``(B, C, h, w)`` noise prediction for the scheduler, and the trace or ``None``.
    """
    text_guidance, subject_guidance = stage_guidance(stage, settings.subject_guidance_base)
    eps_text = eps_subject = scaled_text = scaled_subject = None
    if text_guidance is not None:
        eps_text, scaled_text = text_guidance(
            _given(text_predictions, "text_predictions", stage), settings.effective_guidance_scale
        )
    if subject_guidance is not None:
        predictions = _given(subject_predictions, "subject_predictions", stage)
        eps_subject, scaled_subject = subject_guidance(predictions, settings.effective_subject_guidance_scale)
    smooth_kwargs = {
        "smoothing": settings.smoothing,
        "kernel_size": settings.smoothing_kernel_size,
        "sigma": settings.smoothing_sigma,
    }

    if stage is Stage.FUSION:
        assignment = regions if settings.region_saliency else None
        eps, mask, norm_text, norm_subject = saliency_adaptive_noise_fusion(
            eps_text, eps_subject, scaled_text, scaled_subject, assignment=assignment, **smooth_kwargs
        )
        return eps, StepTrace(mask, norm_text, norm_subject) if trace else None

    eps = eps_text if stage is Stage.TEXT else eps_subject
    if not trace:
        return eps, None
    mask = torch.full_like(eps[:, :1], stage is Stage.SUBJECT, dtype=torch.bool)

    def normalized(scaled: torch.Tensor | None) -> torch.Tensor | None:
        return None if scaled is None else normalize_saliency(saliency_map(scaled, **smooth_kwargs))

    return eps, StepTrace(mask, normalized(scaled_text), normalized(scaled_subject))


def _given(predictions: Sequence[torch.Tensor] | None, name: str, stage: Stage) -> Sequence[torch.Tensor]:
    if predictions is None:
        raise ValueError(f"Stage {stage.name} evaluates this model: pass its noise predictions as `{name}`.")
    return predictions


@dataclass
class FusionTrace:
    """Who drew what, step by step (paper Fig. 9).

    Attributes:
        stages: the stage of each denoising step.
        timesteps: ``(T,)`` the scheduler's timesteps.
        masks: ``(T, B, h, w)`` float, 1 where the SDM's prediction was used (all 0 in stage I, all 1 in stage III).
        saliency_text: ``(T, B, h, w)`` ``softmax(Omega_T)``, NaN at steps where the TDM was not evaluated.
        saliency_subject: ``(T, B, h, w)`` ``softmax(Omega_S)``, NaN at steps where the SDM was not evaluated.
        regions: ``(B, K, h, w)`` each person's soft region (the TDM's stage-I attention to their class noun, each map
            summing to 1), or ``None`` when there is no stage I or no person.
        region_assignment: ``(B, h, w)`` long, the person each latent position belongs to (``-1``: no one), or
            ``None`` with ``regions``.
        ip_adapter_masks: ``(B, K, h, w)`` float, with an IP-Adapter as the subject model and several people: each
            person's adapter mask in stages II and III (their hard region), or ``None``.
    """

    stages: list[Stage]
    timesteps: torch.Tensor
    masks: torch.Tensor
    saliency_text: torch.Tensor
    saliency_subject: torch.Tensor
    regions: torch.Tensor | None = None
    region_assignment: torch.Tensor | None = None
    ip_adapter_masks: torch.Tensor | None = None

    @classmethod
    def from_steps(
        cls,
        stages: list[Stage],
        timesteps: torch.Tensor,
        steps: Sequence[StepTrace],
        regions: torch.Tensor | None = None,
        region_assignment: torch.Tensor | None = None,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> FusionTrace:
        """Stacks the :class:`StepTrace` of every step, on the CPU."""

        def stack(maps: list[torch.Tensor | None], like: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([torch.full_like(m, float("nan")) if s is None else s for s, m in zip(maps, like)]).cpu()

        masks = [step.mask[:, 0].float() for step in steps]
        return cls(
            stages=list(stages),
            timesteps=timesteps.detach().cpu(),
            masks=torch.stack(masks).cpu(),
            saliency_text=stack([step.saliency_text for step in steps], masks),
            saliency_subject=stack([step.saliency_subject for step in steps], masks),
            regions=None if regions is None else regions.detach().float().cpu(),
            region_assignment=None if region_assignment is None else region_assignment.detach().cpu(),
            ip_adapter_masks=None if ip_adapter_masks is None else ip_adapter_masks.detach().cpu(),
        )

    def stage_mean(self, stage: Stage, what: str = "masks") -> torch.Tensor:
        """``(B, h, w)`` mean of ``masks``, ``saliency_text`` or ``saliency_subject`` over the steps of ``stage``."""
        steps = [i for i, s in enumerate(self.stages) if s == stage]
        values: torch.Tensor = getattr(self, what)
        if not steps:
            return torch.full(values.shape[1:], float("nan"))
        return torch.nanmean(values[steps], dim=0)
