"""The evaluation harness: generate every benchmark case with every method, score the images, write the reports.

One call of :func:`evaluate` runs on one process. Under ``accelerate launch`` every process runs it. The
``(method, case)`` work units still missing on disk are dealt round-robin by process index, so the shares are
disjoint, together cover every missing unit, and stay balanced when resuming. After a barrier every process scores
every N-th unit; after another, the main process merges the scores and writes the reports.

Generation is resumable: a unit whose images are all on disk is not generated again (files are written under a
temporary name and renamed, so a killed run leaves no half-written image behind). ``run.json`` records the generation
settings; resuming into the same ``--out`` with different settings is refused rather than mixing images.

Layout of ``out``::

    run.json                         generation settings of the images below
    images/<method>/<case_id>/<k>.png
    masks/<method>/<case_id>.npz     per-stage mean SNF masks and saliency maps of the unit's images
    scores.csv                       one row per image (method, case, prompt, IP, faces found, PC, backends, rank)
    summary.json                     per-method and per-group means, the backends and settings
    table.md                         Table 1 of the paper, for this benchmark
    sweep.png                        Fig. 8: IP and PC against alpha and beta
    fusion_masks/<method>/*.png      Fig. 9: mean masks and saliency per stage
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from tqdm.auto import tqdm

from ..fusion import SubjectGuidanceBase
from ..prompting import DEFAULT_PLACEHOLDER, strip_placeholders
from .benchmarks import BENCHMARKS, Case, load_benchmark
from .clip_score import DEFAULT_CLIP_MODEL, ClipScorer
from .identity import IP_BACKENDS, IdentityBackend, build_ip_backend
from .methods import Method, parse_methods
from .reports import (
    MaskAccumulator,
    ScoreRow,
    load_mask_arrays,
    markdown_table,
    mask_arrays,
    read_scores,
    save_mask_arrays,
    summarize,
    sweep_plot,
    write_json,
    write_mask_images,
    write_scores,
)

logger = logging.getLogger(__name__)

METRICS = ("ip", "pc")
# Settings that decide the generated images: resuming into an `out` made with other values is refused.
GENERATION_KEYS = (
    "benchmark",
    "data",
    "model",
    "seed",
    "steps",
    "guidance_scale",
    "subject_guidance_base",
    "height",
    "width",
    "scheduler",
    "dtype",
    "images_per_prompt",
)


@dataclass
class EvaluationConfig:
    """Settings of ``facediffuser evaluate`` (each field is a command-line flag)."""

    data: Path = field(
        metadata={"help": "subject folder (one sub-folder of photos per person) or, for ffhq-wild, the dataset root"}
    )
    model: str = field(metadata={"help": "Face-diffuser pipeline folder or hub id, or 'tiny' for a random test model"})
    out: Path = field(default=Path("outputs/evaluation"), metadata={"help": "output folder (resumable)"})
    benchmark: str = field(default="single-subject", metadata={"help": f"one of {', '.join(sorted(BENCHMARKS))}"})
    methods: list[str] = field(
        default_factory=lambda: ["tdm", "sdm", "face-diffuser"],
        metadata={"help": "methods to compare: tdm, sdm, face-diffuser (with --alpha/--beta) or face-diffuser:A:B"},
    )
    alpha: float = field(default=0.3, metadata={"help": "end of stage I for 'face-diffuser', a fraction of steps"})
    beta: float = field(default=0.6, metadata={"help": "end of stage II for 'face-diffuser', a fraction of steps"})
    ip_backend: str = field(
        default="dlib", metadata={"help": "identity backend: dlib (offline) or facenet (the paper's, needs weights)"}
    )
    clip_model: str = field(default=DEFAULT_CLIP_MODEL, metadata={"help": "CLIP model id or folder for PC"})
    metrics: list[str] = field(default_factory=lambda: list(METRICS), metadata={"help": "scores to compute: ip pc"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N cases of the benchmark"})
    seed: int = field(default=42, metadata={"help": "seed of every case's initial noise (shared by all methods)"})
    images_per_prompt: int | None = field(
        default=None, metadata={"help": "images per case (default: the benchmark's, 4 for the subject benchmarks)"}
    )
    steps: int = field(default=50, metadata={"help": "denoising steps T"})
    guidance_scale: float = field(default=5.0, metadata={"help": "w, for both models"})
    subject_guidance_base: SubjectGuidanceBase = field(
        default=SubjectGuidanceBase.TEXT, metadata={"help": "SDM guidance: text (release) or null (paper eq. 2)"}
    )
    height: int | None = field(default=None, metadata={"help": "image height (default: the model's, 512 for SD1.x)"})
    width: int | None = field(default=None, metadata={"help": "image width (default: the model's)"})
    scheduler: str | None = field(default="ddim", metadata={"help": "scheduler name; the paper samples with DDIM"})
    device: str = field(default="auto", metadata={"help": "device; 'auto' takes this process's accelerator"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, float16 or bfloat16"})
    batch_size: int = field(default=16, metadata={"help": "images per CLIP forward pass"})
    save_masks: bool = field(default=True, metadata={"help": "keep the per-stage fusion masks (Fig. 9)"})
    dlib_upsample: int = field(default=1, metadata={"help": "dlib backend: detector upsampling (0 is faster)"})
    facenet_weights: Path | None = field(
        default=None, metadata={"help": "facenet backend: a local copy of 20180402-114759-vggface2.pt"}
    )

    def check(self) -> None:
        """Raises ``ValueError`` for settings that cannot work, before anything heavy is loaded."""
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"Unknown benchmark {self.benchmark!r}; choose from {', '.join(sorted(BENCHMARKS))}.")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown or not self.metrics:
            raise ValueError(f"Unknown metrics {unknown or self.metrics}; choose from {', '.join(METRICS)}.")
        if "ip" in self.metrics and self.ip_backend not in IP_BACKENDS:
            raise ValueError(
                f"Unknown IP backend {self.ip_backend!r}; choose from {', '.join(sorted(IP_BACKENDS))} (dlib works "
                "offline)."
            )
        for name in ("limit", "images_per_prompt", "steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
        parse_methods(self.methods, self.alpha, self.beta)

    def generation_settings(self, images_per_prompt: int) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in GENERATION_KEYS if k != "images_per_prompt"}
        values["images_per_prompt"] = images_per_prompt
        values["data"] = str(Path(values["data"]).resolve())
        values["subject_guidance_base"] = SubjectGuidanceBase(values["subject_guidance_base"]).value
        return values

    def backend_options(self) -> dict[str, Any]:
        return {"dlib_upsample": self.dlib_upsample, "facenet_weights": self.facenet_weights}


@dataclass(frozen=True)
class WorkUnit:
    """One method on one case: ``images_per_prompt`` images from one pipeline call."""

    method: Method
    case: Case

    def image_paths(self, out: Path, count: int) -> list[Path]:
        folder = out / "images" / self.method.label / self.case.case_id
        return [folder / f"{k}.png" for k in range(count)]

    def mask_path(self, out: Path) -> Path:
        return out / "masks" / self.method.label / f"{self.case.case_id}.npz"


def shard(units: list[WorkUnit], index: int, count: int) -> list[WorkUnit]:
    """The units of process ``index`` of ``count``: every ``count``-th unit from ``index`` (disjoint, complete)."""
    if not 0 <= index < count:
        raise ValueError(f"Process index {index} is outside 0..{count - 1}.")
    return units[index::count]


def check_run_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuses to resume into ``out`` when its ``run.json`` records other generation settings."""
    path = out / "run.json"
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to reuse the images there.") from err
    changed = [f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in settings.items() if previous.get(k) != v]
    if changed:
        raise ValueError(
            f"{out} holds images generated with other settings ({'; '.join(changed)}). Use another --out, or delete "
            "the folder to start over."
        )


