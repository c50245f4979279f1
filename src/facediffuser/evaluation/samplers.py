"""The sampler study: one benchmark under several sampling settings (scheduler, number of steps, how the stages are
bounded), each setting's difference from a reference setting with a paired interval, and quality against cost.

Every setting draws the same cases from the same seeds, so the images of two settings are pairs: the study's
interval is that of the mean of per-case differences (a paired bootstrap over cases, :func:`paired_difference`,
which reuses :func:`~.statistics.bootstrap_mean`). It is far narrower than two unpaired intervals side by side,
which is what lets it say "the same within noise" of a setting that costs a fifth.

Each setting runs as an ordinary evaluation in ``OUT/<label>/`` (``ddim-50``, ``dpm++-karras-10``,
``dpm++-10-noise``), so a study resumes from the images already drawn, and any one setting's folder is a complete
``facediffuser evaluate`` run. The study writes ``OUT/samplers.md`` (the paired table), ``OUT/samplers.json`` and
``OUT/pareto.png`` (each score's paired difference against the UNet evaluations per image).

One draw of the mini benchmark's 60 cases resolves about 0.01 of PC and 10 points of accuracy. A longer study runs
the same settings again under other seeds (``--seed``) and pools the finished studies (:func:`pool_studies`,
``evaluate --pool-studies``): each image is paired with the same case, image and seed of the reference, and cases are
resampled with their images of every seed.

A setting is written ``SCHEDULER:STEPS`` with an optional ``:noise`` (stages by noise level,
:attr:`~facediffuser.settings.SamplingSettings.stage_boundaries`): ``ddim:50``, ``dpm++-karras:10``,
``unipc:8:noise``; then optionally ``:wSCALE``, the guidance scale of that setting (``lcm:4:w1.5``), and ``@MODEL``,
another model for that setting (a pipeline folder, or ``NAME=FOLDER``): ``lcm:4:w1.5@lcm=LCM-FOLDER`` draws the same
cases with a distilled model (``train lcm``) and compares it with the reference setting of the study's own model.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..settings import MAX_STEPS, SamplingSettings, StageBoundaries
from .statistics import CONFIDENCE, RESAMPLES, Estimate, bootstrap_mean

logger = logging.getLogger(__name__)

# The study of docs/performance.md: the paper's DDIM 50 (the reference) and the release's PNDM 50, then the
# usual few-step samplers from 50 down to 4 steps.
DEFAULT_SETTINGS = (
    "ddim:50",
    "pndm:50",
    "ddim:20",
    "ddim:10",
    "dpm++:20",
    "dpm++:10",
    "dpm++:8",
    "dpm++:6",
    "dpm++:4",
    "dpm++-karras:10",
    "dpm++-karras:8",
    "dpm++-karras:6",
    "unipc:10",
    "unipc:8",
    "unipc:6",
    "euler:20",
    "euler:10",
    "dpm++:10:noise",
    "dpm++-karras:10:noise",
)
# What the study compares: (scores.csv column, the images it is read on: of one person, of several, or all, title).
STUDY_METRICS = (
    ("ip", "single", "single IP"),
    ("pc", "single", "single PC"),
    ("ip", "multi", "multi IP"),
    ("scene_acc", None, "place+time+clothing"),
    ("identity_acc", None, "identity top-1"),
)
# The most UNet evaluations per image the shipped default may cost: a fifth of the paper's 130.
BUDGET = 26
# ... and a distilled (LCM) model: a tenth.
DISTILLED_BUDGET = 13


@dataclass(frozen=True)
class SamplerSetting:
    """One sampling setting of the study: a scheduler name of :data:`~facediffuser.io.loading.SCHEDULERS`, a number
    of steps and what alpha and beta measure."""

    scheduler: str
    steps: int
    stage_boundaries: StageBoundaries = StageBoundaries.STEPS
    guidance_scale: float | None = None  # None: the study's --guidance-scale, else the model's own
    model: str | None = None  # None: the study's --model; else a pipeline folder or NAME=FOLDER

    @property
    def model_name(self) -> str | None:
        """The name of this setting's own model: ``NAME`` of ``NAME=FOLDER``, else the folder's last part."""
        if self.model is None:
            return None
        name, _, folder = self.model.partition("=")
        return name if folder else Path(self.model.rstrip("/\\")).name or self.model

    @property
    def label(self) -> str:
        """File-name safe and unique: ``ddim-50``, ``dpm++-karras-10-noise``, ``lcm-4-w1.5-lcm``."""
        noise = "-noise" if self.stage_boundaries is StageBoundaries.NOISE else ""
        scale = f"-w{self.guidance_scale:g}" if self.guidance_scale is not None else ""
        model = f"-{re.sub(r'[^A-Za-z0-9._+-]', '-', self.model_name)}" if self.model is not None else ""
        return f"{self.scheduler}-{self.steps}{noise}{scale}{model}"

    @property
    def spec(self) -> str:
        """As the flag takes it back: ``ddim:50``, ``dpm++:10:noise``, ``lcm:4:w1.5@lcm=FOLDER``."""
        noise = ":noise" if self.stage_boundaries is StageBoundaries.NOISE else ""
        scale = f":w{self.guidance_scale:g}" if self.guidance_scale is not None else ""
        model = f"@{self.model}" if self.model is not None else ""
        return f"{self.scheduler}:{self.steps}{noise}{scale}{model}"

    @property
    def short_spec(self) -> str:
        """The spec with the model's name instead of its folder (tables and figures)."""
        return self.spec if self.model is None else self.spec.replace(f"@{self.model}", f"@{self.model_name}")

    @property
    def method(self) -> str:
        """The evaluation method that runs it: Face-diffuser at the run's alpha and beta, by noise level if asked."""
        return "face-diffuser" + (":stage_boundaries=noise" if self.stage_boundaries is StageBoundaries.NOISE else "")


