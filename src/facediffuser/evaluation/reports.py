"""What an evaluation writes as text: per-image scores (CSV), a summary (JSON) and tables (markdown) in the form of the
paper's Table 1, each mean with its 95% bootstrap interval and the number of images behind it, per method and model,
per prompt group and per subject. :func:`combine_tables` merges finished runs into one Table 1, after checking that
everything that changes a score was the same.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..io.outputs import atomic_write
from .methods import Variant
from .statistics import CONFIDENCE, RESAMPLES, bootstrap_mean

# Table 1 of the paper (FaceNet IP, CLIP ViT-L/14 PC): method -> (single IP, single PC, multi IP, multi PC).
PAPER_TABLE_1 = {
    "ELITE": (0.228, 0.146, None, None),
    "DreamBooth": (0.273, 0.239, None, None),
    "Custom-Diffusion": (0.434, 0.233, None, None),
    "Subject-Diffusion": (0.605, 0.228, 0.432, 0.205),
    "FastComposer": (0.514, 0.243, 0.461, 0.235),
    "Face-diffuser": (0.708, 0.325, 0.593, 0.319),
}
METRICS = ("ip", "pc")
# Per-image accuracies of what a case asked for (benchmarks whose cases carry attributes, e.g. mini): 1 right, 0
# wrong, the mean over the people of a two-person image; NaN where not scored. The two-person ones (NaN on one-person
# images: not applicable) are what the means hide: each person's face in their own place, one person drawn twice
# (leak), the two drawn in each other's places (swap), each half wearing the other person's colour, each face drawn on
# the person wearing its own colour wherever the two stand (dressed).
TWO_PERSON_METRICS = ("identity_placed", "leak", "swap", "clothing_swap", "identity_dressed")
ATTRIBUTE_METRICS = ("place", "time", "clothing", "scene", "identity", *TWO_PERSON_METRICS)
ATTRIBUTE_TITLES = {
    "place": "place",
    "time": "time",
    "clothing": "clothing colour",
    "scene": "place+time+clothing",
    "identity": "identity top-1",
    "identity_placed": "identity in place",
    "leak": "leak",
    "swap": "swap",
    "clothing_swap": "clothing swapped",
    "identity_dressed": "face on own clothes",
}
# Their scores.csv columns: ``<metric>_acc`` for accuracies (1 right), ``<metric>_rate`` for faults (1: it happened).
FAULTS = ("leak", "swap", "clothing_swap")
ATTRIBUTE_COLUMNS = {m: f"{m}_rate" if m in FAULTS else f"{m}_acc" for m in ATTRIBUTE_METRICS}
# Settings under which two runs' scores are comparable (run.json keys), whatever their benchmark.
SCORE_SETTINGS = ("seed", "sampling", "scheduler", "dtype", "height", "width")
# ... and, for two runs of one benchmark kind, the cases themselves.
CASE_SETTINGS = ("benchmark", "data", "prompts_sha256", "images_per_prompt")


@dataclass
class ScoreRow:
    """One generated image and its scores (a row of ``scores.csv``)."""

    model: str
    method: str  # the variant's label, <model>/<method label>
    alpha: float
    beta: float
    case_id: str
    group: str
    subjects: str
    prompt: str
    text: str
    image_index: int
    image: str
    ip: float
    faces: int
    pc: float
    ip_backend: str
    clip_model: str
    rank: int
    generated: bool
    place_acc: float = math.nan
    time_acc: float = math.nan
    clothing_acc: float = math.nan
    scene_acc: float = math.nan
    identity_acc: float = math.nan
    identity_placed_acc: float = math.nan
    leak_rate: float = math.nan
    swap_rate: float = math.nan
    clothing_swap_rate: float = math.nan
    identity_dressed_acc: float = math.nan
    predicted: str = ""  # JSON: what the attribute scorer read (place, time, clothing, identity, placed)


def write_scores(path: Path, rows: Sequence[ScoreRow]) -> None:
    names = [f.name for f in fields(ScoreRow)]

    def write(f) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
        f.write(text.getvalue().encode("utf-8"))

    atomic_write(path, write, overwrite=True)


def read_scores(path: Path) -> list[ScoreRow]:
    """Reads a ``scores.csv`` back (NaN scores stay NaN)."""
    types = {f.name: f.type for f in fields(ScoreRow)}
    converters = {"float": float, "int": int, "bool": lambda v: v == "True", "str": str}
    with path.open(newline="", encoding="utf-8") as f:
        return [ScoreRow(**{k: converters[types[k]](v) for k, v in record.items()}) for record in csv.DictReader(f)]


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), overwrite=True)


# ---------------------------------------------------------------------------------------------------- summary
def _estimates(rows: Sequence[ScoreRow], attributes: bool = False) -> dict[str, Any]:
    """``images`` plus, per metric, the mean, its interval and the images behind it (cases resampled); with
    ``attributes``, also ``accuracy``: the same per attribute metric, and ``two_person_images`` (where the
    two-person metrics apply)."""
    out: dict[str, Any] = {"images": len(rows)}

    def estimate(column: str) -> dict[str, Any]:
        by_case: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            by_case[row.case_id].append(getattr(row, column))
        return bootstrap_mean(by_case).to_json()

    for metric in METRICS:
        out[metric] = estimate(metric)
    if attributes:
        out["accuracy"] = {m: estimate(ATTRIBUTE_COLUMNS[m]) for m in ATTRIBUTE_METRICS}
        out["two_person_images"] = sum(1 for row in rows if len(row.subjects.split(";")) == 2)
    return out


def has_attributes(rows: Sequence[ScoreRow]) -> bool:
    """Whether any row carries an attribute score (the summary and tables then show them)."""
    return any(math.isfinite(getattr(r, ATTRIBUTE_COLUMNS[m])) for r in rows for m in ATTRIBUTE_METRICS)


def summarize(rows: Sequence[ScoreRow], variants: Sequence[Variant], header: dict[str, Any]) -> dict[str, Any]:
    """The summary JSON: ``header`` (benchmark, backends, settings) plus, per variant, the estimates overall, per
    prompt group and per subject (an image of two people counts for each of them).

    NaN scores (an image whose references show no face, or a metric not computed) are left out and counted. When
    rows carry attribute scores, every estimate also has ``accuracy`` (per attribute metric).
    """
    attributes = has_attributes(rows)
    by_variant: dict[str, list[ScoreRow]] = defaultdict(list)
    for row in rows:
        by_variant[row.method].append(row)
    results = {}
    for variant in variants:
        mine = by_variant.get(variant.label, [])
        groups: dict[str, list[ScoreRow]] = defaultdict(list)
        subjects: dict[str, list[ScoreRow]] = defaultdict(list)
        for row in mine:
            groups[row.group].append(row)
            for name in row.subjects.split(";"):
                subjects[name].append(row)
        people = [len(r.subjects.split(";")) for r in mine]
        results[variant.label] = {
            "model": variant.model.name,
            "model_source": variant.model.source,
            "method": variant.method.name,
            "method_label": variant.method.label,
            "display_name": variant.method.display_name,
            "alpha": variant.method.alpha,
            "beta": variant.method.beta,
            "guidance_base": variant.method.guidance_base.value if variant.method.guidance_base else None,
            "options": {k: getattr(v, "value", v) for k, v in variant.method.options},
            **_estimates(mine, attributes),
            "ip_unscorable": sum(1 for r in mine if not math.isfinite(r.ip)),
            "all_faces_found": (sum(1 for r, n in zip(mine, people) if r.faces >= n) / len(mine)) if mine else None,
            "groups": {g: _estimates(rs, attributes) for g, rs in groups.items()},
            "subjects": {s: _estimates(rs, attributes) for s, rs in sorted(subjects.items())},
        }
    interval = {"confidence": CONFIDENCE, "resamples": RESAMPLES, "unit": "case", "kind": "percentile bootstrap"}
    return {**header, "interval": interval, "methods": results}


# ---------------------------------------------------------------------------------------------------- tables
def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _cell(estimate: dict[str, Any] | None, images: int | None = None) -> str:
    """``0.512 [0.480, 0.545]``; ``(n=...)`` added when fewer images than the row's count were scored."""
    if not estimate or estimate.get("mean") is None:
        return "-"
    text = f"{_fmt(estimate['mean'])} [{_fmt(estimate['low'])}, {_fmt(estimate['high'])}]"
    if images is not None and estimate["images"] != images:
        text += f" (n={estimate['images']})"
    return text


