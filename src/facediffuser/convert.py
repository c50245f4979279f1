"""Importing the released Face-diffuser (and FastComposer) checkpoints into a pipeline folder of safetensors.

Each release file is one ``pytorch_model.bin``: the pickled ``state_dict`` of the whole training wrapper
(REFERENCE section 7). It is read with ``torch.load(weights_only=True)``, which refuses any pickled code, and split by
key prefix:

* ``unet.*`` of the SDM file -> ``subject_unet``; ``unet.*`` of the TDM file -> ``unet``
* ``text_encoder.{embeddings,encoder,final_layer_norm}.*`` -> ``text_encoder`` (the CLIP text transformer)
* ``image_encoder.{vision_model,visual_projection}.*`` -> ``image_encoder`` (CLIP vision tower + projection)
* ``postfuse_module.*`` -> ``subject_fuser``
* ``vae.*`` -> ``vae`` (diffusers 0.16 attention names mapped to today's)

Tokenizer, scheduler configuration and any part missing from the files come from an SD v1.5 folder.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from .loading import load_scene_unet
from .models import SubjectFuser
from .pipeline import FaceDiffuserPipeline

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# diffusers 0.16 named the VAE's attention block parameters differently.
_OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# ViT-L/14 has 64-wide attention heads; a state dict does not record the head count.
CLIP_VISION_HEAD_DIM = 64


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """A flat ``{name: tensor}`` from ``.bin``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds pickled objects other than tensors, or is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError) as err:
        raise ValueError(
            f"{path} is not a plain state dict of tensors, so it was not loaded: unpickling it could run code. "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
    return obj


def strip_prefix(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def map_old_vae_attention(state: StateDict) -> StateDict:
    """Renames diffusers 0.16 VAE attention parameters (``query``, ``key``, ``value``, ``proj_attn``) to today's."""
    pattern = re.compile(r"\.(query|key|value|proj_attn)\.(weight|bias)$")
    out = {}
    for k, v in state.items():
        m = pattern.search(k)
        if m:
            k = k[: m.start()] + f".{_OLD_VAE_ATTENTION[m.group(1)]}.{m.group(2)}"
            if v.ndim == 4:  # some exports stored these linear layers as 1x1 convolutions
                v = v[:, :, 0, 0]
        out[k] = v
    return out


def _load_exact(model: torch.nn.Module, state: StateDict, what: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The {what} weights do not fit the expected architecture: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )


def image_encoder_config_from_state(state: StateDict) -> CLIPVisionConfig:
    """Infers a CLIP vision config from ``vision_model.*`` / ``visual_projection.*`` shapes (64-wide heads)."""
    hidden = state["vision_model.embeddings.class_embedding"].shape[0]
    patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)))
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // CLIP_VISION_HEAD_DIM),
        image_size=int(round((positions - 1) ** 0.5)) * patch,
        patch_size=patch,
        projection_dim=state["visual_projection.weight"].shape[0],
    )


def _read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"Config not found: {path}")
    return json.loads(path.read_text())


def _check_sd_folder(folder: Path) -> None:
    missing = [p for p in ("tokenizer", "scheduler", "unet", "text_encoder", "vae") if not (folder / p).is_dir()]
    if missing:
        lacking = ", ".join(p + "/" for p in missing)
        raise ValueError(f"{folder} is not an SD v1.5 diffusers folder: it lacks {lacking}.")


