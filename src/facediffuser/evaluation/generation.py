"""Generation of an evaluation's images: each unit is one pipeline call, seeded the same for every method and model.

Images are written under a temporary name and renamed, so a killed run leaves no half-written image behind, and the
masks are written before the images, so complete images imply complete masks. A model is loaded only when this
process has units of it to generate, and freed before the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from tqdm.auto import tqdm

from ..io.outputs import atomic_write
from ..prompting import DEFAULT_PLACEHOLDER
from ..settings import SamplingSettings
from .cases import Benchmark
from .figures import mask_arrays, save_mask_arrays
from .work import WorkUnit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """What, besides the method's stage fractions, decides a unit's images."""

    sampling: SamplingSettings  # alpha and beta (and a method's own guidance base) are replaced by each method's
    seed: int
    images_per_prompt: int
    height: int | None = None
    width: int | None = None
    save_masks: bool = True
    person_masks: str | None = None  # the benchmark's ``person_masks`` (cases.Benchmark), for the :gt methods


def save_image(image: PIL.Image.Image, path: Path) -> None:
    """Writes ``image`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    atomic_write(path, lambda f: image.save(f, format="PNG"), overwrite=True)


def load_adapter(pipeline, spec: str) -> Any:
    """``pipeline`` with the IP-Adapter ``spec`` (a weight file, its folder, ``mini``) on its scene UNet, with the
    image encoder beside the file, as ``generate --ip-adapter`` loads it."""
    from transformers import CLIPVisionModelWithProjection

    from ..io.adapters import find_ip_adapter_file, read_ip_adapter_file

    path = find_ip_adapter_file(spec)
    encoder = CLIPVisionModelWithProjection.from_pretrained(path.parent / "image_encoder", dtype=torch.float32)
    pipeline.load_ip_adapter(read_ip_adapter_file(path), image_encoder=encoder, image_encoder_folder=None)
    return pipeline


def shared_adapter_inputs(pipeline, references: list[list[PIL.Image.Image]]) -> dict[str, Any]:
    """The adapter's inputs for one shared embedding: every person's photos (cut to faces as the pipeline cuts them)
    averaged into one image, drawn everywhere (the first person's mask all ones, the others' all zeros, so that the
    prompt's placeholders still name each person)."""
    from ..subject_models import encode_adapter_images

    device = pipeline._execution_device
    cut = pipeline.cut_to_faces([[[photo for person in references for photo in person]]])
    (image,), (empty,) = encode_adapter_images(pipeline.subject_unet, pipeline.image_encoder, cut, 1, device)
    people = len(references)
    image, empty = image.expand(-1, people, *image.shape[2:]), empty.expand(-1, people, *empty.shape[2:])
    size = pipeline.unet.config.sample_size
    masks = torch.zeros(1, people, size, size, device=device)
    masks[:, 0] = 1.0
    return {"ip_adapter_image_embeds": [torch.cat([empty, image])], "ip_adapter_masks": [masks]}


def world_adapter_masks(pipeline, case, person_masks: str | None) -> dict[str, Any]:
    """Each person's ``ip_adapter_masks`` from where the benchmark puts them in ``case`` (``person_masks``,
    ``"module:function"`` of :class:`~facediffuser.evaluation.cases.Benchmark`; the mini benchmark: the person
    segments of the world's render of the case) at the latent size, a latent cell in a person's mask when any of its
    pixels is theirs."""
    import importlib

    import torch.nn.functional as F

    if person_masks is None or not case.attributes or "people" not in case.attributes:
        raise ValueError(
            f"Case {case.case_id}: the :gt masks come from the world's render of a case, which only the mini "
            "benchmark's cases describe; use :gt with --benchmark mini."
        )
    latent = pipeline.unet.config.sample_size
    pixels = latent * pipeline.vae_scale_factor
    module_name, function_name = person_masks.split(":")
    case_person_masks = getattr(importlib.import_module(module_name), function_name)
    masks = torch.from_numpy(case_person_masks(case, pixels)).float()[None]  # (1, K, H, W)
    masks = (F.adaptive_max_pool2d(masks, latent) > 0).float()
    return {"ip_adapter_masks": [masks.to(pipeline._execution_device)]}


def generate_unit(pipeline, unit: WorkUnit, settings: GenerationSettings, out: Path) -> None:
    """One unit's images (and masks), seeded with ``settings.seed`` whatever the process or device."""
    sampling = unit.variant.method.sampling(settings.sampling)
    references = [[photo.load() for photo in person.photos] for person in unit.case.people]
    extra: dict[str, Any] = {}
    if unit.variant.method.shared:
        extra = shared_adapter_inputs(pipeline, references)
        references = None
    elif unit.variant.method.world_masks:
        extra = world_adapter_masks(pipeline, unit.case, settings.person_masks)
    result = pipeline(
        prompt=unit.case.prompt,
        reference_images=references,
        **extra,
        num_images_per_prompt=settings.images_per_prompt,
        height=settings.height,
        width=settings.width,
        generator=torch.Generator(device="cpu").manual_seed(settings.seed),
        return_masks=settings.save_masks,
        **sampling.pipeline_kwargs(),
    )
    if settings.save_masks:
        save_mask_arrays(unit.mask_path(out), mask_arrays(result.fusion_trace))
    for image, path in zip(result.images, unit.image_paths(out, settings.images_per_prompt)):
        save_image(image, path)


def generate_units(
    units: list[WorkUnit],
    settings: GenerationSettings,
    out: Path,
    load_model: Callable[[str], Any],
    reload_benchmark: Callable[[str], Benchmark],
    *,
    pipelines: Mapping[str, Any] | None = None,
    rank: int = 0,
    ip_adapter: str | None = None,
) -> None:
    """Generates ``units``, model by model.

    Args:
        load_model: source -> pipeline, called once per model that has units here (unless ``pipelines`` has it).
        reload_benchmark: placeholder -> the benchmark written with that placeholder, for a model whose tokenizer
            uses another one than the default.
        pipelines: model name -> a ready pipeline (tests).
        ip_adapter: the IP-Adapter of the adapter methods (:func:`load_adapter`), on a pipeline of their own.
    """
    by_model: dict[tuple[str, bool], list[WorkUnit]] = {}
    for unit in units:
        by_model.setdefault((unit.variant.model.name, unit.variant.method.adapter), []).append(unit)
    for (name, adapter), todo in by_model.items():
        model = todo[0].variant.model
        pipeline = pipelines[name] if pipelines and name in pipelines and not adapter else load_model(model.source)
        if adapter:
            if ip_adapter is None:
                raise ValueError("The IP-Adapter methods need --ip-adapter.")
            pipeline = load_adapter(pipeline, ip_adapter)
        pipeline.set_progress_bar_config(disable=True)
        if pipeline.placeholder != DEFAULT_PLACEHOLDER:
            by_id = {c.case_id: c for c in reload_benchmark(pipeline.placeholder).cases}
            todo = [WorkUnit(u.variant, by_id[u.case.case_id]) for u in todo]
        for unit in tqdm(todo, desc=f"generate {name} [{rank}]", position=rank, leave=True):
            generate_unit(pipeline, unit, settings, out)
        del pipeline
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
