"""Importing the released Face-diffuser (and FastComposer) checkpoints into a pipeline folder of safetensors.

Each release file is one ``pytorch_model.bin``: the pickled ``state_dict`` of the whole training wrapper
(docs/method.md, Checkpoint layouts). It is read with ``torch.load(weights_only=True)``, which refuses any pickled
code, and split by key prefix:

* ``unet.*`` of the SDM file -> ``subject_unet``; ``unet.*`` of the TDM file -> ``unet``
* ``text_encoder.{embeddings,encoder,final_layer_norm}.*`` -> ``text_encoder`` (the CLIP text transformer)
* ``image_encoder.{vision_model,visual_projection}.*`` -> ``image_encoder`` (CLIP vision tower + projection)
* ``postfuse_module.*`` -> ``subject_fuser``
* ``vae.*`` -> ``vae`` (diffusers 0.16 attention names mapped to today's)

Tokenizer, scheduler configuration and any part missing from the files come from an SD v1.5 folder.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from ..models import SubjectFuser
from ..pipeline import FaceDiffuserPipeline
from .files import read_json
from .loading import check_scene_model, load_scene_unet
from .output_folders import nearest_existing_folder, protected_reason, sibling, write_folder_atomically
from .weight_files import check_weights_folder, first_line, read_weight_file

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# diffusers 0.16 named the VAE's attention block parameters differently.
_OLD_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# ViT-L/14 has 64-wide attention heads; a state dict does not record the head count.
CLIP_VISION_HEAD_DIM = 64


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """A flat ``{name: tensor}`` from ``.bin``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors``.

    The file's first bytes decide how it is read, so a safetensors file named ``.bin`` loads; a pickle named
    ``.safetensors`` is refused (its name promised no pickle).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, truncated or damaged; holds pickled objects other than tensors (unpickling
            them could run code); or is not a state dict. The message says which.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the checkpoint file in it (e.g. {path / 'pytorch_model.bin'}).")
    obj = read_weight_file(path, "Use a plain state dict of tensors, or a .safetensors file.")
    for wrapper in ("state_dict", "module", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
    return obj


def check_finite(state: StateDict, source: str | os.PathLike) -> None:
    """Refuses NaN or infinite weights, naming the first such tensor: they would make every image black or noise."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            what = "NaN" if bool(torch.isnan(tensor).any()) else "infinite values"
            raise ValueError(
                f"{source}: tensor {name} holds {what}, so it was not converted. The file is damaged or comes from "
                "a diverged training run: use another copy."
            )


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


def _count(items: list, one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def _load_exact(model: torch.nn.Module, state: StateDict, what: str, source: str | os.PathLike, hint: str) -> None:
    """Loads ``state`` into ``model`` only if every name and shape fits; otherwise one sentence saying what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        problems = []
        if reshaped:
            k = reshaped[0]
            problems.append(
                f"{_count(reshaped, 'tensor has', 'tensors have')} another shape "
                f"(e.g. {k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} expected)"
            )
        if missing:
            problems.append(f"{_count(missing, 'is', 'are')} missing (e.g. {missing[:2]})")
        if unexpected:
            problems.append(f"{_count(unexpected, 'is', 'are')} unexpected (e.g. {unexpected[:2]})")
        raise ValueError(f"The {what} weights in {source} do not fit: {'; '.join(problems)}. {hint}")
    model.load_state_dict(state)


# The shapes the image encoder's configuration is read from (ViT-L/14 in the release).
_VISION_SHAPE_KEYS = (
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding.weight",
    "vision_model.encoder.layers.0.mlp.fc1.weight",
    "visual_projection.weight",
)


def image_encoder_config_from_state(state: StateDict, source: str | os.PathLike = "the checkpoint") -> CLIPVisionConfig:
    """Infers a CLIP vision config from ``vision_model.*`` / ``visual_projection.*`` shapes (64-wide heads)."""
    missing = [k for k in _VISION_SHAPE_KEYS if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"{source} lacks image_encoder.{missing[0]}{more}, so the image encoder's shape cannot be read: the "
            "checkpoint is incomplete or not the SDM (or FastComposer) one. Download it again."
        )
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
    try:
        config = read_json(path, dict, "a model config")
    except ValueError as err:
        raise ValueError(f"{str(err).rstrip('.')}; copy it again.") from None
    if path.read_bytes().startswith(codecs.BOM_UTF8):  # read by diffusers and transformers too
        raise ValueError(
            f"{path} starts with a byte-order mark, which diffusers cannot read: save it as UTF-8 without one."
        )
    return config


_SD_PARTS = ("tokenizer", "scheduler", "unet", "text_encoder", "vae")
_SD_CONFIGS = ("unet/config.json", "text_encoder/config.json", "vae/config.json", "scheduler/scheduler_config.json")


def _check_sd_folder(folder: Path, *, need_unet_weights: bool) -> None:
    """Everything convert will read from the SD v1.5 folder, checked before any model loads."""
    if not folder.exists():
        raise FileNotFoundError(f"SD v1.5 folder not found: {folder}")
    missing = [p for p in _SD_PARTS if not (folder / p).is_dir()]
    if missing:
        lacking = ", ".join(p + "/" for p in missing)
        raise ValueError(
            f"{folder} is not an SD v1.5 diffusers folder: it lacks {lacking}. Download the whole diffusers folder."
        )
    missing = [c for c in _SD_CONFIGS if not (folder / c).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)}: download the whole SD v1.5 diffusers folder again.")
    tokenizer = folder / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file() and not all(
        (tokenizer / f).is_file() for f in ("vocab.json", "merges.txt")
    ):
        raise ValueError(
            f"{tokenizer} holds no tokenizer (vocab.json and merges.txt, or tokenizer.json): copy SD v1.5's "
            "tokenizer/ folder again."
        )
    if need_unet_weights:
        check_weights_folder(folder / "unet", "diffusion_pytorch_model", " (or pass --tdm or --scene-model)")


