"""``facediffuser generate``: one prompt, one reference per placeholder, images out.

Everything that can be checked is checked before the models load: the sampling settings, the size, the device, the
model path, the output files, the placeholders and the reference photos. An existing output is never replaced
without ``--overwrite``. Each PNG records how it was made (``parameters``, JSON) in the form these flags take back:
``--parameters-from image.png --ref photo.jpg`` makes it again.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..io.configuration import add_dataclass_arguments, build_config, flag_names, name_flags
from ..io.loading import Offload
from ..settings import SamplingSettings

logger = logging.getLogger(__name__)

# The settings a PNG records (``generate()`` step 4) that a rerun takes from it: what the image is made of. The
# sampling settings are recorded by their field names too (see ``rerun_settings``).
RERUN_KEYS = ("prompt", "negative_prompt", "model", "scene_model", "scheduler", "device", "dtype", "num_images", "seed")
RERUN_SIZE_KEYS = ("height", "width")
# What a PNG records besides settings: the references by file name and hash (they are given again with --ref), and
# which image of a call it is, the placeholder, the version.
RECORD_ONLY_KEYS = ("ref", "ref_sha256", "image_index", "placeholder", "facediffuser_version")


@dataclass
class GenerateConfig:
    prompt: str = field(
        metadata={
            "short": "-p",
            "help": "prompt with a placeholder after each person's class noun, e.g. 'a man <|image|> riding a horse'",
        }
    )
    ref: list[str] = field(
        default_factory=list,
        metadata={
            "repeat": True,
            "help": "reference of one person, once per placeholder in order; a folder means "
            "several photos of the same person",
        },
    )
    model: str = field(
        default="mini",
        metadata={
            "help": "'mini' (the small model shipped in the package: 32 px images of the procedural world's people), "
            "a pipeline folder (SD1.x or SDXL, made by `facediffuser convert`) or hub id, or a plain Stable "
            "Diffusion / SDXL base folder with --ip-adapter; 'tiny' and 'tiny-xl' are random test models"
        },
    )
    scene_model: Path | None = field(
        default=None,
        metadata={
            "help": "any UNet of the model's base (SD1.x, or SDXL for an SDXL model; diffusers folder or "
            ".safetensors) to draw the scene"
        },
    )
    ip_adapter: str | None = field(
        default=None,
        metadata={
            "help": "an IP-Adapter draws the people instead of the model's SDM, on the scene model's own UNet: its "
            "weight file (.safetensors, or a .bin of tensors only), or a folder or hub id with --ip-adapter-weight"
        },
    )
    ip_adapter_weight: str | None = field(
        default=None, metadata={"help": "the adapter's weight file in --ip-adapter's folder, e.g. ip-adapter_sd15.bin"}
    )
    ip_adapter_subfolder: str | None = field(
        default=None, metadata={"help": "the sub-folder of --ip-adapter that holds the weight file, e.g. models"}
    )
    ip_adapter_image_encoder: str | None = field(
        default=None,
        metadata={
            "help": "the adapter's CLIP image encoder folder (default: image_encoder beside the weight file; "
            "not needed with --ip-adapter-embeds)"
        },
    )
    ip_adapter_embeds: Path | None = field(
        default=None,
        metadata={
            "help": "instead of --ref: a .safetensors file whose tensor image_embeds holds one row per placeholder "
            "(IP-Adapter-FaceID's face embeddings)"
        },
    )
    ip_adapter_scale: float = field(default=1.0, metadata={"help": "the IP-Adapter's scale in the subject model"})
    out: Path = field(default=Path("outputs/face-diffuser.png"), metadata={"short": "-o", "help": "output PNG"})
    overwrite: bool = field(
        default=False, metadata={"help": "replace existing output files (without it, an existing file is an error)"}
    )
    negative_prompt: str = field(default="", metadata={"help": "negative prompt (the empty condition)"})
    seed: int = field(default=0, metadata={"help": "random seed, 0 to 2**64 - 1"})
    sampling: SamplingSettings = field(
        default_factory=SamplingSettings, metadata={"flags": {"num_inference_steps": "--steps"}}
    )
    height: int | None = field(
        default=None,
        metadata={"help": "height in pixels, a multiple of 8, at most 4096 (default: the model's, 32 for mini)"},
    )
    width: int | None = field(
        default=None, metadata={"help": "width in pixels, a multiple of 8, at most 4096 (default: the model's)"}
    )
    num_images: int = field(default=1, metadata={"help": "images to generate, 1 to 64 (drawn in one batch)"})
    scheduler: str | None = field(
        default=None,
        metadata={
            "help": "ddim, pndm, dpm++, dpm++-karras, unipc, euler, euler-a, ... (default: the model's own, which its "
            "scheduler/ folder names)"
        },
    )
    paper_sampling: bool = field(
        default=False,
        metadata={
            "help": "sample as the paper does, DDIM at 50 steps with guidance scale 5, instead of the model's own "
            "scheduler, number of steps and guidance scale (--scheduler, --steps and --guidance-scale, when given, "
            "win)"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, float16, bfloat16"})
    offload: Offload = field(
        default=Offload.NONE, metadata={"help": "model: one model on the GPU at a time; sequential: layer by layer"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile both UNets (slow first call)"})
    save_masks: bool = field(
        default=False,
        metadata={
            "help": "also write a picture of the fusion masks per step (X-masks.png) and, with two or more people or a "
            "region option, of the person regions (X-regions.png)"
        },
    )
    face_check: bool = field(
        default=True,
        metadata={
            "help": "refuse reference photos in which no face is found, before the models load: by the model's "
            "own face detector when it has one (mini does; it cuts every photo to its face, so it refuses a "
            "faceless one anyway), else by dlib when installed"
        },
    )
    parameters_from: Path | None = field(
        default=None,
        metadata={
            "help": "take the settings recorded in this PNG (written by generate): prompt, model, seed, size, "
            "sampling, scheduler, device, dtype, number of images, checked as their flags are; flags given win, the "
            "references must be given again with --ref, and any other key (e.g. face_check) is ignored with a warning"
        },
    )


def output_paths(out: Path, count: int) -> list[Path]:
    """``out`` for one image; ``out-0.png``, ``out-1.png``, ... for several."""
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}.")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def mask_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-masks.png")


def regions_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-regions.png")


def writes_regions(config: GenerateConfig, placeholder: str, model_steps: int | None = None) -> bool:
    """Whether this run writes ``X-regions.png`` beside each ``X-masks.png``: with ``--save-masks`` and the person
    regions in the trace, that is two or more people, or a region option on (``visualize.regions_shown``).
    ``model_steps``: the model's own number of steps, for a run that gives none."""
    from ..io.visualize import regions_shown
    from ..prompting import count_placeholders
    from ..settings import DEFAULT_STEPS

    steps = config.sampling.num_inference_steps or model_steps or DEFAULT_STEPS
    return config.save_masks and regions_shown(count_placeholders(config.prompt, placeholder), config.sampling, steps)


