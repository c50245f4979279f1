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


def save_image(image: PIL.Image.Image, path: Path) -> None:
    """Writes ``image`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    atomic_write(path, lambda f: image.save(f, format="PNG"), overwrite=True)


def generate_unit(pipeline, unit: WorkUnit, settings: GenerationSettings, out: Path) -> None:
    """One unit's images (and masks), seeded with ``settings.seed`` whatever the process or device."""
    sampling = unit.variant.method.sampling(settings.sampling)
    references = [[photo.load() for photo in person.photos] for person in unit.case.people]
    result = pipeline(
        prompt=unit.case.prompt,
        reference_images=references,
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
) -> None:
    """Generates ``units``, model by model.

    Args:
        load_model: source -> pipeline, called once per model that has units here (unless ``pipelines`` has it).
        reload_benchmark: placeholder -> the benchmark written with that placeholder, for a model whose tokenizer
            uses another one than the default.
        pipelines: model name -> a ready pipeline (tests).
    """
    by_model: dict[str, list[WorkUnit]] = {}
    for unit in units:
        by_model.setdefault(unit.variant.model.name, []).append(unit)
    for name, todo in by_model.items():
        model = todo[0].variant.model
        pipeline = pipelines[name] if pipelines and name in pipelines else load_model(model.source)
        pipeline.set_progress_bar_config(disable=True)
        if pipeline.placeholder != DEFAULT_PLACEHOLDER:
            by_id = {c.case_id: c for c in reload_benchmark(pipeline.placeholder).cases}
            todo = [WorkUnit(u.variant, by_id[u.case.case_id]) for u in todo]
        for unit in tqdm(todo, desc=f"generate {name} [{rank}]", position=rank, leave=True):
            generate_unit(pipeline, unit, settings, out)
        del pipeline
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
