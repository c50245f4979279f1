"""``FaceDiffuserXLPipeline``: Face-diffuser over SDXL UNets.

The stages, the guidance rules, SNF, the person regions, the adapter call and the loop are
:class:`~facediffuser.pipeline_base.FaceDiffuserPipelineBase`'s, as for the SD1.x pipeline. What differs is the
encoding, which is SDXL's (as diffusers' ``StableDiffusionXLPipeline`` encodes):

* each condition's tokens are the penultimate hidden states of both CLIP text towers side by side (768 + 1280 = 2048
  wide for SDXL), and the UNet also reads, per condition, the pooled projection of the second tower
  (``text_embeds``) and the size ids (``time_ids``: original size, crop corner, target size);
* ``c`` is the prompt without placeholders; ``0`` the negative prompt, or, when the call gives none and the model's
  ``force_zeros_for_empty_prompt`` is set (SDXL base's setting), zeros for both its tokens and its pooled embedding,
  so that ``alpha = beta = 1`` is ``StableDiffusionXLPipeline`` exactly; ``c_aug`` is ``c`` with each class-noun
  token replaced by ``fuse(t, o)`` over the whole 2048-wide token, its pooled embedding and size ids ``c``'s.
"""

from __future__ import annotations

import logging
from typing import Any

import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

from .fusion import Condition
from .models import SubjectFuser
from .pipeline_base import ConditionRequest, FaceDiffuserPipelineBase
from .prompting import DEFAULT_PLACEHOLDER, tokenize_prompts

logger = logging.getLogger(__name__)