def with_paper_sampling(config: GenerateConfig) -> GenerateConfig:
    """``config`` with ``--paper-sampling`` applied: DDIM, 50 steps and guidance scale 5 where the flags left them to
    the model."""
    from ..io.loading import PAPER_SCHEDULER
    from ..settings import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS

    if not config.paper_sampling:
        return config
    steps = config.sampling.num_inference_steps or DEFAULT_STEPS
    scale = DEFAULT_GUIDANCE_SCALE if config.sampling.guidance_scale is None else config.sampling.guidance_scale
    return replace(
        config,
        scheduler=config.scheduler or PAPER_SCHEDULER,
        sampling=config.sampling.replace(num_inference_steps=steps, guidance_scale=scale),
    )


def rerun_settings(parameters: dict[str, Any], source: str = "the recorded parameters") -> dict[str, Any]:
    """The settings of a PNG's ``parameters`` that a rerun takes: those :func:`generate` records
    (:data:`RERUN_KEYS`, the size and the sampling settings). Any other key (``face_check``, ``compile``,
    ``offload``, ``out``, one this version does not know) is not obeyed: its names are logged in one warning line
    that says to give them as flags. A file's values say what to draw, never how or where to run."""
    from ..settings import SamplingSettings

    taken = (*RERUN_KEYS, *RERUN_SIZE_KEYS, *(f.name for f in fields(SamplingSettings)))
    ignored = sorted(k for k in parameters if k not in taken and k not in RECORD_ONLY_KEYS)
    if ignored:
        logger.warning(
            "Ignored %s in %s: generate records no such setting%s, so a rerun does not take %s from an image (give "
            "the flag%s to use %s).",
            ", ".join(f"`{k}`" for k in ignored),
            source,
            "s" if len(ignored) > 1 else "",
            "them" if len(ignored) > 1 else "it",
            "s" if len(ignored) > 1 else "",
            "them" if len(ignored) > 1 else "it",
        )
    return {k: v for k, v in parameters.items() if k in taken}