def _load_tokenizer(sd: Path) -> CLIPTokenizer:
    """SD's tokenizer, refused unless its vocabulary is the text encoder's and its prompts fit its positions."""
    folder = sd / "tokenizer"
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    except Exception as err:  # the tokenizers library raises its own, unexported exception types
        raise ValueError(
            f"{folder} could not be read as a CLIP tokenizer ({first_line(err)}): copy SD v1.5's tokenizer/ again."
        ) from err
    _read_config(sd / "text_encoder")  # valid JSON, or a sentence naming the file
    text = CLIPTextConfig.from_pretrained(sd / "text_encoder")
    vocab, positions = text.vocab_size, text.max_position_embeddings
    if len(tokenizer) != vocab:
        raise ValueError(
            f"{folder} has {len(tokenizer)} tokens but the text encoder embeds {vocab}: they do not belong "
            "together. Copy SD v1.5's tokenizer/ folder again."
        )
    if tokenizer.model_max_length > positions:
        raise ValueError(
            f"{folder} allows {tokenizer.model_max_length} tokens per prompt but the text encoder has {positions} "
            f"positions: set model_max_length to {positions} in its tokenizer_config.json."
        )
    return tokenizer


def _check_release_file(path: str | os.PathLike, flag: str) -> None:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{flag} checkpoint not found: {path}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: give the pytorch_model.bin in it.")


SDM_HINT = "Is --sdm the SDM (or FastComposer) checkpoint, and --sd15 the SD v1.x folder it was trained from?"