def _backend_line(summary: dict[str, Any]) -> str:
    return (
        f"IP backend: `{summary.get('ip_backend')}` ({json.dumps(summary.get('ip_backend_settings', {}))}). "
        f"PC model: `{summary.get('clip_model', '-')}`. IP scores of different backends are on different scales: "
        "compare rows of one table only. Intervals: 95% percentile bootstrap over cases (all images of a case "
        f"resampled together, {RESAMPLES} resamples). `images` is the number of images behind each mean."
    )


def _mixed_table(results) -> list[str]:
    """Table 1's four columns from the ``single`` and ``multi`` groups of a mixed benchmark's rows."""
    lines = [
        "| model | method | single IP [95% CI] | single PC [95% CI] | single images "
        "| multi IP [95% CI] | multi PC [95% CI] | multi images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        parts = []
        for kind in ("single", "multi"):
            g = r["groups"].get(kind)
            parts += [_cell(g["ip"], g["images"]), _cell(g["pc"], g["images"]), str(g["images"])] if g else ["-"] * 3
        lines.append(f"| {r['model']} | {r['display_name']} | " + " | ".join(parts) + " |")
    return lines


def _accuracy_table(results, gallery: int | None) -> list[str]:
    """Per-attribute accuracy rows (mean [95% CI]), overall and per group; ``n/a`` for a two-person metric of rows
    with no two-person image."""
    chance = f"; chance {100 / gallery:.0f}% among {gallery} people" if gallery else ""
    lines = [
        "",
        "Per-attribute accuracy: share of images where what the prompt asked is what CLIP zero-shot reads (place, "
        "time, each person's clothing colour on their own half, the first-named person's on the left; "
        "`place+time+clothing`: all of them) and where the face recognizer's first choice among the benchmark's "
        f"people is the asked person (identity{chance}). Two-person images count each person half. Two-person "
        "images only (`n/a` on one-person images): `identity in place`, the face whose centre is in a person's half "
        "is that person (left: the first-named); `leak`, share of images whose two faces are the same asked person; "
        "`swap`, share with the left face the second-named person and the right face the first-named; `clothing "
        "swapped`, share with each half in the other person's colour. A missing face is neither a leak nor a swap.",
        "",
        "| model | method | group | " + " | ".join(ATTRIBUTE_TITLES[m] for m in ATTRIBUTE_METRICS) + " | images |",
        "|---|---|---|" + "---|" * len(ATTRIBUTE_METRICS) + "---|",
    ]
    for r in results:
        rows = [("all", r)] + sorted(r["groups"].items()) if len(r["groups"]) > 1 else [("all", r)]
        for name, cell in rows:
            accuracy = cell.get("accuracy") or {}
            cells = " | ".join(
                "n/a"
                if m in TWO_PERSON_METRICS and cell.get("two_person_images") == 0
                else _cell(accuracy.get(m), cell["images"])
                for m in ATTRIBUTE_METRICS
            )
            lines.append(f"| {r['model']} | {r['display_name']} | {name} | {cells} | {cell['images']} |")
    return lines


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as markdown: the Table 1 columns of its benchmark kind (a mixed benchmark: both kinds, from its
    ``single`` and ``multi`` groups), the attribute accuracies when there are any, then per prompt group and per
    subject."""
    kind = summary.get("kind", "single")
    results = summary["methods"].values()
    lines = [f"# {summary.get('benchmark', 'evaluation')}", "", _backend_line(summary), ""]
    if kind == "mixed":
        lines += _mixed_table(results)
    else:
        lines += [f"| model | method | {kind} IP [95% CI] | {kind} PC [95% CI] | images |", "|---|---|---|---|---|"]
        for r in results:
            lines.append(
                f"| {r['model']} | {r['display_name']} | {_cell(r['ip'], r['images'])} "
                f"| {_cell(r['pc'], r['images'])} | {r['images']} |"
            )
    if any("accuracy" in r for r in results):
        lines += _accuracy_table(results, summary.get("gallery"))
    for title, key, column in (("Per prompt group", "groups", "group"), ("Per subject", "subjects", "subject")):
        names = sorted({g for r in results for g in r[key]})
        if len(names) < 2:
            continue
        lines += ["", f"{title}:", "", f"| model | method | {column} | IP [95% CI] | PC [95% CI] | images |"]
        lines.append("|---|---|---|---|---|---|")
        for r in results:
            for name in names:
                cell = r[key].get(name)
                if cell:
                    lines.append(
                        f"| {r['model']} | {r['display_name']} | {name} | {_cell(cell['ip'], cell['images'])} "
                        f"| {_cell(cell['pc'], cell['images'])} | {cell['images']} |"
                    )
    if summary.get("ip_backend") == "facenet" and kind in ("single", "multi"):
        lines += ["", "The paper's Table 1 (FaceNet IP, CLIP ViT-L/14 PC), for reference:", ""]
        lines += table1_paper_rows(kind)
    return "\n".join(lines) + "\n"


def table1_paper_rows(kind: str) -> list[str]:
    column = {"single": (0, 1), "multi": (2, 3)}[kind]
    rows = [f"| method | {kind} IP | {kind} PC |", "|---|---|---|"]
    for name, values in PAPER_TABLE_1.items():
        rows.append(f"| {name} (paper) | {_fmt(values[column[0]])} | {_fmt(values[column[1]])} |")
    return rows


def _settings_mismatch(summaries: Sequence[dict[str, Any]], get, what: str) -> None:
    values = [json.dumps(get(s), sort_keys=True, default=str) for s in summaries]
    if len(set(values)) > 1:
        shown = "; ".join(f"{s.get('benchmark', '?')}: {v}" for s, v in zip(summaries, values))
        raise ValueError(f"The runs differ in {what} ({shown}): their scores cannot share a table.")


def combine_tables(summaries: Sequence[dict[str, Any]]) -> str:
    """One Table 1 (single IP, single PC, multi IP, multi PC, with intervals and image counts) from finished runs.

    Runs may differ in their models and benchmark kinds. Everything else that changes a score must be the same:
    the IP backend and its settings, the CLIP model, the seed, the sampling settings (steps, guidance...), the
    scheduler, dtype and image size; runs of one kind must also share the benchmark, data, prompts and images per
    prompt. A model name must mean the same model in every run, and a row may come from one run only.

    Raises:
        ValueError: any of the above differs, naming what and where.
    """
    if not summaries:
        raise ValueError("Give at least one summary to combine.")
    mixed = [s.get("benchmark", "?") for s in summaries if s.get("kind") not in (None, "single", "multi")]
    if mixed:
        raise ValueError(
            f"The run(s) of {', '.join(mixed)} hold single- and multi-subject cases together: their table.md already "
            "has all four Table 1 columns; combine single-subject and multi-subject runs only."
        )
    _settings_mismatch(summaries, lambda s: s.get("ip_backend"), "IP backend")
    _settings_mismatch(summaries, lambda s: s.get("ip_backend_settings"), "IP backend settings")
    _settings_mismatch(summaries, lambda s: s.get("clip_model"), "CLIP model")
    for key in SCORE_SETTINGS:
        _settings_mismatch(summaries, lambda s, k=key: s.get("settings", {}).get(k), key)
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        by_kind[s.get("kind", "single")].append(s)
    for kind, group in by_kind.items():
        for key in CASE_SETTINGS:
            _settings_mismatch(group, lambda s, k=key: s.get("settings", {}).get(k), f"{key} ({kind}-subject runs)")
    sources: dict[str, str] = {}
    rows: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for s in summaries:
        for label, result in s["methods"].items():
            model, source = result.get("model", ""), result.get("model_source", "")
            if sources.setdefault(model, source) != source:
                raise ValueError(f"The model name {model!r} means {sources[model]} in one run and {source} in another.")
            key = (s.get("kind", "single"), label)
            if key in cells:
                raise ValueError(f"Two {key[0]}-subject runs both have the row {label!r}: keep one of them.")
            cells[key] = result
            rows.setdefault(label, result)
    lines = [
        f"IP backend: `{summaries[0].get('ip_backend')}` ({json.dumps(summaries[0].get('ip_backend_settings', {}))}). "
        f"PC model: `{summaries[0].get('clip_model')}`. 95% bootstrap intervals over cases; `images` per column.",
        "",
        "| model | method | single IP [95% CI] | single PC [95% CI] | single images "
        "| multi IP [95% CI] | multi PC [95% CI] | multi images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, first in rows.items():
        parts = []
        for kind in ("single", "multi"):
            r = cells.get((kind, label))
            parts += [_cell(r["ip"], r["images"]), _cell(r["pc"], r["images"]), str(r["images"])] if r else ["-"] * 3
        lines.append(f"| {first.get('model', '')} | {first['display_name']} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"
