"""One demo request, start to finish, without Gradio: check it, run the pipeline, write the PNGs and mask strips.

The checks, the pipeline and the PNG chunk are ``facediffuser generate``'s: a request is turned into the same
:class:`~facediffuser.settings.SamplingSettings` (so alpha > beta fails with the same words), its photos go through
the same reference checks, and each PNG carries the same ``parameters`` chunk.

The page's numeric controls are controls (:class:`Control`) made from the loaded model (:func:`page_controls`): the size
sliders from its sample size and VAE scale, the steps and guidance scales from its ``model_index.json``. A request's
values are checked here, never by Gradio: first by the library's checks (an integer setting given 2.5 is refused, not
truncated), then against the controls' ranges.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import queue
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fusion import SubjectGuidanceBase
from ..io.loading import dtype_name
from ..settings import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_STEPS,
    REGION_OPTIONS,
    SamplingSettings,
    StageBoundaries,
    check_image_size,
)

logger = logging.getLogger(__name__)

MAX_PEOPLE = 4
MAX_IMAGES = 4
# The size sliders run from LATENT_MIN latent pixels to LATENT_MAX (or twice the model's own side, if larger), in steps
# of the VAE's scale (the multiple `check_image_size` asks for): 64-1024 px for SD 1.x, 16-256 px for mini (32 px).
LATENT_MIN = 8
LATENT_MAX = 128
# Seeds drawn for an empty seed box: below 2**31 so that they are easy to read back and type in again.
SEED_LIMIT = 2**31

StepCallback = Callable[[int, int], None]
# The page's checkboxes of the person-region options (docs/method.md, Person regions), by SamplingSettings' names.
REGION_LABELS = {
    "region_attention": "Region attention",
    "region_attention_text": "Region attention on the scene model's class nouns",
    "region_saliency": "Region saliency",
}
assert set(REGION_LABELS) == set(REGION_OPTIONS)


def slider_range(name: str) -> tuple[float, float]:
    """The ``(min, max)`` a slider offers for a :class:`SamplingSettings` field (its ``ui_range`` metadata)."""
    return SAMPLING_FIELDS[name].metadata["ui_range"]


def default(name: str) -> Any:
    """The default of a :class:`SamplingSettings` field, as a plain value (enums as their values)."""
    value = SAMPLING_FIELDS[name].default
    return getattr(value, "value", value)


SAMPLING_FIELDS = {f.name: f for f in dataclasses.fields(SamplingSettings)}


@dataclass(frozen=True)
class Control:
    """One numeric control of the page, for the loaded model: what the page calls it, its range, step and default.

    ``default`` is ``None`` for a setting the model leaves open (the subject guidance scale of a model whose
    ``model_index.json`` names none: the same as the guidance scale). ``integer``: a whole number is required.
    """

    label: str
    minimum: float
    maximum: float
    step: float
    default: float | None
    integer: bool = False


def model_side(pipe) -> tuple[int, int]:
    """``(height, width)`` the model draws when no size is given: its UNet's sample size times the VAE's scale."""
    sample = pipe.unet.config.sample_size
    sample = tuple(sample) if isinstance(sample, (list, tuple)) else (sample, sample)
    return sample[0] * pipe.vae_scale_factor, sample[1] * pipe.vae_scale_factor


def page_controls(pipe) -> dict[str, Control]:
    """The page's numeric controls for ``pipe``, keyed by the request's names (SamplingSettings' fields, ``num_images``,
    ``height``, ``width``): the sampling settings' defaults and ``ui_range``, the size from the model itself."""
    scale = pipe.vae_scale_factor
    height, width = model_side(pipe)
    own_subject = getattr(pipe, "subject_guidance_scale", None)  # model_index.json's, when it names one
    own_steps = getattr(pipe, "default_num_inference_steps", DEFAULT_STEPS)  # the model's own, else the paper's
    own_scale = getattr(pipe, "default_guidance_scale", DEFAULT_GUIDANCE_SCALE)  # the same

    def size(label: str, side: int) -> Control:
        return Control(label, LATENT_MIN * scale, max(LATENT_MAX * scale, 2 * side), scale, side, integer=True)

    def setting(name: str, label: str, step: float, value: Any = None, integer: bool = False) -> Control:
        value = default(name) if value is None and name != "subject_guidance_scale" else value
        low, high = slider_range(name)  # widened to hold the model's own when it names more
        return Control(label, low, high if value is None else max(high, value), step, value, integer)

    return {
        "num_inference_steps": setting("num_inference_steps", "Steps", 1, own_steps, True),
        "guidance_scale": setting("guidance_scale", "Guidance scale", 0.5, own_scale),
        "subject_guidance_scale": setting("subject_guidance_scale", "Subject guidance scale", 0.5, own_subject),
        "alpha": setting("alpha", "alpha", 0.05),
        "beta": setting("beta", "beta", 0.05),
        "num_images": Control("Images", 1, MAX_IMAGES, 1, 1, integer=True),
        "height": size("Height", height),
        "width": size("Width", width),
    }


