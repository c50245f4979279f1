"""One demo request, start to finish, without Gradio: check it, run the pipeline, write the PNGs and mask strips.

The checks, the pipeline and the PNG chunk are ``facediffuser generate``'s: a request is turned into the same
:class:`~facediffuser.settings.SamplingSettings` (so alpha > beta fails with the same words), its photos go through
the same reference checks, and each PNG carries the same ``parameters`` chunk.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import queue
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import SamplingSettings, check_image_size

logger = logging.getLogger(__name__)

MAX_PEOPLE = 4
MAX_IMAGES = 4
# Seeds drawn for an empty seed box: below 2**31 so that they are easy to read back and type in again.
SEED_LIMIT = 2**31

StepCallback = Callable[[int, int], None]


def slider_range(name: str) -> tuple[float, float]:
    """The ``(min, max)`` a slider offers for a :class:`SamplingSettings` field (its ``ui_range`` metadata)."""
    return SAMPLING_FIELDS[name].metadata["ui_range"]


def default(name: str) -> Any:
    """The default of a :class:`SamplingSettings` field, as a plain value (enums as their values)."""
    value = SAMPLING_FIELDS[name].default
    return getattr(value, "value", value)


SAMPLING_FIELDS = {f.name: f for f in dataclasses.fields(SamplingSettings)}


@dataclass(frozen=True)
class DemoRequest:
    """What the page sends: a prompt, the photos of each person (placeholder order) and the sampling settings."""

    prompt: str
    people: Sequence[Sequence[str | Path]]
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    negative_prompt: str = ""
    seed: int | None = None
    num_images: int = 1
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class DemoResult:
    """The PNGs of one run (each with its ``parameters`` chunk), one mask strip per image, and the seed used."""

    images: list[Path]
    masks: list[Path]
    seed: int


class DemoRunner:
    """Holds the loaded pipeline and runs requests on it, at most ``concurrency`` at a time.

    The pipeline's scheduler keeps the state of a run (its timesteps), so two runs cannot share one pipeline object.
    With ``concurrency > 1`` the runner makes that many pipeline objects over the same weights, each with its own
    scheduler; memory then grows with the activations of the runs in flight, not with copies of the models.

    Args:
        pipe: the pipeline, as :func:`facediffuser.loading.load_pipeline` returns it.
        workdir: where the PNGs go; the caller owns it (the app removes it on exit).
        model: the model's name as given to ``--model``, recorded in each PNG.
        concurrency: runs allowed at the same time.
        face_check: refuse reference photos without a detectable face (when dlib is installed), as ``generate`` does.
    """

    def __init__(
        self,
        pipe,
        workdir: str | Path,
        *,
        model: str,
        concurrency: int = 1,
        face_check: bool = True,
        load_options: dict[str, Any] | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"The concurrency limit must be at least 1, got {concurrency}.")
        self.pipe = pipe
        self.workdir = Path(workdir)
        self.model = model
        self.concurrency = concurrency
        self.face_check = face_check
        self.load_options = dict(load_options or {})
        self._scheduler = copy.deepcopy(pipe.scheduler)
        self._pipes: queue.Queue = queue.Queue()
        self._pipes.put(pipe)
        for _ in range(concurrency - 1):
            self._pipes.put(type(pipe)(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)}))
        self._count_lock = threading.Lock()
        self._runs = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    # ------------------------------------------------------------------ the page's facts
    @property
    def placeholder(self) -> str:
        return self.pipe.placeholder

    @property
    def default_size(self) -> tuple[int, int]:
        """``(height, width)`` the model draws when no size is given."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    @property
    def scheduler_name(self) -> str:
        return type(self._scheduler).__name__

    # ------------------------------------------------------------------ checks
    def check(self, request: DemoRequest) -> list[list]:
        """All checks that need no model run; returns the loaded reference photos, one list per person.

        Raises ``ValueError`` / ``FileNotFoundError`` with ``generate``'s words.
        """
        from ..cli.generate import check_faces
        from ..images import load_person
        from ..loading import SCHEDULERS
        from ..prompting import DEFAULT_PLACEHOLDER, count_placeholders

        if not request.prompt.strip():
            raise ValueError(
                f"Write a prompt, with a placeholder after each person's class noun, e.g. 'a woman "
                f"{DEFAULT_PLACEHOLDER} on the moon'."
            )
        if not 1 <= request.num_images <= MAX_IMAGES:
            raise ValueError(f"The number of images must be between 1 and {MAX_IMAGES}, got {request.num_images}.")
        if request.scheduler is not None and request.scheduler not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {request.scheduler!r}; choose from {', '.join(SCHEDULERS)}.")
        check_image_size(request.height, request.width, self.pipe.vae_scale_factor)
        placeholders = count_placeholders(request.prompt, self.placeholder)
        if placeholders != len(request.people):
            raise ValueError(
                f"The prompt has {placeholders} placeholder(s) {self.placeholder!r} but {len(request.people)} "
                f"person/people were given photos: give one person per placeholder, in order (e.g. 'a man "
                f"{DEFAULT_PLACEHOLDER} ...' with one person's photos)."
            )
        refs = [[str(p) for p in person] for person in request.people]
        references = [load_person(person) for person in refs]
        if self.face_check:
            check_faces([", ".join(Path(p).name for p in person) for person in refs], references)
        return references

    # ------------------------------------------------------------------ running
    def run(self, request: DemoRequest, on_step: StepCallback | None = None) -> DemoResult:
        """Checks ``request``, waits for a free pipeline, draws the images, and writes them (PNG with parameters)
        and their mask strips under :attr:`workdir`."""
        import torch

        from ..loading import swap_scheduler
        from ..visualize import mask_strip

        references = self.check(request)
        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(SEED_LIMIT)
        pipe = self._pipes.get()
        with self._count_lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._runs += 1
            folder = self.workdir / f"run-{self._runs:05d}"
        try:
            pipe.scheduler = copy.deepcopy(self._scheduler)
            if request.scheduler is not None:
                swap_scheduler(pipe, request.scheduler)
            total = request.settings.num_inference_steps

            def step_end(_pipe, step: int, _timestep, tensors: dict) -> dict:
                if on_step is not None:
                    on_step(step + 1, total)
                return {}

            result = pipe(
                request.prompt,
                reference_images=references,
                negative_prompt=request.negative_prompt,
                height=request.height,
                width=request.width,
                num_images_per_prompt=request.num_images,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                return_masks=True,
                callback_on_step_end=step_end,
                **request.settings.pipeline_kwargs(),
            )
            scheduler = type(pipe.scheduler).__name__
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self._pipes.put(pipe)

        folder.mkdir(parents=True)
        images, masks = [], []
        parameters = self.parameters(request, seed, scheduler)
        for i, image in enumerate(result.images):
            path = folder / f"face-diffuser-{seed}-{i}.png"
            write_png(image, path, {**parameters, "image_index": i}, request.prompt)
            images.append(path)
            strip = folder / f"face-diffuser-{seed}-{i}-masks.png"
            strip_image = mask_strip(result.fusion_trace, i, image)
            wrap_strip(strip_image, len(result.fusion_trace.stages) + 1).save(strip)
            masks.append(strip)
        logger.info("Run %s: %d image(s), seed %d.", folder.name, len(images), seed)
        return DemoResult(images=images, masks=masks, seed=seed)

    def parameters(self, request: DemoRequest, seed: int, scheduler: str) -> dict[str, Any]:
        """The ``parameters`` chunk ``generate`` writes, for this request."""
        from .. import __version__
        from ..cli.generate import GenerateConfig
        from ..configuration import config_to_dict

        settings = request.settings
        config = GenerateConfig(
            prompt=request.prompt,
            ref=[", ".join(Path(p).name for p in person) for person in request.people],
            model=self.model,
            negative_prompt=request.negative_prompt,
            seed=seed,
            steps=settings.num_inference_steps,
            alpha=settings.alpha,
            beta=settings.beta,
            guidance_scale=settings.guidance_scale,
            subject_guidance_base=settings.subject_guidance_base,
            smoothing=settings.smoothing,
            height=request.height,
            width=request.width,
            num_images=request.num_images,
            scheduler=request.scheduler,
            face_check=self.face_check,
            **self.load_options,
        )
        return {
            **config_to_dict(config),
            "scheduler": scheduler,
            "placeholder": self.placeholder,
            "facediffuser_version": __version__,
        }


