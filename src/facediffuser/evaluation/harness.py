"""The evaluation harness: generate every benchmark case with every method and model, score the images, write the
reports. It orchestrates; each step lives in its own module:

* :mod:`.work`: units, their files, the share of each process (accelerate), ``run.json``;
* :mod:`.generation`: the pipeline calls;
* :mod:`.scoring`: IP and PC with the per-image score cache;
* :mod:`.reports` and :mod:`.figures`: ``scores.csv``, ``summary.json``, ``table.md``, ``sweep.png``, Fig. 9.

One call of :func:`evaluate` runs on one process; under ``accelerate launch`` every process runs it. Every process
lists the units still missing on disk and generates its slice of them; after a barrier every process scores its slice
of all units; the main process gathers the rows and writes the reports.

Layout of ``out``::

    run.json                                 generation settings of the images below
    images/<model>/<method>/<case_id>/<k>.png
    masks/<model>/<method>/<case_id>.npz     per-stage mean SNF masks and saliency maps of the unit's images
    score_cache/{ip,pc}-<scorer>-<rank>.jsonl  scores by image content and scorer settings
    scores.csv                               one row per image
    summary.json                             per-variant, per-group and per-subject means with 95% intervals
    table.md                                 Table 1 of the paper for this benchmark, with intervals
    sweep.png                                Fig. 8: IP and PC against alpha and beta
    fusion_masks/<model>/<method>/*.png      Fig. 9: mean masks and saliency per stage
    grid.png                                 generated images beside their references, one column per method

A benchmark may set its own defaults for ``--data``, ``--ip-backend``, ``--clip-model`` and ``--methods``
(:class:`~.benchmarks.BenchmarkDefaults`; the mini benchmark does), and its cases may carry attributes that a
scorer of its own checks (place, time, clothing, identity, and for two people who is drawn where): their scores
join ``scores.csv``, ``summary.json`` and ``table.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fusion import SubjectGuidanceBase
from ..io.configuration import name_flags
from ..io.loading import MINI_MODEL
from ..io.output_folders import check as check_output
from ..io.output_folders import claim, own
from ..io.outputs import atomic_write
from ..settings import SamplingSettings
from .benchmarks import (
    Benchmark,
    PromptSet,
    benchmark_defaults,
    benchmark_names,
    benchmark_source,
    is_benchmark,
    load_benchmark,
    load_prompt_file,
    takes_prompts,
    unknown_benchmark,
)
from .clip_score import DEFAULT_CLIP_MODEL, MINI_CLIP_MODEL, ClipScorer
from .figures import GRID_ROWS, MaskAccumulator, image_grid, load_mask_arrays, sweep_plot, write_mask_images
from .generation import GenerationSettings, generate_units
from .identity import IP_BACKENDS, IdentityBackend, build_ip_backend
from .methods import ModelSpec, Variant, parse_models, parse_variants
from .reports import METRICS, ScoreRow, markdown_table, summarize, write_json, write_scores
from .scoring import Scorers, score_units
from .work import WorkUnit, check_run_settings, distributed_state, process_share

logger = logging.getLogger(__name__)

_SAMPLING = {f.name: f for f in dataclasses.fields(SamplingSettings)}
ATTRIBUTES = "attributes"  # the --metrics name of a benchmark's attribute accuracies
COMMAND = "evaluate"  # the command named in --out's marker (see facediffuser.io.output_folders)


def _is_older_run(folder: Path) -> bool:
    """An evaluation folder written before the marker existed: its ``run.json`` records a run's settings."""
    try:
        record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"benchmark", "models", "sampling", "seed"} <= set(record)


LEGACY = (_is_older_run,)  # an evaluation folder written before the marker existed
# What an evaluation writes in --out (``name/``: a whole sub-folder); ``table1.md`` is written by --combine.
ENTRIES = (
    "run.json",
    "images/",
    "masks/",
    "score_cache/",
    "scores.csv",
    "summary.json",
    "table.md",
    "sweep.png",
    "grid.png",
    "fusion_masks/",
    "table1.md",
)


def _sampling_field(name: str, note: str = "") -> Any:
    """A config field whose default and help come from :class:`SamplingSettings` (the one home of the defaults)."""
    source = _SAMPLING[name]
    return field(default=source.default, metadata={"help": source.metadata["help"] + note})


