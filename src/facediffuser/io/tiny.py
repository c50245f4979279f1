"""Tiny, seeded, randomly initialised Face-diffuser components, built offline in one call.

They have the real architectures (diffusers' UNet and VAE, transformers' CLIP towers, the real CLIP tokenizer) at toy
widths, so every code path runs in seconds on a CPU. Their images are noise: they are for tests, benchmarks, and for
trying the command line before real weights are at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from ..models import SubjectFuser
from ..pipeline import FaceDiffuserPipeline
from .tokenizer import load_clip_tokenizer

SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


@dataclass(frozen=True)
class TinyConfig:
    """Widths of the randomly initialised components; the defaults are the tiny ones.

    The layout is SD1.x's at any width: four UNet levels (cross-attention in the first three down and last three up
    blocks), a VAE with a scale factor of 8, a CLIP text tower and a CLIP vision tower with projection.
    :data:`SD15_SHAPED` gives the real SD1.5 + CLIP ViT-L/14 sizes (for benchmarks).
    """

    embed_dim: int = 16  # text hidden size = cross-attention width = subject embedding width
    unet_channels: tuple[int, ...] = (8, 8, 16, 16)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 2  # diffusers' `attention_head_dim` (the head count, for SD1.x)
    unet_norm_groups: int = 4
    vae_channels: tuple[int, ...] = (8, 8, 8, 8)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 4
    text_layers: int = 2
    text_heads: int = 2
    vision_hidden: int = 16
    vision_layers: int = 2
    vision_heads: int = 2
    vision_image_size: int = 32
    vision_patch_size: int = 8
    sample_size: int = 8  # latent side; the default image is sample_size * 8 pixels


SD15_SHAPED = TinyConfig(
    embed_dim=768,
    unet_channels=(320, 640, 1280, 1280),
    unet_layers_per_block=2,
    unet_head_dim=8,
    unet_norm_groups=32,
    vae_channels=(128, 256, 512, 512),
    vae_layers_per_block=2,
    vae_norm_groups=32,
    text_layers=12,
    text_heads=12,
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=16,
    vision_image_size=224,
    vision_patch_size=14,
    sample_size=64,
)


def tiny_unet(config: TinyConfig = TinyConfig()) -> UNet2DConditionModel:
    levels = len(config.unet_channels)
    return _unet(
        config.sample_size,
        config.unet_channels,
        ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.embed_dim,
        attention_head_dim=config.unet_head_dim,
        norm_num_groups=config.unet_norm_groups,
    )


def _unet(sample_size: int, channels: tuple[int, ...], down: tuple, up: tuple, **config) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        **config,
    )


def tiny_vae(config: TinyConfig = TinyConfig()) -> AutoencoderKL:
    levels = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.sample_size * 2 ** (levels - 1),
    )


def tiny_text_encoder(config: TinyConfig = TinyConfig()) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=config.embed_dim,
            intermediate_size=4 * config.embed_dim,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=77,
            projection_dim=config.embed_dim,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def tiny_image_encoder(config: TinyConfig = TinyConfig()) -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=config.vision_hidden,
            intermediate_size=4 * config.vision_hidden,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            image_size=config.vision_image_size,
            patch_size=config.vision_patch_size,
            projection_dim=config.embed_dim,
        )
    )


def tiny_components(seed: int = 0, config: TinyConfig = TinyConfig()) -> dict:
    """The components of a random :class:`FaceDiffuserPipeline` (tiny by default), each from its own seed."""
    builders = {
        "unet": tiny_unet,
        "subject_unet": tiny_unet,
        "vae": tiny_vae,
        "text_encoder": tiny_text_encoder,
        "image_encoder": tiny_image_encoder,
        "subject_fuser": lambda c: SubjectFuser(embed_dim=c.embed_dim),
    }
    components = {}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        components[name] = build(config).eval()
    components["tokenizer"] = load_clip_tokenizer()
    components["scheduler"] = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    return components


def build_tiny_pipeline(seed: int = 0, config: TinyConfig = TinyConfig()) -> FaceDiffuserPipeline:
    """A tiny random :class:`FaceDiffuserPipeline` (its images are noise)."""
    pipe = FaceDiffuserPipeline(**tiny_components(seed, config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ SDXL
@dataclass(frozen=True)
class TinyXLConfig:
    """Widths of the tiny SDXL components: SDXL's layout (three UNet levels, cross-attention in the lower two with two
    transformer layers in the lowest, ``text_time`` added conditions, two text towers whose hidden states are joined)
    at toy widths. Every width differs from the others, so a swapped one cannot pass unseen."""

    text_hidden: int = 8  # CLIP ViT-L/14's text tower (768 in SDXL)
    text_2_hidden: int = 16  # OpenCLIP bigG's (1280)
    text_2_projection: int = 12  # its pooled projection, the UNet's text_embeds (1280)
    text_layers: int = 2
    text_heads: int = 2
    unet_channels: tuple[int, ...] = (8, 16, 16)
    unet_head_dim: tuple[int, ...] = (2, 4, 4)
    unet_transformer_layers: tuple[int, ...] = (1, 1, 2)
    unet_norm_groups: int = 4
    time_embed_dim: int = 4  # addition_time_embed_dim (256)
    vision_hidden: int = 16
    vision_projection: int = 20  # the subject embedding o (1024 for ViT-H/14, 1280 for bigG)
    vision_image_size: int = 32
    vision_patch_size: int = 8
    sample_size: int = 8  # latent side (128 in SDXL); the default image is sample_size * 8 pixels

    @property
    def token_width(self) -> int:
        """The UNet's cross-attention width: both towers' hidden states side by side (2048 in SDXL)."""
        return self.text_hidden + self.text_2_hidden


def tiny_xl_unet(config: TinyXLConfig = TinyXLConfig()) -> UNet2DConditionModel:
    levels = len(config.unet_channels)
    return _unet(
        config.sample_size,
        config.unet_channels,
        ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        layers_per_block=1,
        attention_head_dim=config.unet_head_dim,
        transformer_layers_per_block=config.unet_transformer_layers,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=config.time_embed_dim,
        projection_class_embeddings_input_dim=6 * config.time_embed_dim + config.text_2_projection,
        cross_attention_dim=config.token_width,
        norm_num_groups=config.unet_norm_groups,
    )


def tiny_xl_vae(config: TinyXLConfig = TinyXLConfig()) -> AutoencoderKL:
    """The tiny VAE with SDXL's scaling factor and ``force_upcast`` (SDXL's VAE overflows in float16)."""
    vae = tiny_vae(TinyConfig(sample_size=config.sample_size))
    vae.register_to_config(scaling_factor=0.13025, force_upcast=True)
    return vae


def _tiny_text_config(hidden: int, config: TinyXLConfig, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        **extra,
    )


def tiny_xl_components(seed: int = 0, config: TinyXLConfig = TinyXLConfig()) -> dict:
    """The components of a random :class:`~facediffuser.pipeline_xl.FaceDiffuserXLPipeline`, each from its own seed.
    ``tokenizer_2`` pads with ``!`` as SDXL's second tokenizer does."""
    from transformers import CLIPTextModelWithProjection

    builders = {
        "unet": tiny_xl_unet,
        "subject_unet": tiny_xl_unet,
        "vae": tiny_xl_vae,
        "text_encoder": lambda c: CLIPTextModel(_tiny_text_config(c.text_hidden, c, pad_token_id=49407)),
        "text_encoder_2": lambda c: CLIPTextModelWithProjection(
            _tiny_text_config(c.text_2_hidden, c, projection_dim=c.text_2_projection, pad_token_id=0)
        ),
        "image_encoder": lambda c: tiny_image_encoder(
            TinyConfig(
                vision_hidden=c.vision_hidden,
                embed_dim=c.vision_projection,
                vision_image_size=c.vision_image_size,
                vision_patch_size=c.vision_patch_size,
            )
        ),
        "subject_fuser": lambda c: SubjectFuser(embed_dim=c.token_width, image_embed_dim=c.vision_projection),
    }
    components = {}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        components[name] = build(config).eval()
    components["tokenizer"] = load_clip_tokenizer()
    components["tokenizer_2"] = load_clip_tokenizer()
    components["tokenizer_2"].pad_token = "!"
    components["scheduler"] = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    return components


def build_tiny_xl_pipeline(seed: int = 0, config: TinyXLConfig = TinyXLConfig()):
    """A tiny random :class:`~facediffuser.pipeline_xl.FaceDiffuserXLPipeline` (its images are noise)."""
    from ..pipeline_xl import FaceDiffuserXLPipeline

    pipe = FaceDiffuserXLPipeline(**tiny_xl_components(seed, config))
    pipe.set_progress_bar_config(disable=True)
    return pipe