def _from_file(err: ValueError, from_file: dict[str, str], source: str) -> ValueError:
    """``err`` with a note that the value it names came from ``source`` (``from_file``: ``{setting: flag}`` of the
    values read there and not given as flags), so that the user knows where to look."""
    message = str(err)
    named = [flag for flag in from_file.values() if flag in message]
    if not named:
        return err
    return ValueError(f"{message.rstrip('.')} (read from {source}; give {named[0]} to override it).")


def check_before_loading(config: GenerateConfig):
    """Every check that needs no model; returns ``(device, dtype, output paths, people)``."""
    from ..io.inputs import check_request, reference_detector
    from ..io.loading import (
        ModelSource,
        base_model_name,
        check_model_source,
        check_offload,
        check_scene_model_fits,
        hub_model_index,
        is_xl_model,
        model_folder,
        own_sampling_defaults,
        read_face_detector,
        read_model_index,
        read_placeholder,
        resolve_device,
        resolve_dtype,
    )
    from ..io.outputs import check_output_file
    from ..prompting import DEFAULT_PLACEHOLDER
    from ..settings import check_image_size, check_num_images, check_seed

    try:
        check_image_size(config.height, config.width)
        check_num_images(config.num_images)
        check_seed(config.seed)
    except ValueError as err:
        raise ValueError(name_flags(str(err), flag_names(GenerateConfig))) from err
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    check_offload(config.offload, device)
    source = check_model_source(config.model)
    if config.scene_model is not None:
        check_scene_model_fits(config.scene_model, is_xl_model(config.model), repr(config.model))
    folder = model_folder(config.model)  # None for tiny and hub ids
    # a hub id's model_index.json alone (None when it cannot be had: loading then says why)
    hub_index = hub_model_index(config.model) if source is ModelSource.HUB else None
    index = read_model_index(folder) if folder is not None else hub_index
    base = base_model_name(index) if index is not None else None
    if base is not None and config.ip_adapter is None:
        where = f"{folder} is a plain {base} base folder" if folder else f"{config.model} is a plain {base} base model"
        raise ValueError(
            f"{where}, which has no subject model: give an IP-Adapter with --ip-adapter to draw the people, or a "
            "Face-diffuser pipeline folder as --model."
        )
    placeholder = read_placeholder(folder, index) if index is not None else None
    named = folder / "model_index.json" if folder else f"the model_index.json of {config.model}"
    own_sampling_defaults(index, named, ("num_inference_steps", "guidance_scale"))  # the pipeline would refuse them
    paths = output_paths(config.out, config.num_images)
    pictures = [mask_path(p) for p in paths] if config.save_masks else []
    if writes_regions(config, placeholder or DEFAULT_PLACEHOLDER, (index or {}).get("num_inference_steps")):
        pictures += [regions_path(p) for p in paths]
    for path in paths + pictures:
        check_output_file(path, overwrite=config.overwrite, overwrite_hint="pass --overwrite to replace it")
    if config.parameters_from is not None and not config.ref:
        raise ValueError(
            f"{config.parameters_from} records its reference photos by file name only: give them again with --ref."
        )
    if config.ip_adapter_embeds is not None:
        from ..io.adapters import read_ip_adapter_embeds
        from ..prompting import check_placeholders

        if config.ip_adapter is None or config.ref:
            raise ValueError(
                "--ip-adapter-embeds stands for --ref with an --ip-adapter: give it with --ip-adapter only."
            )
        rows = read_ip_adapter_embeds(config.ip_adapter_embeds).shape[1]
        count = check_placeholders(config.prompt, placeholder or DEFAULT_PLACEHOLDER)
        if count != rows:
            raise ValueError(
                f"The prompt has {count} placeholder(s) but {config.ip_adapter_embeds} holds {rows} row(s) of "
                "image_embeds: give one row per placeholder, in order."
            )
        return device, dtype, paths, []
    # The pipeline's own detector gives its verdict before the models load (it cuts the references after).
    own = read_face_detector(folder, index) if folder is not None and config.face_check else None
    face_check, detector = reference_detector(config.model, config.face_check, own)
    people = check_request(
        config.prompt,
        config.ref,
        placeholder=placeholder or DEFAULT_PLACEHOLDER,
        face_check=face_check,
        detector=detector,
        reference_term="--ref",
        names=[f"--ref {r}" for r in config.ref],
        skip_hint=", or pass --no-face-check to use it anyway",
    )
    return device, dtype, paths, people


