"""Loading a pipeline the way the command line, the evaluation harness and the demo all do.

Weights load from safetensors only (``use_safetensors=True``): no pickled code runs. Released ``.bin`` checkpoints
go through :mod:`facediffuser.io.convert` first, which reads them with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import enum
import logging
import warnings
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)

from ..pipeline import FaceDiffuserPipeline

logger = logging.getLogger(__name__)

TINY_MODEL = "tiny"
TINY_XL_MODEL = "tiny-xl"  # the random SDXL test pipeline
MINI_MODEL = "mini"  # the mini Face-diffuser shipped in the package (facediffuser mini ship), the default model


class Offload(str, enum.Enum):
    """Where the models wait while they are not running."""

    NONE = "none"  # all on the device
    MODEL = "model"  # on the CPU, one whole model on the accelerator at a time
    SEQUENTIAL = "sequential"  # on the CPU, moved submodule by submodule


SCHEDULERS = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "ddpm": DDPMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "dpm++-karras": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    # For a latent-consistency model (`train lcm`, or an LCM-LoRA): other models draw noise with it.
    "lcm": LCMScheduler,
}
# What a name sets beyond its class: a swap keeps the rest of the model's scheduler config (its training noise schedule,
# timestep spacing), so ``dpm++`` from a model whose own scheduler is DPM-Solver++ with Karras sigmas is without them.
# ``pndm`` is PNDM as SD1.x pipelines (and the release) ship it: PLMS steps only, without the Runge-Kutta warm-up that
# PNDM's class default adds (12 more UNet steps at any number of steps).
SCHEDULER_OPTIONS = {
    "pndm": {"skip_prk_steps": True},
    "dpm++": {"use_karras_sigmas": False},
    "dpm++-karras": {"use_karras_sigmas": True},
}
# The paper's sampling: DDIM at the paper's 50 steps (``--paper-sampling``).
PAPER_SCHEDULER = "ddim"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PIPELINE_PARTS = (
    "vae",
    "text_encoder",
    "tokenizer",
    "unet",
    "subject_unet",
    "image_encoder",
    "subject_fuser",
    "scheduler",
)
XL_PIPELINE_PARTS = (*PIPELINE_PARTS[:2], "text_encoder_2", PIPELINE_PARTS[2], "tokenizer_2", *PIPELINE_PARTS[3:])
# The pipeline class a folder's model_index.json names -> (module, class, parts), imported only when a folder
# names it (an SD1.x folder imports nothing of SDXL). A folder that names another class is read as SD1.x's.
SD1_CLASS, XL_CLASS = "FaceDiffuserPipeline", "FaceDiffuserXLPipeline"
PIPELINE_CLASSES = {
    SD1_CLASS: ("facediffuser.pipeline", SD1_CLASS, PIPELINE_PARTS),
    XL_CLASS: ("facediffuser.pipeline_xl", XL_CLASS, XL_PIPELINE_PARTS),
}
# A plain diffusers base folder -> the Face-diffuser class built over it (``from_base``): its UNet is the scene model
# and the subject model is an IP-Adapter loaded afterwards (``generate --ip-adapter``).
BASE_CLASSES = {
    "StableDiffusionPipeline": (SD1_CLASS, ("vae", "text_encoder", "tokenizer", "unet", "scheduler")),
    "StableDiffusionXLPipeline": (
        XL_CLASS,
        ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler"),
    ),
}


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N counts from 0) or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA if present, else Apple MPS, else the CPU. Probed when called, never at import.

    Raises ``ValueError`` for a name PyTorch does not know (``"gpu"``) and for a device this machine does not have.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {name!r}: use {DEVICE_CHOICES}.") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU on this machine"
            raise ValueError(
                f"The device {name!r} needs CUDA, but this PyTorch ({torch.__version__}) {why}. Use the device cpu, "
                "or auto to take whatever this machine has."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"There is no device {name!r}: this machine has {count} CUDA device(s), from cuda:0.")
    elif device.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ValueError(f"The device {name!r} (Apple's GPU) is not available here. Use cpu, or auto.")
    elif device.type != "cpu":
        raise ValueError(f"The device {name!r} is not supported: use {DEVICE_CHOICES}.")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"``: float16 on an accelerator, float32 on the CPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The name :func:`resolve_dtype` takes back, e.g. ``"float16"``."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def scheduler_name(scheduler: object) -> str | None:
    """The short name (``"ddim"``, ``"dpm++-karras"``) under which :data:`SCHEDULERS` holds this scheduler's class and
    options, or ``None``."""
    config = getattr(scheduler, "config", {})
    return next(
        (
            name
            for name, cls in SCHEDULERS.items()
            if type(scheduler) is cls and all(config.get(k) == v for k, v in SCHEDULER_OPTIONS.get(name, {}).items())
        ),
        None,
    )


def check_offload(offload: Offload | str, device: torch.device) -> None:
    """Raises ``ValueError`` for offloading with no accelerator to offload to."""
    offload = Offload(offload)
    if offload is not Offload.NONE and device.type == "cpu":
        raise ValueError(f"--offload {offload.value} moves models to an accelerator; it needs --device cuda (or mps).")


class ModelSource(str, enum.Enum):
    TINY = "tiny"
    TINY_XL = "tiny-xl"
    MINI = "mini"
    FOLDER = "folder"
    HUB = "hub"


def check_model_source(model: str | Path) -> ModelSource:
    """Where ``model`` would load from, checked without loading anything.

    ``"tiny"`` is the random test pipeline (``"tiny-xl"`` its SDXL twin); ``"mini"`` the mini model shipped in the
    package (a ``ValueError`` when this installation has none); an existing path must be a complete pipeline folder
    (a Face-diffuser one, or a plain Stable Diffusion / SDXL base); a missing path that is written as one (``/...``,
    ``./...``, ``~/...``, a Windows drive) raises ``FileNotFoundError``; anything else is tried as a model-hub id when
    the pipeline loads (and :func:`load_pipeline` says so if that fails). A folder called ``tiny`` or ``mini`` is
    given as ``./tiny``.
    """
    if str(model) == TINY_MODEL:
        return ModelSource.TINY
    if str(model) == TINY_XL_MODEL:
        return ModelSource.TINY_XL
    if str(model) == MINI_MODEL:
        check_pipeline_folder(packaged_mini_pipeline())
        return ModelSource.MINI
    local = Path(model).expanduser()
    if local.exists():
        check_pipeline_folder(local)
        return ModelSource.FOLDER
    if str(model).startswith(("/", ".", "~", "\\")) or Path(model).drive or str(model).count("/") > 1:
        raise FileNotFoundError(
            f"Model folder not found: {local.absolute()}. Give the path of a pipeline folder made by `facediffuser "
            "convert`, or a model-hub id (owner/name)."
        )
    return ModelSource.HUB


def packaged_mini_pipeline() -> Path:
    """The folder of the shipped mini pipeline (``facediffuser/data/mini/pipeline``), whether or not it exists."""
    from .package_data import MINI_PIPELINE, packaged

    return packaged(MINI_PIPELINE)


def model_folder(model: str | Path) -> Path | None:
    """The local pipeline folder ``model`` names (the shipped one for ``"mini"``), or ``None`` (``tiny``, a hub id).
    Call :func:`check_model_source` first."""
    source = check_model_source(model)
    if source is ModelSource.MINI:
        return packaged_mini_pipeline()
    return Path(model).expanduser() if source is ModelSource.FOLDER else None


def hub_model_index(model: str) -> dict | None:
    """A hub id's ``model_index.json``, parsed, fetched alone with diffusers' ``DiffusionPipeline.load_config``: from
    the local hub cache when it is there, else from the hub once one request (``model_info``, which diffusers' own
    download asks first) shows the hub answers, so that an unreachable hub costs no download retries. ``None`` when
    it cannot be had (loading then says why)."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import HFValidationError

    def load(**kwargs) -> dict | None:
        with warnings.catch_warnings():  # diffusers passes huggingface_hub an argument it has deprecated
            warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument", category=UserWarning)
            index = DiffusionPipeline.load_config(model, **kwargs)
        return index if isinstance(index, dict) else None

    try:
        return load(local_files_only=True)
    except (OSError, HFValidationError, ValueError):
        pass
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        model_info(model)
        return load()
    except Exception:  # noqa: BLE001 - not reachable, not found, not valid: loading gives the reason in one sentence
        return None