def convert_release(
    sd_folder: str | os.PathLike,
    sdm_checkpoint: str | os.PathLike,
    tdm_checkpoint: str | os.PathLike | None = None,
    scene_model: str | os.PathLike | None = None,
    image_encoder_config: str | os.PathLike | None = None,
) -> FaceDiffuserPipeline:
    """Builds a :class:`FaceDiffuserPipeline` from the released files.

    Every input is checked before any model loads, and every weight is checked to be finite; a bad input is a
    ``ValueError`` (or ``FileNotFoundError``) that says what to do.

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
    _check_sd_folder(sd, need_unet_weights=tdm_checkpoint is None and scene_model is None)
    _check_release_file(sdm_checkpoint, "--sdm")
    if tdm_checkpoint is not None:
        _check_release_file(tdm_checkpoint, "--tdm")
    if scene_model is not None:
        check_scene_model(Path(scene_model))
    if image_encoder_config is not None and not Path(image_encoder_config).exists():
        raise FileNotFoundError(f"Image encoder config not found: {image_encoder_config}")
    tokenizer = _load_tokenizer(sd)

    sdm_state = load_state_dict(sdm_checkpoint)
    check_finite(sdm_state, sdm_checkpoint)
    prefixes = ("unet", "text_encoder", "image_encoder", "postfuse_module", "vae")
    parts = {p: strip_prefix(sdm_state, p + ".") for p in prefixes}
    for needed in ("unet", "image_encoder", "postfuse_module"):
        if not parts[needed]:
            raise ValueError(
                f"{sdm_checkpoint} holds no '{needed}.*' keys: is it the SDM (or FastComposer) checkpoint?"
            )

    # The shapes the image encoder and the fuser are built from, read before any model is built.
    if image_encoder_config is not None:
        vision_config = CLIPVisionConfig.from_pretrained(image_encoder_config)
        vision_hint = "Does --image-encoder-config describe the checkpoint's image encoder?"
    else:
        vision_config = image_encoder_config_from_state(parts["image_encoder"], sdm_checkpoint)
        vision_hint = "Pass --image-encoder-config with the CLIP vision config.json it was trained with."
    if "layer_norm.weight" not in parts["postfuse_module"]:
        raise ValueError(
            f"{sdm_checkpoint} lacks postfuse_module.layer_norm.weight, so the subject fuser's width cannot be read: "
            "the checkpoint is incomplete. Download it again."
        )

    unet_config = _read_config(sd / "unet")
    subject_unet = UNet2DConditionModel.from_config(unet_config)
    _load_exact(subject_unet, parts["unet"], "SDM UNet", sdm_checkpoint, SDM_HINT)

    if scene_model is not None:
        unet = load_scene_unet(scene_model, like=subject_unet, like_name="the SDM's")
        check_finite(unet.state_dict(), scene_model)
    elif tdm_checkpoint is not None:
        tdm_state = load_state_dict(tdm_checkpoint)
        check_finite(tdm_state, tdm_checkpoint)
        tdm_unet = strip_prefix(tdm_state, "unet.")
        if not tdm_unet:
            raise ValueError(f"{tdm_checkpoint} holds no 'unet.*' keys: is it the TDM checkpoint?")
        unet = UNet2DConditionModel.from_config(unet_config)
        hint = "Is --tdm the TDM checkpoint of the same SD v1.x model as --sdm?"
        _load_exact(unet, tdm_unet, "TDM UNet", tdm_checkpoint, hint)
    else:
        logger.info("No TDM given: the SD v1.5 UNet of %s draws the scene.", sd)
        unet = UNet2DConditionModel.from_pretrained(sd / "unet", use_safetensors=True)
        check_finite(unet.state_dict(), sd / "unet")

    if parts["text_encoder"]:
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(sd / "text_encoder"))
        # transformers 4 nests the CLIP text transformer under `text_model.`; transformers 5 does not.
        nested = any(k.startswith("text_model.") for k in text_encoder.state_dict())
        state = {("text_model." if nested else "") + k: v for k, v in parts["text_encoder"].items()}
        _load_exact(text_encoder, state, "text encoder", sdm_checkpoint, SDM_HINT)
    else:
        check_weights_folder(sd / "text_encoder", "model")
        text_encoder = CLIPTextModel.from_pretrained(sd / "text_encoder", use_safetensors=True)
        check_finite(text_encoder.state_dict(), sd / "text_encoder")

    if parts["vae"]:
        vae = AutoencoderKL.from_config(_read_config(sd / "vae"))
        _load_exact(vae, map_old_vae_attention(parts["vae"]), "VAE", sdm_checkpoint, SDM_HINT)
    else:
        check_weights_folder(sd / "vae", "diffusion_pytorch_model")
        vae = AutoencoderKL.from_pretrained(sd / "vae", use_safetensors=True)
        check_finite(vae.state_dict(), sd / "vae")

    image_encoder = CLIPVisionModelWithProjection(vision_config)
    _load_exact(image_encoder, parts["image_encoder"], "image encoder", sdm_checkpoint, vision_hint)

    fuser = SubjectFuser(embed_dim=parts["postfuse_module"]["layer_norm.weight"].shape[0])
    _load_exact(fuser, parts["postfuse_module"], "subject fuser", sdm_checkpoint, SDM_HINT)

    pipe = FaceDiffuserPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        subject_unet=subject_unet,
        image_encoder=image_encoder,
        subject_fuser=fuser,
        scheduler=DDIMScheduler.from_config(_read_config(sd / "scheduler" / "scheduler_config.json")),
    )
    return pipe.to(torch.float32)


def check_output_folder(
    out: str | os.PathLike, *, overwrite: bool = False, inputs: tuple[str | os.PathLike, ...] | list = ()
) -> Path:
    """Checks ``out`` before any model loads and returns it as an absolute path.

    ``out`` may be new (its nearest existing parent must be a folder this user can write to), or, with
    ``overwrite``, an existing pipeline folder (one holding a ``model_index.json``) that is not the root, the home
    folder, the current folder or one above it, and does not hold any of ``inputs``.
    """
    out = Path(os.path.abspath(Path(out).expanduser()))
    if os.path.lexists(out):
        if not overwrite:
            raise ValueError(f"{out} already exists; choose another output folder or pass --overwrite.")
        if out.is_symlink():
            raise ValueError(f"{out} is a symbolic link; --overwrite replaces only a real pipeline folder.")
        if not out.is_dir():
            raise ValueError(f"{out} is a file, not a pipeline folder; choose another output folder.")
        target = out.resolve()
        reason = protected_reason(target)
        if reason:
            raise ValueError(f"--overwrite would delete {out}, {reason}: choose a new folder for --out.")
        for given in inputs:
            path = Path(given).expanduser().resolve()
            if path == target or target in path.parents:
                which = "is" if path == target else "holds"
                raise ValueError(
                    f"--overwrite would delete {out}, which {which} the input {given}: choose another --out."
                )
        if not (out / "model_index.json").is_file():
            raise ValueError(
                f"{out} is not a pipeline folder (it has no model_index.json), so --overwrite does not replace it: "
                "choose a new folder for --out."
            )
        return out
    parent = nearest_existing_folder(out, out)
    probe = sibling(parent / "probe", "write-test")
    try:  # a real write, not os.access: root passes os.access on read-only file systems too
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise ValueError(
            f"Cannot write in {parent} ({first_line(err)}): choose an --out in a folder you can write to."
        ) from err
    return out


def save_pipeline_atomically(
    pipe: FaceDiffuserPipeline,
    out: str | os.PathLike,
    overwrite: bool = False,
    inputs: tuple[str | os.PathLike, ...] | list = (),
) -> Path:
    """Writes the pipeline folder beside ``out`` and swaps it in only once it is complete.

    A failed or interrupted save leaves no half folder and, with ``overwrite``, the old folder intact; the old one
    is deleted only after the new one is in place. :func:`check_output_folder` decides what may be overwritten.
    The folder follows the user's umask (no private temporary-folder mode).
    """
    out = check_output_folder(out, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_folder_atomically(
        out,
        lambda new: pipe.save_pretrained(new, safe_serialization=True),
        recheck=lambda: check_output_folder(out, overwrite=overwrite, inputs=inputs),  # nothing changed meanwhile
    )


# ------------------------------------------------------------------ SDXL
def assemble_xl_pipeline(
    sdxl: str | os.PathLike,
    subject_model: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
    scene_model: str | os.PathLike | None = None,
    seed: int = 0,
):
    """A :class:`~facediffuser.pipeline_xl.FaceDiffuserXLPipeline` over an SDXL base folder (diffusers'
    ``StableDiffusionXLPipeline`` layout), checked before any model loads.

    Args:
        sdxl: the SDXL base: VAE, both text towers and tokenizers, scheduler, and the TDM's UNet.
        subject_model: a trained SDXL Face-diffuser pipeline folder: its ``subject_unet``, ``subject_fuser`` and
            ``image_encoder`` (and ``face_detector``, if any) become the SDM.
        image_encoder: without ``subject_model``, a CLIP vision folder with projection: the SDM starts untrained, its
            UNet a copy of the base's and its fuser freshly drawn (``seed``) for the base's token width and this
            encoder's projection, the starting point of ``train sdm``.
        scene_model: any SDXL UNet (folder or ``.safetensors``) as the TDM instead of the base's.

    For an IP-Adapter there is nothing to assemble: ``generate --model SDXL_BASE --ip-adapter ...``
    (``FaceDiffuserXLPipeline.from_base`` then ``load_ip_adapter``).
    """
    from ..pipeline_xl import FaceDiffuserXLPipeline
    from .loading import (
        BASE_CLASSES,
        XL_CLASS,
        check_pipeline_folder,
        check_scene_model_fits,
        read_model_index,
        scene_model_is_xl,
    )

    sdxl = Path(sdxl)
    if not sdxl.is_dir():
        raise FileNotFoundError(f"SDXL base folder not found: {sdxl}")
    check_pipeline_folder(sdxl)
    if BASE_CLASSES.get(read_model_index(sdxl).get("_class_name"), ("",))[0] != XL_CLASS:
        raise ValueError(
            f"--sdxl {sdxl} is not an SDXL base folder (its model_index.json names another pipeline): give the "
            "diffusers folder of SDXL base (stabilityai/stable-diffusion-xl-base-1.0)."
        )
    if (subject_model is None) == (image_encoder is None):
        raise ValueError(
            "With --sdxl give either --sdm (a trained SDXL Face-diffuser folder) or --image-encoder (a CLIP vision "
            "folder, for an untrained SDM to train), not both or neither."
        )
    if scene_model is not None:
        check_scene_model_fits(scene_model, True, f"--sdxl {sdxl}")
    cross = _read_config(sdxl / "unet")["cross_attention_dim"]
    if subject_model is not None:
        subject_model = Path(subject_model)
        if not subject_model.is_dir():
            raise FileNotFoundError(f"--sdm folder not found: {subject_model}")
        check_pipeline_folder(subject_model)
        if (
            read_model_index(subject_model).get("_class_name") != XL_CLASS
            or not (subject_model / "subject_fuser" / "config.json").is_file()
        ):
            raise ValueError(
                f"--sdm {subject_model} is not an SDXL Face-diffuser folder with a subject fuser: give the folder "
                "that `train sdm` wrote for an SDXL base."
            )
        width = _read_config(subject_model / "subject_fuser")["embed_dim"]
        if not scene_model_is_xl(subject_model / "subject_unet") or width != cross:
            raise ValueError(
                f"--sdm {subject_model}'s subject model reads {width}-wide tokens but --sdxl {sdxl} gives {cross}: "
                "they are not of the same base."
            )
    else:
        vision = _read_config(image_encoder)
        if "projection_dim" not in vision:
            raise ValueError(
                f"--image-encoder {image_encoder} is not a CLIP vision model with projection (its config.json has "
                "no projection_dim): give one such as h94/IP-Adapter's sdxl_models/image_encoder."
            )

    pipe = FaceDiffuserXLPipeline.from_base(sdxl, use_safetensors=True)
    if subject_model is not None:
        trained = FaceDiffuserXLPipeline.from_pretrained(subject_model, use_safetensors=True)
        parts = {name: getattr(trained, name) for name in ("subject_unet", "subject_fuser", "image_encoder")}
        parts["face_detector"] = trained.face_detector
        pipe.register_to_config(placeholder=trained.placeholder)
    else:
        encoder = CLIPVisionModelWithProjection.from_pretrained(image_encoder, use_safetensors=True)
        subject_unet = UNet2DConditionModel.from_config(pipe.unet.config)
        subject_unet.load_state_dict(pipe.unet.state_dict())
        torch.manual_seed(seed)
        fuser = SubjectFuser(embed_dim=cross, image_embed_dim=encoder.config.projection_dim)
        parts = {"subject_unet": subject_unet, "subject_fuser": fuser, "image_encoder": encoder}
    pipe.register_modules(**parts)
    if scene_model is not None:
        pipe.unet = load_scene_unet(scene_model, like=pipe.unet, like_name="the SDXL base's")
        check_finite(pipe.unet.state_dict(), scene_model)
    return pipe.to(torch.float32)