def generate(config: GenerateConfig, recorded: dict[str, Any] | None = None) -> list[Path]:
    """Runs ``config`` and returns the paths written. ``recorded``: the parameters of a PNG being rerun, whose
    reference hashes are compared with the photos given now."""
    import torch

    from ..io.inputs import check_prompt, reference_name
    from ..io.loading import dtype_name, load_pipeline, scheduler_name
    from ..io.outputs import PARAMETERS_KEY, generation_parameters, parameters_text, photos_fingerprint, write_png
    from ..io.visualize import mask_strip, mask_strip_description, person_nouns, region_description, region_picture

    # 1. Check everything that can be checked before the (slow) model load.
    config = with_paper_sampling(config)
    device, dtype, paths, people = check_before_loading(config)
    if recorded and recorded.get("ref_sha256") and recorded["ref_sha256"] != [photos_fingerprint(p) for p in people]:
        logger.warning(
            "The reference photos differ from those %s was made with: the result will differ.", config.parameters_from
        )

    adapter = read_adapter(config)

    # 2. Load the models.
    # (an adapter is loaded into the UNet before offloading or compiling, which then cover it)
    later = adapter is not None and (config.offload is not Offload.NONE or config.compile)
    pipe = load_pipeline(
        config.model,
        device=torch.device("cpu") if later else device,
        dtype=dtype,
        scheduler=config.scheduler,
        scene_model=config.scene_model,
        offload=Offload.NONE if later else config.offload,
        compile_unets=config.compile and not later,
    )
    adapter_kwargs = {}
    if adapter is not None:
        state, encoder = adapter
        pipe.load_ip_adapter(state, image_encoder=encoder(pipe), image_encoder_folder=None)
        pipe.set_ip_adapter_scale(config.ip_adapter_scale)
        if config.ip_adapter_embeds is not None:
            from ..io.adapters import read_ip_adapter_embeds

            embeds = read_ip_adapter_embeds(config.ip_adapter_embeds).to(device=pipe.device, dtype=pipe.unet.dtype)
            adapter_kwargs["ip_adapter_image_embeds"] = [embeds]
        if later:
            if config.offload is Offload.MODEL:
                pipe.enable_model_cpu_offload(device=device)
            elif config.offload is Offload.SEQUENTIAL:
                pipe.enable_sequential_cpu_offload(device=device)
            else:
                pipe.to(device)
            if config.compile:
                pipe.compile_unets()
    else:
        check_prompt(config.prompt, len(people), placeholder=pipe.placeholder, reference_term="--ref")
    config = replace(config, sampling=pipe.own_sampling(config.sampling))  # recorded as the numbers they are

    # 3. Generate.
    result = pipe(
        config.prompt,
        reference_images=people or None,
        **adapter_kwargs,
        negative_prompt=config.negative_prompt or None,  # none: SDXL's zeros where its model says so
        height=config.height,
        width=config.width,
        num_images_per_prompt=config.num_images,
        generator=torch.Generator(device="cpu").manual_seed(config.seed),
        return_masks=config.save_masks,
        **config.sampling.pipeline_kwargs(),
    )

    # 4. Write each image with what it was made from, in the form the flags take back.
    for i, (image, path) in enumerate(zip(result.images, paths)):
        parameters = generation_parameters(
            prompt=config.prompt,
            reference_names=[reference_name(r, k) for k, r in enumerate(config.ref)],
            people=people,
            settings=config.sampling,
            seed=config.seed,
            height=image.height,
            width=image.width,
            negative_prompt=config.negative_prompt,
            model=config.model,
            scene_model=None if config.scene_model is None else str(config.scene_model),
            scheduler=config.scheduler or scheduler_name(pipe.scheduler),
            device=str(device),
            dtype=dtype_name(dtype),
            num_images=config.num_images,
            image_index=i,
            placeholder=pipe.placeholder,
        )
        text = {PARAMETERS_KEY: parameters_text(parameters), "prompt": config.prompt}
        write_png(image, path, text=text, overwrite=config.overwrite)
        logger.info("Wrote %s", path)
        if config.save_masks:
            strip = mask_strip(result.fusion_trace, i, image)
            text["Description"] = mask_strip_description(result.fusion_trace, path.name)
            write_png(strip, mask_path(path), text=text, overwrite=config.overwrite)
            logger.info("Wrote %s", mask_path(path))
        trace = result.fusion_trace
        if writes_regions(config, pipe.placeholder) and trace is not None and trace.regions is not None:
            names = person_nouns(config.prompt, pipe.placeholder)
            picture = region_picture(trace, i, image, names)
            text["Description"] = region_description(trace, i, path.name, names)
            write_png(picture, regions_path(path), text=text, overwrite=config.overwrite)
            logger.info("Wrote %s", regions_path(path))
    return paths


