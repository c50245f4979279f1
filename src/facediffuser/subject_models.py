"""The subject model as a role: the FastComposer-style SDM with its fuser, or an IP-Adapter on a UNet.

Face-diffuser's fusion needs two things of the model that draws the people: its guided prediction and its identity
response ``R_S`` (eq. 2). Either kind of subject model gives both on the same three conditions of
:class:`~facediffuser.fusion.Condition`, so the stages, the guidance bases, SNF and the trace are one code path:

============  ===============================================  ===============================================
condition     FastComposer-style SDM (``subject_unet``)        IP-Adapter (on ``subject_unet``, which may be
                                                               ``unet`` itself)
============  ===============================================  ===============================================
``0``         the negative prompt                              the negative prompt, no image
``c``         the prompt                                       the prompt, no image
``c_aug``     the prompt with each class noun fused with ``o`` the prompt and the people's images
============  ===============================================  ===============================================

"No image" is the adapter's own unconditional image, the one it was trained to read as "no image" and the one
diffusers' IP-Adapter guidance uses: zero image embeddings (zero CLIP images for the adapters that read CLIP's
hidden states). So ``R_S = eps(c, image) - eps(c, no image)`` is the adapter's contribution, and both guidance bases
keep their meaning (``text``: ``eps(c, no image) + w R_S``; ``null``: ``eps(0, no image) + w R_S``).

When the adapter sits on the scene model's own UNet (:meth:`AdapterSubjectMixin.load_ip_adapter` with
``on="unet"``, the default), the pipeline holds one UNet: the text model is that UNet with every adapter scale at 0
(its image attention skipped, so it is the plain UNet, bit for bit), the subject model the same UNet at the adapter's
scales. :class:`AdapterCall` switches the scales before each UNet call and puts them back after the call.

Several people with one adapter: each person is one image of the adapter (their photos' embeddings averaged), and
without user masks each person's ``ip_adapter_masks`` in stages II and III is their region from the scene model's
stage-I attention to their class noun (:mod:`facediffuser.regions`, :func:`~facediffuser.fusion.region_masks`).
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, IPAdapterFullImageProjection, IPAdapterPlusImageProjection

from .fusion import Condition, Guidance, region_masks
from .images import prepare_reference_pixels

logger = logging.getLogger(__name__)

IP_ADAPTER_PROCESSORS = (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)
# Projections that read CLIP's image embedding (``image_embeds``) or its penultimate hidden states.
_READS_IMAGE_EMBEDS = (ImageProjection,)
_READS_HIDDEN_STATES = (IPAdapterPlusImageProjection, IPAdapterFullImageProjection)


class SubjectModelKind(str, enum.Enum):
    """What draws the people (docs/method.md, The subject model)."""

    FUSED = "fused"  # the FastComposer-style SDM: class-noun tokens fused with the reference embedding
    IP_ADAPTER = "ip-adapter"  # an IP-Adapter: decoupled cross-attention to the reference image


def has_ip_adapter(unet: Any) -> bool:
    """Whether ``unet`` carries an IP-Adapter loaded the diffusers way (its image projection is in place)."""
    config = getattr(unet, "config", None)
    return getattr(config, "encoder_hid_dim_type", None) == "ip_image_proj" and unet.encoder_hid_proj is not None


def ip_adapter_processors(unet: UNet2DConditionModel) -> list[Any]:
    """The IP-Adapter attention processors of ``unet``, also when a side processor wraps them for a call."""
    found = []
    for processor in unet.attn_processors.values():
        while hasattr(processor, "inner"):
            processor = processor.inner
        if isinstance(processor, IP_ADAPTER_PROCESSORS):
            found.append(processor)
    return found


# ------------------------------------------------------------------ checking an adapter against a UNet
def split_ip_adapter_state(state: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """A flat ``{"image_proj.*", "ip_adapter.*"}`` state dict (the ``.safetensors`` layout) -> the nested one of the
    ``.bin`` files and of diffusers' loader; a nested one is returned as it is."""
    if isinstance(state.get("image_proj"), dict) or isinstance(state.get("ip_adapter"), dict):
        return state
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part in nested and rest:
            nested[part][rest] = value
    return nested


