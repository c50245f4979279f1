"""The mini VAE: a small ``diffusers.AutoencoderKL`` trained on world renders.

What makes a small VAE learn fast on a CPU, each a setting of :class:`VaeSettings`:

- random crops (``crop``): the encoder and decoder are fully convolutional (no mid-block attention), so a 32 px crop
  of a 64 px render trains them at a quarter of the cost of the whole image, and held-out images are scored whole;
- a small KL weight (``kl_weight``): the latents only need to be roughly unit-scale for the diffusion model; the
  scale factor is measured after training (:func:`measure_scaling_factor`) and written into the config;
- a learning rate with linear warm-up and cosine decay (``learning_rate``, ``warmup_steps``);
- L1 plus squared error on pixels (no perceptual or adversarial loss: no pretrained network is at hand).

Training is seeded and resumes exactly in one process: the batch order, the crops, the flips and the posterior
samples all come from one ``torch.Generator`` whose state is checkpointed with the weights, the optimizer and the
schedule. Devices go through ``accelerate``.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...io.weight_files import first_line, refused_global

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class VaeSettings:
    """The mini VAE's architecture and training recipe."""

    channels: tuple[int, ...] = (32, 64, 64)  # per level; scale factor 2 ** (levels - 1)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_groups: int = 16
    steps: int = 6000
    batch_size: int = 16
    crop: int = 32  # side of the random training crops (0: whole images)
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # the cosine decay ends at this fraction of the learning rate
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 500
    eval_images: int = 128  # held-out images scored at each eval (all of them at the end)

    def __post_init__(self) -> None:
        if len(self.channels) < 1 or any(c < 1 or c % self.norm_groups for c in self.channels):
            raise ValueError(
                f"VAE channels {self.channels} must be positive multiples of norm_groups = {self.norm_groups}."
            )
        for name in ("steps", "batch_size", "latent_channels", "layers_per_block", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAE setting `{name}` must be at least 1, got {getattr(self, name)}.")
        if self.crop < 0 or (self.crop and self.crop % self.scale_factor):
            raise ValueError(f"VAE crop {self.crop} must be 0 or a multiple of the scale factor {self.scale_factor}.")
        if self.learning_rate <= 0 or self.kl_weight < 0 or self.warmup_steps < 0:
            raise ValueError("The VAE's learning rate must be positive, its KL weight and warm-up non-negative.")

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaeSettings:
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        return cls(**data)


def make_vae(settings: VaeSettings, sample_size: int = 64):
    """A fresh ``AutoencoderKL`` of these settings (seeded by the caller)."""
    from diffusers import AutoencoderKL

    levels = len(settings.channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(settings.channels),
        layers_per_block=settings.layers_per_block,
        latent_channels=settings.latent_channels,
        norm_num_groups=settings.norm_groups,
        sample_size=sample_size,
        mid_block_add_attention=False,  # fully convolutional: crops train the same network that sees whole images
    )


def to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))  # a writable copy
    x = x.permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured on [0, 1] (the clamped reconstruction)."""
    a = (reconstruction.clamp(-1, 1) + 1) / 2
    b = (target + 1) / 2
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def lr_factor(step: int, settings: VaeSettings) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``steps``."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sample_batch(images: torch.Tensor, settings: VaeSettings, generator: torch.Generator) -> torch.Tensor:
    """A batch of random crops, half of them flipped: uint8 (N, H, W, 3) -> float (B, 3, c, c) in [-1, 1]."""
    n, h, w, _ = images.shape
    index = torch.randint(0, n, (settings.batch_size,), generator=generator)
    crop = settings.crop or h
    top = torch.randint(0, h - crop + 1, (settings.batch_size,), generator=generator)
    left = torch.randint(0, w - crop + 1, (settings.batch_size,), generator=generator)
    flip = torch.rand(settings.batch_size, generator=generator) < 0.5
    crops = []
    for i, t, x, f in zip(index.tolist(), top.tolist(), left.tolist(), flip.tolist(), strict=True):
        c = images[i, t : t + crop, x : x + crop]
        crops.append(c.flip(1) if f else c)
    return to_pixels(torch.stack(crops))


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Mode reconstructions of uint8 images, float (N, 3, H, W) in [-1, 1] on the CPU."""
    out = []
    device = next(vae.parameters()).device
    for start in range(0, len(images), batch_size):
        x = to_pixels(images[start : start + batch_size]).to(device)
        out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.float().cpu())
    return torch.cat(out)


def evaluate(vae, images: np.ndarray) -> dict[str, float]:
    """Held-out reconstruction figures: mean PSNR (dB) and the mean absolute per-channel colour shift (0-255)."""
    was_training = vae.training
    vae.eval()
    rec = reconstruct(vae, images)
    vae.train(was_training)
    target = to_pixels(images)
    colour = ((rec.clamp(-1, 1) - target).mean((2, 3)).abs() * 127.5).mean(0)
    return {
        "psnr": float(psnr(rec, target).mean()),
        "colour_shift_rgb": [round(float(c), 3) for c in colour],
        "images": len(images),
    }


@torch.no_grad()
def measure_scaling_factor(vae, images: np.ndarray, batch_size: int = 64) -> float:
    """``1 / std`` of the posterior means over ``images``: the latents the diffusion model sees are unit-scale."""
    device = next(vae.parameters()).device
    latents = []
    for start in range(0, len(images), batch_size):
        x = to_pixels(images[start : start + batch_size]).to(device)
        latents.append(vae.encode(x).latent_dist.mode().float().cpu())
    return float(1.0 / torch.cat(latents).std())


