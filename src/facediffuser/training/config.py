"""The training configuration: one dataclass, the single source of the ``facediffuser train`` flags and TOML keys."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import DEFAULT_GUIDANCE_SCALE, SamplingSettings

# What an SDM reference is cut to (training.data): the person's whole box (the recipe), or their head box.
REFERENCE_REGIONS = ("person", "head")


class ModelKind(str, enum.Enum):
    """Which model is trained."""

    SDM = "sdm"  # subject-augmented: subject UNet + fuser + last vision layers, on captions with placeholders
    TDM = "tdm"  # text-driven: the scene UNet, on plain captions
    IP_ADAPTER = "ip-adapter"  # an IP-Adapter on the frozen scene UNet: image projection + image key/value layers
    LCM = "lcm"  # a latent-consistency student of one UNet of the base pipeline (training.lcm; lcm_unet says which)


# The UNets `train lcm` distils: the scene model (`unet`) or the subject model (`subject_unet`) of the base pipeline.
LCM_UNETS = (ModelKind.TDM.value, ModelKind.SDM.value)
# The consistency losses: the pseudo-Huber loss of the consistency-model papers (what LCM-LoRA trains with), or L2.
LCM_LOSSES = ("huber", "l2")


class LogBackend(str, enum.Enum):
    AUTO = "auto"  # TensorBoard when installed, else CSV
    TENSORBOARD = "tensorboard"
    CSV = "csv"


# Seeds of a training run: numpy's SeedSequence and torch's generators take any of these, also once mixed with the
# epoch and the step.
SEED_LIMIT = 2**32


class MixedPrecision(str, enum.Enum):
    AUTO = "auto"  # what `accelerate launch` / `accelerate config` says, else full precision
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


def _f(help_text: str, **extra) -> dict:
    return {"help": help_text, **extra}


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults follow the released recipe (docs/method.md, Training) but the step count.

    The model kind (``sdm`` or ``tdm``) is not a setting: it is the command (``facediffuser train sdm``).
    """

    data_root: Path = field(metadata=_f("FFHQ-wild data root (image_ids_train.txt, <id[:5]>/<id>.{jpg,npy,json})"))
    output_dir: Path = field(default=Path("outputs/train"), metadata=_f("where checkpoints, logs and the model go"))
    pretrained: str = field(
        default="tiny",
        metadata=_f(
            "base Face-diffuser pipeline folder (SD1.x or SDXL), or 'tiny' / 'tiny-xl' for the tiny random SD1.x / "
            "SDXL components (CPU tests)"
        ),
    )
    split: str = field(default="train", metadata=_f("split of the data root to train on"))
    resolution: int = field(default=512, metadata=_f("side of the training images in pixels"))
    train_batch_size: int = field(default=8, metadata=_f("images per process and micro-batch"))
    gradient_accumulation_steps: int = field(default=1, metadata=_f("micro-batches per optimizer step"))
    max_train_steps: int = field(default=1000, metadata=_f("optimizer steps in total (resuming counts the done ones)"))
    learning_rate: float = field(default=1e-5, metadata=_f("AdamW learning rate"))
    fuser_learning_rate: float | None = field(
        default=None,
        metadata=_f(
            "SDM: a learning rate of its own for the fuser (its own AdamW parameter group, on the same schedule); "
            "unset, the fuser takes learning_rate, as in the recipe"
        ),
    )
    lr_scheduler: str = field(
        default="constant",
        metadata=_f("diffusers scheduler name: constant, constant_with_warmup, linear, cosine, ..."),
    )
    lr_warmup_steps: int = field(default=0, metadata=_f("warm-up optimizer steps of the LR schedule"))
    adam_beta1: float = field(default=0.9, metadata=_f("AdamW beta1"))
    adam_beta2: float = field(default=0.999, metadata=_f("AdamW beta2"))
    adam_weight_decay: float = field(default=1e-2, metadata=_f("AdamW weight decay"))
    adam_epsilon: float = field(default=1e-8, metadata=_f("AdamW epsilon"))
    max_grad_norm: float = field(default=1.0, metadata=_f("gradient clipping norm (0 disables clipping)"))
    mixed_precision: MixedPrecision = field(
        default=MixedPrecision.AUTO, metadata=_f("training precision of the frozen parts and autocast")
    )
    gradient_checkpointing: bool = field(default=False, metadata=_f("recompute UNet activations to save memory"))
    use_ema: bool = field(default=False, metadata=_f("keep an exponential moving average of the trained weights"))
    ema_decay: float = field(default=0.9999, metadata=_f("EMA decay"))
    snr_gamma: float | None = field(
        default=None,
        metadata=_f(
            "min-SNR loss weighting (Hang et al. 2023): each timestep's SNR clipped at this gamma (5 is usual)"
        ),
    )
    seed: int = field(default=0, metadata=_f("seed of the data order, augmentations and noise"))
    max_subjects: int = field(default=4, metadata=_f("SDM: at most this many people per image"))
    subject_keep_prob: float = field(default=0.9, metadata=_f("SDM: probability of keeping each person"))
    uncondition_prob: float = field(
        default=0.1,
        metadata=_f("probability of an empty caption (and no people); for ip-adapter: text and image both dropped"),
    )
    image_drop_prob: float = field(
        default=0.05,
        metadata=_f("ip-adapter: probability of dropping the reference image alone (the IP-Adapter paper's 0.05)"),
    )
    text_drop_prob: float = field(
        default=0.05,
        metadata=_f("ip-adapter: probability of dropping the caption alone (the IP-Adapter paper's 0.05)"),
    )
    mask_loss_prob: float = field(default=0.5, metadata=_f("SDM: probability per batch of the masked denoising loss"))
    localization_weight: float = field(default=1e-3, metadata=_f("SDM: weight of the localization loss (0 disables)"))
    head_loss_weight: float = field(
        default=0.0,
        metadata=_f(
            "SDM: extra weight of the denoising loss on the people's heads (their segment inside their 'head_box'): "
            "a head position counts 1 + this; 0 is the recipe's"
        ),
    )
    vision_trainable_layers: int = field(default=2, metadata=_f("SDM: trained last layers of the CLIP vision tower"))
    reference_jitter_strength: float = field(
        default=0.5,
        metadata=_f(
            "SDM: the references' colour jitter (brightness, contrast, saturation factors in [1-s, 1+s], with "
            "probability 0.5); 0.5 is the recipe's"
        ),
    )
    reference_grayscale_prob: float = field(
        default=0.1, metadata=_f("SDM: probability of a grayscale reference; 0.1 is the recipe's")
    )
    other_image_reference_prob: float = field(
        default=0.0,
        metadata=_f(
            "SDM: probability of cutting a person's reference from another image of them (needs person segments "
            "with an 'identity'); 0 is the recipe's: from the training image itself"
        ),
    )
    reference_region: str = field(
        default="person",
        metadata=_f(
            "SDM: what a reference is cut to: 'person' (the recipe's: the person's box) or 'head' (their head box: "
            "needs person segments with a 'head_box')"
        ),
    )
    dataloader_num_workers: int = field(default=0, metadata=_f("data-loader worker processes"))
    checkpointing_steps: int = field(default=500, metadata=_f("save a resumable checkpoint every N steps (0: never)"))
    checkpoints_total_limit: int = field(default=3, metadata=_f("keep the last K checkpoints"))
    resume: str | None = field(
        default=None, metadata=_f("resume from a checkpoint folder, or 'latest' in output_dir/checkpoints")
    )
    validation_steps: int = field(default=500, metadata=_f("write a validation grid every M steps (0: never)"))
    num_validation_samples: int = field(default=4, metadata=_f("validation samples, from the test split"))
    validation_split: str = field(default="test", metadata=_f("split the validation samples come from"))
    # Fewer steps than a real sample (SamplingSettings' default) to keep validation cheap during training.
    validation_inference_steps: int = field(default=25, metadata=_f("DDIM steps of the validation images"))
    validation_guidance_scale: float = field(
        default=DEFAULT_GUIDANCE_SCALE,
        metadata=_f("guidance scale w of the validation images (train lcm: --lcm-inference-guidance-scale)"),
    )
    logging_steps: int = field(default=10, metadata=_f("log the losses every N steps"))
    log_with: LogBackend = field(default=LogBackend.AUTO, metadata=_f("log to TensorBoard or CSV"))
    # Latent-consistency distillation (`train lcm`; training.lcm). The base pipeline (`pretrained`) is the teacher.
    lcm_unet: str = field(
        default="tdm",
        metadata=_f(
            "lcm: which UNet of --pretrained is distilled: 'tdm' (the scene model) or 'sdm' (the subject model)"
        ),
    )
    lcm_solver_steps: int = field(
        default=50,
        metadata=_f(
            "lcm: the teacher's DDIM schedule: one solver step skips num_train_timesteps / N timesteps (LCM's 50, "
            "what LCMScheduler's original_inference_steps samples from)"
        ),
    )
    lcm_guidance_min: float = field(
        default=2.0, metadata=_f("lcm: the teacher's guidance scale is drawn per image, uniformly from this ...")
    )
    lcm_guidance_max: float = field(
        default=8.0, metadata=_f("lcm: ... to this (no w-embedding: the student learns the range)")
    )
    lcm_loss: str = field(default="huber", metadata=_f("lcm: the consistency loss: 'huber' (pseudo-Huber) or 'l2'"))
    lcm_huber_c: float = field(default=1e-3, metadata=_f("lcm: the pseudo-Huber loss's c"))
    lcm_target_decay: float = field(
        default=0.95, metadata=_f("lcm: EMA decay of the target network (LCM's 0.95); 0 makes the target the student")
    )
    lcm_timestep_scaling: float = field(
        default=10.0,
        metadata=_f("lcm: the boundary conditions' timestep scaling (c_skip, c_out; LCMScheduler's 10)"),
    )
    lcm_inference_steps: int = field(
        default=4, metadata=_f("lcm: the steps the exported pipeline samples with by default, and the validation's")
    )
    lcm_inference_guidance_scale: float = field(
        default=2.0,
        metadata=_f(
            "lcm: the guidance scale the exported pipeline samples with by default, and the validation's (2: the "
            "mini model's best on validation people)"
        ),
    )

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        self.output_dir = Path(self.output_dir)
        self.mixed_precision = MixedPrecision(self.mixed_precision)
        self.log_with = LogBackend(self.log_with)
        positive = ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "max_subjects")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.resolution % 8:
            raise ValueError(f"`resolution` must be a multiple of 8 (the VAE's scale), got {self.resolution}.")
        non_negative = (
            "lr_warmup_steps",
            "max_grad_norm",
            "localization_weight",
            "vision_trainable_layers",
            "dataloader_num_workers",
            "checkpointing_steps",
            "validation_steps",
            "num_validation_samples",
            "logging_steps",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must not be negative, got {getattr(self, name)}.")
        within_one = (
            "subject_keep_prob",
            "uncondition_prob",
            "mask_loss_prob",
            "ema_decay",
            "reference_jitter_strength",
            "reference_grayscale_prob",
            "other_image_reference_prob",
            "image_drop_prob",
            "text_drop_prob",
        )
        for name in within_one:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be within [0, 1], got {getattr(self, name)}.")
        for name in ("learning_rate", "fuser_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive number, got {value}.")
        if self.image_drop_prob + self.text_drop_prob > 1.0:
            raise ValueError(
                f"`image_drop_prob` + `text_drop_prob` must be at most 1 (they are exclusive), got "
                f"{self.image_drop_prob} + {self.text_drop_prob}."
            )
        if not (math.isfinite(self.head_loss_weight) and self.head_loss_weight >= 0):
            raise ValueError(f"`head_loss_weight` must be a non-negative number, got {self.head_loss_weight}.")
        if self.reference_region not in REFERENCE_REGIONS:
            raise ValueError(
                f"`reference_region` must be one of {', '.join(REFERENCE_REGIONS)}, got {self.reference_region!r}."
            )
        if self.snr_gamma is not None and not (math.isfinite(self.snr_gamma) and self.snr_gamma > 0):
            raise ValueError(f"`snr_gamma` must be a positive number, got {self.snr_gamma}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"`seed` must be an integer from 0 to {SEED_LIMIT - 1}, got {self.seed!r}.")
        if self.checkpoints_total_limit < 1:
            raise ValueError(f"`checkpoints_total_limit` must be at least 1, got {self.checkpoints_total_limit}.")
        self.check_lcm()
        try:
            self.validation_settings(ModelKind.SDM)
        except ValueError as err:
            raise ValueError(
                f"The validation settings are not valid (validation_inference_steps = {self.validation_inference_steps}"
                f", validation_guidance_scale = {self.validation_guidance_scale}): {err}"
            ) from err

    def check_lcm(self) -> None:
        """The ``lcm_*`` settings' rules (they are checked for every kind: a TOML file may carry them)."""
        if self.lcm_unet not in LCM_UNETS:
            raise ValueError(f"`lcm_unet` must be one of {', '.join(LCM_UNETS)}, got {self.lcm_unet!r}.")
        if self.lcm_loss not in LCM_LOSSES:
            raise ValueError(f"`lcm_loss` must be one of {', '.join(LCM_LOSSES)}, got {self.lcm_loss!r}.")
        for name in ("lcm_solver_steps", "lcm_inference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
                raise ValueError(f"`{name}` must be a whole number from 1 to 1000, got {value!r}.")
        for name in ("lcm_guidance_min", "lcm_guidance_max", "lcm_huber_c", "lcm_timestep_scaling"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a non-negative number, got {value}.")
        scale = self.lcm_inference_guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"`lcm_inference_guidance_scale` must be a non-negative number, got {scale!r}.")
        try:  # the exported pipeline's own rule (its model_index.json is read back with it)
            SamplingSettings(guidance_scale=scale)
        except ValueError as err:
            raise ValueError(str(err).replace("`guidance_scale`", "`lcm_inference_guidance_scale`")) from None
        if self.lcm_guidance_min > self.lcm_guidance_max:
            raise ValueError(
                f"`lcm_guidance_min` ({self.lcm_guidance_min}) must not exceed `lcm_guidance_max` "
                f"({self.lcm_guidance_max}): the teacher's guidance scale is drawn between them."
            )
        if not 0.0 <= self.lcm_target_decay <= 1.0:
            raise ValueError(f"`lcm_target_decay` must be within [0, 1], got {self.lcm_target_decay}.")

    def validation_settings(self, kind: ModelKind) -> SamplingSettings:
        """How validation images are drawn: the trained model alone (the SDM and the IP-Adapter with
        ``alpha = beta = 0``, the TDM with ``alpha = beta = 1``), with ``validation_inference_steps`` and
        ``validation_guidance_scale``; every other setting is :class:`~facediffuser.settings.SamplingSettings`'
        default."""
        only = 1.0 if ModelKind(kind) is ModelKind.TDM else 0.0
        return SamplingSettings(
            num_inference_steps=self.validation_inference_steps,
            guidance_scale=self.validation_guidance_scale,
            alpha=only,
            beta=only,
        )


# What a training run writes into its --output-dir: the run's own record, checkpoints, logs and validation grids
# (the exported pipeline's entries are owned when it is written, see Trainer.export).
RUN_ENTRIES = ("train_config.json", "checkpoints/", "logs/", "validation/")
# A run folder written before output folders carried a marker: its train_config.json or its checkpoints.
RUN_LEGACY = ("train_config.json", "checkpoints/checkpoint-*")


def output_inputs(config: TrainConfig) -> list[Path]:
    """The folders a run reads, which its --output-dir must keep apart from: the data and a base pipeline folder."""
    inputs = [Path(config.data_root)]
    if config.pretrained not in ("tiny", "tiny-xl"):
        inputs.append(Path(config.pretrained))
    return inputs


def check_output_dir(config: TrainConfig) -> Path:
    """Whether ``config.output_dir`` may take this run (see :mod:`facediffuser.io.output_folders`); writes nothing."""
    from ..io.loading import pipeline_entries
    from ..io.output_folders import check, check_own

    out = check(
        config.output_dir, command="train", inputs=output_inputs(config), flag="--output-dir", legacy=RUN_LEGACY
    )
    check_own(out, *RUN_ENTRIES, *pipeline_entries(), "ip-adapter.safetensors", command="train")
    return out