def parse_seed(text: str | int | None) -> int | None:
    """The seed box's value: empty means a random seed (``None``); anything else must be a whole number >= 0."""
    if text is None or isinstance(text, int):
        value = text
    else:
        text = str(text).strip()
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"The seed must be a whole number, or empty for a random one; got {text!r}.") from None
    if value is not None and not 0 <= value < 2**64:
        raise ValueError(f"The seed must be between 0 and 2**64 - 1, got {value}.")
    return value


def wrap_strip(strip, tiles: int, per_row: int = 10):
    """``mask_strip``'s one row of ``tiles`` equal columns, cut into rows of ``per_row`` columns (a 50-step strip is
    too wide to read on a page)."""
    from PIL import Image

    if tiles <= per_row:
        return strip
    column = strip.width // tiles
    rows = -(-tiles // per_row)
    out = Image.new("RGB", (column * per_row, strip.height * rows), (255, 255, 255))
    for r in range(rows):
        row = strip.crop((r * per_row * column, 0, min(tiles, (r + 1) * per_row) * column, strip.height))
        out.paste(row, (0, r * strip.height))
    return out


def write_png(image, path: Path, parameters: dict[str, Any], prompt: str) -> None:
    import json

    from PIL.PngImagePlugin import PngInfo

    from ..cli.generate import save_png_atomically

    info = PngInfo()
    info.add_text("parameters", json.dumps(parameters))
    info.add_text("prompt", prompt)
    save_png_atomically(image, path, info)