def parse_setting(spec: str) -> SamplerSetting:
    """``SCHEDULER:STEPS``, then optionally ``:noise`` (or ``:steps``, the paper's rule), ``:wSCALE`` (the guidance
    scale) and ``@MODEL`` (a pipeline folder or ``NAME=FOLDER``, checked when the study runs).

    Raises ``ValueError`` naming the spec and what it takes."""
    from ..io.loading import SCHEDULERS

    text, at, model = spec.strip().partition("@")
    if at and not model.strip():
        raise ValueError(f"Sampler setting {spec!r}: name a model after '@' (a pipeline folder or NAME=FOLDER).")
    parts = text.lower().split(":")
    usage = (
        "write SCHEDULER:STEPS, then optionally :noise, :wSCALE (the guidance scale) and @MODEL, e.g. dpm++:10, "
        "unipc:8:noise or lcm:4:w1.5@LCM-FOLDER"
    )
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"Sampler setting {spec!r}: {usage}.")
    name, steps = parts[0], parts[1]
    if name not in SCHEDULERS:
        raise ValueError(f"Sampler setting {spec!r}: unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}.")
    if not steps.isdigit() or not 1 <= int(steps) <= MAX_STEPS:
        raise ValueError(f"Sampler setting {spec!r}: the steps must be a whole number from 1 to {MAX_STEPS}.")
    rest = parts[2:]
    bounds, scale = StageBoundaries.STEPS.value, None
    if rest and not rest[0].startswith("w"):
        if rest[0] not in [b.value for b in StageBoundaries]:
            raise ValueError(f"Sampler setting {spec!r}: the third part must be noise or steps, or wSCALE; {usage}.")
        bounds = rest.pop(0)
    if rest:
        part = rest.pop(0)
        try:
            scale = float(part[1:]) if part.startswith("w") else math.nan
        except ValueError:
            scale = math.nan
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"Sampler setting {spec!r}: {part!r} must be w and a guidance scale, e.g. w1.5; {usage}.")
    if rest:
        raise ValueError(f"Sampler setting {spec!r}: {usage}.")
    return SamplerSetting(name, int(steps), StageBoundaries(bounds), scale, model.strip() if at else None)


def parse_settings(specs: Sequence[str]) -> list[SamplerSetting]:
    """Each spec parsed; the first is the reference; a setting given twice is refused."""
    settings = [parse_setting(s) for s in specs]
    if len(settings) < 2:
        raise ValueError("Give at least two sampler settings: the first is the reference the others are compared with.")
    labels = [s.label for s in settings]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"Sampler setting {twice[0]} is given twice; give each once.")
    return settings


