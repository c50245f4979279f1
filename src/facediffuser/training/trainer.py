"""The training loop of Face-diffuser, one loop for both models (paper Sec. 4.1; docs/method.md, Training) and for an
IP-Adapter as the subject model.

``sdm``, ``tdm`` and ``ip-adapter`` are three configurations of the same loop; they differ only in what is trained
and what conditions the UNet (see :mod:`facediffuser.training.model`). The IP-Adapter reads one reference per image
(one person drawn at random where there are several, :meth:`Trainer.make_dataset`) and drops, per image, the
reference alone (``image_drop_prob``), the caption alone (``text_drop_prob``) or both (``uncondition_prob``), as the
IP-Adapter paper trains it. Everything else (VAE, text encoder, the rest of the
vision tower) is frozen and cast to the training precision. The loss is the denoising MSE (masked to the people with
probability ``mask_loss_prob`` per batch) plus ``localization_weight`` times the cross-attention localization loss;
without people the last two vanish, which is what the TDM sees. With ``head_loss_weight`` (an extension) the squared
error on the people's heads weighs ``1 + head_loss_weight``.

accelerate runs the loop on one device or many (data parallel, DeepSpeed), with mixed precision, gradient
accumulation and its trackers. All randomness of a step (data order, augmentations, noise, timesteps, the mask-loss
coin) is a pure function of the seed, the step and the process, so a resumed run continues exactly where the saved
one was.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, ProjectConfiguration
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..io import output_folders
from ..io.configuration import config_to_dict
from ..io.loading import pipeline_entries
from ..io.tiny import TinyConfig
from ..pipeline import FaceDiffuserPipeline
from . import checkpoints, tracking
from .adapter import WEIGHT_NAME as ADAPTER_FILE
from .allocator import keep_freed_blocks
from .attention import LOCALIZATION_LAYERS, AttentionStore, install_attention_capture
from .augment import ReferenceAugmentation
from .config import RUN_ENTRIES, RUN_LEGACY, MixedPrecision, ModelKind, TrainConfig, output_inputs
from .data import EpochSampler, FFHQWild, collate, seeded_generator
from .export import export_pipeline, trained_tensors
from .launch import fill_deepspeed_settings, launched_without_accelerator, process_count_mismatch
from .losses import denoising_loss, head_loss_weights, localization_loss, min_snr_weights, subject_union_masks
from .model import Denoiser, build_denoiser, freeze_and_list_trainable, load_base_pipeline, parameter_groups
from .model_xl import XL_LOCALIZATION_LAYERS as XL_LAYERS
from .model_xl import empty_captions, vae_dtype, xl_conditions
from .validation import draw_validation_grid, pick_validation_samples, write_validation_grid

logger = logging.getLogger(__name__)


class Trainer:
    """Trains the SDM or the TDM of Face-diffuser and writes a loadable pipeline folder.

    ``Trainer(kind, config)`` loads the base model and the data and prepares everything with accelerate;
    :meth:`train` runs the loop (resuming when ``config.resume`` is set) and returns the output folder, which
    ``FaceDiffuserPipeline.from_pretrained`` loads: for the SDM, the trained ``subject_unet``, ``subject_fuser`` and
    ``image_encoder`` with the base TDM; for the TDM, the trained ``unet`` with the base SDM parts.

    Args:
        kind: which model to train.
        config: the settings.
        tiny_config: widths of the tiny components when ``config.pretrained == "tiny"``.
        base_pipeline: an already-built float32 base pipeline to train from instead of loading
            ``config.pretrained`` (benchmarks, notebooks). Its modules are trained and cast in place, and the export
            saves it back in float32; ``config.pretrained`` is then only a label for the checkpoints.
    """

    def __init__(
        self,
        kind: ModelKind | str,
        config: TrainConfig,
        *,
        tiny_config: TinyConfig | None = None,
        base_pipeline: FaceDiffuserPipeline | None = None,
    ):
        self.kind = ModelKind(kind)
        if self.kind is ModelKind.LCM:
            raise ValueError(
                "LCM distillation has its own trainer: facediffuser.training.runs.make_trainer('lcm', config) "
                "builds it."
            )
        self.config = config
        self.tiny_config = tiny_config
        self.given_base = base_pipeline
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        c = config

        # 1. accelerate: devices, processes, precision, accumulation (counted across epochs, see train()), trackers.
        # Checkpoints are named and rotated by .checkpoints, not by ProjectConfiguration(automatic_checkpoint_naming):
        # accelerate deletes the oldest checkpoint before the new one is written and numbers them by save count, where
        # ours renames a finished folder into place first, so a crash never costs a checkpoint nor leaves a half one.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=self.kind is ModelKind.SDM)
        self.accelerator = Accelerator(
            cpu=launched_without_accelerator(),
            mixed_precision=None if c.mixed_precision is MixedPrecision.AUTO else c.mixed_precision.value,
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=c.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            log_with=tracking.trackers(c.log_with, self.output_dir),
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir)),
            kwargs_handlers=[ddp],
        )
        deepspeed = self.accelerator.state.deepspeed_plugin
        if deepspeed is not None:  # before prepare(), which hands the config to DeepSpeed
            fill_deepspeed_settings(deepspeed.deepspeed_config, c)
        mismatch = process_count_mismatch(self.accelerator.num_processes)
        if mismatch:
            logger.warning(mismatch)
        if self.accelerator.device.type == "cpu" and str(self.accelerator.mixed_precision) == "fp16":
            raise ValueError(
                "--mixed-precision fp16 needs a GPU: the CPU trains in float32 or bfloat16. Use --mixed-precision bf16 "
                "(or no) here."
            )
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            str(self.accelerator.mixed_precision), torch.float32
        )
        device = self.accelerator.device
        if device.type == "cpu":
            keep_freed_blocks()  # the step's large activations reuse the last step's memory (.allocator)

        # 2. The base model; the frozen parts go to the device in the training precision.
        # The parts that are neither trained nor needed are not kept (export reloads the base).
        base = base_pipeline if base_pipeline is not None else load_base_pipeline(c.pretrained, tiny_config)
        self.placeholder = base.placeholder
        self.tokenizer = base.tokenizer
        # An SDXL base: its second text tower, size ids and zeros for dropped captions (.model_xl).
        self.xl = xl_conditions(base, self.kind, device, self.weight_dtype)
        self.scheduler_config = base.scheduler.config
        self.reference_size = base.image_encoder.config.image_size
        self.vae = base.vae.requires_grad_(False).to(device).eval()
        self.text_encoder = base.text_encoder.requires_grad_(False).to(device).eval()
        if self.weight_dtype != torch.float32:
            self.vae.to(dtype=self.weight_dtype if self.xl is None else vae_dtype(self.vae, self.weight_dtype))
            self.text_encoder.to(dtype=self.weight_dtype)
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        denoiser = build_denoiser(self.kind, base, c.seed)
        # TDM validation prompts have no people: these fill the pipeline's slots but never run.
        self.idle_parts: dict[str, nn.Module] = {}
        if self.kind is ModelKind.TDM:
            self.idle_parts = {"image_encoder": base.image_encoder, "subject_fuser": base.subject_fuser}
        del base
        self.trainable_names = self.freeze(denoiser)
        denoiser.to(device)
        for p in denoiser.parameters():  # trained weights stay float32 (the optimizer's master copy)
            if not p.requires_grad:
                p.data = p.data.to(self.weight_dtype)
        if c.gradient_checkpointing:
            denoiser.unet.enable_gradient_checkpointing()
        self.attention_store = AttentionStore()
        if self.uses_localization:
            layers = LOCALIZATION_LAYERS if self.xl is None else XL_LAYERS
            install_attention_capture(denoiser.unet, self.attention_store, layers)

        # 3. Data.
        self.train_dataset = self.make_dataset(c.split, augment=True)
        # The adapter's dropped captions read as the empty one, the same ids as the data's unconditional samples.
        self.empty_ids = torch.tensor(self.train_dataset.tokenize("", 0).input_ids, dtype=torch.long)
        # Kept to set its epoch directly: accelerate's set_epoch does not reach it through every wrapper (train()).
        self.epoch_sampler = EpochSampler(len(self.train_dataset), seed=c.seed)
        loader = DataLoader(
            self.train_dataset,
            batch_size=c.train_batch_size,
            sampler=self.epoch_sampler,
            collate_fn=collate,
            drop_last=True,
            num_workers=c.dataloader_num_workers,
        )

        # 4. Optimizer, LR schedule, EMA; then accelerate wraps what it distributes.
        optimizer = torch.optim.AdamW(
            parameter_groups(self.kind, denoiser, c.fuser_learning_rate),
            lr=c.learning_rate,
            betas=(c.adam_beta1, c.adam_beta2),
            weight_decay=c.adam_weight_decay,
            eps=c.adam_epsilon,
        )
        n = self.accelerator.num_processes  # the prepared LR scheduler steps once per process
        lr_scheduler = get_scheduler(
            c.lr_scheduler,
            optimizer,
            num_warmup_steps=c.lr_warmup_steps * n,
            num_training_steps=c.max_train_steps * n,
        )
        self.model, self.optimizer, self.train_loader, self.lr_scheduler = self.accelerator.prepare(
            denoiser, optimizer, loader, lr_scheduler
        )
        if len(self.train_loader) == 0:
            raise ValueError(
                f"The {c.split} split has {len(self.train_dataset)} images, fewer than one batch of "
                f"{c.train_batch_size} per process x {n} processes. Lower --train-batch-size."
            )
        self.ema: EMAModel | None = None
        if c.use_ema:
            # float32 averages also where DeepSpeed holds the module in bf16: a step's 1e-4 share of a difference
            # is below bf16's resolution. float32 parameters are cloned as they are.
            self.ema = EMAModel([p.detach().float() for p in self.trainable_parameters()], decay=c.ema_decay)
            self.ema.to(device)
            self.accelerator.register_for_checkpointing(self.ema)
        self.global_step = 0
        self.skipped_total = 0
        self.flawed_total = 0
        self.last_logged: dict[str, float] = {}
        self.validation_samples: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ what a kind changes (training.lcm overrides)
    @property
    def run_kind(self) -> ModelKind:
        """The command this run is (``train_config.json``'s and the checkpoints' ``model``): the kind trained."""
        return self.kind

    @property
    def uses_localization(self) -> bool:
        """Whether the loss has the cross-attention localization term (the SDM's, when weighted)."""
        return self.kind is ModelKind.SDM and self.config.localization_weight > 0

    def freeze(self, denoiser: Denoiser) -> list[str]:
        """Sets what is trained (before the module is moved or wrapped); returns the trained parameters' names."""
        return freeze_and_list_trainable(self.kind, denoiser, self.config.vision_trainable_layers)

    def after_optimizer_step(self) -> None:
        """What follows each optimizer step: the EMA of the trained weights, when kept."""
        if self.ema is not None:
            self.ema.step(self.trainable_parameters())

    def validation_scheduler(self):
        """The scheduler the validation images are drawn with."""
        return DDIMScheduler.from_config(self.scheduler_config)

    def write_pipeline(self, state: dict[str, dict[str, torch.Tensor]], base: FaceDiffuserPipeline, out: Path) -> Path:
        """Writes the pipeline folder (or the adapter's) from the trained tensors and a float32 base."""
        return export_pipeline(self.kind, state, base, out)

    # ------------------------------------------------------------------ set-up helpers
    def make_dataset(self, split: str, *, augment: bool) -> FFHQWild:
        """The data of this kind. The IP-Adapter's: every person kept, then one drawn at random where there are
        several (a plain adapter reads one image for the whole picture); the caption keeps every person as text."""
        c = self.config
        adapter = self.kind is ModelKind.IP_ADAPTER
        return FFHQWild(
            root=c.data_root,
            split=split,
            tokenizer=self.tokenizer,
            resolution=c.resolution,
            reference_size=self.reference_size,
            with_subjects=self.kind in (ModelKind.SDM, ModelKind.IP_ADAPTER),
            max_subjects=1 if adapter else c.max_subjects,
            subject_keep_prob=c.subject_keep_prob if augment and not adapter else 1.0,
            other_image_reference_prob=c.other_image_reference_prob,
            reference_region=c.reference_region,
            head_masks=self.kind is ModelKind.SDM and c.head_loss_weight > 0,
            uncondition_prob=c.uncondition_prob if augment else 0.0,
            augment=augment,
            augmentation=ReferenceAugmentation(
                jitter_strength=c.reference_jitter_strength, grayscale_prob=c.reference_grayscale_prob
            ),
            seed=c.seed,
            placeholder=self.placeholder,
            tokenizer_2=None if self.xl is None else self.xl.tokenizer_2,
        )

    @property
    def denoiser(self) -> Denoiser:
        return self.accelerator.unwrap_model(self.model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def run_fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it."""
        c = self.config
        return {
            "model": self.run_kind.value,
            "pretrained": c.pretrained,
            "split": c.split,
            "dataset_size": len(self.train_dataset),
            "resolution": c.resolution,
            "train_batch_size": c.train_batch_size,
            "gradient_accumulation_steps": c.gradient_accumulation_steps,
            "num_processes": self.accelerator.num_processes,
            "seed": c.seed,
            "use_ema": c.use_ema,
            "trainable_parameters": len(self.trainable_names),
            # the optimizer's parameter groups (None: one; checkpoints from before the setting read None too)
            "fuser_learning_rate": c.fuser_learning_rate if self.kind is ModelKind.SDM else None,
            **(
                {"image_drop_prob": c.image_drop_prob, "text_drop_prob": c.text_drop_prob}
                if self.kind is ModelKind.IP_ADAPTER
                else {}
            ),
        }

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: dict[str, Any], micro_step: int) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch: ``loss`` (what is back-propagated), ``denoising``, ``localization``.

        ``micro_step`` (the global micro-batch count) seeds the noise, the timesteps and the mask-loss coin.
        """
        c, acc = self.config, self.accelerator
        device = acc.device
        g = seeded_generator([c.seed, micro_step, acc.process_index, 1], device)
        pixels = batch["pixel_values"].to(device, self.vae.dtype)
        positions = batch["subject_positions"].to(device)
        masks = batch["subject_masks"].to(device)

        input_ids = batch["input_ids"]
        subject_pixels = batch["subject_pixels"]
        if self.kind is ModelKind.IP_ADAPTER:
            input_ids, subject_pixels, positions = self.adapter_drops(batch, g)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample(generator=g) * self.vae.config.scaling_factor
            text_embeds, added = self.encode_text(batch, input_ids)
        latents = latents.float()
        noise = torch.randn(latents.shape, generator=g, device=device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g, device=device
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise

        self.attention_store.reset()
        with acc.autocast():
            pred = self.model(noisy, timesteps, text_embeds.float(), subject_pixels.to(device), positions, **added)
        use_mask = self.kind is ModelKind.SDM and torch.rand((), generator=g, device=device).item() < c.mask_loss_prob
        mask = subject_union_masks(masks, positions, latents.shape[0], latents.shape[-2:]) if use_mask else None
        weights = None
        if c.snr_gamma is not None:
            snr = compute_snr(self.noise_scheduler, timesteps)
            weights = min_snr_weights(snr, c.snr_gamma, self.noise_scheduler.config.prediction_type)
        pixel_weights = None
        if "head_masks" in batch:
            heads = batch["head_masks"].to(device)
            pixel_weights = head_loss_weights(
                heads, positions, latents.shape[0], latents.shape[-2:], c.head_loss_weight
            )
        denoising = denoising_loss(pred, target, mask, weights, pixel_weights)
        localization = localization_loss(self.attention_store.maps(), masks, positions, tuple(latents.shape[-2:]))
        self.attention_store.reset()
        loss = denoising + c.localization_weight * localization.to(denoising.device)
        return {"loss": loss, "denoising": denoising.detach(), "localization": localization.detach()}

    def encode_text(self, batch: dict[str, Any], input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The caption tokens ``(B, L, D)`` and the UNet's extra arguments: none for SD1.x; for SDXL
        ``added_cond_kwargs`` (the pooled embedding and the size ids, float32), see :mod:`.model_xl`."""
        device = self.accelerator.device
        if self.xl is None:
            return self.text_encoder(input_ids.to(device))[0], {}
        empty = empty_captions(batch["captions"])
        tokens, pooled = self.xl.encode(self.text_encoder, input_ids, batch["input_ids_2"], empty)
        added = {"text_embeds": pooled.float(), "time_ids": batch["time_ids"].to(device, torch.float32)}
        return tokens, {"added_cond_kwargs": added}

    def adapter_drops(
        self, batch: dict[str, Any], g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The IP-Adapter's drops of one micro-batch, drawn with ``g`` (one draw per image, before the latents):
        ``image_drop_prob`` of the images lose their reference, the next ``text_drop_prob`` their caption (the
        data's ``uncondition_prob`` drops both). Returns the input ids, reference pixels and positions to train on.
        """
        c = self.config
        device = self.accelerator.device
        u = torch.rand(batch["input_ids"].shape[0], generator=g, device=device).cpu()
        no_image = u < c.image_drop_prob
        no_text = (u >= c.image_drop_prob) & (u < c.image_drop_prob + c.text_drop_prob)
        input_ids = torch.where(no_text[:, None], self.empty_ids[None], batch["input_ids"])
        positions = batch["subject_positions"]
        keep = ~no_image[positions[:, 0]] if positions.shape[0] else torch.zeros(0, dtype=torch.bool)
        return input_ids, batch["subject_pixels"][keep], positions[keep].to(device)

    # ------------------------------------------------------------------ loop
    def train(self) -> Path:
        """Runs (or resumes) training up to ``max_train_steps`` and writes the pipeline folder; returns its path."""
        c, acc = self.config, self.accelerator
        settings = {"model": self.run_kind.value, **config_to_dict(c)}
        if acc.is_main_process:
            output_folders.claim(
                self.output_dir, command="train", inputs=output_inputs(c), flag="--output-dir", legacy=RUN_LEGACY,
                entries=RUN_ENTRIES,
            )  # fmt: skip
            output_folders.own(self.output_dir, *RUN_ENTRIES, *pipeline_entries(), ADAPTER_FILE, command="train")
            (self.output_dir / "train_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        acc.init_trackers(tracking.RUN_NAME, config=tracking.hyperparameters(settings))  # the main process only
        if c.resume:
            self.resume(c.resume)
        elif checkpoints.list_checkpoints(self.checkpoint_dir):
            raise ValueError(
                f"{self.checkpoint_dir} already holds checkpoints of an earlier run. Pass --resume latest to continue "
                "it, or choose another --output-dir."
            )
        self.validation_samples = self.pick_validation_samples() if c.validation_steps and acc.is_main_process else []
        if acc.device.type == "cpu":
            # Subnormal floats (below 1.2e-38) take a slow path in x86 arithmetic. A small model trained for a few
            # thousand steps on CPU made them in its activations and gradients: the mini TDM slowed from 1.3 to
            # 3.5 s per step (measured). Flushing them to zero changes no value above that range.
            torch.set_flush_denormal(True)

        per_epoch = len(self.train_loader)  # micro-batches per process and epoch
        ga = c.gradient_accumulation_steps
        micro = self.global_step * ga
        epoch = micro // per_epoch
        log = logger.info if acc.is_main_process else logger.debug
        log(
            "Training the %s: %d trainable tensors, %d images, %d micro-batches per epoch and process, %d process(es), "
            "from step %d to %d.",
            " ".join(dict.fromkeys([self.run_kind.value.upper(), self.kind.value.upper()])),
            len(self.trainable_names),
            len(self.train_dataset),
            per_epoch,
            acc.num_processes,
            self.global_step,
            c.max_train_steps,
        )
        progress = tqdm(
            total=c.max_train_steps, initial=self.global_step, disable=not acc.is_local_main_process, desc="train"
        )
        running = {k: torch.zeros((), device=acc.device) for k in ("loss", "denoising", "localization")}
        counted = 0
        last_saved = self.global_step if c.resume else -1
        self.model.train()
        while self.global_step < c.max_train_steps:
            skip = micro - epoch * per_epoch
            loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
            # accelerate's set_epoch passes the epoch on to the sampler through its own wrappers, except after
            # skip_first_batches with several processes (SkipBatchSampler > BatchSamplerShard > BatchSampler): the
            # resumed epoch would replay epoch 0's order and augmentations. Setting it on the sampler itself holds
            # under any wrapping.
            loader.set_epoch(epoch)
            self.epoch_sampler.set_epoch(epoch)
            for batch in loader:
                self.skipped_total += len(batch["skipped"])
                self.flawed_total += len(batch["flawed"])
                with acc.accumulate(self.model):
                    losses = self.compute_loss(batch, micro)
                    acc.backward(losses["loss"])
                    if acc.sync_gradients and c.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                micro += 1
                for k in running:  # kept on the device: no synchronization per micro-batch
                    running[k] += losses[k].detach().float()
                counted += 1
                if not acc.sync_gradients:
                    continue

                # One optimizer step done.
                self.global_step += 1
                self.after_optimizer_step()
                progress.update(1)
                last = self.global_step == c.max_train_steps
                if c.logging_steps and (self.global_step % c.logging_steps == 0 or self.global_step == 1 or last):
                    self.log_metrics(running, counted)
                    running = {k: torch.zeros_like(v) for k, v in running.items()}
                    counted = 0
                    progress.set_postfix(loss=f"{self.last_logged.get('train/loss', float('nan')):.4f}")
                if c.checkpointing_steps and self.global_step % c.checkpointing_steps == 0:
                    self.save_checkpoint()
                    last_saved = self.global_step
                if c.validation_steps and self.global_step % c.validation_steps == 0:
                    self.validate()
                if self.global_step >= c.max_train_steps:
                    break
            epoch += 1
        progress.close()

        if c.checkpointing_steps and last_saved != self.global_step:
            self.save_checkpoint()
        if c.validation_steps and self.global_step % c.validation_steps:
            self.validate()
        if self.skipped_total:
            logger.warning("%d unreadable sample(s) were skipped on this process.", self.skipped_total)
        if self.flawed_total:
            logger.warning(
                "%d sample read(s) on this process trained without their people: the annotation had no 'segments' "
                "list, or a person segment's 'end' was not after a word of the caption (the ids were warned about).",
                self.flawed_total,
            )
        out = self.export()
        acc.end_training()
        return out

    def log_metrics(self, running: dict[str, torch.Tensor], counted: int) -> None:
        """Averages the running losses over micro-batches and processes (a collective: every process calls it)."""
        acc = self.accelerator
        counts = torch.tensor([float(self.skipped_total), float(self.flawed_total)], device=acc.device)
        values = torch.cat([torch.stack([running[k] / max(counted, 1) for k in running]), counts])
        values = acc.reduce(values, reduction="sum").tolist()
        n = acc.num_processes
        logged = {f"train/{k}": values[i] / n for i, k in enumerate(running)}
        logged["train/lr"] = self.lr_scheduler.get_last_lr()[0]
        logged["data/skipped_samples"] = values[-2]
        logged["data/flawed_annotations"] = values[-1]
        self.last_logged = logged
        acc.log(logged, step=self.global_step)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Saves a resumable checkpoint atomically (every process takes part) and keeps the last K."""
        acc = self.accelerator
        tmp = checkpoints.temporary_path(self.checkpoint_dir, self.global_step)
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        final = self.checkpoint_dir / checkpoints.checkpoint_name(self.global_step)
        if acc.is_main_process:
            state = {"step": self.global_step, **self.run_fingerprint()}
            final = checkpoints.finalize(tmp, state, self.config.checkpoints_total_limit)
            logger.info("Saved checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    def resume(self, resume: str) -> None:
        path = checkpoints.resolve_resume(resume, self.checkpoint_dir)
        saved = checkpoints.read_state(path)
        checkpoints.check_compatible(saved, self.run_fingerprint(), path)
        checkpoints.check_pickles(path)
        self.accelerator.load_state(str(path))
        self.global_step = int(saved["step"])
        if self.accelerator.is_main_process:
            logger.info("Resumed from %s at step %d.", path, self.global_step)

    # ------------------------------------------------------------------ validation and export
    def pick_validation_samples(self) -> list[dict[str, Any]]:
        return pick_validation_samples(self.kind, self.config, lambda split: self.make_dataset(split, augment=False))

    @torch.no_grad()
    def validate(self) -> Path | None:
        """Draws the validation samples with the real pipeline (the trained model alone, with the EMA weights when
        enabled; see :mod:`facediffuser.training.validation`). Writes ``validation/step-N.png``."""
        acc, c = self.accelerator, self.config
        if not acc.is_main_process or not self.validation_samples:
            acc.wait_for_everyone()
            return None
        model = self.denoiser
        model.eval()
        self.attention_store.enabled = False
        ema_params = self.trainable_parameters() if self.ema is not None else None
        if ema_params is not None:
            self.ema.store(ema_params)
            self.ema.copy_to(ema_params)
        sdm = self.kind is ModelKind.SDM
        adapter = self.kind is ModelKind.IP_ADAPTER
        pipe = (FaceDiffuserPipeline if self.xl is None else self.xl.pipeline)(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=model.unet,  # the model being trained fills both slots; the other model is never called
            subject_unet=model.unet,
            image_encoder=model.image_encoder if sdm or adapter else self.idle_parts["image_encoder"],
            subject_fuser=model.subject_fuser if sdm or adapter else self.idle_parts["subject_fuser"],
            scheduler=self.validation_scheduler(),
            placeholder=self.placeholder,
        )
        pipe.set_progress_bar_config(disable=True)
        try:
            grid = draw_validation_grid(
                pipe,
                self.validation_samples,
                self.validation_sampling(),
                resolution=c.resolution,
                seed=c.seed,
                device=acc.device,
                autocast=acc.autocast,
            )
        finally:
            if ema_params is not None:
                self.ema.restore(ema_params)
            self.attention_store.enabled = True
            model.train()
        captions = [s["caption"] for s in self.validation_samples]
        path = write_validation_grid(self.output_dir / "validation", self.global_step, grid, captions)
        for tracker in acc.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"validation": np.asarray(grid)[None]}, step=self.global_step, dataformats="NHWC")
        logger.info("Wrote validation grid %s", path)
        acc.wait_for_everyone()
        return path

    def validation_sampling(self):
        """The sampling settings of the validation images (:meth:`TrainConfig.validation_settings`)."""
        return self.config.validation_settings(self.kind)

    def trained_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The trained parameters (EMA weights when enabled), float32 on the CPU, per denoiser part."""
        params = self.trainable_parameters()
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        try:
            return trained_tensors(self.denoiser)
        finally:
            if self.ema is not None:
                self.ema.restore(params)

    def export(self) -> Path:
        """Writes the pipeline folder: a fresh float32 base with the trained parameters loaded into it."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state = self.trained_state()
        if acc.is_main_process:
            if self.given_base is not None:
                base = self.given_base.to("cpu", torch.float32)
            else:
                base = load_base_pipeline(self.config.pretrained, self.tiny_config)
            self.write_pipeline(state, base, self.output_dir)
        acc.wait_for_everyone()
        return self.output_dir