def train_vae(
    train_images: np.ndarray,
    heldout_images: np.ndarray,
    out: str | Path,
    settings: VaeSettings = VaeSettings(),
    *,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) the mini VAE in ``out``; returns the final figures when ``settings.steps`` are done.

    ``out/checkpoint.pt`` holds everything a resume needs; a checkpoint of other settings is refused. ``max_steps``
    stops early (at that global step, after checkpointing) without finishing: for budgets split across runs and
    for tests. When done, ``out/vae`` is the ``AutoencoderKL`` folder (``scaling_factor`` measured on the training
    images) and ``out/metrics.json`` the held-out figures and wall time.
    """
    from accelerate import Accelerator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if train_images.ndim != 4 or train_images.dtype != np.uint8:
        raise ValueError(f"train_images must be uint8 (N, H, W, 3), got {train_images.dtype} {train_images.shape}.")
    size = train_images.shape[1]
    if size % settings.scale_factor or (settings.crop and settings.crop > size):
        raise ValueError(f"Images of {size} px do not fit scale factor {settings.scale_factor} / crop {settings.crop}.")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(settings.seed)
    vae = make_vae(settings, sample_size=size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    step, seconds, history = 0, 0.0, []
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        try:  # tensors, numbers, strings and lists only: a checkpoint from elsewhere runs no code
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            refused = refused_global(err)
            if refused is None:
                raise ValueError(f"{ckpt} is damaged ({first_line(err)}), so training did not resume.") from err
            raise ValueError(
                f"{ckpt} holds pickled objects other than tensors and plain values ({refused}), so it was not loaded: "
                "unpickling it could run code. Resume only from checkpoints this trainer wrote."
            ) from err
        if state["settings"] != settings.to_dict():
            changed = sorted(k for k, v in settings.to_dict().items() if state["settings"].get(k) != v)
            raise ValueError(
                f"{ckpt} was trained with other VAE settings ({', '.join(changed)}); train into another folder "
                "or remove it to start over."
            )
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        logger.info("mini vae: resuming at step %d of %d", step, settings.steps)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    images = torch.as_tensor(train_images)
    eval_subset = heldout_images[: settings.eval_images]

    def save() -> None:
        state = {
            "settings": settings.to_dict(),
            "model": accelerator.unwrap_model(vae).state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "step": step,
            "seconds": seconds,
            "history": history,
        }
        torch.save(state, out / (CHECKPOINT + ".tmp"))
        (out / (CHECKPOINT + ".tmp")).replace(ckpt)  # atomic: an interrupted save leaves the last checkpoint

    stop = settings.steps if max_steps is None else min(settings.steps, max_steps)
    bar = tqdm(total=settings.steps, initial=step, desc="mini vae", disable=not progress, mininterval=5)
    vae.train()
    started = time.perf_counter()
    while step < stop:
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * lr_factor(step, settings)
        x = sample_batch(images, settings, generator).to(accelerator.device)
        posterior = accelerator.unwrap_model(vae).encode(x).latent_dist
        z = posterior.sample(generator=None if x.device.type != "cpu" else generator)
        rec = accelerator.unwrap_model(vae).decode(z).sample
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        kl = posterior.kl().mean() / x[0].numel()  # per pixel-channel, like the reconstruction terms
        loss = settings.l1_weight * l1 + settings.mse_weight * mse + settings.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if settings.grad_clip > 0:
            accelerator.clip_grad_norm_(vae.parameters(), settings.grad_clip)
        optimizer.step()
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(l1=f"{l1.item():.4f}", kl=f"{kl.item():.1f}")
        if step % settings.eval_every == 0 or step == settings.steps:
            figures = evaluate(accelerator.unwrap_model(vae), eval_subset)
            now = seconds + time.perf_counter() - started
            history.append({"step": step, "seconds": round(now, 1), "l1": l1.item(), "kl": kl.item(), **figures})
            logger.info("mini vae step %d: held-out PSNR %.2f dB (%.0f s)", step, figures["psnr"], now)
        if step % settings.checkpoint_every == 0 or step == stop:
            seconds += time.perf_counter() - started
            started = time.perf_counter()
            save()
    bar.close()
    if step < settings.steps:
        return {"step": step, "done": False}
    model = accelerator.unwrap_model(vae)
    model.eval()
    scaling = measure_scaling_factor(model, train_images[:1024])
    model.register_to_config(scaling_factor=scaling)
    model.save_pretrained(out / "vae")
    figures = evaluate(model, heldout_images)
    metrics = {
        "heldout": figures,
        "scaling_factor": scaling,
        "train_seconds": round(seconds, 1),
        "steps": step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": settings.to_dict(),
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return {"step": step, "done": True, **metrics}


def reconstruction_grid(vae, images: np.ndarray, path: str | Path, scale: int = 2) -> None:
    """A PNG: originals on the odd rows, reconstructions under them, ``scale`` x nearest-neighbour."""
    from PIL import Image

    rec = reconstruct(vae, images)
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n, h, w, _ = images.shape
    cols = min(8, n)
    rows = math.ceil(n / cols)
    grid = np.full((rows * 2 * h, cols * w, 3), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        grid[2 * r * h : (2 * r + 1) * h, c * w : (c + 1) * w] = images[k]
        grid[(2 * r + 1) * h : (2 * r + 2) * h, c * w : (c + 1) * w] = rec[k]
    image = Image.fromarray(grid)
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)