def unet_evaluations(setting: SamplerSetting, scheduler_config: dict[str, Any], sampling: SamplingSettings) -> int:
    """UNet evaluations of both models per image of ``setting`` on a model whose scheduler config is
    ``scheduler_config``: its scheduler's own timesteps (a multistep or PNDM sampler may take more than one per
    step), staged by ``sampling``'s alpha, beta and guidance base."""
    from ..fusion import unet_evaluations_per_image
    from ..io.loading import scheduler_from_config
    from ..step import sampling_stages

    scheduler = scheduler_from_config(setting.scheduler, scheduler_config)
    scheduler.set_timesteps(setting.steps)
    staged = sampling.replace(num_inference_steps=setting.steps, stage_boundaries=setting.stage_boundaries)
    stages = sampling_stages(scheduler.timesteps, staged, scheduler.config.num_train_timesteps)
    return unet_evaluations_per_image(stages, staged.subject_guidance_base)


def paired_difference(rows: Sequence[Any], reference: Sequence[Any], column: str, group: str | None) -> Estimate:
    """The mean over images of ``column`` in ``rows`` less the same image's (same case, same image index, hence the
    same seed) in ``reference``, with its percentile interval under resampling of cases: a paired bootstrap.

    ``group``: only the images of one person (``"single"``) or of several (``"multi"``); ``None``: all. Images with
    a non-finite score on either side are left out. Example: IP 0.40 and 0.30 in two cases against 0.38 and 0.29 is
    the difference 0.015, and as both cases moved alike its interval is [0.01, 0.02], where the unpaired means'
    intervals both span 0.29 to 0.40."""
    base = {(r.case_id, r.image_index): getattr(r, column) for r in reference}
    clusters: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if not _in_group(row, group):
            continue
        other = base.get((row.case_id, row.image_index))
        value = getattr(row, column)
        if other is not None and math.isfinite(value) and math.isfinite(other):
            clusters[row.case_id].append(value - other)
    return bootstrap_mean(clusters)


def mean_of(rows: Sequence[Any], column: str, group: str | None) -> Estimate:
    """The setting's own mean of ``column`` (group ``None``: all cases), with its unpaired interval."""
    clusters: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if _in_group(row, group):
            clusters[row.case_id].append(getattr(row, column))
    return bootstrap_mean(clusters)


def _in_group(row: Any, group: str | None) -> bool:
    """Whether ``row`` counts for ``group``: ``"single"`` images of one person, ``"multi"`` of two or more, ``None``
    every image (whatever the benchmark calls its prompt groups)."""
    if group is None:
        return True
    people = len(row.subjects.split(";"))
    return people == 1 if group == "single" else people > 1


def within_noise(difference: dict[str, Any]) -> bool:
    """Whether a paired difference is no loss: its interval holds 0 or lies above it (a significant gain is no
    cost). A difference with no images is not."""
    return difference["high"] is not None and difference["high"] >= 0


def compare(results: dict[str, dict[str, Any]], reference: str) -> dict[str, Any]:
    """The study's summary from each setting's ``{"setting", "evaluations", "rows"}`` (in the order given; the
    ``reference`` label first): per setting its means, its paired differences from the reference, whether every
    difference is within noise, and the cheapest such setting within :data:`BUDGET`."""
    ref_rows = results[reference]["rows"]
    settings = []
    for label, result in results.items():
        rows = result["rows"]
        entry = {
            "label": label,
            "spec": result["setting"].short_spec,
            "model": result["setting"].model,
            "evaluations": result["evaluations"],
            "images": len(rows),
            "means": {},
            "differences": {},
        }
        for column, group, title in STUDY_METRICS:
            entry["means"][title] = mean_of(rows, column, group).to_json()
            if label != reference:
                entry["differences"][title] = paired_difference(rows, ref_rows, column, group).to_json()
        scored = [d for d in entry["differences"].values() if d["images"]]  # a score the run did not compute: none
        entry["within_noise"] = label == reference or (bool(scored) and all(within_noise(d) for d in scored))
        settings.append(entry)

    def cheapest(budget: int) -> str | None:
        eligible = [s for s in settings if s["label"] != reference and s["within_noise"] and s["evaluations"] <= budget]
        best = min(eligible, key=lambda s: (s["evaluations"], settings.index(s)), default=None)
        return best["label"] if best else None

    return {
        "reference": reference,
        "budget": BUDGET,
        "interval": {"confidence": CONFIDENCE, "resamples": RESAMPLES, "unit": "case", "kind": "paired percentile"},
        "settings": settings,
        "cheapest_within_noise": cheapest(BUDGET),
        # a distilled model's budget, a tenth of the paper's evaluations
        "distilled_budget": DISTILLED_BUDGET,
        "cheapest_within_noise_distilled": cheapest(DISTILLED_BUDGET),
    }


