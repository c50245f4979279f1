"""``FaceDiffuserPipeline``: two diffusion models that draw one image together.

The TDM (``unet``) draws the scene from the text; the SDM (``subject_unet``) draws the people from the text with the
reference faces fused into their class-noun tokens. The pipeline only orchestrates: it encodes the prompt, evaluates
each model on the conditions its guidance needs, and hands the predictions to
:func:`~facediffuser.step.face_diffuser_step` (stages, guidance and Saliency-adaptive Noise Fusion,
:mod:`facediffuser.fusion`) before every ``scheduler.step``.
"""

from __future__ import annotations

import logging
from typing import Any

import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .fusion import Condition
from .models import SubjectFuser
from .pipeline_base import (
    ConditionRequest,
    FaceDiffuserPipelineBase,
    FaceDiffuserPipelineOutput,
    NonFiniteLatentsError,
    check_finite_steps,
)
from .prompting import DEFAULT_PLACEHOLDER, tokenize_prompts
from .step import FusionTrace

logger = logging.getLogger(__name__)

__all__ = [
    "FaceDiffuserPipeline",
    "FaceDiffuserPipelineOutput",
    "FusionTrace",
    "NonFiniteLatentsError",
    "check_finite_steps",
]


class FaceDiffuserPipeline(FaceDiffuserPipelineBase, DiffusionPipeline, StableDiffusionMixin):
    r"""Person-centric subject-to-image generation with a text-driven and a subject-augmented diffusion model.

    Components:
        vae: SD1.x ``AutoencoderKL``, shared by both models.
        text_encoder: the frozen SD1.x CLIP text encoder, shared by both models (last hidden state, no clip-skip).
        tokenizer: the SD1.x CLIP tokenizer.
        unet: the TDM, any SD1.x ``UNet2DConditionModel`` (the released TDM, SD1.5, or a community checkpoint).
        subject_unet: the SDM's ``UNet2DConditionModel``.
        image_encoder: CLIP vision tower with projection; its ``image_embeds`` is the subject embedding ``o``.
        subject_fuser: :class:`~facediffuser.models.SubjectFuser`, which writes ``o`` into the class-noun token.
            ``None`` when the subject model is an IP-Adapter (:meth:`load_ip_adapter`,
            :mod:`facediffuser.subject_models`): ``subject_unet`` then carries the adapter (it may be
            ``unet`` itself) and ``image_encoder`` is the adapter's (``None`` for an adapter read from precomputed
            embeddings).
        scheduler: any diffusers scheduler (DDIM by default).
        placeholder: the placeholder string that follows each person's class noun in a prompt.
        face_detector: optional, ``None`` as in the release (photos are encoded as given). For an SDM trained on
            head references (``reference_region = "head"``, docs/training.md): a model whose ``find_faces(image)``
            gives the ``([x1, y1, x2, y2], score)`` of each face (head and hair) in the image's pixels, most
            confident first, such as the world's :class:`~facediffuser.models.FaceDetector`. Every reference
            photo is then cut to its most confident face, centred on a black square, before the image encoder; a
            photo with no face is refused.
        subject_guidance_scale: the SDM's guidance scale ``w`` this model draws with when a call gives none (saved in
            ``model_index.json``); ``None``, the default, makes it the call's ``guidance_scale``, as in the release.
            (For the mini model, scales 1.5 to 5 scored alike on validation people: docs/mini.md.)
        num_inference_steps: the number of steps this model samples with when a call gives none (saved in
            ``model_index.json``, beside the scheduler its ``scheduler/`` folder names); ``None``, the default, is the
            paper's 50.
        guidance_scale: the guidance scale ``w`` this model draws with when a call gives none (saved in
            ``model_index.json``): the TDM's, and the SDM's when ``subject_guidance_scale`` is ``None``; ``None``, the
            default, is the paper's 5. A latent-consistency model names a small one (``facediffuser train lcm``).

    ``enable_model_cpu_offload`` never holds both UNets on the accelerator (:mod:`facediffuser.offload`).
    """

    model_cpu_offload_seq = "face_detector->text_encoder->image_encoder->subject_fuser->unet->subject_unet->vae"
    _optional_components = ["face_detector", "subject_fuser", "image_encoder"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        subject_unet: UNet2DConditionModel,
        image_encoder: CLIPVisionModelWithProjection | None,
        subject_fuser: SubjectFuser | None,
        scheduler: KarrasDiffusionSchedulers,
        face_detector: Any = None,
        placeholder: str = DEFAULT_PLACEHOLDER,
        subject_guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
    ):
        arguments = locals()
        super().__init__()
        self._register(arguments)

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

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, D)`` last hidden state (after the final layer norm)."""
        return self.text_encoder(input_ids.to(device))[0]

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
        neg_ids, _ = tokenize_prompts(self.tokenizer, negative_prompts, self.placeholder)
        text = self.encode_text(ids, device)
        negative = self.encode_text(neg_ids, device)

        def repeat(x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B * n, L, D), copies of a prompt together
            return x.repeat_interleave(num_images_per_prompt, dim=0)

        augmented = self.augment_prompt(text, marks, references, device)
        return repeat(text), repeat(negative), repeat(augmented)

    def encode_conditions(self, request: ConditionRequest) -> tuple[dict[Condition, torch.Tensor], None]:
        """:meth:`encode_prompt`'s ``(c, 0, c_aug)`` by condition; an SD1.x UNet takes nothing more."""
        r = request
        text, negative, augmented = self.encode_prompt(
            r.prompts, r.references, r.negative_prompts, r.device, r.num_images_per_prompt
        )
        return {Condition.TEXT: text, Condition.NULL: negative, Condition.SUBJECT: augmented}, None
