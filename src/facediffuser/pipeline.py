"""``FaceDiffuserPipeline``: two diffusion models that draw one image together.

The TDM (``unet``) draws the scene from the text; the SDM (``subject_unet``) draws the people from the text with the
reference faces fused into their class-noun tokens. At every step of stage II a Saliency-adaptive Noise Fusion mask
decides which model's noise prediction each latent position takes (:mod:`facediffuser.fusion`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from accelerate.hooks import UserCpuOffloadHook
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline, retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .fusion import (
    Smoothing,
    Stage,
    SubjectGuidanceBase,
    check_stage_fractions,
    guidance_response,
    guided_prediction,
    normalize_saliency,
    saliency_adaptive_noise_fusion,
    saliency_map,
    stage_schedule,
)
from .images import load_person, prepare_reference_pixels
from .models import SubjectFuser
from .prompting import DEFAULT_PLACEHOLDER, count_placeholders, tokenize_prompts

logger = logging.getLogger(__name__)


class _OffloadOthers(UserCpuOffloadHook):
    """The models to move off the accelerator before one model runs: every other model of the pipeline.

    accelerate calls ``offload()`` of a hook's ``prev_module_hook`` before the hooked model's forward when
    ``model`` (the first of these models still on the accelerator) is not on the CPU.
    """

    def __init__(self, hooks: Sequence[UserCpuOffloadHook]):
        self.hooks = list(hooks)

    @property
    def models(self) -> list[torch.nn.Module]:
        return [hook.model for hook in self.hooks]

    @property
    def model(self) -> torch.nn.Module:
        for hook in self.hooks:
            if _on_accelerator(hook.model):
                return hook.model
        return self.hooks[0].model

    def offload(self) -> None:
        for hook in self.hooks:
            if _on_accelerator(hook.model):
                hook.offload()

    def remove(self) -> None:
        """Nothing to do: the pipeline removes the hooks this group holds."""


def _on_accelerator(model: torch.nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.device.type != "cpu"


@dataclass
class FusionTrace:
    """Who drew what, step by step (paper Fig. 9).

    Attributes:
        stages: the stage of each denoising step.
        timesteps: ``(T,)`` the scheduler's timesteps.
        masks: ``(T, B, h, w)`` float, 1 where the SDM's prediction was used (all 0 in stage I, all 1 in stage III).
        saliency_text: ``(T, B, h, w)`` ``softmax(Omega_T)``, NaN at steps where the TDM was not evaluated.
        saliency_subject: ``(T, B, h, w)`` ``softmax(Omega_S)``, NaN at steps where the SDM was not evaluated.
    """

    stages: list[Stage]
    timesteps: torch.Tensor
    masks: torch.Tensor
    saliency_text: torch.Tensor
    saliency_subject: torch.Tensor

    def stage_mean(self, stage: Stage, what: str = "masks") -> torch.Tensor:
        """``(B, h, w)`` mean of ``masks``, ``saliency_text`` or ``saliency_subject`` over the steps of ``stage``."""
        steps = [i for i, s in enumerate(self.stages) if s == stage]
        values: torch.Tensor = getattr(self, what)
        if not steps:
            return torch.full(values.shape[1:], float("nan"))
        return torch.nanmean(values[steps], dim=0)


@dataclass
class FaceDiffuserPipelineOutput(BaseOutput):
    """Output of :class:`FaceDiffuserPipeline`.

    Attributes:
        images: PIL images, or a numpy array / tensor depending on ``output_type``.
        fusion_trace: the per-step masks and saliency maps when ``return_masks=True``.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    fusion_trace: FusionTrace | None = None


