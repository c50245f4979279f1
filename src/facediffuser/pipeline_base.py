"""What the Face-diffuser pipelines share: checking a call, the stages, the guidance, the fusion, the loop, decoding.

:class:`FaceDiffuserPipelineBase` is the whole of ``__call__`` (check inputs, encode, timesteps and stages, latents,
denoise, decode) over any pair of UNets. A pipeline built on it says only how it encodes the three conditions of
:class:`~facediffuser.fusion.Condition` (:meth:`FaceDiffuserPipelineBase.encode_conditions`): the SD1.x
:class:`~facediffuser.pipeline.FaceDiffuserPipeline` with one CLIP text tower, the SDXL
:class:`~facediffuser.pipeline_xl.FaceDiffuserXLPipeline` with two towers and SDXL's added conditions (pooled text
embeddings and size ids), passed to every UNet call of a condition beside its embeddings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline, retrieve_timesteps
from diffusers.utils import BaseOutput

from .fusion import Condition, Guidance, Smoothing, SubjectGuidanceBase, stage_guidance
from .images import crop_to_square, prepare_reference_pixels
from .offload import OneModelAtATimeOffloadMixin
from .prompting import tokenize_prompts
from .references import normalize_negative_prompts, normalize_prompts, normalize_references
from .regions import RegionSampler, regions_wanted
from .settings import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, SamplingSettings, StageBoundaries, check_image_size
from .step import FusionTrace, StepTrace, face_diffuser_step, sampling_stages
from .subject_models import AdapterSubjectMixin, SubjectModelKind, adapter_call

logger = logging.getLogger(__name__)

_DEFAULTS = SamplingSettings()

# The callback tensor that holds the embeddings of each condition.
_CONDITION_TENSORS = {
    Condition.NULL: "negative_prompt_embeds",
    Condition.TEXT: "prompt_embeds",
    Condition.SUBJECT: "subject_prompt_embeds",
}


class NonFiniteLatentsError(ValueError):
    """A denoising step made the latents NaN or infinite, so the image would be black: raised by
    :class:`FaceDiffuserPipeline` instead of decoding them (a ``ValueError``: the settings asked for more than the
    sampling's numbers hold)."""


@dataclass
class FaceDiffuserPipelineOutput(BaseOutput):
    """Output of :class:`FaceDiffuserPipeline`.

    Attributes:
        images: PIL images, or a numpy array / tensor depending on ``output_type``.
        fusion_trace: the per-step masks and saliency maps when ``return_masks=True``.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    fusion_trace: FusionTrace | None = None


@dataclass(frozen=True)
class ConditionRequest:
    """What a pipeline encodes its conditions from (:meth:`FaceDiffuserPipelineBase.encode_conditions`).

    Attributes:
        prompts: the prompts, placeholders in. references: ``[prompt][person][photo]``.
        negative_prompts: one per prompt (empty ones when the call gave none); ``negative_defaulted``: it gave none.
        device, num_images_per_prompt: where, and how many copies of each prompt's rows.
        height, width: the image's size in pixels (SDXL's size ids).
    """

    prompts: list[str]
    references: list[list[list[PIL.Image.Image]]]
    negative_prompts: list[str]
    negative_defaulted: bool
    device: torch.device
    num_images_per_prompt: int
    height: int
    width: int


class FaceDiffuserPipelineBase(OneModelAtATimeOffloadMixin, AdapterSubjectMixin):
    """The call, the loop and the decoding of the Face-diffuser pipelines (placed before ``DiffusionPipeline`` in
    their bases). A pipeline gives its components and :meth:`encode_conditions`."""

    _callback_tensor_inputs = ["latents", *_CONDITION_TENSORS.values()]

    # Reused unchanged from diffusers' Stable Diffusion pipeline (SDXL's are the same code): the same latent noise
    # and scheduler kwargs make the TDM-only case identical to diffusers' pipelines.
    prepare_latents = StableDiffusionPipeline.prepare_latents
    prepare_extra_step_kwargs = StableDiffusionPipeline.prepare_extra_step_kwargs

    # The keywords of ``__init__`` that go to the config (``model_index.json``); the others are components.
    _config_arguments = (
        "placeholder",
        "subject_guidance_scale",
        "num_inference_steps",
        "guidance_scale",
        "force_zeros_for_empty_prompt",
    )

    def _register(self, arguments: dict[str, Any]) -> None:
        """``__init__``'s work, given its ``locals()``: the components registered, the sampling defaults this model
        keeps in its config refused here with the call's words, and the image processor."""
        import inspect

        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        config = {n: arguments[n] for n in names if n in self._config_arguments}
        SamplingSettings(
            subject_guidance_scale=config["subject_guidance_scale"],
            num_inference_steps=config["num_inference_steps"],
            guidance_scale=config["guidance_scale"],
        )
        self.register_modules(**{n: arguments[n] for n in names if n not in self._config_arguments})
        self.register_to_config(**config)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_base(cls, folder: str | os.PathLike, **kwargs: Any):
        """This pipeline over a plain diffusers base folder (``StableDiffusionPipeline``'s for
        :class:`~facediffuser.pipeline.FaceDiffuserPipeline`, ``StableDiffusionXLPipeline``'s for the SDXL one): its
        UNet is the scene model and there is no subject model until :meth:`load_ip_adapter` puts an adapter on that
        UNet. ``kwargs`` go to ``from_pretrained`` (``dtype``, ``use_safetensors``, ...); the base's other components
        (a safety checker, a feature extractor) are not loaded."""
        pipe = cls.from_pretrained(
            folder, subject_unet=None, image_encoder=None, subject_fuser=None, face_detector=None, **kwargs
        )
        pipe.register_modules(subject_unet=pipe.unet)
        return pipe

    @property
    def placeholder(self) -> str:
        return self.config.placeholder

    @property
    def subject_guidance_scale(self) -> float | None:
        """The SDM's ``w`` when a call gives none (``None``: the call's ``guidance_scale``)."""
        return self.config.subject_guidance_scale

    @property
    def default_num_inference_steps(self) -> int:
        """The number of steps a call that gives none samples with: the one this model's config names
        (``num_inference_steps`` in ``model_index.json``, with the scheduler of its ``scheduler/`` folder), else the
        paper's 50."""
        own = getattr(self.config, "num_inference_steps", None)
        return DEFAULT_STEPS if own is None else own

    @property
    def default_guidance_scale(self) -> float:
        """The guidance scale ``w`` a call that gives none samples with (the TDM's, and the SDM's unless
        :attr:`subject_guidance_scale` names its own): the one this model's config names (``guidance_scale`` in
        ``model_index.json``), else the paper's 5."""
        own = getattr(self.config, "guidance_scale", None)
        return DEFAULT_GUIDANCE_SCALE if own is None else own

    def own_sampling(self, settings: SamplingSettings) -> SamplingSettings:
        """``settings`` with what it leaves to the model (``None`` steps or guidance scale) filled with this model's
        own numbers: what a call draws with, and what ``generate`` and the demo record."""
        own = {"num_inference_steps": self.default_num_inference_steps, "guidance_scale": self.default_guidance_scale}
        own = {name: value for name, value in own.items() if getattr(settings, name) is None}
        return settings.replace(**own) if own else settings

    # ------------------------------------------------------------------ memory and speed
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
    def check_inputs(
        self,
        height: int,
        width: int,
        callback_on_step_end_tensor_inputs: Sequence[str] | None,
        output_type: str,
    ) -> None:
        """The checks of what :class:`~facediffuser.settings.SamplingSettings` does not hold."""
        check_image_size(height, width, multiple=max(8, self.vae_scale_factor))
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(f"Unknown callback tensor inputs {bad}; choose from {self._callback_tensor_inputs}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")

    def cut_to_faces(self, references: list[list[list[PIL.Image.Image]]]) -> list[list[list[PIL.Image.Image]]]:
        """With a ``face_detector``, every photo of ``references`` (``[prompt][person][photo]``) cut to its most
        confident face; without one, ``references`` as they are.

        Raises:
            ValueError: the detector finds no face in a photo (which one is named).
        """
        if self.face_detector is None:
            return references

        def cut(photo: PIL.Image.Image, p: int, n: int, k: int) -> PIL.Image.Image:
            found = self.face_detector.find_faces(photo)
            if not found:
                where = f" of prompt {p + 1}" if len(references) > 1 else ""
                raise ValueError(
                    f"The face detector of this model finds no face in photo {k + 1} of person {n + 1}{where} "
                    f"({photo.width}x{photo.height}). The model reads the face of each reference: give photos in "
                    "which the person's face and hair are visible."
                )
            return crop_to_square(photo, found[0][0])

        return [
            [[cut(photo, p, n, k) for k, photo in enumerate(person)] for n, person in enumerate(prompt_refs)]
            for p, prompt_refs in enumerate(references)
        ]

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
    def augment_prompt(
        self,
        text: torch.Tensor,
        marks: list[list[int]],
        references: list[list[list[PIL.Image.Image]]],
        device: torch.device,
    ) -> torch.Tensor:
        """``c_aug`` from ``c`` (``(B, L, D)``, one row per prompt): each marked class-noun token replaced by
        ``fuse(t, o)`` over its whole width, ``o`` its person's :meth:`encode_subjects`. With an IP-Adapter as the
        subject model ``c_aug`` is ``c`` (the images reach the UNet through the adapter, :class:`AdapterCall`)."""
        if self.subject_model_kind is SubjectModelKind.IP_ADAPTER:
            return text
        subject_embeds = self.encode_subjects(references, device)
        positions = torch.tensor(
            [[b, index] for b, indices in enumerate(marks) for index in indices], dtype=torch.long, device=device
        ).reshape(-1, 2)
        return self.subject_fuser(text.to(self.subject_fuser.dtype), subject_embeds, positions).to(text.dtype)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        reference_images: Any = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        subject_guidance_scale: float | None = _DEFAULTS.subject_guidance_scale,
        alpha: float = _DEFAULTS.alpha,
        beta: float = _DEFAULTS.beta,
        stage_boundaries: StageBoundaries | str = _DEFAULTS.stage_boundaries,
        subject_guidance_base: SubjectGuidanceBase | str = _DEFAULTS.subject_guidance_base,
        smoothing: Smoothing | str = _DEFAULTS.smoothing,
        smoothing_kernel_size: int = _DEFAULTS.smoothing_kernel_size,
        smoothing_sigma: float = _DEFAULTS.smoothing_sigma,
        region_attention: bool = _DEFAULTS.region_attention,
        region_attention_text: bool = _DEFAULTS.region_attention_text,
        region_saliency: bool = _DEFAULTS.region_saliency,
        region_source: str = _DEFAULTS.region_source,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_masks: bool = False,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        ip_adapter_masks: list[torch.Tensor] | None = None,
    ) -> FaceDiffuserPipelineOutput | tuple:
        r"""Generates images of the referenced people in the prompted scene.

        The sampling arguments (``num_inference_steps`` to ``region_saliency``) are the fields of
        :class:`~facediffuser.settings.SamplingSettings`, which holds their defaults and their rules:
        ``pipe(prompt, reference_images=refs, **settings.pipeline_kwargs())`` passes a whole settings object.

        Args:
            prompt: a prompt, or a list of prompts, each with one placeholder after every person's class noun:
                ``"a man <|image|> and a woman <|image|> at a cafe"``.
            reference_images: for one prompt, one entry per placeholder, in order; for a list of prompts, one such
                list per prompt. An entry is a PIL image, a path, a folder of photos, or a list of images/paths of
                the same person (their CLIP embeddings are averaged). A pipeline with a ``face_detector`` cuts each
                photo to its face first (:meth:`cut_to_faces`).
            negative_prompt: the "empty" condition ``0`` of the guidance (default ``""``).
            height, width: output size in pixels, multiples of 8 (default: the UNet's sample size x 8).
            num_inference_steps: denoising steps ``T`` (``None``: the pipeline's :attr:`default_num_inference_steps`,
                which its folder names, else 50).
            timesteps, sigmas: custom schedules, for schedulers that accept them.
            guidance_scale: ``w`` of the TDM (eq. 1) (``None``: the pipeline's :attr:`default_guidance_scale`, which
                its folder names, else 5).
            subject_guidance_scale: ``w`` of the SDM (default: the pipeline's ``subject_guidance_scale`` when its
                config sets one, else the guidance scale of the TDM).
            alpha, beta: stage fractions, ``0 <= alpha <= beta <= 1``. With ``T`` the number of scheduler
                timesteps and ``i = 0 .. T-1`` the step index: stage I (TDM only) while ``i < floor(alpha*T)``,
                stage II (both models, SNF) while ``i < floor(beta*T)``, stage III (SDM only) after. ``T = 50`` with
                the default fractions gives 15 / 15 / 20 steps. ``alpha = beta = 1`` is plain Stable Diffusion with
                the TDM.
            stage_boundaries: ``"steps"`` (default): alpha and beta are fractions of the steps, as above; ``"noise"``:
                noise levels, stage I while the timestep ``t >= (1 - alpha) * N`` and stage III once
                ``t < (1 - beta) * N`` (``N``: the scheduler's training timesteps;
                :func:`~facediffuser.step.sampling_stages`).
            subject_guidance_base: ``"text"`` anchors the SDM on ``eps_S(c)`` as the official release does; ``"null"``
                anchors it on ``eps_S(0)`` as paper eq. 2 writes, which adds ``0`` to the SDM's conditions
                (:data:`~facediffuser.fusion.SUBJECT_MODEL_GUIDANCE`).
            smoothing, smoothing_kernel_size, smoothing_sigma: the ``Smooth`` of SNF. ``"box"`` is the release's;
                ``"gaussian"`` blurs with ``smoothing_sigma``.
            region_attention, region_attention_text, region_saliency: the options that use the person regions (read
                from the models' cross-attention by the end of stage I; docs/method.md, Person regions), all off
                by default: in stages II-III each fused token of the SDM attends only inside its person's region; in
                stage II the TDM's class-noun tokens the same; SNF's softmax runs over each person's region apart.
                With ``alpha = 0`` there is no stage I, hence no regions: the options have no effect (logged once).
            region_source: where the regions are read from: ``"tdm"`` (default), the TDM's attention to each class
                noun over stage I, at no extra UNet call; ``"sdm"``, each fused token's attention in the SDM less its
                class noun's, from one extra SDM call on ``c`` and ``c_aug`` at the last stage-I step. Used only when a
                region option or ``return_masks`` asks for regions.
            num_images_per_prompt: images per prompt.
            eta: DDIM's eta (ignored by other schedulers).
            generator, latents: randomness, as in every diffusers pipeline.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict: return a :class:`FaceDiffuserPipelineOutput` rather than a tuple.
            return_masks: also return a :class:`~facediffuser.step.FusionTrace` of the per-step masks and saliency
                maps, and the person regions (read beside the models' own attention: the images do not change).
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` called after every step; it may
                replace any of the tensors named in ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``).
            ip_adapter_image_embeds: with an IP-Adapter as the subject model (:meth:`load_ip_adapter`), the people's
                embeddings instead of ``reference_images`` (FaceID's face-recognition embeddings): as diffusers'
                pipelines take them, one ``(2, K, dim)`` tensor per adapter, the "no image" half first, one image per
                placeholder.
            ip_adapter_masks: with an IP-Adapter, diffusers' masks (``IPAdapterMaskProcessor.preprocess``), one
                ``(1, K, H, W)`` tensor per adapter, for every step of the subject model. Without them, two or more
                people each get their person region (read in stage I) as their mask in stages II and III.

        Returns:
            :class:`FaceDiffuserPipelineOutput`, or ``(images, fusion_trace)`` when ``return_dict=False``.

        Cost: each model runs one batched UNet call per step of a stage that uses it, on the conditions its guidance
        needs; :func:`facediffuser.fusion.unet_evaluations` counts them.
        """
        # 1. Check inputs, all before any model runs: the sampling settings (validated once, by SamplingSettings),
        #    the image size and output options, the prompts and the reference photos.
        settings = SamplingSettings(
            num_inference_steps=num_inference_steps,
            alpha=alpha,
            beta=beta,
            stage_boundaries=stage_boundaries,
            guidance_scale=guidance_scale,
            subject_guidance_scale=self.subject_guidance_scale
            if subject_guidance_scale is None
            else subject_guidance_scale,
            subject_guidance_base=subject_guidance_base,
            smoothing=smoothing,
            smoothing_kernel_size=smoothing_kernel_size,
            smoothing_sigma=smoothing_sigma,
            region_attention=region_attention,
            region_attention_text=region_attention_text,
            region_saliency=region_saliency,
            region_source=region_source,
        )
        settings = self.own_sampling(settings)
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height = default_size if height is None else height
        width = default_size if width is None else width
        self.check_inputs(height, width, callback_on_step_end_tensor_inputs, output_type)
        prompts, prompt_is_batch = normalize_prompts(prompt)
        negative_prompts = normalize_negative_prompts(negative_prompt, prompts, self.placeholder)
        references = (
            [[] for _ in prompts]  # the people are the adapter's embeddings (checked by adapter_call)
            if ip_adapter_image_embeds is not None
            else self.cut_to_faces(normalize_references(prompts, reference_images, prompt_is_batch, self.placeholder))
        )
        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        adapter = adapter_call(
            self, settings, prompts, references, reference_images, ip_adapter_image_embeds, ip_adapter_masks,
            num_images_per_prompt, device,
        )  # fmt: skip

        # 2. Encode the prompt once: the conditions c, 0 and c_aug of eqs. 1-2.
        embeds, added = self.encode_conditions(
            ConditionRequest(
                prompts,
                references,
                negative_prompts,
                negative_prompt is None,
                device,
                num_images_per_prompt,
                height,
                width,
            )
        )
        prompt_embeds = embeds[Condition.TEXT]

        # 3. Timesteps, and the stage of each step (Sec. 3.3).
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, settings.num_inference_steps, device, timesteps, sigmas
        )
        stages = sampling_stages(timesteps, settings, self.scheduler.config.num_train_timesteps)

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

        # 5. Person regions, when asked for (the trace, or a region option) and there is a stage I: the models'
        #    attention to each person's token, read beside their own attention by the end of stage I.
        marks = (
            tokenize_prompts(self.tokenizer, prompts, self.placeholder)[1]
            if return_masks or settings.uses_regions
            else []
        )
        if adapter is not None and adapter.wants_regions and not marks:
            marks = tokenize_prompts(self.tokenizer, prompts, self.placeholder)[1]
        regions = None
        wanted = return_masks or (adapter is not None and adapter.wants_regions)
        if regions_wanted(settings, wanted, stages, max(map(len, marks), default=0)):
            regions = RegionSampler(
                settings, marks, num_images_per_prompt, latents.shape[-2:], prompt_embeds.shape[1], device
            )

        # 6. Denoise: each model the stage uses evaluates its conditions in one batched call; the Face-diffuser step
        #    turns the predictions into one (stage I: eps_T, stage II: SNF, stage III: eps_S); the scheduler steps.
        #    Whether each step's latents are finite is noted on the device (one reduction, no wait for it).
        step_traces: list[StepTrace] = []
        finite: list[torch.Tensor] = []
        self._num_timesteps = len(timesteps)
        #    With regions, side processors sit on both UNets for this loop only.
        with (
            self.progress_bar(total=len(timesteps)) as progress_bar,
            regions.installed(self.unet, self.subject_unet) if regions else nullcontext(),
            adapter.installed() if adapter else nullcontext(),
        ):
            for i, t in enumerate(timesteps):
                text_guidance, subject_guidance = stage_guidance(stages[i], settings.subject_guidance_base)
                model_input = self.scheduler.scale_model_input(latents, t)
                if regions:
                    regions.before_text_model(self.unet, stages[i], text_guidance)
                text_predictions = self._predict_noise(
                    self.unet, text_guidance, model_input, t, embeds, adapter.text_kwargs if adapter else None, added
                )
                if regions:
                    regions.before_subject_model(self.subject_unet, subject_guidance)
                subject_predictions = self._predict_noise(
                    self.subject_unet,
                    subject_guidance,
                    model_input,
                    t,
                    embeds,
                    adapter.subject_kwargs if adapter else None,
                    added,
                )
                if regions:
                    next_stage = stages[i + 1] if i + 1 < len(stages) else None
                    regions.probe_subject_model(
                        self.subject_unet,
                        stages[i],
                        next_stage,
                        partial(
                            self._predict_noise, self.subject_unet, latents=model_input, t=t, embeds=embeds, added=added
                        ),
                    )
                    regions.after_step(stages[i], next_stage)
                    if adapter:
                        adapter.take_regions(regions.assignment)
                noise_pred, step_trace = face_diffuser_step(
                    stages[i],
                    text_predictions,
                    subject_predictions,
                    settings,
                    trace=return_masks,
                    regions=regions.assignment if regions else None,
                )
                if return_masks:
                    step_traces.append(step_trace)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    latents, embeds = self._step_end_callback(
                        callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, latents, embeds
                    )
                finite.append(torch.isfinite(latents).all())
                progress_bar.update()

        # 7. Refuse latents that overflowed (NaN or inf) rather than decode them into a black image.
        check_finite_steps(finite, settings)

        # 8. Decode.
        if output_type == "latent":
            image = latents
        else:
            image = self.vae_decode(latents, generator)
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * batch)

        fusion_trace = None
        if return_masks:
            fusion_trace = FusionTrace.from_steps(
                stages,
                timesteps,
                step_traces,
                regions.regions if regions else None,
                regions.assignment if regions else None,
                adapter.masks if adapter else None,
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, fusion_trace
        return FaceDiffuserPipelineOutput(images=image, fusion_trace=fusion_trace)

    def encode_conditions(
        self, request: ConditionRequest
    ) -> tuple[dict[Condition, torch.Tensor], dict[Condition, dict[str, torch.Tensor]] | None]:
        """The embeddings of the conditions ``c``, ``0`` and ``c_aug``, each ``(B * num_images_per_prompt, L, D)``,
        and the further UNet inputs of each (diffusers' ``added_cond_kwargs``, one ``(B * n, ...)`` tensor per name)
        or ``None``. Each pipeline says how it encodes."""
        raise NotImplementedError

    @staticmethod
    def _predict_noise(
        unet: UNet2DConditionModel,
        guidance: Guidance | None,
        latents: torch.Tensor,
        t: torch.Tensor,
        embeds: dict[Condition, torch.Tensor],
        unet_kwargs: Callable[[Guidance], dict] | None = None,
        added: dict[Condition, dict[str, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, ...] | None:
        """One batched UNet call on every condition of ``guidance``: ``eps(cond)`` chunks in its order, each
        ``(B, C, h, w)``; ``None`` when the stage does not use this model. ``unet_kwargs(guidance)`` gives the
        call's further UNet keywords (an IP-Adapter's embeddings and masks); ``added`` the further inputs of each
        condition (SDXL's pooled text embeddings and size ids), batched in the same order."""
        if guidance is None:
            return None
        n = guidance.evaluations
        conditions = torch.cat([embeds[c] for c in guidance.conditions])  # (n * B, L, D)
        kwargs = unet_kwargs(guidance) if unet_kwargs is not None else {}
        if added:
            names = added[guidance.conditions[0]]
            batched = {name: torch.cat([added[c][name] for c in guidance.conditions]) for name in names}
            kwargs["added_cond_kwargs"] = {**batched, **kwargs.get("added_cond_kwargs", {})}
        return unet(torch.cat([latents] * n), t, encoder_hidden_states=conditions, return_dict=False, **kwargs)[
            0
        ].chunk(n)

    def _step_end_callback(
        self,
        callback: Callable[[Any, int, Any, dict], dict],
        names: Sequence[str] | None,
        i: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        embeds: dict[Condition, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[Condition, torch.Tensor]]:
        """Runs ``callback_on_step_end`` on the tensors it asked for and takes back those it returns."""
        tensors = {"latents": latents, **{name: embeds[c] for c, name in _CONDITION_TENSORS.items()}}
        out = callback(self, i, t, {k: tensors[k] for k in names or ["latents"]}) or {}
        tensors.update({k: v for k, v in out.items() if k in tensors})
        return tensors["latents"], {c: tensors[name] for c, name in _CONDITION_TENSORS.items()}


def check_finite_steps(finite: Sequence[torch.Tensor], settings: SamplingSettings) -> None:
    """Raises :class:`NonFiniteLatentsError` naming the first step whose latents are not finite; ``finite`` holds one
    boolean per step, still on the device (they are read here, in one wait)."""
    if not finite:
        return
    flags = torch.stack(list(finite)).cpu()
    if bool(flags.all()):
        return
    first = int((~flags).nonzero()[0, 0]) + 1
    scales = f"{settings.effective_guidance_scale:g}"
    if settings.effective_subject_guidance_scale != settings.effective_guidance_scale:
        scales += f" for the TDM, {settings.effective_subject_guidance_scale:g} for the SDM"
    raise NonFiniteLatentsError(
        f"Step {first} of {len(flags)} produced non-finite latents (NaN or inf), so the image would be black: "
        f"lower the guidance scale (now {scales}; 1 to 20 is usual), or run in float32 if the model runs in float16."
    )