def _load_from_hub(model: str, dtype: torch.dtype) -> FaceDiffuserPipeline:
    """A hub id loads as a folder does: its ``model_index.json`` (:func:`hub_model_index`) names the class, and a
    plain Stable Diffusion or SDXL base is built with ``from_base``; without an index it is tried as an SD1.x
    Face-diffuser pipeline, whose failure names the reason."""
    from huggingface_hub.errors import HFValidationError

    index = hub_model_index(model)
    cls, base = pipeline_class(index) if index is not None else (FaceDiffuserPipeline, False)
    load = cls.from_base if base else cls.from_pretrained
    try:
        return load(model, use_safetensors=True, dtype=dtype)
    except (OSError, HFValidationError) as err:
        raise FileNotFoundError(
            f"{model!r} is not a folder here (no {Path(model).absolute()}), so it was tried as a model-hub id: "
            f"{_hub_failure(err)}. Give the path of a pipeline folder made by `facediffuser convert`, or a hub id "
            "that is cached or reachable."
        ) from err


def _hub_failure(err: Exception) -> str:
    """Why a hub id did not load, in a few words (diffusers' own messages run to several lines)."""
    from huggingface_hub.errors import HFValidationError

    text = " ".join(str(err).split())
    if isinstance(err, HFValidationError):
        return "it is not a valid hub id either"
    if "outgoing traffic has been disabled" in text or "connect" in text.lower() or "offline" in text.lower():
        return "it is not in the local hub cache, and the hub could not be reached"
    if "404" in text or "not found" in text.lower():
        return "the hub has no such model (or it is private)"
    first = text.split(". ")[0]
    return "loading failed: " + (first if len(first) <= 160 else first[:160] + "...")