def _save_image(image: PIL.Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp)
    tmp.replace(path)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` did on this process.

    Attributes:
        units: the units whose images this process scored.
        generated: the units whose images this process generated in this run.
        rows: this process's score rows.
        summary: the summary (main process only, else ``None``).
        files: the reports written (main process only).
    """

    units: list[WorkUnit]
    generated: list[WorkUnit]
    rows: list[ScoreRow]
    summary: dict[str, Any] | None
    files: list[Path]


def distributed_state(device: str = "auto"):
    """accelerate's :class:`~accelerate.PartialState` for this process.

    Without CUDA, the processes of ``accelerate launch --multi_gpu --num_processes N`` (torchrun underneath) only see
    each other when the state is made in CPU mode, so CPU mode is chosen whenever there is no CUDA device. A launch
    whose processes still cannot see each other is refused: each would evaluate everything.
    """
    from accelerate import PartialState

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    cpu = device == "cpu" or use_cpu or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise ValueError(
            f"{launched} processes were launched but accelerate sees {state.num_processes}: every process would "
            "evaluate everything. Launch with `accelerate launch --multi_gpu --num_processes N` (on CPUs too) or "
            "torchrun."
        )
    return state


def evaluate(
    config: EvaluationConfig,
    *,
    pipeline=None,
    ip_backend: IdentityBackend | None = None,
    clip_scorer: ClipScorer | None = None,
) -> EvaluationResult:
    """Runs the evaluation described by ``config`` on this process (see the module docstring).

    ``pipeline``, ``ip_backend`` and ``clip_scorer`` replace what ``config`` would load; leave them ``None`` to load
    from ``config.model``, ``config.ip_backend`` and ``config.clip_model``.
    """
    from ..loading import load_pipeline, resolve_device, resolve_dtype

    config.check()
    state = distributed_state(config.device)
    methods = parse_methods(config.methods, config.alpha, config.beta)
    benchmark = load_benchmark(config.benchmark, config.data)
    images_per_prompt = config.images_per_prompt or benchmark.images_per_prompt
    out = Path(config.out)
    settings = config.generation_settings(images_per_prompt)
    check_run_settings(out, settings)
    device = state.device if config.device == "auto" else resolve_device(config.device)

    cases = list(benchmark.cases[: config.limit] if config.limit else benchmark.cases)
    units = [WorkUnit(m, c) for m in methods for c in cases]
    logger.info(
        "%s: %d cases x %d methods = %d units of %d images; process %d of %d.",
        benchmark.name,
        len(cases),
        len(methods),
        len(units),
        images_per_prompt,
        state.process_index,
        state.num_processes,
    )

    # The scorers first: a backend that cannot be had fails now, not after hours of generation.
    if "ip" in config.metrics and ip_backend is None:
        ip_backend = build_ip_backend(config.ip_backend, device, config.backend_options())
    if "pc" in config.metrics and clip_scorer is None:
        clip_scorer = ClipScorer.from_pretrained(
            config.clip_model,
            device=device,
            dtype=resolve_dtype(config.dtype, device),
            batch_size=config.batch_size,
        )

    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run.json", settings)

    # 1. Generate what is not on disk yet. Every process lists the missing units before any of them writes, then
    #    takes every N-th one: the shares are disjoint, complete and balanced even when resuming.
    missing = [u for u in units if not all(p.is_file() for p in u.image_paths(out, images_per_prompt))]
    state.wait_for_everyone()
    todo = shard(missing, state.process_index, state.num_processes)
    if todo:
        if pipeline is None:
            pipeline = load_pipeline(config.model, device=device, dtype=config.dtype, scheduler=config.scheduler)
        pipeline.set_progress_bar_config(disable=True)
        if pipeline.placeholder != DEFAULT_PLACEHOLDER:
            benchmark = load_benchmark(config.benchmark, config.data, pipeline.placeholder)
            by_id = {c.case_id: c for c in benchmark.cases}
            todo = [WorkUnit(u.method, by_id[u.case.case_id]) for u in todo]
        for unit in tqdm(todo, desc=f"generate [{state.process_index}]", position=state.process_index, leave=True):
            generate_unit(pipeline, unit, config, out, images_per_prompt)
    logger.info(
        "Process %d generated %d units; %d of %d were already on disk.",
        state.process_index,
        len(todo),
        len(units) - len(missing),
        len(units),
    )
    pipeline = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    state.wait_for_everyone()  # every image exists before anyone scores

    # 2. Score this process's images.
    mine = shard(units, state.process_index, state.num_processes)
    generated_ids = {(u.method.label, u.case.case_id) for u in missing}
    rows = score_units(
        mine,
        out,
        images_per_prompt,
        ip_backend if "ip" in config.metrics else None,
        clip_scorer if "pc" in config.metrics else None,
        rank=state.process_index,
        generated=generated_ids,
    )
    shard_path = out / "_shards" / f"scores-{state.process_index}-of-{state.num_processes}.csv"
    shard_path.parent.mkdir(parents=True, exist_ok=True)
    write_scores(shard_path, rows)

    # 3. Merge and report on the main process.
    state.wait_for_everyone()
    summary, files = None, []
    if state.is_main_process:
        shard_paths = [out / "_shards" / f"scores-{i}-of-{state.num_processes}.csv" for i in range(state.num_processes)]
        all_rows = [row for p in shard_paths for row in read_scores(p)]
        header = {
            "benchmark": benchmark.name,
            "kind": benchmark.kind,
            "cases": len(cases),
            "images_per_prompt": images_per_prompt,
            "ip_backend": config.ip_backend if "ip" in config.metrics else None,
            "ip_backend_settings": ip_backend.settings() if ip_backend is not None else {},
            "clip_model": clip_scorer.name if clip_scorer is not None else None,
            "processes": state.num_processes,
            "generated_this_run": sum(1 for r in all_rows if r.generated),
            "settings": settings,
        }
        summary, files = write_reports(out, all_rows, methods, units, header, config.save_masks)
        for p in shard_paths:
            p.unlink()
        logger.info("Wrote %s", ", ".join(str(f) for f in files))
    state.wait_for_everyone()
    return EvaluationResult(units=mine, generated=todo, rows=rows, summary=summary, files=files)


def generate_unit(pipeline, unit: WorkUnit, config: EvaluationConfig, out: Path, images_per_prompt: int) -> None:
    """Generates one unit's images (and masks), seeded with ``config.seed`` whatever the process or device."""
    references = [[photo.load() for photo in person.photos] for person in unit.case.people]
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    result = pipeline(
        prompt=unit.case.prompt,
        reference_images=references,
        alpha=unit.method.alpha,
        beta=unit.method.beta,
        guidance_scale=config.guidance_scale,
        subject_guidance_base=config.subject_guidance_base,
        num_inference_steps=config.steps,
        num_images_per_prompt=images_per_prompt,
        height=config.height,
        width=config.width,
        generator=generator,
        return_masks=config.save_masks,
    )
    if config.save_masks:  # written first: complete images imply complete masks
        mask_path = unit.mask_path(out)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        save_mask_arrays(mask_path, mask_arrays(result.fusion_trace))
    for image, path in zip(result.images, unit.image_paths(out, images_per_prompt)):
        _save_image(image, path)


def score_units(
    units: list[WorkUnit],
    out: Path,
    images_per_prompt: int,
    ip_backend: IdentityBackend | None,
    clip_scorer: ClipScorer | None,
    *,
    rank: int = 0,
    generated: set[tuple[str, str]] | None = None,
) -> list[ScoreRow]:
    """One :class:`ScoreRow` per image of ``units``; a metric whose scorer is ``None`` is NaN."""
    references: dict[str, torch.Tensor | None] = {}
    rows = []
    for unit in tqdm(units, desc=f"score [{rank}]", position=rank, leave=True):
        case = unit.case
        text = strip_placeholders(case.prompt)
        paths = unit.image_paths(out, images_per_prompt)
        images = [PIL.Image.open(p).convert("RGB") for p in paths]
        ip_values, face_counts = [math.nan] * len(images), [0] * len(images)
        if ip_backend is not None:
            identities = []
            for person in case.people:
                if person.name not in references:
                    references[person.name] = ip_backend.embed_reference([photo.load() for photo in person.photos])
                    if references[person.name] is None:
                        logger.warning(
                            "No face found in any reference photo of %r: its images get no IP score. Use photos "
                            "where the face is clearly visible.",
                            person.name,
                        )
                identities.append(references[person.name])
            scorable = all(identity is not None for identity in identities)
            for k, image in enumerate(images):
                if scorable:
                    ip_values[k], face_counts[k] = ip_backend.score(image, torch.stack(identities))
                else:
                    face_counts[k] = len(ip_backend.faces(image))
        pc_values = [math.nan] * len(images)
        if clip_scorer is not None:
            pc_values = clip_scorer.score(images, [text] * len(images))
        for k, path in enumerate(paths):
            rows.append(
                ScoreRow(
                    method=unit.method.label,
                    alpha=unit.method.alpha,
                    beta=unit.method.beta,
                    case_id=case.case_id,
                    group=case.group,
                    subjects=";".join(p.name for p in case.people),
                    prompt=case.prompt,
                    text=text,
                    image_index=k,
                    image=str(path.relative_to(out)),
                    ip=ip_values[k],
                    faces=face_counts[k],
                    pc=pc_values[k],
                    ip_backend=ip_backend.name if ip_backend is not None else "",
                    clip_model=clip_scorer.name if clip_scorer is not None else "",
                    rank=rank,
                    generated=(unit.method.label, case.case_id) in (generated or set()),
                )
            )
    return rows


def write_reports(
    out: Path,
    rows: list[ScoreRow],
    methods: list[Method],
    units: list[WorkUnit],
    header: dict[str, Any],
    save_masks: bool,
) -> tuple[dict[str, Any], list[Path]]:
    """Writes ``scores.csv``, ``summary.json``, ``table.md``, ``sweep.png`` and ``fusion_masks/``."""
    order = {(u.method.label, u.case.case_id): i for i, u in enumerate(units)}
    rows = sorted(rows, key=lambda r: (order[(r.method, r.case_id)], r.image_index))
    files = [out / "scores.csv", out / "summary.json", out / "table.md"]
    write_scores(files[0], rows)
    summary = summarize(rows, methods, header)
    if sweep_plot(summary, out / "sweep.png"):
        files.append(out / "sweep.png")
    if save_masks:
        for method in methods:
            accumulator = MaskAccumulator()
            for unit in units:
                path = unit.mask_path(out)
                if unit.method.label == method.label and path.is_file():
                    accumulator.add(load_mask_arrays(path))
            means = accumulator.means()
            if means:
                files += write_mask_images(means, out / "fusion_masks" / method.label, method.display_name)
    summary["files"] = [str(f.relative_to(out)) for f in files]
    write_json(files[1], summary)
    files[2].write_text(markdown_table(summary), encoding="utf-8")
    return summary, files