class FaceDiffuserPipeline(DiffusionPipeline, StableDiffusionMixin):
    r"""Person-centric subject-to-image generation with a text-driven and a subject-augmented diffusion model.

    Components:
        vae: SD1.x ``AutoencoderKL``, shared by both models.
        text_encoder: the frozen SD1.x CLIP text encoder, shared by both models (last hidden state, no clip-skip).
        tokenizer: the SD1.x CLIP tokenizer.
        unet: the TDM, any SD1.x ``UNet2DConditionModel`` (the released TDM, SD1.5, or a community checkpoint).
        subject_unet: the SDM's ``UNet2DConditionModel``.
        image_encoder: CLIP vision tower with projection; its ``image_embeds`` is the subject embedding ``o``.
        subject_fuser: :class:`~facediffuser.models.SubjectFuser`, which writes ``o`` into the class-noun token.
        scheduler: any diffusers scheduler (DDIM by default).
        placeholder: the placeholder string that follows each person's class noun in a prompt.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->subject_fuser->unet->subject_unet->vae"
    _optional_components: list[str] = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "subject_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        subject_unet: UNet2DConditionModel,
        image_encoder: CLIPVisionModelWithProjection,
        subject_fuser: SubjectFuser,
        scheduler: KarrasDiffusionSchedulers,
        placeholder: str = DEFAULT_PLACEHOLDER,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            subject_unet=subject_unet,
            image_encoder=image_encoder,
            subject_fuser=subject_fuser,
            scheduler=scheduler,
        )
        self.register_to_config(placeholder=placeholder)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # Reused unchanged from diffusers' Stable Diffusion pipeline: the same latent noise and scheduler kwargs make
    # the TDM-only case identical to `StableDiffusionPipeline`.
    prepare_latents = StableDiffusionPipeline.prepare_latents
    prepare_extra_step_kwargs = StableDiffusionPipeline.prepare_extra_step_kwargs

    @property
    def placeholder(self) -> str:
        return self.config.placeholder

    def text_model_pipeline(self, unet: UNet2DConditionModel | None = None) -> StableDiffusionPipeline:
        """Plain Stable Diffusion over this pipeline's own VAE, text encoder, tokenizer and scheduler (no copies).

        ``unet`` defaults to the TDM, so the result draws what stage I alone would draw; pass ``self.subject_unet``
        for the SDM without its subjects. It is the baseline of the equivalence tests and of the speed benchmark.
        """
        sd = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet if unet is None else unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        sd.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return sd

    # ------------------------------------------------------------------ memory and speed
    def enable_model_cpu_offload(
        self,
        gpu_id: int | None = None,
        device: torch.device | str | None = None,
        *,
        one_model_at_a_time: bool | None = None,
    ) -> None:
        r"""Keeps every model on the CPU and moves each one to the accelerator only while it is needed.

        diffusers chains the models in ``model_cpu_offload_seq`` order: a model's forward moves the one before it off
        the accelerator. That suits a pipeline whose models run once each in that order, but stage II calls ``unet``
        and ``subject_unet`` in turn at every step, and in the chain nothing moves ``subject_unet`` off before
        ``unet`` runs again: both UNets would sit on the accelerator together, the very peak offloading should cut.

        Args:
            gpu_id, device: the accelerator, as in ``DiffusionPipeline.enable_model_cpu_offload``.
            one_model_at_a_time: ``True`` (the default): before any model runs, every other model is moved off, so
                the peak holds one model (at most one UNet) plus activations. Stage II then moves both UNets in and
                out at each of its steps (two host-to-device copies per step rather than one). ``False``: diffusers'
                chain, which keeps ``subject_unet`` on the accelerator through stage II, for a peak of both UNets and
                half the transfers. ``None`` keeps the previous choice (``True`` the first time).
        """
        if one_model_at_a_time is None:
            one_model_at_a_time = getattr(self, "_one_model_at_a_time", True)
        self._one_model_at_a_time = one_model_at_a_time
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        if not one_model_at_a_time:
            return
        for hook in self._all_hooks:
            others = [other for other in self._all_hooks if other.model is not hook.model]
            hook.hook.prev_module_hook = _OffloadOthers(others) if others else None

    def compile_unets(self, **compile_kwargs: Any) -> None:
        """Compiles both UNets in place with ``torch.compile`` (``nn.Module.compile``).

        The modules keep their class and parameters, so ``save_pretrained`` and offloading still work. The first
        call at each new batch size or resolution compiles (seconds to minutes); later calls reuse the graph.
        ``compile_kwargs`` go to ``torch.compile``, e.g. ``mode="max-autotune"`` or ``backend="eager"``.
        """
        unets = [self.unet] if self.subject_unet is self.unet else [self.unet, self.subject_unet]
        for unet in unets:
            unet.compile(**compile_kwargs)

    def vae_decode(self, latents: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None):
        """``(B, 4, h, w)`` latents -> ``(B, 3, H, W)`` images in ``[-1, 1]``.

        A float16 VAE whose ``config.force_upcast`` is set (the ``AutoencoderKL`` default, and SD1.x VAE configs
        that do not name it) decodes in float32, then goes back to float16: float16 activations of the decoder can
        overflow to ``inf`` and give black or NaN images. A VAE known to be safe in float16 can skip the upcast with
        ``pipe.vae.register_to_config(force_upcast=False)``. bfloat16 has float32's range and is never upcast.
        """
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            return self.vae.decode(latents, return_dict=False, generator=generator)[0]
        finally:
            if upcast:
                self.vae.to(dtype=torch.float16)

    # ------------------------------------------------------------------ inputs
    def normalize_references(
        self, prompts: list[str], reference_images: Any, prompt_is_batch: bool
    ) -> list[list[list[PIL.Image.Image]]]:
        """Reads and checks ``reference_images`` against the placeholders: ``[prompt][person][photo]``.

        For a single prompt, ``reference_images`` holds one entry per placeholder (a single image is accepted for a
        single placeholder). For a list of prompts, it holds one such list per prompt. An entry is a PIL image, a
        path, a folder (all its photos) or a list of images/paths: several photos of one person are encoded
        separately and their embeddings averaged.
        """
        counts = [count_placeholders(p, self.placeholder) for p in prompts]
        if reference_images is None:
            if any(counts):
                raise ValueError(
                    f"The prompt has {max(counts)} placeholder(s) {self.placeholder!r} but no `reference_images` were "
                    "given: pass one reference per placeholder."
                )
            return [[] for _ in prompts]
        if prompt_is_batch:
            if not isinstance(reference_images, (list, tuple)) or len(reference_images) != len(prompts):
                raise ValueError(
                    f"With {len(prompts)} prompts, `reference_images` must be a list of {len(prompts)} entries, one "
                    "list of references per prompt."
                )
            per_prompt = list(reference_images)
        else:
            per_prompt = [reference_images]
        out = []
        for prompt, count, refs in zip(prompts, counts, per_prompt):
            if refs is None:
                refs = []
            elif not isinstance(refs, (list, tuple)):
                refs = [refs]
            if len(refs) != count:
                raise ValueError(
                    f"The prompt {prompt!r} has {count} placeholder(s) {self.placeholder!r} but {len(refs)} "
                    "reference(s) were given: give exactly one reference (an image, a folder, or a list of photos) "
                    "per placeholder, in order."
                )
            out.append([load_person(r) for r in refs])
        return out

    def check_inputs(
        self,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        subject_guidance_scale: float,
        alpha: float,
        beta: float,
        callback_on_step_end_tensor_inputs: Sequence[str] | None,
        output_type: str,
    ) -> None:
        multiple = max(8, self.vae_scale_factor)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"`{name}` must be a positive multiple of {multiple}, got {value!r}.")
        if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        for name, value in (("guidance_scale", guidance_scale), ("subject_guidance_scale", subject_guidance_scale)):
            if value < 0:
                raise ValueError(f"`{name}` must be non-negative, got {value}.")
        check_stage_fractions(alpha, beta)
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(f"Unknown callback tensor inputs {bad}; choose from {self._callback_tensor_inputs}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, D)`` last hidden state (after the final layer norm)."""
        return self.text_encoder(input_ids.to(device))[0]

    @torch.no_grad()
    def encode_subjects(self, references: list[list[list[PIL.Image.Image]]], device: torch.device) -> torch.Tensor:
        """``o`` for every person of every prompt, in order: ``(N, D)``, the mean over each person's photos."""
        photos = [img for prompt_refs in references for person in prompt_refs for img in person]
        if not photos:
            return torch.zeros(0, self.image_encoder.config.projection_dim, device=device)
        size = self.image_encoder.config.image_size
        pixels = prepare_reference_pixels(photos, size).to(device=device, dtype=self.image_encoder.dtype)
        embeds = self.image_encoder(pixel_values=pixels).image_embeds  # (n_photos, D)
        counts = [len(person) for prompt_refs in references for person in prompt_refs]
        return torch.stack([chunk.mean(dim=0) for chunk in embeds.split(counts)])

    @torch.no_grad()
    def encode_prompt(
        self,
        prompts: list[str],
        references: list[list[list[PIL.Image.Image]]],
        negative_prompts: list[str],
        device: torch.device,
        num_images_per_prompt: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(c, 0, c_aug)``, each ``(B * num_images_per_prompt, L, D)``.

        ``c`` is the prompt without its placeholders, ``0`` the negative (by default empty) prompt, and ``c_aug``
        is ``c`` with each class-noun token replaced by ``fuse(t, o)``.
        """
        ids, marks = tokenize_prompts(self.tokenizer, prompts, self.placeholder)
        for neg in negative_prompts:
            if count_placeholders(neg, self.placeholder):
                raise ValueError(f"The negative prompt {neg!r} must not contain the placeholder {self.placeholder!r}.")
        neg_ids, _ = tokenize_prompts(self.tokenizer, negative_prompts, self.placeholder)
        text = self.encode_text(ids, device)
        negative = self.encode_text(neg_ids, device)

        subject_embeds = self.encode_subjects(references, device)
        positions = torch.tensor(
            [[b, index] for b, indices in enumerate(marks) for index in indices], dtype=torch.long, device=device
        ).reshape(-1, 2)
        augmented = self.subject_fuser(text.to(self.subject_fuser.dtype), subject_embeds, positions).to(text.dtype)

        def repeat(x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B * n, L, D), copies of a prompt together
            return x.repeat_interleave(num_images_per_prompt, dim=0)

        return repeat(text), repeat(negative), repeat(augmented)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        reference_images: Any = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 5.0,
        subject_guidance_scale: float | None = None,
        alpha: float = 0.3,
        beta: float = 0.6,
        subject_guidance_base: SubjectGuidanceBase | str = SubjectGuidanceBase.TEXT,
        smoothing: Smoothing | str = Smoothing.BOX,
        smoothing_kernel_size: int = 4,
        smoothing_sigma: float = 1.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_masks: bool = False,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> FaceDiffuserPipelineOutput | tuple:
        r"""Generates images of the referenced people in the prompted scene.

        Args:
            prompt: a prompt, or a list of prompts, each with one placeholder after every person's class noun:
                ``"a man <|image|> and a woman <|image|> at a cafe"``.
            reference_images: for one prompt, one entry per placeholder, in order; for a list of prompts, one such
                list per prompt. An entry is a PIL image, a path, a folder of photos, or a list of images/paths of
                the same person (their CLIP embeddings are averaged).
            negative_prompt: the "empty" condition ``0`` of the guidance (default ``""``).
            height, width: output size in pixels, multiples of 8 (default: the UNet's sample size x 8).
            num_inference_steps: denoising steps ``T``.
            timesteps, sigmas: custom schedules, for schedulers that accept them.
            guidance_scale: ``w`` of the TDM (5 in the release).
            subject_guidance_scale: ``w`` of the SDM (default: ``guidance_scale``).
            alpha, beta: stage fractions, ``0 <= alpha <= beta <= 1``. With ``T`` the number of scheduler
                timesteps and ``i = 0 .. T-1`` the step index: stage I (TDM only) while ``i < floor(alpha*T)``,
                stage II (both models, SNF) while ``i < floor(beta*T)``, stage III (SDM only) after. ``T = 50,
                alpha = 0.3, beta = 0.6`` gives 15 / 15 / 20 steps. ``alpha = beta = 1`` is plain Stable Diffusion
                with the TDM.
            subject_guidance_base: ``"text"`` anchors the SDM on ``eps_S(c)`` as the official release does (2 SDM
                evaluations per step); ``"null"`` anchors it on ``eps_S(0)`` as paper eq. 2 writes (3 per step).
            smoothing, smoothing_kernel_size, smoothing_sigma: the ``Smooth`` of SNF. ``"box"`` with kernel 4 is the
                release; ``"gaussian"`` blurs with ``smoothing_sigma``.
            num_images_per_prompt: images per prompt.
            eta: DDIM's eta (ignored by other schedulers).
            generator, latents: randomness, as in every diffusers pipeline.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return a :class:`FaceDiffuserPipelineOutput` rather than a tuple.
            return_masks: also return a :class:`FusionTrace` of the per-step masks and saliency maps.
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` called after every step; it may
                replace any of the tensors named in ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``).

        Returns:
            :class:`FaceDiffuserPipelineOutput`, or ``(images, fusion_trace)`` when ``return_dict=False``.

        Cost: with the ``"text"`` base each step of stage I and III takes 2 UNet evaluations (one batched call) and
        each step of stage II takes 4 (two calls); with ``"null"``, stage II takes 5 and stage III 3.
        """
        subject_guidance_base = SubjectGuidanceBase(subject_guidance_base)
        smoothing = Smoothing(smoothing)
        subject_guidance_scale = guidance_scale if subject_guidance_scale is None else subject_guidance_scale
        callback_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height = default_size if height is None else height
        width = default_size if width is None else width

        # 1. Check inputs and read the reference photos (before any model runs).
        self.check_inputs(
            height,
            width,
            num_inference_steps,
            guidance_scale,
            subject_guidance_scale,
            alpha,
            beta,
            callback_on_step_end_tensor_inputs,
            output_type,
        )
        prompt_is_batch = not isinstance(prompt, str)
        prompts = list(prompt) if prompt_is_batch else [prompt]
        if not prompts:
            raise ValueError("`prompt` is an empty list.")
        references = self.normalize_references(prompts, reference_images, prompt_is_batch)
        if negative_prompt is None:
            negative_prompts = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negative_prompts = [negative_prompt] * len(prompts)
        else:
            negative_prompts = list(negative_prompt)
            if len(negative_prompts) != len(prompts):
                raise ValueError(f"Got {len(negative_prompts)} negative prompts for {len(prompts)} prompts.")
        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt

        # 2. Encode the prompt once: c, 0 and c_aug (eqs. 1-2), and the model conditions, batched per model.
        prompt_embeds, negative_prompt_embeds, subject_prompt_embeds = self.encode_prompt(
            prompts, references, negative_prompts, device, num_images_per_prompt
        )

        # 3. Timesteps and the stage of each step.
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        stages = stage_schedule(len(timesteps), alpha, beta)

        # 4. Initial latents, shared by both models.
        latents = self.prepare_latents(
            batch,
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        smooth_kwargs = {"smoothing": smoothing, "kernel_size": smoothing_kernel_size, "sigma": smoothing_sigma}
        trace: dict[str, list[torch.Tensor]] = {"masks": [], "saliency_text": [], "saliency_subject": []}

        # 5. Denoising loop: stage I (TDM), stage II (TDM + SDM + SNF), stage III (SDM).
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                stage = stages[i]
                model_input = self.scheduler.scale_model_input(latents, t)
                eps_text = eps_subject = scaled_r_text = scaled_r_subject = None

                if stage.uses_text_model:
                    # eq. 1: eps_T = eps_T(0) + w R_T,  R_T = eps_T(c) - eps_T(0)
                    text_conditions = torch.cat([negative_prompt_embeds, prompt_embeds])
                    eps_null, eps_cond = self.unet(
                        torch.cat([model_input] * 2), t, encoder_hidden_states=text_conditions, return_dict=False
                    )[0].chunk(2)
                    response_text = guidance_response(eps_cond, eps_null)
                    eps_text = guided_prediction(eps_null, response_text, guidance_scale)
                    scaled_r_text = guidance_scale * response_text

                if stage.uses_subject_model:
                    # R_S = eps_S(c_aug) - eps_S(c);  eps_S = eps_S(c or 0) + w R_S  (release / eq. 2)
                    if subject_guidance_base is SubjectGuidanceBase.TEXT:
                        conditions = [prompt_embeds, subject_prompt_embeds]
                    else:
                        conditions = [negative_prompt_embeds, prompt_embeds, subject_prompt_embeds]
                    eps = self.subject_unet(
                        torch.cat([model_input] * len(conditions)),
                        t,
                        encoder_hidden_states=torch.cat(conditions),
                        return_dict=False,
                    )[0].chunk(len(conditions))
                    if subject_guidance_base is SubjectGuidanceBase.TEXT:
                        eps_cond, eps_aug = eps
                        eps_base = eps_cond
                    else:
                        eps_base, eps_cond, eps_aug = eps
                    response_subject = guidance_response(eps_aug, eps_cond)
                    eps_subject = guided_prediction(eps_base, response_subject, subject_guidance_scale)
                    scaled_r_subject = subject_guidance_scale * response_subject

                if stage is Stage.FUSION:
                    noise_pred, mask, norm_text, norm_subject = saliency_adaptive_noise_fusion(
                        eps_text, eps_subject, scaled_r_text, scaled_r_subject, **smooth_kwargs
                    )
                else:
                    noise_pred = eps_text if stage is Stage.TEXT else eps_subject
                    mask = norm_text = norm_subject = None
                    if return_masks:
                        full = torch.full_like(latents[:, :1], float(stage is Stage.SUBJECT), dtype=torch.float32)
                        mask = full
                        if scaled_r_text is not None:
                            norm_text = normalize_saliency(saliency_map(scaled_r_text, **smooth_kwargs))
                        if scaled_r_subject is not None:
                            norm_subject = normalize_saliency(saliency_map(scaled_r_subject, **smooth_kwargs))

                if return_masks:
                    nan = torch.full(latents.shape[:1] + latents.shape[2:], float("nan"), device=latents.device)
                    trace["masks"].append(mask[:, 0].float())
                    trace["saliency_text"].append(nan if norm_text is None else norm_text)
                    trace["saliency_subject"].append(nan if norm_subject is None else norm_subject)

                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                        "subject_prompt_embeds": subject_prompt_embeds,
                    }
                    out = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_inputs}) or {}
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                    subject_prompt_embeds = out.pop("subject_prompt_embeds", subject_prompt_embeds)
                progress_bar.update()

        # 6. Decode.
        if output_type == "latent":
            image = latents
        else:
            image = self.vae_decode(latents, generator)
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * batch)

        fusion_trace = None
        if return_masks:
            fusion_trace = FusionTrace(
                stages=stages,
                timesteps=timesteps.detach().cpu(),
                **{k: torch.stack(v).cpu() for k, v in trace.items()},
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, fusion_trace
        return FaceDiffuserPipelineOutput(images=image, fusion_trace=fusion_trace)