def convert_release(
    sd_folder: str | os.PathLike,
    sdm_checkpoint: str | os.PathLike,
    tdm_checkpoint: str | os.PathLike | None = None,
    scene_model: str | os.PathLike | None = None,
    image_encoder_config: str | os.PathLike | None = None,
) -> FaceDiffuserPipeline:
    """Builds a :class:`FaceDiffuserPipeline` from the released files.

    Args:
        sd_folder: an SD v1.5 diffusers folder (tokenizer, scheduler, configs; its VAE/text encoder/UNet fill in what
            the release files lack).
        sdm_checkpoint: the released ``SDM/pytorch_model.bin``, or FastComposer's single ``pytorch_model.bin``.
        tdm_checkpoint: the released ``TDM/pytorch_model.bin`` (only its ``unet.*`` is used). Without it, and without
            ``scene_model``, the SD v1.5 UNet is the TDM.
        scene_model: any SD1.x UNet (a diffusers folder or a ``.safetensors`` file) to use as the TDM instead.
        image_encoder_config: a CLIP vision ``config.json`` (or folder) when the shapes cannot tell the head count.
    """
    if tdm_checkpoint is not None and scene_model is not None:
        raise ValueError("Give either a TDM checkpoint or a scene model, not both: both would be the TDM.")
    sd = Path(sd_folder)
    _check_sd_folder(sd)
    sdm_state = load_state_dict(sdm_checkpoint)

    prefixes = ("unet", "text_encoder", "image_encoder", "postfuse_module", "vae")
    parts = {p: strip_prefix(sdm_state, p + ".") for p in prefixes}
    for needed in ("unet", "image_encoder", "postfuse_module"):
        if not parts[needed]:
            raise ValueError(
                f"{sdm_checkpoint} holds no '{needed}.*' keys: is it the SDM (or FastComposer) checkpoint?"
            )

    unet_config = _read_config(sd / "unet")
    subject_unet = UNet2DConditionModel.from_config(unet_config)
    _load_exact(subject_unet, parts["unet"], "SDM UNet")

    if scene_model is not None:
        unet = load_scene_unet(scene_model, like=subject_unet)
    elif tdm_checkpoint is not None:
        tdm_unet = strip_prefix(load_state_dict(tdm_checkpoint), "unet.")
        if not tdm_unet:
            raise ValueError(f"{tdm_checkpoint} holds no 'unet.*' keys: is it the TDM checkpoint?")
        unet = UNet2DConditionModel.from_config(unet_config)
        _load_exact(unet, tdm_unet, "TDM UNet")
    else:
        logger.info("No TDM given: the SD v1.5 UNet of %s draws the scene.", sd)
        unet = UNet2DConditionModel.from_pretrained(sd / "unet", use_safetensors=True)

    if parts["text_encoder"]:
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(sd / "text_encoder"))
        # transformers 4 nests the CLIP text transformer under `text_model.`; transformers 5 does not.
        nested = any(k.startswith("text_model.") for k in text_encoder.state_dict())
        state = {("text_model." if nested else "") + k: v for k, v in parts["text_encoder"].items()}
        _load_exact(text_encoder, state, "text encoder")
    else:
        text_encoder = CLIPTextModel.from_pretrained(sd / "text_encoder", use_safetensors=True)

    if parts["vae"]:
        vae = AutoencoderKL.from_config(_read_config(sd / "vae"))
        _load_exact(vae, map_old_vae_attention(parts["vae"]), "VAE")
    else:
        vae = AutoencoderKL.from_pretrained(sd / "vae", use_safetensors=True)

    vision_config = (
        CLIPVisionConfig.from_pretrained(image_encoder_config)
        if image_encoder_config is not None
        else image_encoder_config_from_state(parts["image_encoder"])
    )
    image_encoder = CLIPVisionModelWithProjection(vision_config)
    _load_exact(image_encoder, parts["image_encoder"], "image encoder")

    fuser = SubjectFuser(embed_dim=parts["postfuse_module"]["layer_norm.weight"].shape[0])
    _load_exact(fuser, parts["postfuse_module"], "subject fuser")

    pipe = FaceDiffuserPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(sd / "tokenizer"),
        unet=unet,
        subject_unet=subject_unet,
        image_encoder=image_encoder,
        subject_fuser=fuser,
        scheduler=DDIMScheduler.from_config(_read_config(sd / "scheduler" / "scheduler_config.json")),
    )
    return pipe.to(torch.float32)


def save_pipeline_atomically(pipe: FaceDiffuserPipeline, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes the pipeline folder under a temporary name beside ``out`` and renames it: never a half folder."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another output folder or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