def page_value(value: Any, control: Control) -> Any:
    """A widget's value as the request takes it. Sliders send numbers as floats: a whole float becomes an ``int`` for
    an integer setting; anything else (2.5, ``"8"``, NaN) is passed on unchanged, for the library's checks to refuse
    in their own words, as they refuse it from the command line or a PNG's parameters. Nothing is rounded."""
    if control.integer and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


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
    """The PNGs of one run (each with its ``parameters`` chunk), one mask strip per image, the seed used, and one
    picture of the person regions per image when the run has them (two or more people, or a region option; see
    :func:`facediffuser.io.visualize.regions_shown`), else none."""

    images: list[Path]
    masks: list[Path]
    seed: int
    regions: list[Path] = field(default_factory=list)


class DemoRunner:
    """Holds the loaded pipeline and runs requests on it, at most ``concurrency`` at a time.

    The pipeline's scheduler keeps the state of a run (its timesteps), so two runs cannot share one pipeline object.
    With ``concurrency > 1`` the runner makes that many pipeline objects over the same weights, each with its own
    scheduler; memory then grows with the activations of the runs in flight, not with copies of the models.

    Args:
        pipe: the pipeline, as :func:`facediffuser.io.loading.load_pipeline` returns it.
        workdir: where the PNGs go; the caller owns it (the app removes it on exit).
        model: the model's name as given to ``--model``, recorded in each PNG.
        concurrency: runs allowed at the same time.
        face_check: refuse reference photos without a detectable face, as ``generate`` does: by the pipeline's own
            ``face_detector`` when it has one, else (mini: the world's detector) by dlib when it is installed.
        recorded: what else each PNG records of how the model was loaded, in ``generate``'s words (``scene_model``,
            ``device``, ``dtype``); by default the pipeline's own device and dtype.
    """

    def __init__(
        self,
        pipe,
        workdir: str | Path,
        *,
        model: str,
        concurrency: int = 1,
        face_check: bool = True,
        recorded: dict[str, Any] | None = None,
    ):
        from ..io.inputs import reference_detector

        if concurrency < 1:
            raise ValueError(f"The concurrency limit must be at least 1, got {concurrency}.")
        self.pipe = pipe
        self.workdir = Path(workdir)
        self.model = model
        self.concurrency = concurrency
        own = getattr(pipe, "face_detector", None)
        self.face_check, self._face_detector = reference_detector(model, face_check, own)
        self.recorded = {"scene_model": None, "device": str(pipe.device), "dtype": dtype_name(pipe.dtype)}
        self.recorded.update(recorded or {})
        self.controls = page_controls(pipe)
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
        return model_side(self.pipe)

    @property
    def scheduler_name(self) -> str:
        return type(self._scheduler).__name__

    # ------------------------------------------------------------------ checks
    def check(self, request: DemoRequest) -> list[list]:
        """All checks that need no model run; returns the loaded reference photos, one list per person.

        The request checks are :func:`facediffuser.io.inputs.check_request`, ``generate``'s own; a person is named by
        the file names of their photos. Raises ``ValueError`` / ``FileNotFoundError``.
        """
        from ..io.inputs import check_request
        from ..io.loading import SCHEDULERS

        count = request.num_images
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_IMAGES:
            raise ValueError(f"The number of images must be a whole number from 1 to {MAX_IMAGES}, got {count!r}.")
        if request.scheduler is not None and request.scheduler not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {request.scheduler!r}; choose from {', '.join(SCHEDULERS)}.")
        check_image_size(request.height, request.width, self.pipe.vae_scale_factor)
        self.check_ranges(request)
        refs = [[str(p) for p in person] for person in request.people]
        return check_request(
            request.prompt,
            refs,
            placeholder=self.placeholder,
            face_check=self.face_check,
            detector=self._face_detector,
            reference_term="person slot",
            names=[f"person {k + 1} ({photo_names(person)})" for k, person in enumerate(refs)],
        )

    def check_ranges(self, request: DemoRequest) -> None:
        """Raises ``ValueError`` for a value outside its control's range (:attr:`controls`), naming the control as
        the page does. Values the library checks refuse (types, alpha > beta) are refused before, in their words."""
        values = {**request.settings.to_dict(), "num_images": request.num_images}
        values |= {"height": request.height, "width": request.width}
        for name, control in self.controls.items():
            value = values[name]
            if value is not None and not control.minimum <= value <= control.maximum:
                own = f" (this model draws {control.default} px)" if name in ("height", "width") else ""
                raise ValueError(
                    f"{control.label} must be between {number_text(control.minimum)} and "
                    f"{number_text(control.maximum)} on this page{own}, got {value!r}."
                )

    def page_request(
        self,
        *,
        prompt: str | None,
        people: Sequence[Sequence[str | Path]],
        negative_prompt: str | None = None,
        seed: str | int | None = None,
        scheduler: str | None = None,
        subject_guidance_base: str = SubjectGuidanceBase.TEXT.value,
        region_attention: bool = False,
        region_attention_text: bool = False,
        region_saliency: bool = False,
        stage_boundaries: str = StageBoundaries.STEPS.value,
        **numbers: Any,
    ) -> DemoRequest:
        """A :class:`DemoRequest` from the page's values as they arrive (``numbers``: the :attr:`controls`' values,
        by their names; one left out takes its default; the region options: the page's checkboxes, off by default).
        The settings go through :class:`SamplingSettings`, the command line's own checks (a region option that is
        not ``True`` or ``False`` is refused, not read as truthy); nothing is rounded (see :func:`page_value`).
        Raises ``ValueError``."""
        unknown = set(numbers) - set(self.controls)
        if unknown:
            raise TypeError(f"Unknown page values: {', '.join(sorted(unknown))}.")
        if isinstance(numbers.get("subject_guidance_scale"), str):  # the page's text box
            numbers["subject_guidance_scale"] = parse_optional_number(
                numbers["subject_guidance_scale"], self.controls["subject_guidance_scale"].label, "the same as w"
            )
        values = {
            name: page_value(numbers[name], control) if name in numbers else control.default
            for name, control in self.controls.items()
        }
        settings = SamplingSettings(
            num_inference_steps=values["num_inference_steps"],
            alpha=values["alpha"],
            beta=values["beta"],
            guidance_scale=values["guidance_scale"],
            subject_guidance_scale=values["subject_guidance_scale"],
            subject_guidance_base=subject_guidance_base,
            region_attention=region_attention,
            region_attention_text=region_attention_text,
            region_saliency=region_saliency,
            stage_boundaries=stage_boundaries,
        )
        return DemoRequest(
            prompt=prompt or "",
            people=people,
            settings=settings,
            negative_prompt=negative_prompt or "",
            seed=parse_seed(seed),
            num_images=values["num_images"],
            scheduler=scheduler,
            height=values["height"],
            width=values["width"],
        )

    # ------------------------------------------------------------------ running
    def run(self, request: DemoRequest, on_step: StepCallback | None = None) -> DemoResult:
        """Checks ``request``, waits for a free pipeline, draws the images, and writes them (PNG with parameters),
        their mask strips and, when the run has them, their person regions under :attr:`workdir`."""
        import torch

        from ..io.loading import scheduler_name, swap_scheduler
        from ..io.outputs import PARAMETERS_KEY, parameters_text, write_png
        from ..io.visualize import (
            mask_strip,
            mask_strip_description,
            person_nouns,
            region_description,
            region_picture,
            regions_shown,
        )

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
            # what the request leaves to the model: its own, drawn and recorded as the numbers they are
            request = dataclasses.replace(request, settings=pipe.own_sampling(request.settings))
            total = request.settings.num_inference_steps

            def step_end(_pipe, step: int, _timestep, tensors: dict) -> dict:
                if on_step is not None:
                    on_step(step + 1, total)
                return {}

            result = pipe(
                request.prompt,
                reference_images=references,
                negative_prompt=request.negative_prompt or None,  # none: SDXL's zeros where its model says so
                height=request.height,
                width=request.width,
                num_images_per_prompt=request.num_images,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                return_masks=True,
                callback_on_step_end=step_end,
                **request.settings.pipeline_kwargs(),
            )
            scheduler = request.scheduler or scheduler_name(pipe.scheduler)
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self._pipes.put(pipe)

        images, masks, regions = [], [], []
        trace = result.fusion_trace
        shown = trace.regions is not None and regions_shown(len(references), request.settings)
        names = person_nouns(request.prompt, self.placeholder)
        recorded = self.parameters(request, references, seed, scheduler, result.images[0])
        for i, image in enumerate(result.images):
            path = folder / f"face-diffuser-{seed}-{i}.png"
            parameters = {**recorded, "image_index": i}
            text = {PARAMETERS_KEY: parameters_text(parameters), "prompt": request.prompt}
            images.append(write_png(image, path, text=text))
            strip = wrap_strip(mask_strip(result.fusion_trace, i, image), len(result.fusion_trace.stages) + 1)
            text["Description"] = (
                mask_strip_description(result.fusion_trace, path.name) + " (Read left to right, row by row.)"
            )
            masks.append(write_png(strip, folder / f"face-diffuser-{seed}-{i}-masks.png", text=text))
            if shown:
                text["Description"] = region_description(trace, i, path.name, names)
                picture = region_picture(trace, i, image, names)
                regions.append(write_png(picture, folder / f"face-diffuser-{seed}-{i}-regions.png", text=text))
        logger.info("Run %s: %d image(s), seed %d.", folder.name, len(images), seed)
        return DemoResult(images=images, masks=masks, seed=seed, regions=regions)

    def parameters(self, request: DemoRequest, people: list[list], seed: int, scheduler: str | None, image) -> dict:
        """The ``parameters`` chunk of one image, as ``generate`` writes it (the same keys, the same words)."""
        from ..io.outputs import generation_parameters

        return generation_parameters(
            prompt=request.prompt,
            reference_names=[photo_names(person) for person in request.people],
            people=people,
            settings=request.settings,
            seed=seed,
            height=image.height,
            width=image.width,
            negative_prompt=request.negative_prompt,
            model=self.model,
            scene_model=self.recorded["scene_model"],
            scheduler=scheduler,
            device=self.recorded["device"],
            dtype=self.recorded["dtype"],
            num_images=request.num_images,
            placeholder=self.placeholder,
        )


