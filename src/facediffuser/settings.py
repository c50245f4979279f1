"""The settings that define one Face-diffuser sample, with their defaults written once.

:class:`SamplingSettings` is the one source of truth for the number of steps, the stage fractions ``alpha`` and
``beta``, both guidance scales, the SDM's guidance base and the SNF smoothing. It is frozen and validated when it is
made, so a value that reaches the pipeline has been checked once, with the same words for every caller (the CLI, the
evaluation methods, the trainer's validation, the benchmarks and the demo).

``FaceDiffuserPipeline.__call__`` keeps diffusers' keyword names; :meth:`SamplingSettings.pipeline_kwargs` maps the
settings onto them::

    settings = SamplingSettings(alpha=0.2)
    images = pipe(prompt, reference_images=refs, **settings.pipeline_kwargs()).images
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

from .fusion import RegionSource, Smoothing, SubjectGuidanceBase, check_stage_fractions

# The most denoising steps: SD1.x models are trained on 1000 timesteps, and DDIM and PNDM refuse more (others would
# repeat timesteps). A count read from a file is held to it before a model loads, not after.
MAX_STEPS = 1000
# The paper's number of steps: what a model whose folder names no number of steps of its own samples with.
DEFAULT_STEPS = 50
# The paper's guidance scale ``w`` (and the release's): what a model whose folder names no guidance scale of its own
# samples with.
DEFAULT_GUIDANCE_SCALE = 5.0
# The largest guidance scale: float32's largest number (bfloat16's is a hair below it, float16's is 65504). A larger
# scale cannot be held by the sampling's numbers at all: the guided noise, the latents and the image become inf and
# NaN (an all-black picture). Smaller scales can overflow too, with large differences between the predictions or in
# float16: the pipeline checks the latents of every step for that.
MAX_GUIDANCE_SCALE = 3.4028234663852886e38

# The options that use the person regions (docs/method.md, Person regions); all off by default.
REGION_OPTIONS = ("region_attention", "region_attention_text", "region_saliency")


class StageBoundaries(str, enum.Enum):
    """What ``alpha`` and ``beta`` measure (docs/method.md, Stages by noise level)."""

    STEPS = "steps"  # the paper's rule: fractions of the denoising steps
    NOISE = "noise"  # noise levels: fractions of the scheduler's training timesteps, counted from pure noise


# Field metadata: ``help`` is the text of the matching CLI flag (see :mod:`facediffuser.io.configuration`); ``ui_range``
# is the (min, max) a slider offers (the demo). Validation in ``__post_init__`` is the rule; a range is only a UI bound.


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """How one Face-diffuser sample is drawn (paper Sec. 3.2.3 and 3.3; eqs. 1-5, docs/method.md).

    Defaults are the paper's and the release's: ``alpha = 0.3``, ``beta = 0.6`` (Fig. 8). The number of steps ``T``,
    the guidance scale ``w`` and the scheduler are the model's own: ``None`` steps take the number its pipeline
    folder names (``FaceDiffuserPipeline``'s ``num_inference_steps``), else the paper's 50; a ``None`` guidance scale
    the one it names (``guidance_scale``), else the paper's 5 for both models.
    """

    num_inference_steps: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "denoising steps T, at most 1000; default: the model's own (the num_inference_steps its "
            f"model_index.json names), else {DEFAULT_STEPS}, the paper's",
            "ui_range": (1, 150),
        },
    )
    alpha: float = dataclasses.field(
        default=0.3,
        metadata={"help": "stage I (TDM only) ends at step floor(alpha*T); 0 <= alpha <= beta", "ui_range": (0.0, 1.0)},
    )
    beta: float = dataclasses.field(
        default=0.6,
        metadata={
            "help": "stage III (SDM only) starts at step floor(beta*T); alpha <= beta <= 1",
            "ui_range": (0.0, 1.0),
        },
    )
    stage_boundaries: StageBoundaries = dataclasses.field(
        default=StageBoundaries.STEPS,
        metadata={
            "help": "what alpha and beta measure: 'steps', fractions of the steps (the paper's rule); 'noise', noise "
            "levels: stage I holds the steps whose timestep t >= (1 - alpha) * N, stage III those with "
            "t < (1 - beta) * N (N: the scheduler's training timesteps, 1000 for SD1.x), whatever the sampler and "
            "the number of steps"
        },
    )
    guidance_scale: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "guidance scale w of the TDM (eq. 1); default: the model's own (the guidance_scale its "
            f"model_index.json names), else {DEFAULT_GUIDANCE_SCALE:g}, the paper's",
            "ui_range": (0.0, 20.0),
        },
    )
    subject_guidance_scale: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "guidance scale w of the SDM (eq. 2); default: the model's own when its model_index.json names "
            "one, else the same as --guidance-scale",
            "ui_range": (0.0, 20.0),
        },
    )
    subject_guidance_base: SubjectGuidanceBase = dataclasses.field(
        default=SubjectGuidanceBase.TEXT,
        metadata={"help": "'text': eps_S(c) + w R_S, the official release; 'null': eps_S(0) + w R_S, paper eq. 2"},
    )
    smoothing: Smoothing = dataclasses.field(
        default=Smoothing.BOX, metadata={"help": "Smooth() of the SNF saliency: 'box' as released, or 'gaussian'"}
    )
    smoothing_kernel_size: int = dataclasses.field(
        default=4, metadata={"help": "SNF smoothing kernel size", "ui_range": (1, 9)}
    )
    smoothing_sigma: float = dataclasses.field(
        default=1.0, metadata={"help": "sigma of the 'gaussian' smoothing", "ui_range": (0.1, 5.0)}
    )
    region_attention: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "in stages II-III, each person's fused token in the SDM attends only inside that person's region "
            "(the TDM's stage-I attention to their class noun); off: the paper's sampling"
        },
    )
    region_attention_text: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "in stage II, each person's class-noun token in the TDM attends only inside that person's region; "
            "off: the paper's sampling"
        },
    )
    region_saliency: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "in SNF, the saliency softmax runs over each person's region separately (the background keeps "
            "the softmax over the image); off: the paper's sampling"
        },
    )

    region_source: RegionSource = dataclasses.field(
        default=RegionSource.TDM,
        metadata={
            "help": "where the person regions are read from: 'tdm', the TDM's attention to each class noun over "
            "stage I (no more UNet evaluations); 'sdm', each fused token's attention in the SDM less its class "
            "noun's, probed once at the end of stage I (2 more UNet evaluations an image). Only used when a region "
            "option or the masks ask for regions"
        },
    )

    def __post_init__(self) -> None:
        # Enums may be given by value ("null"); store the members.
        for name, kind in (
            ("subject_guidance_base", SubjectGuidanceBase),
            ("smoothing", Smoothing),
            ("region_source", RegionSource),
            ("stage_boundaries", StageBoundaries),
        ):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                raise ValueError(f"`{name}` must be one of {[m.value for m in kind]}, got {value!r}.") from None
        steps = self.num_inference_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(
                f"`num_inference_steps` (the number of denoising steps) must be a positive integer, got {steps!r}."
            )
        if steps is not None and steps > MAX_STEPS:
            raise ValueError(
                f"`num_inference_steps` (the number of denoising steps) must be at most {MAX_STEPS}, the timesteps "
                f"SD1.x models are trained on, got {steps!r}."
            )
        check_stage_fractions(self.alpha, self.beta)
        for name in ("guidance_scale", "subject_guidance_scale"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0 (non-negative), got {value!r}.")
            if value > MAX_GUIDANCE_SCALE:
                raise ValueError(
                    f"`{name}` must be at most {MAX_GUIDANCE_SCALE:.4g}, the largest float32 number (no sampling "
                    f"dtype holds a larger one: the image would be all black), got {value!r}; 1 to 20 is usual."
                )
        size = self.smoothing_kernel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`smoothing_kernel_size` must be a positive integer, got {size!r}.")
        if size > MAX_IMAGE_SIDE:  # wider than any latent map: it only averages the whole map (and pads it hugely)
            raise ValueError(
                f"`smoothing_kernel_size` must be at most {MAX_IMAGE_SIDE}, the largest image side, got {size!r}."
            )
        sigma = self.smoothing_sigma
        if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"`smoothing_sigma` must be a finite number > 0, got {sigma!r}.")
        for name in REGION_OPTIONS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be true or false, got {getattr(self, name)!r}.")

    @property
    def uses_regions(self) -> bool:
        """Whether an option that needs the person regions is on."""
        return any(getattr(self, name) for name in REGION_OPTIONS)

    @property
    def effective_guidance_scale(self) -> float:
        """The TDM's ``w``: :attr:`guidance_scale`, or the paper's :data:`DEFAULT_GUIDANCE_SCALE` when that is
        ``None`` and no model names its own (``FaceDiffuserPipeline`` first fills a ``None`` with its own
        ``guidance_scale``, when its config names one)."""
        return DEFAULT_GUIDANCE_SCALE if self.guidance_scale is None else self.guidance_scale

    @property
    def effective_subject_guidance_scale(self) -> float:
        """The SDM's ``w``: :attr:`subject_guidance_scale`, or :attr:`effective_guidance_scale` when that is ``None``.

        (``FaceDiffuserPipeline`` first fills a ``None`` with its own ``subject_guidance_scale``, when its config
        names one.)"""
        return self.effective_guidance_scale if self.subject_guidance_scale is None else self.subject_guidance_scale

    def replace(self, **changes: Any) -> SamplingSettings:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``FaceDiffuserPipeline.__call__`` that these settings set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: enums as their values (the form the CLI flags take back). The region options appear only
        when on, the region source only with one of them, and the stage boundaries only by noise level, so that what
        the paper's sampling records (in a PNG's parameters, a run's files) reads as before."""
        return {
            k: v.value if hasattr(v, "value") else v
            for k, v in self.pipeline_kwargs().items()
            if not (k in REGION_OPTIONS and v is False)
            and not (k == "region_source" and not self.uses_regions)
            and not (k == "stage_boundaries" and v is StageBoundaries.STEPS)
        }


# The largest side ``check_image_size`` takes: 8 times SD1.x's 512 px (SDXL draws 1024 px). A larger side asks for
# latents, and attention maps over them, that no machine of today holds.
MAX_IMAGE_SIDE = 4096
# The most images one call draws: they are one batch, every model sees them all at once.
MAX_NUM_IMAGES = 64
# What ``torch.Generator.manual_seed`` takes, without the negative numbers it folds onto the top of this range.
MAX_SEED = 2**64 - 1


def check_image_size(height: int | None, width: int | None, multiple: int = 8) -> None:
    """Raises ``ValueError`` unless each given size is a positive multiple of ``multiple`` (the VAE's scale, at least
    8) of at most :data:`MAX_IMAGE_SIDE` pixels. ``None`` means the model's default size and passes."""
    for name, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
            raise ValueError(f"`{name}` must be a positive multiple of {multiple}, got {value!r}.")
        if value > MAX_IMAGE_SIDE:
            raise ValueError(f"`{name}` must be at most {MAX_IMAGE_SIDE} pixels, got {value!r}.")


def check_num_images(value: int, name: str = "num_images") -> None:
    """Raises ``ValueError`` unless ``value`` is a whole number of images from 1 to :data:`MAX_NUM_IMAGES`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NUM_IMAGES:
        raise ValueError(f"`{name}` must be a whole number from 1 to {MAX_NUM_IMAGES}, got {value!r}.")


def check_seed(value: int, name: str = "seed") -> None:
    """Raises ``ValueError`` unless ``value`` is a seed ``torch.Generator.manual_seed`` takes: 0 to
    :data:`MAX_SEED` (2**64 - 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"`{name}` must be a whole number from 0 to 2**64 - 1 ({MAX_SEED}), got {value!r}.")