def read_adapter(config: GenerateConfig):
    """``--ip-adapter``, read and checked before any model loads: ``(state dict, encoder(pipe))`` or ``None``;
    ``encoder(pipe)`` loads the adapter's image encoder (``None`` with ``--ip-adapter-embeds``)."""
    if config.ip_adapter is None:
        given = {"--ip-adapter-weight": config.ip_adapter_weight, "--ip-adapter-embeds": config.ip_adapter_embeds}
        for flag, value in given.items():
            if value is not None:
                raise ValueError(f"{flag} goes with --ip-adapter: give the adapter too, or leave {flag} out.")
        return None
    from ..io.adapters import find_ip_adapter_file, read_ip_adapter_file

    path = find_ip_adapter_file(config.ip_adapter, config.ip_adapter_weight, config.ip_adapter_subfolder)
    hub = path is None
    if hub:  # a hub id: the file is downloaded into the hub cache, then checked as a local one
        from huggingface_hub import hf_hub_download

        if not config.ip_adapter_weight:
            raise ValueError("A hub id needs --ip-adapter-weight, the adapter's file in it (e.g. ip-adapter_sd15.bin).")
        path = Path(hf_hub_download(config.ip_adapter, config.ip_adapter_weight, subfolder=config.ip_adapter_subfolder))
    state = read_ip_adapter_file(path)
    encoder_folder = config.ip_adapter_image_encoder
    if encoder_folder is None and config.ip_adapter_embeds is None and not hub:
        encoder_folder = str(path.parent / "image_encoder")
        if not Path(encoder_folder).is_dir():
            raise ValueError(
                f"{path.parent} has no image_encoder folder beside the adapter: give the adapter's CLIP image encoder "
                "with --ip-adapter-image-encoder (or FaceID embeddings with --ip-adapter-embeds)."
            )

    def encoder(pipe):
        from transformers import CLIPVisionModelWithProjection

        if config.ip_adapter_embeds is not None and config.ip_adapter_image_encoder is None:
            return None
        if hub and encoder_folder is None:  # the hub layout: image_encoder/ beside the weight file
            folder = "/".join(filter(None, [config.ip_adapter_subfolder, "image_encoder"]))
            return CLIPVisionModelWithProjection.from_pretrained(config.ip_adapter, subfolder=folder)
        return CLIPVisionModelWithProjection.from_pretrained(encoder_folder)

    return state, encoder


def run(args: argparse.Namespace) -> int:
    from ..io.outputs import read_parameters

    recorded = base = None
    from_file: dict[str, str] = {}
    source = ""
    if getattr(args, "parameters_from", None) is not None:
        recorded = read_parameters(args.parameters_from)
        source = f"the parameters recorded in {args.parameters_from}"
        base = rerun_settings(recorded, source)
        flags = flag_names(GenerateConfig)
        from_file = {k: flags[k] for k in base if k in flags and k not in vars(args)}
    try:
        config = build_config(GenerateConfig, args, base=base, base_source=source)
        paths = generate(config, recorded)
    except ValueError as err:
        if not from_file:
            raise
        raise _from_file(err, from_file, str(args.parameters_from)) from err
    for path in paths:
        print(path)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images of people in a scene", description=__doc__)
    add_dataclass_arguments(parser, GenerateConfig)
    parser.set_defaults(func=run)