def photo_names(photos: Sequence[str | Path]) -> str:
    """One person's photos by file name (never a full path): ``"a.jpg"``, or ``"a.jpg + b.jpg"`` for several."""
    return " + ".join(Path(p).name for p in photos)


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


def parse_optional_number(text: str, label: str, empty: str) -> float | None:
    """A text box's number: empty means ``None`` (what ``empty`` says); anything else must read as a number (its
    range and finiteness are checked where the number is used)."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{label} must be a number, or empty for {empty}; got {text!r}.") from None


def wrap_strip(strip, tiles: int, per_row: int | None = None):
    """``mask_strip``'s one row of ``tiles`` equal columns, cut into rows of ``per_row`` columns (default:
    ``ceil(sqrt(tiles))``) and centred on a white square, so that a 50-step strip reads on a page beside its image
    (the page's galleries show square thumbnails)."""
    from PIL import Image

    per_row = per_row or math.ceil(math.sqrt(tiles))
    if tiles <= per_row:
        return strip
    column = strip.width // tiles
    rows = -(-tiles // per_row)
    width, height = column * per_row, strip.height * rows
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    out = Image.new("RGB", (side, side), (255, 255, 255))
    for r in range(rows):
        row = strip.crop((r * per_row * column, 0, min(tiles, (r + 1) * per_row) * column, strip.height))
        out.paste(row, (left, top + r * strip.height))
    return out