def check_ip_adapter_state(state: dict[str, Any], unet: UNet2DConditionModel, source: str) -> None:
    """Raises ``ValueError`` (one sentence naming ``source``) unless ``state`` is an IP-Adapter that fits ``unet``: an
    ``image_proj`` and an ``ip_adapter`` part, one ``to_k_ip``/``to_v_ip`` pair per cross-attention layer of the UNet,
    each ``(layer width, cross-attention width)``, and an image projection whose output is the cross-attention width.
    """
    image_proj, layers = state.get("image_proj"), state.get("ip_adapter")
    if not isinstance(image_proj, dict) or not isinstance(layers, dict) or not image_proj or not layers:
        raise ValueError(
            f"{source} is not an IP-Adapter: it lacks the `image_proj` and `ip_adapter` weights that IP-Adapter "
            "files hold. Give an IP-Adapter weight file (such as ip-adapter_sd15.safetensors)."
        )
    cross = unet.config.cross_attention_dim
    widths = _cross_attention_widths(unet)
    expected = {f"{2 * i + 1}.{name}.weight" for i in range(len(widths)) for name in ("to_k_ip", "to_v_ip")}
    held = {k for k in layers if ".to_k_ip." in k or ".to_v_ip." in k}
    if held != expected:
        raise ValueError(
            f"{source} has image key/value layers for {len(held) // 2} cross-attention layers, but the UNet has "
            f"{len(widths)}: it was made for another base model. Give the IP-Adapter made for this UNet's base "
            f"({_adapter_files(unet)})."
        )
    for i, width in enumerate(widths):
        for name in ("to_k_ip", "to_v_ip"):
            shape = tuple(layers[f"{2 * i + 1}.{name}.weight"].shape)
            if shape != (width, cross):
                raise ValueError(
                    f"{source}: `ip_adapter.{2 * i + 1}.{name}.weight` is {shape[0]}x{shape[1]} but the UNet's "
                    f"layer takes {width}x{cross}: it was made for another base model. Give the IP-Adapter made "
                    f"for this UNet's base ({_adapter_files(unet)})."
                )
    out = _projection_width(image_proj)
    if out is not None and out != cross:
        raise ValueError(
            f"{source}: its image projection gives {out}-wide tokens but the UNet's cross-attention reads {cross}: it "
            "was made for another base model. Give the IP-Adapter made for this UNet's base."
        )


def is_sdxl_unet(config: Any) -> bool:
    """Whether a UNet config (a ``config.json`` as a dict, or a model's config) is SDXL's: it reads SDXL's added
    conditions (``addition_embed_type = "text_time"``: pooled text embeddings and size ids)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return get("addition_embed_type", None) == "text_time"


def _adapter_files(unet: UNet2DConditionModel) -> str:
    return "SDXL: the *_sdxl files" if is_sdxl_unet(unet.config) else "SD1.x: the *_sd15 files"


def _cross_attention_widths(unet: UNet2DConditionModel) -> list[int]:
    """The width of each cross-attention layer, in the order of diffusers' IP-Adapter keys."""
    out = list(unet.config.block_out_channels)
    widths = []
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        if name.startswith("mid_block"):
            widths.append(out[-1])
        elif name.startswith("up_blocks"):
            widths.append(list(reversed(out))[int(name[len("up_blocks.")])])
        else:
            widths.append(out[int(name[len("down_blocks.")])])
    return widths


def _projection_width(image_proj: dict[str, torch.Tensor]) -> int | None:
    """The token width an image projection gives (``None`` where its layout does not say it in one place)."""
    if "norm.weight" in image_proj:  # IP-Adapter (Linear then LayerNorm), FaceID
        return int(image_proj["norm.weight"].shape[0])
    if "proj.3.weight" in image_proj:  # Full (Plus-Face): its LayerNorm is proj.3
        return int(image_proj["proj.3.weight"].shape[0])
    if "proj_out.weight" in image_proj:  # Plus
        return int(image_proj["proj_out.weight"].shape[0])
    return None