@dataclass
class EvaluationConfig:
    """Settings of ``facediffuser evaluate`` (each field is a command-line flag)."""

    model: list[str] = field(
        default_factory=lambda: [MINI_MODEL],
        metadata={
            "help": "pipeline folder, hub id, 'mini' (the shipped model) or 'tiny'; NAME=FOLDER names it in the "
            "tables; repeat the flag to compare models (e.g. --model fd=face-diffuser/ --model fc=converted/) "
            f"(default: {MINI_MODEL})",
            "repeat": True,
        },
    )
    data: Path | None = field(
        default=None,
        metadata={
            "help": "subject folder (one sub-folder of photos per person); for ffhq-wild, the dataset root; for mini, "
            "the world's reference folder (default: the held-out people the package ships)"
        },
    )
    out: Path = field(default=Path("outputs/evaluation"), metadata={"help": "output folder (resumable)"})
    benchmark: str = field(default="single-subject", metadata={"help": f"one of {', '.join(benchmark_names())}"})
    prompts: Path | None = field(
        default=None,
        metadata={
            "help": "prompt templates instead of the benchmark's own: .json ({'groups': {name: [...]}}, "
            "{'prompts': [...]} or a list) or text (one per line, [group] lines); {subject} or {subject1}, "
            "{subject2} stand for each person"
        },
    )
    methods: list[str] | None = field(
        default=None,
        metadata={
            "help": "methods to compare: tdm, sdm, face-diffuser (with --alpha/--beta) or face-diffuser:A:B; sdm and "
            "face-diffuser may end in :text or :null (that row's SDM guidance base), face-diffuser in sampling options "
            "(:ra, :rat, :rs for the person-region options, :KEY=VALUE for any sampling setting); METHOD@MODEL runs "
            "it with that model only (e.g. sdm@fastcomposer) (default: tdm sdm face-diffuser; for mini, tdm sdm "
            "face-diffuser:0.3:0.6:text face-diffuser:0.3:0.6:null)"
        },
    )
    ip_adapter: str | None = field(
        default=None,
        metadata={
            "help": "the IP-Adapter of the methods ip-adapter and face-diffuser+ip[:A:B][:shared], loaded on each "
            "model's scene UNet as `generate --ip-adapter` loads it: a weight file, a folder with one and its "
            "image_encoder/, or 'mini' (the mini model's)"
        },
    )
    alpha: float = _sampling_field("alpha", " (for 'face-diffuser' without :A:B)")
    beta: float = _sampling_field("beta", " (for 'face-diffuser' without :A:B)")
    ip_backend: str | None = field(
        default=None,
        metadata={
            "help": f"identity backend: {', '.join(IP_BACKENDS)} (default: dlib, which works offline; for mini, mini)"
        },
    )
    clip_model: str | None = field(
        default=None,
        metadata={
            "help": f"CLIP model id or folder for PC; '{MINI_CLIP_MODEL}': the world's CLIP, shipped in the package "
            f"(default: {DEFAULT_CLIP_MODEL}; for the mini benchmark, {MINI_CLIP_MODEL})"
        },
    )
    metrics: list[str] = field(
        default_factory=lambda: [*METRICS, ATTRIBUTES],
        metadata={
            "help": "scores to compute: ip pc attributes (attributes: for benchmarks whose cases ask for some, e.g. "
            "mini: place, time, clothing colour and identity accuracy, and for two people leaks and swaps)"
        },
    )
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N cases of the benchmark"})
    seed: int = field(default=42, metadata={"help": "seed of every case's initial noise (shared by all methods)"})
    images_per_prompt: int | None = field(
        default=None, metadata={"help": "images per case (default: the benchmark's, 4 for the subject benchmarks)"}
    )
    steps: int | None = _sampling_field("num_inference_steps")
    guidance_scale: float | None = _sampling_field(
        "guidance_scale", " (the SDM's too, unless --subject-guidance-scale or the model names its own)"
    )
    subject_guidance_scale: float | None = _sampling_field("subject_guidance_scale")
    subject_guidance_base: SubjectGuidanceBase = _sampling_field("subject_guidance_base")
    height: int | None = field(
        default=None, metadata={"help": "image height (default: the model's: 512 for SD1.x, 32 for mini)"}
    )
    width: int | None = field(default=None, metadata={"help": "image width (default: the model's)"})
    scheduler: str | None = field(
        default=None,
        metadata={
            "help": "scheduler name (ddim, pndm, dpm++, dpm++-karras, unipc, euler, ...; default: each model's own, "
            "which its scheduler/ folder names: DDIM for converted released weights, as the paper)"
        },
    )
    paper_sampling: bool = field(
        default=False,
        metadata={
            "help": "sample as the paper does, DDIM at 50 steps with guidance scale 5, instead of each model's own "
            "scheduler, number of steps and guidance scale (--scheduler, --steps and --guidance-scale, when given, "
            "win)"
        },
    )
    device: str = field(default="auto", metadata={"help": "device; 'auto' takes this process's accelerator"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, float16 or bfloat16"})
    batch_size: int = field(default=16, metadata={"help": "images per CLIP forward pass"})
    save_masks: bool = field(default=True, metadata={"help": "keep the per-stage fusion masks (Fig. 9)"})
    score_cache: bool = field(
        default=True, metadata={"help": "reuse scores from OUT/score_cache (keyed by image content and scorer)"}
    )
    dlib_upsample: int = field(default=1, metadata={"help": "dlib backend: detector upsampling (0 is faster)"})
    facenet_weights: Path | None = field(
        default=None, metadata={"help": "facenet backend: a local copy of 20180402-114759-vggface2.pt"}
    )
    mini_faces: Path | None = field(
        default=None,
        metadata={
            "help": "mini backend: the world's faces/ folder (default: $FACEDIFFUSER_MINI_FACES, else the package's)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.model, str):  # one model given from Python as a plain string
            self.model = [self.model]

    def resolved(self) -> EvaluationConfig:
        """A copy with what the flags left open filled in: the benchmark's defaults, else the harness's (dlib,
        ``openai/clip-vit-large-patch14``, tdm sdm face-diffuser). ``--data`` left open and without a default is
        refused with what it takes."""
        if not is_benchmark(self.benchmark):
            raise unknown_benchmark(self.benchmark)
        defaults = benchmark_defaults(self.benchmark)
        changes: dict[str, Any] = {}
        if self.data is None:
            changes["data"] = benchmark_source(self.benchmark, None)
        if self.methods is None:
            changes["methods"] = list(defaults.methods or ("tdm", "sdm", "face-diffuser"))
        if self.ip_backend is None:
            changes["ip_backend"] = defaults.ip_backend or "dlib"
        if self.clip_model is None and ("pc" in self.metrics or ATTRIBUTES in self.metrics):
            changes["clip_model"] = defaults.clip_model() if defaults.clip_model else DEFAULT_CLIP_MODEL
        if self.paper_sampling:  # the flags left to the models: DDIM at 50 steps, guidance scale 5
            from ..io.loading import PAPER_SCHEDULER
            from ..settings import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS

            changes["scheduler"] = self.scheduler or PAPER_SCHEDULER
            changes["steps"] = self.steps or DEFAULT_STEPS
            changes["guidance_scale"] = DEFAULT_GUIDANCE_SCALE if self.guidance_scale is None else self.guidance_scale
        return dataclasses.replace(self, **changes) if changes else self

    def sampling(self) -> SamplingSettings:
        """The sampling settings shared by every method (each method replaces alpha and beta)."""
        return SamplingSettings(
            num_inference_steps=self.steps,
            alpha=self.alpha,
            beta=self.beta,
            guidance_scale=self.guidance_scale,
            subject_guidance_scale=self.subject_guidance_scale,
            subject_guidance_base=self.subject_guidance_base,
        )

    def prompt_set(self) -> PromptSet | None:
        return None if self.prompts is None else load_prompt_file(self.prompts)

    def check(self) -> tuple[list[ModelSpec], list[Variant], PromptSet | None]:
        """Raises ``ValueError`` (or ``FileNotFoundError``) for settings that cannot work, before anything heavy is
        loaded; returns the parsed models, variants and prompts. Call it on a :meth:`resolved` config."""
        if not is_benchmark(self.benchmark):
            raise unknown_benchmark(self.benchmark)
        if self.data is None or self.methods is None or self.ip_backend is None:
            return self.resolved().check()
        unknown = sorted(set(self.metrics) - {*METRICS, ATTRIBUTES})
        if unknown or not self.metrics:
            choices = ", ".join([*METRICS, ATTRIBUTES])
            raise ValueError(f"Unknown metrics {unknown or self.metrics}; choose from {choices}.")
        if "ip" in self.metrics and self.ip_backend not in IP_BACKENDS:
            raise ValueError(
                f"Unknown IP backend {self.ip_backend!r}; choose from {', '.join(sorted(IP_BACKENDS))} (dlib works "
                "offline)."
            )
        for name in ("limit", "images_per_prompt", "steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
        from ..settings import check_image_size, check_num_images, check_seed

        flags = {"images_per_prompt": "--images-per-prompt", "seed": "--seed", "height": "--height", "width": "--width"}
        try:
            if self.images_per_prompt is not None:  # a case's images are one batch, as generate's are
                check_num_images(self.images_per_prompt, "images_per_prompt")
            check_seed(self.seed)
            check_image_size(self.height, self.width)
        except ValueError as err:
            raise ValueError(name_flags(str(err), flags)) from None
        if self.prompts is not None and not takes_prompts(self.benchmark):
            raise ValueError(f"Benchmark {self.benchmark!r} takes its prompts from its data; drop --prompts.")
        models = parse_models(self.model)
        for model in models:
            if model.source.startswith(("/", ".", "~")) and not Path(model.source).expanduser().exists():
                raise FileNotFoundError(f"Model folder not found: {model.source} (from --model).")
        variants = parse_variants(self.methods, models, self.sampling())
        adapted = [v.method.label for v in variants if v.method.adapter]
        if adapted and self.ip_adapter is None:
            raise ValueError(
                f"The method {adapted[0]} draws the people with an IP-Adapter: give it with --ip-adapter (a weight "
                "file, its folder, or 'mini' for the mini model's)."
            )
        if self.ip_adapter is not None:
            from ..io.adapters import find_ip_adapter_file, read_ip_adapter_file

            path = find_ip_adapter_file(self.ip_adapter)
            if path is None:
                raise ValueError(f"--ip-adapter {self.ip_adapter}: give a local adapter (a file or its folder).")
            read_ip_adapter_file(path)  # a wrong file is refused now, before any model loads
            if not (path.parent / "image_encoder").is_dir():
                raise ValueError(f"{path.parent} has no image_encoder folder beside the adapter (--ip-adapter).")
        return models, variants, self.prompt_set()

    def guidance_scales(self, models: list[ModelSpec], pipelines: dict[str, Any] | None = None) -> dict[str, Any]:
        """Each model's guidance scale in this run, read before any model loads: ``--guidance-scale``, else the one
        the model's ``model_index.json`` names, else the paper's 5 (``None`` for a hub model whose index is not at
        hand). ``pipelines``: the ready pipelines :func:`evaluate` was given, by model name.

        Raises ``ValueError`` naming the ``model_index.json`` whose ``guidance_scale`` the pipeline would refuse."""
        from ..io.loading import (
            ModelSource,
            check_model_source,
            hub_model_index,
            model_folder,
            own_sampling_defaults,
            read_model_index,
        )
        from ..settings import DEFAULT_GUIDANCE_SCALE

        scales: dict[str, Any] = {}
        for model in models:
            if self.guidance_scale is not None:
                scales[model.name] = self.guidance_scale
                continue
            if pipelines and model.name in pipelines:
                scales[model.name] = pipelines[model.name].default_guidance_scale
                continue
            source = check_model_source(model.source)
            folder = model_folder(model.source)
            index = read_model_index(folder) if folder is not None else None
            if source is ModelSource.HUB:
                index = hub_model_index(model.source)
                if index is None:  # loading says why, or it loads and draws with its own
                    scales[model.name] = None
                    continue
            named = folder / "model_index.json" if folder else f"the model_index.json of {model.source}"
            own = own_sampling_defaults(index, named, ("guidance_scale",)).get("guidance_scale")
            scales[model.name] = DEFAULT_GUIDANCE_SCALE if own is None else own
        return scales

    def generation_settings(
        self,
        images_per_prompt: int,
        models: list[ModelSpec],
        prompts: PromptSet | None,
        pipelines: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What ``run.json`` records: every setting that decides the images (alpha and beta are per method). The
        guidance scale is the number the models draw with: one number when they share it, else one per model."""
        sampling = self.sampling().to_dict()
        for name in ("alpha", "beta"):
            sampling.pop(name)
        scales = self.guidance_scales(models, pipelines)
        shared = set(scales.values())
        sampling["guidance_scale"] = shared.pop() if len(shared) == 1 else scales
        return {
            "benchmark": self.benchmark,
            "data": str(Path(self.data).resolve()),
            "prompts_sha256": prompts.sha256() if prompts is not None else None,
            "models": {m.name: m.source for m in models},
            **({"ip_adapter": self.ip_adapter} if self.ip_adapter is not None else {}),
            "seed": self.seed,
            "sampling": sampling,
            "height": self.height,
            "width": self.width,
            "scheduler": self.scheduler,
            "dtype": self.dtype,
            "images_per_prompt": images_per_prompt,
        }

    def inputs(self, models: list[ModelSpec]) -> list[Path]:
        """The folders and files the run reads: never its output folder, nor inside it, nor holding it."""
        paths = [self.data, self.prompts, self.facenet_weights, self.mini_faces]
        if self.ip_adapter is not None and Path(self.ip_adapter).expanduser().exists():
            paths.append(Path(self.ip_adapter).expanduser())
        paths += [Path(m.source).expanduser() for m in models if Path(m.source).expanduser().exists()]
        if self.clip_model is not None and Path(self.clip_model).expanduser().exists():
            paths.append(Path(self.clip_model).expanduser())
        return [Path(p) for p in paths if p is not None]

    def backend_options(self) -> dict[str, Any]:
        options = {"dlib_upsample": self.dlib_upsample, "facenet_weights": self.facenet_weights}
        if self.mini_faces is not None:
            options["mini_weights"] = self.mini_faces
        return options


@dataclass
class EvaluationResult:
    """What :func:`evaluate` did on this process.

    Attributes:
        units: the units whose images this process scored.
        generated: the units whose images this process generated in this run.
        rows: this process's score rows.
        cache: this process's ``{"ip"|"pc": {"cached": n, "computed": m}}``.
        summary: the summary (main process only, else ``None``).
        files: the reports written (main process only).
    """

    units: list[WorkUnit]
    generated: list[WorkUnit]
    rows: list[ScoreRow]
    cache: dict[str, dict[str, int]]
    summary: dict[str, Any] | None
    files: list[Path]


def evaluate(
    config: EvaluationConfig,
    *,
    pipelines: dict[str, Any] | None = None,
    ip_backend: IdentityBackend | None = None,
    clip_scorer: ClipScorer | None = None,
) -> EvaluationResult:
    """Runs the evaluation described by ``config`` on this process (see the module docstring).

    ``pipelines`` (model name -> pipeline), ``ip_backend`` and ``clip_scorer`` replace what ``config`` would load;
    leave them ``None`` to load from ``config.model``, ``config.ip_backend`` and ``config.clip_model``.
    """
    from accelerate.utils import gather_object

    from ..io.loading import load_pipeline, resolve_device, resolve_dtype

    config = config.resolved()
    models, variants, prompts = config.check()
    out = check_output(config.out, command=COMMAND, inputs=config.inputs(models), legacy=LEGACY)
    state = distributed_state(config.device)
    benchmark = load_benchmark(config.benchmark, config.data, prompts=prompts)
    attributes = ATTRIBUTES in config.metrics and benchmark.attribute_scorer is not None
    images_per_prompt = config.images_per_prompt or benchmark.images_per_prompt
    settings = check_run_settings(out, config.generation_settings(images_per_prompt, models, prompts, pipelines))
    device = state.device if config.device == "auto" else resolve_device(config.device)

    cases = list(benchmark.cases[: config.limit] if config.limit else benchmark.cases)
    units = [WorkUnit(v, c) for v in variants for c in cases]
    logger.info(
        "%s: %d cases x %d variants (%d models) = %d units of %d images; process %d of %d.",
        benchmark.name,
        len(cases),
        len(variants),
        len(models),
        len(units),
        images_per_prompt,
        state.process_index,
        state.num_processes,
    )

    # The scorers first: a backend that cannot be had fails now, not after hours of generation. The attribute scorer
    # of a benchmark that has one reads with the same CLIP and face recognizer.
    if ("ip" in config.metrics or attributes) and ip_backend is None:
        ip_backend = build_ip_backend(config.ip_backend, device, config.backend_options())
    if ("pc" in config.metrics or attributes) and clip_scorer is None:
        clip_scorer = ClipScorer.from_pretrained(
            config.clip_model, device=device, dtype=resolve_dtype(config.dtype, device), batch_size=config.batch_size
        )
    attribute_scorer = build_attribute_scorer(benchmark, clip_scorer, ip_backend) if attributes else None
    if state.is_main_process:
        claim(out, command=COMMAND, inputs=config.inputs(models), legacy=LEGACY, entries=ENTRIES)
        own(out, "run.json", "images/", "masks/", "score_cache/", command=COMMAND)
        write_json(out / "run.json", settings)

    # 1. Generate what is not on disk yet: every process lists the missing units before any of them writes.
    missing = [u for u in units if not all(p.is_file() for p in u.image_paths(out, images_per_prompt))]
    state.wait_for_everyone()
    todo = process_share(state, missing)
    generation = GenerationSettings(
        config.sampling(), config.seed, images_per_prompt, config.height, config.width, config.save_masks,
        benchmark.person_masks,
    )  # fmt: skip
    generate_units(
        todo,
        generation,
        out,
        lambda source: load_pipeline(source, device=device, dtype=config.dtype, scheduler=config.scheduler),
        lambda placeholder: load_benchmark(config.benchmark, config.data, placeholder, prompts),
        pipelines=pipelines,
        rank=state.process_index,
        ip_adapter=config.ip_adapter,
    )
    logger.info(
        "Process %d generated %d units; %d of %d were already on disk.",
        state.process_index,
        len(todo),
        len(units) - len(missing),
        len(units),
    )

    # 2. Score this process's slice. Every process reads the caches before any of them appends to its own.
    scorers = Scorers(
        ip_backend if "ip" in config.metrics else None,
        clip_scorer if "pc" in config.metrics else None,
        out / "score_cache" if config.score_cache else None,
        state.process_index,
        attribute_scorer,
    )
    state.wait_for_everyone()  # every image exists, every cache is read
    mine = process_share(state, units)
    rows = score_units(mine, out, images_per_prompt, scorers, generated={u.key for u in missing})
    cache = scorers.cache_counts()
    logger.info(
        "Process %d scores: IP %d from the cache, %d computed; PC %d from the cache, %d computed.",
        state.process_index,
        cache["ip"]["cached"],
        cache["ip"]["computed"],
        cache["pc"]["cached"],
        cache["pc"]["computed"],
    )

    # 3. Gather and report on the main process.
    all_rows = gather_object(rows)
    all_cache = gather_object([cache])
    summary, files = None, []
    if state.is_main_process:
        kinds = [*METRICS, ATTRIBUTES] if attribute_scorer is not None else list(METRICS)
        totals = {m: {k: sum(c[m][k] for c in all_cache) for k in ("cached", "computed")} for m in kinds}
        header = {
            "benchmark": benchmark.name,
            "kind": benchmark.kind,
            "cases": len(cases),
            "images_per_prompt": images_per_prompt,
            "prompts": str(config.prompts) if config.prompts else None,
            "ip_backend": ip_backend.name if scorers.ip_backend is not None else None,
            "ip_backend_settings": scorers.ip_backend.settings() if scorers.ip_backend is not None else {},
            "clip_model": scorers.clip_scorer.name if scorers.clip_scorer is not None else None,
            **({"gallery": len(benchmark.gallery)} if attribute_scorer is not None else {}),
            "processes": state.num_processes,
            "generated_this_run": sum(1 for r in all_rows if r.generated),
            "scores_from_cache": totals,
            "settings": settings,
        }
        summary, files = write_reports(out, all_rows, variants, units, header, config.save_masks, images_per_prompt)
        logger.info(
            "Scores from the cache: IP %d of %d, PC %d of %d. Wrote %s",
            totals["ip"]["cached"],
            totals["ip"]["cached"] + totals["ip"]["computed"],
            totals["pc"]["cached"],
            totals["pc"]["cached"] + totals["pc"]["computed"],
            ", ".join(str(f) for f in files),
        )
    state.wait_for_everyone()
    return EvaluationResult(units=mine, generated=todo, rows=rows, cache=cache, summary=summary, files=files)


def write_reports(
    out: Path,
    rows: list[ScoreRow],
    variants: list[Variant],
    units: list[WorkUnit],
    header: dict[str, Any],
    save_masks: bool,
    images_per_prompt: int = 1,
) -> tuple[dict[str, Any], list[Path]]:
    """Writes ``scores.csv``, ``summary.json``, ``table.md``, ``sweep.png``, ``fusion_masks/`` and ``grid.png``."""
    reports = ("scores.csv", "summary.json", "table.md", "sweep.png", "grid.png", "fusion_masks/")
    own(out, *reports, command=COMMAND)  # a user's file of one of these names is refused, never written over
    order = {u.key: i for i, u in enumerate(units)}
    rows = sorted(rows, key=lambda r: (order[(r.method, r.case_id)], r.image_index))
    files = [out / "scores.csv", out / "summary.json", out / "table.md"]
    write_scores(files[0], rows)
    summary = summarize(rows, variants, header)
    if sweep_plot(summary, out / "sweep.png"):
        files.append(out / "sweep.png")
    if save_masks:
        for variant in variants:
            accumulator = MaskAccumulator()
            for unit in units:
                path = unit.mask_path(out)
                if unit.variant == variant and path.is_file():
                    accumulator.add(load_mask_arrays(path))
            means = accumulator.means()
            if means:
                files += write_mask_images(means, out / "fusion_masks" / variant.label, variant.display_name)
    if write_grid(out / "grid.png", variants, units, images_per_prompt):
        files.append(out / "grid.png")
    summary["files"] = [str(f.relative_to(out)) for f in files]
    write_json(files[1], summary)
    table = markdown_table(summary).encode("utf-8")
    atomic_write(files[2], lambda f: f.write(table), overwrite=True)
    return summary, files


def build_attribute_scorer(benchmark: Benchmark, clip_scorer: ClipScorer | None, ip_backend: IdentityBackend | None):
    """The benchmark's attribute scorer (``benchmark.attribute_scorer``, ``"module:Class"``), reading with the run's
    CLIP and face recognizer among the benchmark's gallery."""
    module_name, class_name = benchmark.attribute_scorer.split(":")
    scorer_class = getattr(importlib.import_module(module_name), class_name)
    return scorer_class.from_scorers(clip_scorer, ip_backend, benchmark.gallery)


def write_grid(path: Path, variants: list[Variant], units: list[WorkUnit], images_per_prompt: int) -> bool:
    """``grid.png``: up to :data:`GRID_ROWS` cases spread over the benchmark, each with its people's first reference
    photo and the first image of every method. Returns whether it was written."""
    import PIL.Image

    from ..prompting import strip_placeholders

    cases = list(dict.fromkeys(u.case for u in units))
    if not cases:
        return False
    count = min(GRID_ROWS, len(cases))  # spread over the benchmark, first and last case included
    chosen = [cases[round(k * (len(cases) - 1) / max(1, count - 1))] for k in range(count)]
    several_models = len({v.model.name for v in variants}) > 1
    titles = {
        v.label: (f"{v.model.name} " if several_models else "") + v.method.label.replace("_", " ") for v in variants
    }
    by_key = {u.key: u for u in units}
    rows = []
    for case in chosen:
        images = {}
        for v in variants:
            unit = by_key.get((v.label, case.case_id))
            first = unit.image_paths(path.parent, images_per_prompt)[0] if unit else None
            images[titles[v.label]] = PIL.Image.open(first).convert("RGB") if first and first.is_file() else None
        rows.append(
            {
                "title": strip_placeholders(case.prompt),
                "references": [p.photos[0].load() for p in case.people],
                "images": images,
            }
        )
    return image_grid(rows, list(titles.values()), path)