class FaceDiffuserXLPipeline(FaceDiffuserPipelineBase, DiffusionPipeline, StableDiffusionMixin):
    r"""Face-diffuser over SDXL: a text-driven and a subject-augmented SDXL UNet that draw one image together.

    Components (SDXL's, plus the subject model's):
        vae: the SDXL ``AutoencoderKL`` (``force_upcast``: a float16 VAE decodes in float32, see :meth:`vae_decode`).
        text_encoder, tokenizer: CLIP ViT-L/14's text tower and tokenizer (SDXL's first).
        text_encoder_2, tokenizer_2: OpenCLIP ViT-bigG/14's text tower with projection and its tokenizer.
        unet: the TDM, any SDXL ``UNet2DConditionModel`` (SDXL base or a community SDXL checkpoint).
        subject_unet: the SDM's SDXL UNet, or the TDM's own when the subject model is an IP-Adapter.
        image_encoder: CLIP vision tower with projection (the subject embedding ``o``, or the adapter's encoder).
        subject_fuser: :class:`~facediffuser.models.SubjectFuser` with ``embed_dim=2048`` and the image encoder's
            width as ``image_embed_dim``; ``None`` with an IP-Adapter.
        scheduler: any diffusers scheduler.
        face_detector, placeholder, subject_guidance_scale, num_inference_steps, guidance_scale: as for
            :class:`~facediffuser.pipeline.FaceDiffuserPipeline`.
        force_zeros_for_empty_prompt: as in ``StableDiffusionXLPipeline``: with no negative prompt, the condition
            ``0`` is zeros (SDXL base's setting, ``True`` by default).
    """

    model_cpu_offload_seq = (
        "face_detector->text_encoder->text_encoder_2->image_encoder->subject_fuser->unet->subject_unet->vae"
    )
    _optional_components = ["face_detector", "subject_fuser", "image_encoder"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
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
        force_zeros_for_empty_prompt: bool = True,
    ):
        arguments = locals()
        super().__init__()
        self._register(arguments)
        self._size_conditions: tuple = (None, (0, 0), None)

    def text_model_pipeline(self, unet: UNet2DConditionModel | None = None):
        """Plain ``StableDiffusionXLPipeline`` over this pipeline's own VAE, text encoders, tokenizers and scheduler
        (no copies); ``unet`` defaults to the TDM. The baseline of the equivalence tests."""
        from diffusers import StableDiffusionXLPipeline

        sdxl = StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet if unet is None else unet,
            scheduler=self.scheduler,
            force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )
        sdxl.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return sdxl

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_text(
        self, input_ids: torch.Tensor, input_ids_2: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, L)`` ids of each tokenizer -> ``(B, L, D1 + D2)`` the towers' penultimate hidden states side by side,
        and ``(B, P)`` the second tower's pooled projection."""
        first = self.text_encoder(input_ids.to(device), output_hidden_states=True)
        second = self.text_encoder_2(input_ids_2.to(device), output_hidden_states=True)
        tokens = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return tokens.to(self.text_encoder_2.dtype), second.text_embeds

    @torch.no_grad()
    def encode_prompt(
        self,
        prompts: list[str],
        references: list[list[list[PIL.Image.Image]]],
        negative_prompts: list[str],
        device: torch.device,
        num_images_per_prompt: int,
        zero_negative: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(c, 0, c_aug, pooled c, pooled 0)``: the tokens ``(B * n, L, 2048)`` and the pooled embeddings
        ``(B * n, 1280)`` (SDXL's widths). ``c_aug``'s pooled embedding is ``c``'s. ``zero_negative``: ``0`` is
        zeros rather than the encoded negative prompts (SDXL's ``force_zeros_for_empty_prompt``)."""
        ids, marks = tokenize_prompts(self.tokenizer, prompts, self.placeholder)
        ids_2, _ = tokenize_prompts(self.tokenizer_2, prompts, self.placeholder)
        text, pooled = self.encode_text(ids, ids_2, device)
        if zero_negative:
            negative, negative_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
        else:
            neg_ids, _ = tokenize_prompts(self.tokenizer, negative_prompts, self.placeholder)
            neg_ids_2, _ = tokenize_prompts(self.tokenizer_2, negative_prompts, self.placeholder)
            negative, negative_pooled = self.encode_text(neg_ids, neg_ids_2, device)
        augmented = self.augment_prompt(text, marks, references, device)

        def repeat(x: torch.Tensor) -> torch.Tensor:  # copies of a prompt together
            return x.repeat_interleave(num_images_per_prompt, dim=0)

        return repeat(text), repeat(negative), repeat(augmented), repeat(pooled), repeat(negative_pooled)

    def size_ids(self, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """SDXL's ``time_ids`` of one image, ``(1, 6)``: original size, crop corner, target size (each ``(h, w)``;
        the sizes default to the image's, the corner to ``(0, 0)``, as in ``StableDiffusionXLPipeline``)."""
        original, crop, target = self._size_conditions
        ids = [*(original or (height, width)), *crop, *(target or (height, width))]
        passed = self.unet.config.addition_time_embed_dim * len(ids) + self.text_encoder_2.config.projection_dim
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise ValueError(
                f"The UNet's added embedding reads {expected} numbers but the size ids and the second text encoder's "
                f"projection give {passed}: the UNet and text_encoder_2 are not of the same SDXL model."
            )
        return torch.tensor([ids], dtype=dtype, device=device)

    def encode_conditions(
        self, request: ConditionRequest
    ) -> tuple[dict[Condition, torch.Tensor], dict[Condition, dict[str, torch.Tensor]]]:
        """The tokens of ``c``, ``0`` and ``c_aug`` and, per condition, the UNet's ``text_embeds`` (pooled) and
        ``time_ids`` (:meth:`size_ids`, the same for every condition)."""
        r = request
        zero = r.negative_defaulted and self.config.force_zeros_for_empty_prompt
        text, negative, augmented, pooled, negative_pooled = self.encode_prompt(
            r.prompts, r.references, r.negative_prompts, r.device, r.num_images_per_prompt, zero_negative=zero
        )
        ids = self.size_ids(r.height, r.width, text.dtype, r.device).repeat(text.shape[0], 1)
        embeds = {Condition.TEXT: text, Condition.NULL: negative, Condition.SUBJECT: augmented}
        added = {
            Condition.TEXT: {"text_embeds": pooled, "time_ids": ids},
            Condition.NULL: {"text_embeds": negative_pooled, "time_ids": ids},
            Condition.SUBJECT: {"text_embeds": pooled, "time_ids": ids},
        }
        return embeds, added

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        *args: Any,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ):
        """:meth:`FaceDiffuserPipelineBase.__call__ <facediffuser.pipeline_base.FaceDiffuserPipelineBase.__call__>`,
        with SDXL's size conditioning: ``original_size``, ``crops_coords_top_left`` and ``target_size`` as in
        ``StableDiffusionXLPipeline`` (the sizes default to the image's, the corner to ``(0, 0)``)."""
        self._size_conditions = (
            None if original_size is None else tuple(original_size),
            tuple(crops_coords_top_left),
            None if target_size is None else tuple(target_size),
        )
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._size_conditions = (None, (0, 0), None)