# ------------------------------------------------------------------ loading, on the pipeline
class AdapterSubjectMixin:
    """``load_ip_adapter``, ``set_ip_adapter_scale`` and the subject model's kind, for
    :class:`~facediffuser.pipeline.FaceDiffuserPipeline`."""

    @property
    def subject_model_kind(self) -> SubjectModelKind:
        """``ip-adapter`` when the subject UNet carries an IP-Adapter, else ``fused``."""
        return SubjectModelKind.IP_ADAPTER if has_ip_adapter(self.subject_unet) else SubjectModelKind.FUSED

    @property
    def shares_unet(self) -> bool:
        """Whether the text model and the subject model are one UNet (memory: one UNet)."""
        return self.subject_unet is self.unet

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict,
        subfolder: str | None = None,
        weight_name: str | None = None,
        image_encoder_folder: str | None = "image_encoder",
        *,
        on: str = "unet",
        image_encoder: Any = None,
        **kwargs: Any,
    ) -> None:
        """Makes an IP-Adapter the subject model, loaded as diffusers' ``load_ip_adapter`` loads it.

        Args:
            pretrained_model_name_or_path_or_dict: a hub id, a folder, or a state dict (``image_proj`` and
                ``ip_adapter``, nested or flat as in the ``.safetensors`` files).
            subfolder, weight_name: where the weight file is inside the folder or hub repository
                (e.g. ``"models"``, ``"ip-adapter_sd15.safetensors"``). A ``.bin`` is read with
                ``torch.load(weights_only=True)``: no pickled code runs.
            image_encoder_folder: the adapter's CLIP image encoder, inside ``subfolder`` when it has no ``/``
                (diffusers' rule); ``None`` for adapters read from precomputed embeddings (FaceID), or when
                ``image_encoder`` is given.
            on: ``"unet"`` (default): on the scene model's UNet, which then plays both roles (one UNet in memory; the
                text model is that UNet with the adapter's scale at 0); ``"subject_unet"``: on the subject UNet, which
                keeps its own weights.
            image_encoder: a ready ``CLIPVisionModelWithProjection`` to use instead of loading one.
            kwargs: ``cache_dir``, ``local_files_only``, ``token``, ``revision``, as in diffusers.

        The FastComposer fuser is not used by an adapter: ``subject_fuser`` becomes ``None`` and ``image_encoder`` the
        adapter's. Raises ``ValueError`` (one sentence) for a file that is not an IP-Adapter or does not fit the UNet;
        no file is written or removed.
        """
        from diffusers.models.model_loading_utils import load_state_dict
        from diffusers.utils import _get_model_file

        if on not in ("unet", "subject_unet"):
            raise ValueError(f"`on` must be 'unet' or 'subject_unet', got {on!r}.")
        target = self.unet if on == "unet" else self.subject_unet
        if has_ip_adapter(target) or (on == "subject_unet" and target is self.unet):
            raise ValueError(
                "This pipeline's UNet already carries an IP-Adapter: load the pipeline again to use another one."
            )
        hub = {k: kwargs.pop(k) for k in ("cache_dir", "local_files_only", "token", "revision") if k in kwargs}
        if kwargs:
            raise TypeError(f"load_ip_adapter() got unexpected arguments {sorted(kwargs)}.")
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict):
            state, where = source, "the IP-Adapter state dict"
        else:
            if weight_name is None:
                raise ValueError("Give `weight_name`, the IP-Adapter's weight file (e.g. ip-adapter_sd15.safetensors).")
            path = _get_model_file(source, weights_name=weight_name, subfolder=subfolder, **hub)
            where = str(path)
            try:
                state = load_state_dict(path)
            except Exception as err:  # noqa: BLE001 - any reading failure is one sentence naming the file
                raise ValueError(
                    f"{where} cannot be read as IP-Adapter weights ({str(err).splitlines()[0][:160]}): give a "
                    ".safetensors file, or a .bin that holds tensors only."
                ) from err
        state = split_ip_adapter_state(state)
        check_ip_adapter_state(state, target, where)
        if any(".to_k_lora." in k for k in state["ip_adapter"]):
            raise ValueError(
                f"{where} carries LoRA weights for the UNet (IP-Adapter-FaceID): facediffuser loads only the "
                "adapter's image layers; use an adapter without LoRA (such as ip-adapter_sd15, "
                "ip-adapter-plus-face_sd15 or ip-adapter-faceid-portrait_sd15; on SDXL ip-adapter_sdxl, "
                "ip-adapter-plus-face_sdxl_vit-h or ip-adapter-faceid-portrait_sdxl)."
            )

        if image_encoder is None and image_encoder_folder is not None:
            if isinstance(source, dict):
                raise ValueError("With a state dict, pass the `image_encoder` itself (or image_encoder_folder=None).")
            from transformers import CLIPVisionModelWithProjection

            folder = (
                image_encoder_folder if "/" in image_encoder_folder else f"{subfolder or ''}/{image_encoder_folder}"
            )
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                source, subfolder=folder.strip("/"), **{k: v for k, v in hub.items() if k != "token"}
            )
        if image_encoder is not None:
            image_encoder = image_encoder.to(device=target.device, dtype=target.dtype)
        target._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
        self.register_modules(subject_unet=target, image_encoder=image_encoder, subject_fuser=None)

    def set_ip_adapter_scale(self, scale: float | list) -> None:
        """The adapter's scale in the subject model (a float, or diffusers' per-block dictionaries); the text model
        of a shared UNet keeps 0 whatever this is."""
        from diffusers.loaders.ip_adapter import IPAdapterMixin

        class _View:  # diffusers' method reads only `unet`
            unet = self.subject_unet

        IPAdapterMixin.set_ip_adapter_scale(_View(), scale)


