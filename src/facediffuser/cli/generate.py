"""``facediffuser generate``: one prompt, one reference per placeholder, images out."""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..configuration import add_dataclass_arguments, build_config, config_to_dict
from ..fusion import Smoothing, SubjectGuidanceBase
from ..loading import Offload, load_pipeline

logger = logging.getLogger(__name__)


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
    model: str = field(default="tiny", metadata={"help": "pipeline folder or hub id; 'tiny' is a random test model"})
    scene_model: Path | None = field(
        default=None, metadata={"help": "any SD1.x UNet (diffusers folder or .safetensors) to draw the scene"}
    )
    out: Path = field(default=Path("outputs/face-diffuser.png"), metadata={"short": "-o", "help": "output PNG"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt (the empty condition)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    steps: int = field(default=50, metadata={"help": "denoising steps T"})
    alpha: float = field(default=0.3, metadata={"help": "stage I (TDM only) ends at alpha*T"})
    beta: float = field(default=0.6, metadata={"help": "stage III (SDM only) starts at beta*T"})
    guidance_scale: float = field(default=5.0, metadata={"help": "guidance scale w of both models"})
    subject_guidance_base: SubjectGuidanceBase = field(
        default=SubjectGuidanceBase.TEXT, metadata={"help": "'text': official release; 'null': paper eq. 2"}
    )
    smoothing: Smoothing = field(default=Smoothing.BOX, metadata={"help": "saliency smoothing"})
    height: int | None = field(default=None, metadata={"help": "height in pixels, a multiple of 8"})
    width: int | None = field(default=None, metadata={"help": "width in pixels, a multiple of 8"})
    num_images: int = field(default=1, metadata={"help": "images to generate"})
    scheduler: str | None = field(default=None, metadata={"help": "ddim, pndm, dpm++, unipc, euler, euler-a, ..."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, float16, bfloat16"})
    offload: Offload = field(
        default=Offload.NONE, metadata={"help": "model: one model on the GPU at a time; sequential: layer by layer"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile both UNets (slow first call)"})
    save_masks: bool = field(default=False, metadata={"help": "also write a picture of the fusion masks per step"})
    face_check: bool = field(
        default=True,
        metadata={
            "help": "refuse reference photos in which dlib finds no face (when dlib, from the eval extra, is installed)"
        },
    )


def output_paths(out: Path, count: int) -> list[Path]:
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}.")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def save_png_atomically(image, path: Path, pnginfo=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG", pnginfo=pnginfo)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_faces(refs: list[str], people: list[list]) -> None:
    """Raises ``ValueError`` for a reference photo without a detectable face; skipped when dlib is absent."""
    try:
        from ..evaluation.dlib_backend import DlibBackend

        detector = DlibBackend(upsample=1, center=False)
    except (ImportError, ValueError) as err:
        logger.info("Reference photos are not checked for faces (%s).", err)
        return
    for ref, photos in zip(refs, people):
        for k, photo in enumerate(photos):
            if detector.count_faces(photo) == 0:
                which = f"photo {k + 1} of " if len(photos) > 1 else ""
                raise ValueError(
                    f"No face was found in {which}--ref {ref}. Give a photo in which the face is clearly visible "
                    "(a frontal face crop works best), or pass --no-face-check to use it anyway."
                )


def generate(config: GenerateConfig) -> list[Path]:
    import torch
    from PIL.PngImagePlugin import PngInfo

    from .. import __version__
    from ..fusion import check_stage_fractions
    from ..images import load_person
    from ..prompting import DEFAULT_PLACEHOLDER, count_placeholders
    from ..visualize import mask_strip

    # Check everything that can be checked before the (slow) model load.
    check_stage_fractions(config.alpha, config.beta)
    if config.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {config.steps}.")
    if config.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {config.num_images}.")
    for name in ("height", "width"):
        value = getattr(config, name)
        if value is not None and (value <= 0 or value % 8):
            raise ValueError(f"--{name} must be a positive multiple of 8, got {value}.")
    paths = output_paths(config.out, config.num_images)
    pipe = load_pipeline(
        config.model,
        device=config.device,
        dtype=config.dtype,
        scheduler=config.scheduler,
        scene_model=config.scene_model,
        offload=config.offload,
        compile_unets=config.compile,
    )
    placeholders = count_placeholders(config.prompt, pipe.placeholder)
    if placeholders != len(config.ref):
        raise ValueError(
            f"The prompt has {placeholders} placeholder(s) {pipe.placeholder!r} but {len(config.ref)} --ref were "
            f"given: pass one --ref per person, in order (e.g. 'a man {DEFAULT_PLACEHOLDER} ...' --ref photo.jpg)."
        )
    references = [load_person(r) for r in config.ref]
    if config.face_check:
        check_faces(config.ref, references)

    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    result = pipe(
        config.prompt,
        reference_images=references,
        negative_prompt=config.negative_prompt,
        height=config.height,
        width=config.width,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        alpha=config.alpha,
        beta=config.beta,
        subject_guidance_base=config.subject_guidance_base,
        smoothing=config.smoothing,
        num_images_per_prompt=config.num_images,
        generator=generator,
        return_masks=config.save_masks,
    )
    parameters = {
        **config_to_dict(config),
        "scheduler": type(pipe.scheduler).__name__,
        "placeholder": pipe.placeholder,
        "facediffuser_version": __version__,
    }
    for i, (image, path) in enumerate(zip(result.images, paths)):
        info = PngInfo()
        info.add_text("parameters", json.dumps({**parameters, "image_index": i}))
        info.add_text("prompt", config.prompt)
        save_png_atomically(image, path, info)
        logger.info("Wrote %s", path)
        if config.save_masks:
            mask_path = path.with_name(f"{path.stem}-masks.png")
            save_png_atomically(mask_strip(result.fusion_trace, i, image), mask_path)
            logger.info("Wrote %s", mask_path)
    return paths


def run(args: argparse.Namespace) -> int:
    paths = generate(build_config(GenerateConfig, args))
    for path in paths:
        print(path)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images of people in a scene", description=__doc__)
    add_dataclass_arguments(parser, GenerateConfig)
    parser.set_defaults(func=run)
