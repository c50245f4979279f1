"""Latent-consistency distillation (LCM; Luo et al. 2023) of one UNet of a Face-diffuser pipeline: ``train lcm``.

The base pipeline (``pretrained``) is the teacher; ``lcm_unet`` names the UNet distilled: the TDM (``unet``,
conditioned on the caption's ``c``) or the SDM (``subject_unet``, conditioned on ``c_aug``: the caption with each
person's class noun fused with their reference through the pipeline's own, frozen, fuser and vision tower). The
student starts as a copy of the teacher and all its weights are trained (the mini UNets have 6 M parameters; a LoRA
would save nothing worth its rank as a new setting). Each step, per image:

1. a start timestep ``t`` of the teacher's DDIM schedule (``lcm_solver_steps`` timesteps, ``k = N / steps`` apart)
   and ``s = t - k`` (at least 0); ``x_t`` is the image's latent noised to ``t``;
2. the frozen teacher's guided prediction at ``t``, with the guidance the pipeline samples with: the TDM's
   ``eps(0) + w * (eps(c) - eps(0))``, the SDM's ``eps(c) + w * (eps(c_aug) - eps(c))`` (the release's rule, anchored
   on the text), ``w`` drawn per image from ``[lcm_guidance_min, lcm_guidance_max]``; one DDIM step of it takes
   ``x_t`` to ``x_s``. There is no ``w``-embedding (as LCM-LoRA trains): the student sees the same condition whatever
   ``w`` was, so it answers a guidance scale of its own at sampling, and SNF still reads a guidance response from
   it (``eps(c) - eps(0)`` of the student);
3. the consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0(x, t)`` with LCMScheduler's boundary conditions
   (``c_skip(0) = 1``, ``c_out(0) = 0``; ``lcm_timestep_scaling``) of the student at ``(x_t, t)`` is pulled towards
   that of the target network at ``(x_s, s)``; the target is an EMA of the student (``lcm_target_decay``, LCM's
   0.95), without gradient;
4. the loss is the pseudo-Huber distance ``sqrt(d^2 + c^2) - c`` (``lcm_loss = "huber"``, ``c = lcm_huber_c``),
   averaged over the latent, or the mean squared error (``"l2"``).

Everything else is the project's loop (:class:`~facediffuser.training.trainer.Trainer`): the data of the distilled
model (the portraits' people for the SDM), accumulation, logging (the consistency loss is logged as ``denoising``),
checkpoints (the target network is saved with them, so a resume is exact), validation and export: a pipeline folder
whose distilled UNet is the student, whose scheduler is ``LCMScheduler`` and whose ``num_inference_steps`` and
``guidance_scale`` are ``lcm_inference_steps`` and ``lcm_inference_guidance_scale``. Distil the second UNet from that
folder to have both.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import torch
from diffusers import LCMScheduler

from ..pipeline import FaceDiffuserPipeline
from .config import ModelKind, TrainConfig
from .data import seeded_generator
from .export import export_pipeline
from .model import Denoiser
from .trainer import Trainer

# LCMScheduler's (and the consistency-model papers') sigma_data of the boundary conditions.
SIGMA_DATA = 0.5


def solver_timesteps(num_train_timesteps: int, solver_steps: int) -> tuple[torch.Tensor, int]:
    """The teacher's DDIM timesteps ``k - 1, 2k - 1, ..., N - 1`` (``k = N // solver_steps``), as LCMScheduler's
    ``original_inference_steps`` spaces them, and the skip ``k``."""
    skip = num_train_timesteps // solver_steps
    if skip < 1:
        raise ValueError(
            f"`lcm_solver_steps` ({solver_steps}) must not exceed the scheduler's {num_train_timesteps} training "
            "timesteps."
        )
    return torch.arange(1, solver_steps + 1) * skip - 1, skip


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of the consistency function at ``timesteps``, shaped ``(B, 1, 1, 1)``: exactly 1 and 0 at
    ``t = 0`` (LCMScheduler's ``get_scalings_for_boundary_condition_discrete``)."""
    scaled = timesteps.float() * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def x0_and_eps(
    output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor, alphas_cumprod: torch.Tensor, prediction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean latent and the noise a UNet's ``output`` at ``(sample, timesteps)`` stands for, per its
    ``prediction_type``."""
    a = alphas_cumprod[timesteps].float()[:, None, None, None]
    sqrt_a, sqrt_1a = a.sqrt(), (1 - a).sqrt()
    if prediction == "epsilon":
        return (sample - sqrt_1a * output) / sqrt_a, output
    if prediction == "v_prediction":
        return sqrt_a * sample - sqrt_1a * output, sqrt_a * output + sqrt_1a * sample
    if prediction == "sample":
        return output, (sample - sqrt_a * output) / sqrt_1a
    raise ValueError(f"The scheduler's prediction_type {prediction!r} is not one LCM distillation knows.")


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    """The pseudo-Huber (``huber``) or squared (``l2``) distance, averaged over every element."""
    if kind == "l2":
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    diff = pred.float() - target.float()
    return (torch.sqrt(diff**2 + huber_c**2) - huber_c).mean()


class LCMTrainer(Trainer):
    """Distils ``config.lcm_unet`` of ``config.pretrained`` into a latent-consistency student (module docstring).

    ``kind`` (what is trained, whose data and export rules apply) is the distilled model's: ``tdm`` or ``sdm``;
    :attr:`run_kind` is ``lcm``."""

    def __init__(self, config: TrainConfig, **kwargs: Any):
        super().__init__(ModelKind(config.lcm_unet), config, **kwargs)
        if self.xl is not None:  # a base given as a module (`train lcm` refuses an SDXL folder before it loads)
            from .model_xl import LCM_ON_XL

            raise ValueError(LCM_ON_XL.format(base="(the given base)"))
        c, device = config, self.accelerator.device
        self.teacher.to(device, self.weight_dtype)
        self.target.to(device)  # float32, like the student's weights it averages
        self.accelerator.register_for_checkpointing(self.target)  # after the EMA: the order of a checkpoint's files
        self.timesteps, self.skip = solver_timesteps(
            self.noise_scheduler.config.num_train_timesteps, c.lcm_solver_steps
        )
        self.timesteps = self.timesteps.to(device)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(device)
        self.prediction = self.noise_scheduler.config.prediction_type
        with torch.no_grad():
            self.null_embeds = self.text_encoder(self.empty_ids[None].to(device))[0].float()  # (1, L, D): "0"

    @property
    def run_kind(self) -> ModelKind:
        return ModelKind.LCM

    @property
    def uses_localization(self) -> bool:
        return False

    def freeze(self, denoiser: Denoiser) -> list[str]:
        """The student's UNet alone is trained (an SDM's fuser and vision tower stay the teacher's); the teacher and
        the target start as copies of it."""
        denoiser.requires_grad_(False)
        self.teacher = copy.deepcopy(denoiser.unet).eval()
        self.target = copy.deepcopy(denoiser.unet).eval()
        denoiser.unet.requires_grad_(True)
        return [name for name, p in denoiser.named_parameters() if p.requires_grad]

    def run_fingerprint(self) -> dict[str, Any]:
        c = self.config
        lcm = ("lcm_unet", "lcm_solver_steps", "lcm_guidance_min", "lcm_guidance_max", "lcm_loss", "lcm_huber_c")
        lcm += ("lcm_target_decay", "lcm_timestep_scaling")
        return {**super().run_fingerprint(), **{name: getattr(c, name) for name in lcm}}

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: dict[str, Any], micro_step: int) -> dict[str, torch.Tensor]:
        c, acc = self.config, self.accelerator
        device = acc.device
        g = seeded_generator([c.seed, micro_step, acc.process_index, 1], device)
        pixels = batch["pixel_values"].to(device, self.weight_dtype)
        positions = batch["subject_positions"].to(device)
        subject_pixels = batch["subject_pixels"].to(device)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample(generator=g) * self.vae.config.scaling_factor
            text = self.text_encoder(batch["input_ids"].to(device))[0].float()
            cond = self.denoiser.condition(text, subject_pixels, positions).float()  # c (TDM) or c_aug (SDM)
            # What the guidance is anchored on: the SDM's c (the release's rule), the TDM's empty prompt.
            base = text if self.kind is ModelKind.SDM else self.null_embeds.expand_as(text)
        latents = latents.float()
        n = latents.shape[0]
        noise = torch.randn(latents.shape, generator=g, device=device)
        index = torch.randint(0, len(self.timesteps), (n,), generator=g, device=device)
        w = c.lcm_guidance_min + (c.lcm_guidance_max - c.lcm_guidance_min) * torch.rand(n, generator=g, device=device)
        w = w[:, None, None, None]
        start = self.timesteps[index]
        end = (start - self.skip).clamp(min=0)
        noisy = self.noise_scheduler.add_noise(latents, noise, start)

        # The student's consistency function at (x_t, t).
        with acc.autocast():
            out = self.model(noisy, start, text, subject_pixels, positions, condition=cond)
        skip_t, out_t = boundary_scalings(start, c.lcm_timestep_scaling)
        student_x0, _ = x0_and_eps(out.float(), start, noisy, self.alphas_cumprod, self.prediction)
        pred = skip_t * noisy + out_t * student_x0

        with torch.no_grad():
            # The teacher's guided DDIM step from t to s.
            with acc.autocast():
                both = self.teacher(
                    torch.cat([noisy, noisy]).to(self.weight_dtype),
                    torch.cat([start, start]),
                    encoder_hidden_states=torch.cat([cond, base]).to(self.weight_dtype),
                ).sample.float()
            x0_c, eps_c = x0_and_eps(both[:n], start, noisy, self.alphas_cumprod, self.prediction)
            x0_b, eps_b = x0_and_eps(both[n:], start, noisy, self.alphas_cumprod, self.prediction)
            x0 = x0_b + w * (x0_c - x0_b)
            eps = eps_b + w * (eps_c - eps_b)
            a_end = self.alphas_cumprod[end].float()[:, None, None, None]
            x_end = a_end.sqrt() * x0 + (1 - a_end).sqrt() * eps
            # The target network's consistency function at (x_s, s).
            with acc.autocast():
                target_out = self.target(x_end, end, encoder_hidden_states=cond).sample.float()
            skip_s, out_s = boundary_scalings(end, c.lcm_timestep_scaling)
            target_x0, _ = x0_and_eps(target_out, end, x_end, self.alphas_cumprod, self.prediction)
            target = skip_s * x_end + out_s * target_x0

        loss = consistency_loss(pred, target, c.lcm_loss, c.lcm_huber_c)
        zero = torch.zeros((), device=device)
        return {"loss": loss, "denoising": loss.detach(), "localization": zero}

    def after_optimizer_step(self) -> None:
        """The student's own EMA (``use_ema``), then the target network's: ``target <- d * target + (1 - d) *
        student``."""
        super().after_optimizer_step()
        decay = self.config.lcm_target_decay
        with torch.no_grad():
            for kept, live in zip(self.target.parameters(), self.denoiser.unet.parameters()):
                kept.mul_(decay).add_(live.detach().float(), alpha=1.0 - decay)

    # ------------------------------------------------------------------ validation and export
    def lcm_scheduler(self, config: Any) -> LCMScheduler:
        """LCMScheduler over the base's noise schedule, on the solver's timesteps and boundary conditions."""
        c = self.config
        accepted = inspect.signature(LCMScheduler.__init__).parameters  # another scheduler's own keys are left out
        own = {k: v for k, v in dict(config).items() if k in accepted}
        return LCMScheduler.from_config(
            own, original_inference_steps=c.lcm_solver_steps, timestep_scaling=c.lcm_timestep_scaling
        )

    def validation_scheduler(self) -> LCMScheduler:
        return self.lcm_scheduler(self.scheduler_config)

    def validation_sampling(self):
        c = self.config
        return (
            super()
            .validation_sampling()
            .replace(num_inference_steps=c.lcm_inference_steps, guidance_scale=c.lcm_inference_guidance_scale)
        )

    def write_pipeline(self, state: dict[str, dict[str, torch.Tensor]], base: FaceDiffuserPipeline, out: Path) -> Path:
        """The base with the student in the distilled UNet's slot, LCMScheduler, and ``lcm_inference_steps`` and
        ``lcm_inference_guidance_scale`` as its own number of steps and guidance scale."""
        base.register_modules(scheduler=self.lcm_scheduler(base.scheduler.config))
        base.register_to_config(
            num_inference_steps=self.config.lcm_inference_steps, guidance_scale=self.config.lcm_inference_guidance_scale
        )
        return export_pipeline(self.kind, state, base, out)