# ------------------------------------------------------------------ one call of the pipeline
class AdapterCall:
    """The adapter's inputs during one pipeline call, and the UNet keyword arguments of each UNet call.

    Args:
        unet: the subject UNet (carries the adapter).
        shared: the text model is the same UNet (its calls then run with every adapter scale at 0).
        image_embeds, empty_embeds: per adapter, ``(B, K, ...)`` the people's embeddings and the "no image" ones.
        user_masks: diffusers' ``ip_adapter_masks`` (one ``(1 or B, K, H, W)`` tensor per adapter), used in every
            step of the subject model; ``None``: the person regions, when several people and a stage I give them.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        shared: bool,
        image_embeds: list[torch.Tensor],
        empty_embeds: list[torch.Tensor],
        user_masks: list[torch.Tensor] | None = None,
    ):
        self.unet = unet
        self.shared = shared
        self.image_embeds = image_embeds
        self.empty_embeds = empty_embeds
        self.user_masks = user_masks
        self.region_masks: torch.Tensor | None = None  # (B, K, h, w) float, set after stage I
        self.processors = ip_adapter_processors(unet)
        self.scales = [list(p.scale) for p in self.processors]

    @property
    def people(self) -> int:
        return self.image_embeds[0].shape[1]

    @property
    def wants_regions(self) -> bool:
        """Several people and no user masks: their masks come from the person regions."""
        return self.user_masks is None and self.people > 1

    @contextmanager
    def installed(self) -> Iterator[AdapterCall]:
        """Within the block the scales are switched per UNet call; afterwards they are the user's again."""
        try:
            yield self
        finally:
            self._set_scales(on=True)

    def take_regions(self, assignment: torch.Tensor | None) -> None:
        """After stage I: each person's hard region (``(B, h, w)`` assignment) becomes their adapter mask."""
        if assignment is not None and self.wants_regions:
            self.region_masks = region_masks(assignment, self.people).float()

    @property
    def masks(self) -> torch.Tensor | None:
        """``(B, K, h, w)`` the masks from the person regions, or ``None``."""
        return self.region_masks

    def text_kwargs(self, guidance: Guidance) -> dict:
        """The UNet keywords of the text model's call: nothing on its own UNet; on a shared UNet, the scales at 0
        (and the "no image" embeddings diffusers' UNet asks for, which a scale of 0 never reads)."""
        if not self.shared:
            return {}
        self._set_scales(on=False)
        n = guidance.evaluations
        return {"added_cond_kwargs": {"image_embeds": [torch.cat([e] * n) for e in self.empty_embeds]}}

    def subject_kwargs(self, guidance: Guidance) -> dict:
        """The UNet keywords of the subject model's call: the user's scales, the people's embeddings in the
        ``c_aug`` rows and "no image" in the others, and the masks."""
        self._set_scales(on=True)
        n = guidance.evaluations
        embeds = [
            torch.cat([image if c is Condition.SUBJECT else empty for c in guidance.conditions])
            for image, empty in zip(self.image_embeds, self.empty_embeds)
        ]
        kwargs: dict[str, Any] = {"added_cond_kwargs": {"image_embeds": embeds}}
        if self.user_masks is not None:
            masks = [m if m.shape[0] == 1 else torch.cat([m] * n) for m in self.user_masks]
            kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": masks}
        elif self.region_masks is not None:
            mask = self.region_masks.to(device=embeds[0].device)
            kwargs["cross_attention_kwargs"] = {"ip_adapter_masks": [torch.cat([mask] * n)]}
        return kwargs

    def _set_scales(self, on: bool) -> None:
        for processor, scale in zip(self.processors, self.scales):
            processor.scale = list(scale) if on else [0.0] * len(scale)