def _number(estimate: dict[str, Any], scale: float, digits: int) -> str:
    return "-" if estimate["mean"] is None else f"{estimate['mean'] * scale:.{digits}f}"


def _difference(estimate: dict[str, Any], scale: float, digits: int) -> str:
    if estimate["mean"] is None:
        return "-"
    mean, low, high = (f"{estimate[k] * scale:+.{digits}f}" for k in ("mean", "low", "high"))
    cell = f"{mean} [{low}, {high}]"
    return cell if within_noise(estimate) else f"**{cell}**"


def markdown(summary: dict[str, Any], header: str = "") -> str:
    """The paired table: per setting its UNet evaluations per image, its means, and each difference from the
    reference with its paired 95% interval (bold: significantly below the reference)."""
    titles = [title for _, _, title in STUDY_METRICS]
    percent = {"place+time+clothing", "identity top-1"}
    lines = [header] if header else []
    lines += [
        f"Reference: `{summary['reference']}`. Each cell: the setting's mean, then its difference from the reference "
        "with the 95% interval of a paired bootstrap over cases (same cases, same seeds); **bold**: the interval lies "
        "below 0. Accuracies in percentage points.",
        "",
        "| setting | UNet evals / image | " + " | ".join(titles) + " | within noise |",
        "|---|---|" + "---|" * len(titles) + "---|",
    ]
    for s in summary["settings"]:
        cells = []
        for title in titles:
            scale, digits = (100.0, 1) if title in percent else (1.0, 3)
            cell = _number(s["means"][title], scale, digits)
            if title in s["differences"]:
                cell += " " + _difference(s["differences"][title], scale, digits)
            cells.append(cell)
        verdict = "reference" if s["label"] == summary["reference"] else ("yes" if s["within_noise"] else "no")
        lines.append(f"| `{s['spec']}` | {s['evaluations']} | " + " | ".join(cells) + f" | {verdict} |")
    cheapest = _spec_of(summary, summary["cheapest_within_noise"])
    lines.append("")
    if any(s["evaluations"] <= summary.get("distilled_budget", 0) for s in summary["settings"]):
        tenth = _spec_of(summary, summary.get("cheapest_within_noise_distilled"))
        lines.append(
            f"Cheapest setting within noise at <= {summary['distilled_budget']} UNet evaluations per image: "
            + (f"`{tenth}`." if tenth else "none.")
        )
    lines += [
        f"Cheapest setting within noise at <= {summary['budget']} UNet evaluations per image: "
        + (f"`{cheapest}`." if cheapest else "none."),
    ]
    return "\n".join(lines) + "\n"


def _spec_of(summary: dict[str, Any], label: str | None) -> str | None:
    """The spec (``dpm++:10``) of the setting labelled ``label`` (``dpm++-10``) in ``summary``."""
    return next((s["spec"] for s in summary["settings"] if s["label"] == label), None)