def check_pipeline_folder(folder: Path) -> None:
    """Raises a ``ValueError`` naming every missing part of a pipeline folder."""
    index = folder / "model_index.json"
    if not index.is_file() and folder == packaged_mini_pipeline():
        raise ValueError(
            f"This installation has no shipped mini model ({folder} has no model_index.json): install a release that "
            "ships it, put one there with `facediffuser mini ship`, or pass --model with a pipeline folder (or "
            "--model tiny, the random test model)."
        )
    if not index.is_file():
        raise ValueError(
            f"{folder} is not a Face-diffuser pipeline folder: it has no model_index.json. Make one with "
            "`facediffuser convert` or `FaceDiffuserPipeline.save_pretrained`."
        )
    declared = read_model_index(folder)
    if index.read_bytes().startswith(b"\xef\xbb\xbf"):
        raise ValueError(
            f"{index} starts with a byte-order mark, which diffusers cannot read: save it as UTF-8 without one."
        )
    name = declared.get("_class_name")
    parts = (
        BASE_CLASSES[name][1] if name in BASE_CLASSES else PIPELINE_CLASSES.get(name, PIPELINE_CLASSES[SD1_CLASS])[2]
    )
    missing = [p for p in parts if p not in declared or not (folder / p).is_dir()]
    if missing:
        raise ValueError(f"The model folder {folder} is missing: {', '.join(p + '/' for p in missing)}.")


def pipeline_class(index: dict) -> tuple[type, bool]:
    """The Face-diffuser class a folder's parsed ``model_index.json`` loads as, and whether the folder is a plain
    diffusers base (to be built with ``from_base``) rather than a Face-diffuser pipeline folder."""
    import importlib

    name = index.get("_class_name")
    base = name in BASE_CLASSES
    if base:
        name = BASE_CLASSES[name][0]
    module, cls, _ = PIPELINE_CLASSES.get(name, PIPELINE_CLASSES[SD1_CLASS])
    return getattr(importlib.import_module(module), cls), base