def encode_adapter_images(
    unet: UNet2DConditionModel,
    image_encoder: Any,
    references: list[list[list[Any]]],
    copies: int,
    device: torch.device,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The people's embeddings for the (one) adapter on ``unet``: ``([image (B, K, ...)], [no image (B, K, ...)])``,
    each person's photos averaged, every prompt with the same number of people ``K``, each prompt's rows repeated
    ``copies`` times. "No image" is what diffusers' IP-Adapter guidance uses: zero embeddings, or for adapters that read
    CLIP's hidden states, the hidden states of a zero image."""
    layers = unet.encoder_hid_proj.image_projection_layers
    if len(layers) != 1:
        raise ValueError(
            f"The subject UNet carries {len(layers)} IP-Adapters; reference photos are read by one. Pass "
            "`ip_adapter_image_embeds` for several."
        )
    projection = layers[0]
    if not isinstance(projection, _READS_IMAGE_EMBEDS + _READS_HIDDEN_STATES):
        raise ValueError(
            f"This IP-Adapter ({type(projection).__name__}) reads face-recognition embeddings, not photos: pass them "
            "as `ip_adapter_image_embeds` (the placeholders still mark each person)."
        )
    if image_encoder is None:
        raise ValueError(
            "The pipeline has no image encoder for this IP-Adapter: load the adapter with its image_encoder_folder."
        )
    counts = {len(prompt_refs) for prompt_refs in references}
    if len(counts) != 1:
        raise ValueError(
            f"With an IP-Adapter every prompt of a batch must have the same number of people, got {sorted(counts)}."
        )
    photos = [img for prompt_refs in references for person in prompt_refs for img in person]
    size = image_encoder.config.image_size
    pixels = prepare_reference_pixels(photos, size).to(device=device, dtype=image_encoder.dtype)
    hidden = isinstance(projection, _READS_HIDDEN_STATES)

    def encode(x: torch.Tensor) -> torch.Tensor:
        if hidden:
            return image_encoder(x, output_hidden_states=True).hidden_states[-2]
        return image_encoder(x).image_embeds

    embeds = encode(pixels)
    per_person = [len(person) for prompt_refs in references for person in prompt_refs]
    people = torch.stack([chunk.mean(dim=0) for chunk in embeds.split(per_person)])  # (P*K, ...)
    image = people.reshape(len(references), -1, *people.shape[1:]).repeat_interleave(copies, dim=0)
    empty = encode(torch.zeros_like(pixels[:1]))[0].expand_as(image) if hidden else torch.zeros_like(image)
    return [image], [empty.contiguous()]


def adapter_embeds_from_user(
    ip_adapter_image_embeds: list[torch.Tensor], prompts: int, copies: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """diffusers' ``ip_adapter_image_embeds`` with guidance (each ``(2 * n, K, ...)``: the "no image" half first)
    -> ``([image (B, K, ...)], [no image (B, K, ...)])``; ``n`` is 1 (shared by every prompt) or the prompt count."""
    if not isinstance(ip_adapter_image_embeds, (list, tuple)) or not ip_adapter_image_embeds:
        raise ValueError("`ip_adapter_image_embeds` must be a list of tensors, one per IP-Adapter.")
    images, empties = [], []
    for k, embeds in enumerate(ip_adapter_image_embeds):
        if not isinstance(embeds, torch.Tensor) or embeds.ndim not in (3, 4) or embeds.shape[0] % 2:
            raise ValueError(
                f'`ip_adapter_image_embeds[{k}]` must be a (2, people, dim) tensor (3-D or 4-D): the "no image" '
                "embeddings first, then the people's, as diffusers' IP-Adapter pipelines take them."
            )
        empty, image = embeds.to(device).chunk(2)
        if image.shape[0] not in (1, prompts):
            raise ValueError(
                f"`ip_adapter_image_embeds[{k}]` holds {image.shape[0]} rows per half for {prompts} prompts: give 1 "
                "(shared by every prompt) or one per prompt."
            )

        def rows(x: torch.Tensor) -> torch.Tensor:
            x = x.expand(prompts, *x.shape[1:]) if x.shape[0] == 1 else x
            return x.repeat_interleave(copies, dim=0)

        images.append(rows(image))
        empties.append(rows(empty))
    return images, empties


def adapter_call(
    pipe: Any,
    settings: Any,
    prompts: list[str],
    references: list[list[list[Any]]],
    reference_images: Any,
    ip_adapter_image_embeds: list[torch.Tensor] | None,
    ip_adapter_masks: list[torch.Tensor] | None,
    copies: int,
    device: torch.device,
) -> AdapterCall | None:
    """The :class:`AdapterCall` of one pipeline call with an IP-Adapter as the subject model (``None`` for the fused
    kind), after checking what the call asks of it; every refusal is a ``ValueError`` before any UNet runs."""
    from .fusion import RegionSource
    from .prompting import count_placeholders

    if pipe.subject_model_kind is not SubjectModelKind.IP_ADAPTER:
        if pipe.subject_fuser is None:
            raise ValueError(
                "This pipeline has no subject model (it was built from a plain base folder): load an IP-Adapter with "
                "`load_ip_adapter` first."
            )
        named = {"ip_adapter_image_embeds": ip_adapter_image_embeds, "ip_adapter_masks": ip_adapter_masks}
        given = [name for name, value in named.items() if value is not None]
        if given:
            raise ValueError(
                f"`{given[0]}` is for an IP-Adapter as the subject model, and this pipeline's subject model is the "
                "fused SDM: load one with `load_ip_adapter` first, or leave it out."
            )
        return None
    if settings.region_attention:
        raise ValueError(
            "`region_attention` steers the fused SDM's person tokens, which an IP-Adapter does not have: with an "
            "adapter, each person's region becomes their adapter mask by itself; leave region_attention off."
        )
    if settings.region_source is RegionSource.SDM:
        raise ValueError(
            "`region_source='sdm'` reads the fused SDM's person tokens, which an IP-Adapter does not have: use 'tdm'."
        )
    counts = [count_placeholders(p, pipe.placeholder) for p in prompts]
    if ip_adapter_image_embeds is not None:
        if reference_images is not None:
            raise ValueError("Give either `reference_images` or `ip_adapter_image_embeds`, not both.")
        images, empties = adapter_embeds_from_user(ip_adapter_image_embeds, len(prompts), copies, device)
    else:
        if not any(counts):
            raise ValueError(
                f"With an IP-Adapter as the subject model, the prompt needs a placeholder {pipe.placeholder!r} after "
                "each person's class noun, and one reference per placeholder."
            )
        images, empties = encode_adapter_images(pipe.subject_unet, pipe.image_encoder, references, copies, device)
    people = images[0].shape[1]
    if any(c != people for c in counts):
        raise ValueError(
            f"The prompt has {max(counts)} placeholder(s) {pipe.placeholder!r} but the IP-Adapter embeddings hold "
            f"{people} image(s): give one image per placeholder, in order."
        )
    if ip_adapter_masks is not None:
        if not isinstance(ip_adapter_masks, (list, tuple)) or len(ip_adapter_masks) != len(images):
            raise ValueError(f"`ip_adapter_masks` must be a list of {len(images)} tensor(s), one per IP-Adapter.")
        for k, mask in enumerate(ip_adapter_masks):
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != people:
                raise ValueError(
                    f"`ip_adapter_masks[{k}]` must be a (1, {people}, height, width) tensor, one mask per person "
                    "(diffusers' IPAdapterMaskProcessor.preprocess makes them)."
                )
        ip_adapter_masks = [m.to(device) for m in ip_adapter_masks]
    call = AdapterCall(pipe.subject_unet, pipe.shares_unet, images, empties, ip_adapter_masks)
    if call.wants_regions and settings.alpha == 0:
        logger.warning(
            "alpha = 0 leaves no stage I, so the %d people get no masks of their own: the adapter shows each of them "
            "everywhere.",
            people,
        )
    return call