def pareto_plot(summary: dict[str, Any], path: Path) -> bool:
    """``pareto.png``: one panel per score, each setting's paired difference from the reference (with its interval)
    against its UNet evaluations per image; filled: within noise; the line joins the settings no cheaper setting
    beats (the Pareto front of the means). Returns whether it was drawn (matplotlib present)."""
    from .figures import _matplotlib_figure

    titles = [title for _, _, title in STUDY_METRICS]
    figure = _matplotlib_figure(15, 9)
    if figure is None:
        return False
    grid = figure.subplots(2, 3)
    axes = list(grid.flat)
    settings = summary["settings"]
    reference = next(s for s in settings if s["label"] == summary["reference"])
    # Settings of one cost sit side by side: each sampler family a little to the left or right of the true cost.
    families = list(
        dict.fromkeys(s["spec"].split(":")[0] + (":noise" if s["spec"].endswith(":noise") else "") for s in settings)
    )
    for ax, title in zip(axes, titles):
        scale = 100.0 if title in ("place+time+clothing", "identity top-1") else 1.0
        points = []
        for s in settings:
            d = s["differences"].get(title) or {"mean": 0.0, "low": 0.0, "high": 0.0}
            if d["mean"] is None:
                continue
            family = s["spec"].split(":")[0] + (":noise" if s["spec"].endswith(":noise") else "")
            shift = 1.0 + 0.035 * (families.index(family) - (len(families) - 1) / 2)
            x, y = s["evaluations"] * shift, d["mean"] * scale
            err = [[y - d["low"] * scale], [d["high"] * scale - y]]
            filled = s is reference or within_noise(d)
            colour = "black" if s is reference else ("tab:blue" if filled else "tab:red")
            ax.errorbar(
                x, y, yerr=err, fmt="o", color=colour, mfc=colour if filled else "white", ms=4, capsize=2, lw=0.8
            )
            ax.annotate(s["spec"], (x, y), textcoords="offset points", xytext=(3, 2), fontsize=6)
            points.append((s["evaluations"], y))
        front, best = [], -math.inf
        for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:green", lw=1, alpha=0.7)
        ax.axhline(0.0, color="gray", lw=0.8, ls="--")
        ax.axvline(summary["budget"], color="gray", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("UNet evaluations per image (log)")
        unit = " (points)" if scale == 100.0 else ""
        ax.set_title(f"{title}: difference from {reference['spec']}{unit}", fontsize=10)
    legend = axes[-1]
    legend.axis("off")
    cheapest = _spec_of(summary, summary["cheapest_within_noise"])
    legend.text(
        0.0,
        0.95,
        "Each point: a setting's mean difference from the reference,\n"
        "same cases and seeds, with its paired 95% interval\n"
        "(bootstrap over cases).\n\n"
        "filled blue: within noise (the interval holds 0 or lies above)\n"
        "open red: significantly below the reference\n"
        "black: the reference\n"
        "green line: the Pareto front of the means\n"
        f"dotted: the {summary['budget']}-evaluation budget (a fifth of 130)\n"
        "settings of one cost are drawn a little apart\n\n"
        f"cheapest within noise at <= {summary['budget']}: {cheapest or 'none'}",
        va="top",
        fontsize=10,
        transform=legend.transAxes,
    )
    figure.savefig(path, dpi=110)
    return True


def run_study(config: Any, specs: Sequence[str]) -> tuple[dict[str, Any], list[Path]]:
    """Runs ``config`` (an :class:`~.harness.EvaluationConfig`, one model) under every setting of ``specs`` (the
    first the reference), each in ``config.out / <label>``, then writes the paired table and the figure into
    ``config.out``. Returns the summary and the files written."""
    from ..io.loading import model_folder
    from ..io.output_folders import check, claim, own
    from .harness import COMMAND, evaluate
    from .reports import read_scores

    settings = parse_settings(specs)
    config = config.resolved()
    if len(config.model) != 1:
        raise ValueError("The sampler study compares settings of one model: give one --model.")
    if config.scheduler is not None or config.steps is not None or config.paper_sampling:
        raise ValueError(
            "--samplers sets the scheduler and the steps of each run: drop --scheduler, --steps and --paper-sampling."
        )
    models, _, _ = config.check()
    out = Path(config.out)
    # Each setting's run, checked (its own model and guidance scale included) before anything is drawn.
    runs, inputs = [], list(config.inputs(models))
    for setting in settings:
        changes: dict[str, Any] = {"out": out / setting.label, "methods": [setting.method]}
        changes.update(scheduler=setting.scheduler, steps=setting.steps)
        if setting.guidance_scale is not None:
            changes["guidance_scale"] = setting.guidance_scale
        if setting.model is not None:
            changes["model"] = [setting.model]
        run = replace(config, **changes)
        try:
            own_models = run.check()[0] if setting.model is not None or setting.guidance_scale is not None else models
            source = own_models[0].source
            scheduler_config = _scheduler_config(model_folder(source), source)
        except (ValueError, OSError) as err:
            raise ValueError(f"Sampler setting {setting.spec!r}: {err}") from None
        inputs += [p for p in run.inputs(own_models) if p not in inputs]
        runs.append((setting, run, scheduler_config))
    check(out, command=COMMAND, inputs=inputs, legacy=(_holds_only_runs,))
    claim(out, command=COMMAND, inputs=inputs, legacy=(_holds_only_runs,))
    results: dict[str, dict[str, Any]] = {}
    for setting, run, scheduler_config in runs:
        if not _is_run(out / setting.label):  # an evaluation's own folder is taken as it is (its run.json decides)
            own(out, f"{setting.label}/", command=COMMAND)
        logger.info("Sampler study: %s into %s", setting.spec, run.out)
        evaluate(run)
        results[setting.label] = {
            "setting": setting,
            "evaluations": unet_evaluations(setting, scheduler_config, run.sampling()),
            "rows": read_scores(run.out / "scores.csv"),
        }
    summary = compare(results, settings[0].label)
    summary["run"] = {
        "benchmark": config.benchmark,
        "data": str(config.data),
        "model": models[0].source,
        "seed": config.seed,
        "alpha": config.alpha,
        "beta": config.beta,
    }
    files = own(out, "samplers.md", "samplers.json", "pareto.png", command=COMMAND)
    header = (
        f"Sampler study on `{config.benchmark}` ({config.data}), model `{models[0].source}`, seed {config.seed}, "
        f"alpha {config.alpha:g} / beta {config.beta:g}.\n"
    )
    return summary, _write_study(files, summary, header)


# What pooled studies must share: a difference in any of these changes what a setting's images are of.
POOLED_RUN_FIELDS = ("benchmark", "data", "model", "alpha", "beta")


def pool_rows(draws: Sequence[Sequence[Any]]) -> list[Any]:
    """The rows of one setting drawn under several seeds, as one list: image ``i`` of the ``d``-th draw becomes image
    ``d * stride + i`` (``stride`` one more than the largest image index), so that :func:`paired_difference` pairs
    each image with the same case, seed and image of the reference, while the bootstrap still resamples cases, each
    with its images of every seed."""
    stride = 1 + max((row.image_index for rows in draws for row in rows), default=0)
    return [replace(row, image_index=d * stride + row.image_index) for d, rows in enumerate(draws) for row in rows]


def pool_studies(studies: Sequence[Path], out: Path) -> tuple[dict[str, Any], list[Path]]:
    """The paired table of finished studies of one model on one benchmark under other seeds, pooled: each setting's
    images of every study against the reference's of the same study, cases resampled (each case with its images of
    every seed). A longer validation study is the same study run again with ``--seed``, then pooled.

    The settings are those every study ran, in the first study's order; the reference must be the first of each.
    Writes ``samplers.md``, ``samplers.json`` and ``pareto.png`` into ``out``; returns the summary and the files.
    Refuses, in one sentence and before writing anything, fewer than two studies, a folder that is not a finished
    study, studies of another benchmark, data, model or stages, a seed given twice, and settings whose cost differs."""
    from ..io.files import read_json
    from ..io.output_folders import check, claim, own
    from .harness import COMMAND
    from .reports import read_scores

    if len(studies) < 2:
        raise ValueError("Give at least two sampler studies to pool (the --out folders of `evaluate --samplers`).")
    summaries = []
    for study in studies:
        path = Path(study) / "samplers.json"
        if not path.is_file():
            raise ValueError(f"{study} holds no samplers.json: give the --out folder of a finished sampler study.")
        summary = read_json(path, dict, "a sampler study's summary")
        if not isinstance(summary.get("run"), dict) or not isinstance(summary.get("settings"), list):
            raise ValueError(f"{path} is not a sampler study's summary: it has no run or settings.")
        summaries.append(summary)
    first = summaries[0]
    for study, summary in zip(studies[1:], summaries[1:]):
        for name in POOLED_RUN_FIELDS:
            if summary["run"].get(name) != first["run"].get(name):
                raise ValueError(
                    f"{study} differs from {studies[0]} in its {name} ({summary['run'].get(name)} against "
                    f"{first['run'].get(name)}): pool studies that differ only in their seed."
                )
        if summary["reference"] != first["reference"]:
            raise ValueError(
                f"{study} has the reference {summary['reference']}, {studies[0]} {first['reference']}: pool studies "
                "with the same reference."
            )
    seeds = [summary["run"].get("seed") for summary in summaries]
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:
        raise ValueError(f"Two of the studies drew seed {twice[0]}: pooling them would count the same images twice.")
    labels = [s["label"] for s in first["settings"]]
    shared = [label for label in labels if all(label in [s["label"] for s in x["settings"]] for x in summaries)]
    if len(shared) < 2:
        raise ValueError("The studies share no setting besides the reference: there is nothing to pool.")
    left_out = sorted({s["label"] for x in summaries for s in x["settings"]} - set(shared))
    results: dict[str, dict[str, Any]] = {}
    for label in shared:
        entries = [next(s for s in x["settings"] if s["label"] == label) for x in summaries]
        costs = sorted({e["evaluations"] for e in entries})
        if len(costs) > 1:
            raise ValueError(
                f"Setting {entries[0]['spec']} costs {' and '.join(map(str, costs))} UNet evaluations in different "
                "studies: pool studies of the same model."
            )
        setting = parse_setting(entries[0]["spec"].partition("@")[0])
        setting = replace(setting, model=entries[0].get("model"))
        draws = []
        for study in studies:
            scores = Path(study) / label / "scores.csv"
            if not scores.is_file():
                raise ValueError(f"{scores} is missing: {study} is not a finished sampler study.")
            draws.append(read_scores(scores))
        results[label] = {"setting": setting, "evaluations": costs[0], "rows": pool_rows(draws)}
    inputs = list(studies)
    check(out, command=COMMAND, inputs=inputs)
    claim(out, command=COMMAND, inputs=inputs)
    pooled = compare(results, first["reference"])
    pooled["run"] = {**{name: first["run"].get(name) for name in POOLED_RUN_FIELDS}, "seeds": seeds}
    pooled["studies"] = [str(study) for study in studies]
    pooled["left_out"] = left_out
    files = own(out, "samplers.md", "samplers.json", "pareto.png", command=COMMAND)
    run = pooled["run"]
    header = (
        f"Sampler study on `{run['benchmark']}` ({run['data']}), model `{run['model']}`, pooled over seeds "
        f"{', '.join(map(str, seeds))}, alpha {run['alpha']:g} / beta {run['beta']:g}."
        + (f" Settings not run in every study, left out: {', '.join(left_out)}." if left_out else "")
        + "\n"
    )
    return pooled, _write_study(files, pooled, header)


def _write_study(files: list[Path], summary: dict[str, Any], header: str) -> list[Path]:
    """Writes a study's ``samplers.md``, ``samplers.json`` and ``pareto.png`` (``files``, owned); returns those
    written (no figure without matplotlib)."""
    from ..io.outputs import atomic_write
    from .reports import write_json

    text = markdown(summary, header).encode("utf-8")
    atomic_write(files[0], lambda f: f.write(text), overwrite=True)
    write_json(files[1], summary)
    written = files[:2]
    if pareto_plot(summary, files[2]):
        written.append(files[2])
    return written


def _is_run(folder: Path) -> bool:
    """Whether ``folder`` is an evaluation's output folder (it holds the marker of ``facediffuser evaluate``)."""
    from ..io.output_folders import read_marker
    from .harness import COMMAND

    marker = read_marker(folder) if folder.is_dir() else None
    return marker is not None and marker["command"] == COMMAND


def _holds_only_runs(folder: Path) -> bool:
    """A folder of evaluations and nothing else, such as a study's settings run one by one with ``evaluate``: the
    study takes it over."""
    entries = [p for p in folder.iterdir()]
    return bool(entries) and all(_is_run(p) for p in entries)


def _scheduler_config(folder: Path | None, source: str) -> dict[str, Any]:
    """The model's own scheduler config (its ``scheduler/`` folder); a hub model's is read when it loads."""
    if folder is not None:
        path = folder / "scheduler" / "scheduler_config.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    from ..io.loading import load_pipeline

    return dict(load_pipeline(source, device="cpu").scheduler.config)