def base_model_name(index: dict) -> str | None:
    """``"SDXL"`` or ``"Stable Diffusion"`` for a plain diffusers base folder's index, ``None`` for a Face-diffuser
    pipeline folder."""
    name = index.get("_class_name")
    if name not in BASE_CLASSES:
        return None
    return "SDXL" if BASE_CLASSES[name][0] == XL_CLASS else "Stable Diffusion"


def is_xl_model(model: str | Path) -> bool | None:
    """Whether ``model`` (as :func:`check_model_source` takes it) is an SDXL pipeline, read from its
    ``model_index.json`` without loading it (a hub id's is fetched alone); ``None`` for a hub id whose index cannot
    be had."""
    source = check_model_source(model)
    if source in (ModelSource.TINY, ModelSource.TINY_XL):
        return source is ModelSource.TINY_XL
    folder = model_folder(model)
    index = read_model_index(folder) if folder is not None else hub_model_index(str(model))
    if index is None:
        return None
    name = index.get("_class_name")
    return name == XL_CLASS or BASE_CLASSES.get(name, ("",))[0] == XL_CLASS


def read_model_index(folder: Path) -> dict:
    """A pipeline folder's ``model_index.json``, parsed (what the two readers below take, so a check reads it once)."""
    from .files import read_json

    return read_json(folder / "model_index.json", dict, "a model index")


def own_sampling_defaults(index: dict | None, where: str | Path, names: tuple[str, ...]) -> dict:
    """The sampling defaults ``names`` (``num_inference_steps``, ``guidance_scale``) that a model index names, each
    checked by :class:`~facediffuser.settings.SamplingSettings`' rule before the pipeline would refuse it while it
    loads. Raises ``ValueError`` naming ``where`` (the ``model_index.json``)."""
    from ..settings import SamplingSettings

    own = {name: (index or {}).get(name) for name in names}
    own = {name: value for name, value in own.items() if value is not None}
    for name, value in own.items():
        try:
            SamplingSettings(**{name: value})
        except ValueError as err:
            raise ValueError(f"In {where}, {err}") from None
    return own


def read_placeholder(folder: Path, index: dict | None = None) -> str:
    """The placeholder a pipeline folder's prompts use (``model_index.json``, or its parsed ``index``), read without
    loading the pipeline."""
    from ..prompting import DEFAULT_PLACEHOLDER

    declared = read_model_index(folder) if index is None else index
    placeholder = declared.get("placeholder", DEFAULT_PLACEHOLDER)
    return placeholder if isinstance(placeholder, str) and placeholder else DEFAULT_PLACEHOLDER


def read_face_detector(folder: Path, index: dict | None = None):
    """The face detector a pipeline folder cuts its references with (its optional ``face_detector`` component),
    loaded alone in float32, without the rest of the pipeline; ``None`` when the folder has none. ``generate``
    checks the reference photos with it before the models load, so that its verdict is the pipeline's. ``index``:
    the folder's parsed ``model_index.json``, when the caller has read it."""
    from ..models import FaceDetector

    entry = (read_model_index(folder) if index is None else index).get("face_detector")
    if not entry or entry[0] is None or not (folder / "face_detector" / "config.json").is_file():
        return None
    return FaceDetector.from_pretrained(folder / "face_detector", use_safetensors=True, dtype=torch.float32).eval()


def scheduler_from_config(name: str, config) -> object:
    """The scheduler ``name`` (:data:`SCHEDULERS`) with ``config`` (a model's scheduler config: its training noise
    schedule, timestep spacing) and what the name sets (:data:`SCHEDULER_OPTIONS`)."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}.")
    return SCHEDULERS[name].from_config(config, **SCHEDULER_OPTIONS.get(name, {}))


def swap_scheduler(pipe: FaceDiffuserPipeline, name: str) -> None:
    pipe.scheduler = scheduler_from_config(name, pipe.scheduler.config)


def check_scene_model(path: str | Path) -> None:
    """Everything about a scene model that can be known before it loads: it exists, a folder holds a UNet config and
    its safetensors weights, a single file is a readable ``.safetensors``. Raises ``FileNotFoundError`` or
    ``ValueError`` with a sentence."""
    from .weight_files import check_safetensors_file, check_weights_folder

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Scene model not found: {path}")
    if path.is_dir():
        folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ValueError(f"{path} holds neither a unet/ folder nor a UNet config.json.")
        check_weights_folder(folder, "diffusion_pytorch_model")
        return
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: a single-file scene model must be .safetensors (pickled .ckpt/.bin files can run code on load)."
        )
    check_safetensors_file(path)


def scene_model_is_xl(path: str | Path) -> bool | None:
    """Whether a scene model (checked by :func:`check_scene_model`) is an SDXL UNet, read from its ``config.json`` or
    its safetensors header without loading a tensor: SDXL's UNet reads the added conditions (``text_time``; the
    ``add_embedding`` / ``label_emb`` weights) on 2048-wide tokens. ``None`` when neither mark can be read."""
    from safetensors import safe_open

    from ..subject_models import is_sdxl_unet

    path = Path(path)
    if path.is_dir():
        from .files import read_json

        folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
        config = read_json(folder / "config.json", dict, "a UNet config")
        return is_sdxl_unet(config) or config.get("cross_attention_dim") == 2048
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        if any(k.endswith(("add_embedding.linear_1.weight", "label_emb.0.0.weight")) for k in keys):
            return True
        key = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
        return None if key is None else f.get_slice(key).get_shape()[1] == 2048


def check_scene_model_fits(path: str | Path, xl: bool | None, model: str = "the model") -> None:
    """Refuses, before any model loads, a scene model for the other base: an SD1.x UNet for an SDXL pipeline
    (``xl``) or an SDXL UNet for an SD1.x one. ``xl is None`` (a hub id) checks nothing."""
    check_scene_model(path)
    if xl is None:
        return
    found = scene_model_is_xl(path)
    if found is None or found == xl:
        return
    if xl:
        raise ValueError(
            f"--scene-model {path} is not an SDXL UNet (it lacks SDXL's added conditions and 2048-wide tokens), but "
            f"{model} is an SDXL pipeline: give an SDXL UNet (a diffusers folder or a .safetensors file)."
        )
    raise ValueError(
        f"--scene-model {path} is an SDXL UNet, but {model} is an SD1.x pipeline: give an SD v1.x UNet, or an SDXL "
        "pipeline folder as --model."
    )


def load_scene_unet(
    path: str | Path, like: UNet2DConditionModel, like_name: str = "the pipeline's TDM"
) -> UNet2DConditionModel:
    """A UNet to use as the TDM, from a diffusers folder (a pipeline or a bare ``unet/``) or a single
    ``.safetensors`` file (original LDM keys ``model.diffusion_model.*`` or diffusers keys, optionally under
    ``unet.``). ``like`` (called ``like_name`` in messages) supplies the architecture config for single files (SD1.x
    or SDXL). A file that does not fit is a ``ValueError`` naming the tensor."""
    from safetensors.torch import load_file

    kind = _unet_kind(like)
    path = Path(path)
    check_scene_model(path)
    try:
        if path.is_dir():
            folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
            return UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)
        return _scene_unet_from_file(path, like, load_file(path))
    except RuntimeError as err:  # a tensor of another shape; torch names it on a later line
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err)]
        raise ValueError(
            f"{path} does not fit {kind} UNet like {like_name} ({lines[0][:200]}): give {kind} UNet."
        ) from err


def _unet_kind(like: UNet2DConditionModel) -> str:
    from ..subject_models import is_sdxl_unet

    return "an SDXL" if is_sdxl_unet(like.config) else "an SD1.x"


def _scene_unet_from_file(path: Path, like: UNet2DConditionModel, state: dict) -> UNet2DConditionModel:
    if any(k.startswith("model.diffusion_model.") for k in state):
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        state = convert_ldm_unet_checkpoint(state, dict(like.config))
    elif any(k.startswith("unet.") for k in state):
        state = {k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}
    unet = UNet2DConditionModel.from_config(like.config)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {_unet_kind(like)} UNet: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )
    return unet


def load_pipeline(
    model: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    scheduler: str | None = None,
    scene_model: str | Path | None = None,
    offload: Offload | str = "none",
    compile_unets: bool = False,
) -> FaceDiffuserPipeline:
    """A ready pipeline from ``"tiny"`` or ``"tiny-xl"``, ``"mini"`` (the shipped model), a local folder or a hub id,
    on ``device`` in ``dtype``. A folder's ``model_index.json`` (a hub id's, fetched first and alone) names its class
    (``FaceDiffuserPipeline`` or ``FaceDiffuserXLPipeline``); a plain diffusers Stable Diffusion or SDXL base gives
    that class over the base (``from_base``: no subject model until an IP-Adapter is loaded). The shipped model is
    stored in float16 and loads in ``dtype`` (float32 on the CPU for ``"auto"``).

    ``offload="model"`` keeps the models on the CPU and moves each to the accelerator only while it runs (one at a
    time); ``"sequential"`` goes layer by layer (slowest, least memory). Both need an accelerator.
    """
    offload = Offload(offload)
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    check_offload(offload, device)
    if device.type == "cpu" and dtype != torch.float32:
        logger.warning(
            "Running in %s on the CPU: PyTorch computes many %s operations slowly there, or not at all. float32 is "
            "the CPU's default (dtype auto).",
            dtype_name(dtype),
            dtype_name(dtype),
        )
    source = check_model_source(model)
    if scene_model is not None:  # before any model loads
        check_scene_model_fits(scene_model, is_xl_model(model), repr(str(model)))
    if source in (ModelSource.TINY, ModelSource.TINY_XL):
        from .tiny import build_tiny_pipeline, build_tiny_xl_pipeline

        logger.warning("Using the tiny random pipeline: its images are noise. Pass --model for real weights.")
        pipe = build_tiny_xl_pipeline() if source is ModelSource.TINY_XL else build_tiny_pipeline()
        pipe.set_progress_bar_config(disable=False)
    elif source in (ModelSource.MINI, ModelSource.FOLDER):
        folder = model_folder(model)
        cls, base = pipeline_class(read_model_index(folder))
        load = cls.from_base if base else cls.from_pretrained
        pipe = load(folder, use_safetensors=True, dtype=dtype)
    else:
        pipe = _load_from_hub(str(model), dtype)
    if scene_model is not None:
        pipe.unet = load_scene_unet(scene_model, like=pipe.unet)
    if scheduler is not None:
        swap_scheduler(pipe, scheduler)
    if pipe.unet.dtype != dtype:
        pipe.to(dtype=dtype)
    if offload is Offload.MODEL:
        pipe.enable_model_cpu_offload(device=device)
    elif offload is Offload.SEQUENTIAL:
        pipe.enable_sequential_cpu_offload(device=device)
    elif pipe.device != device:  # moving to where it already is only repeats diffusers' warnings
        pipe.to(device)
    if compile_unets:
        pipe.compile_unets()
    return pipe


def pipeline_entries() -> list[str]:
    """What ``save_pretrained`` of a Face-diffuser pipeline (SD1.x or SDXL) may write into a folder:
    ``model_index.json`` and a sub-folder per component (the optional ones too)."""
    from ..pipeline_xl import FaceDiffuserXLPipeline

    names = set()
    for cls in (FaceDiffuserPipeline, FaceDiffuserXLPipeline):
        modules, _ = cls._get_signature_keys(cls)
        names |= set(modules)
    return ["model_index.json", *(f"{name}/" for name in sorted(names))]
