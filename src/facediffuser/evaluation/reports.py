"""What an evaluation writes: per-image scores (CSV), a summary (JSON), a table in the form of the paper's Table 1
(markdown), the alpha/beta sweep plot (Fig. 8) and the mean fusion masks per stage (Fig. 9).

The plots need matplotlib (the ``eval`` extra) and are drawn with its object-oriented Agg canvas, which changes no
global backend. Without matplotlib they are skipped with a warning; the mask PNGs are written with PIL regardless.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..fusion import Stage
from .metrics import mean_of

logger = logging.getLogger(__name__)

MASK_KINDS = ("masks", "saliency_text", "saliency_subject")
MASK_TITLES = {
    "masks": "SNF mask M (1 = SDM)",
    "saliency_text": "softmax(Omega_T)",
    "saliency_subject": "softmax(Omega_S)",
}

# Table 1 of the paper (FaceNet IP, CLIP ViT-L/14 PC): method -> (single IP, single PC, multi IP, multi PC).
PAPER_TABLE_1 = {
    "ELITE": (0.228, 0.146, None, None),
    "DreamBooth": (0.273, 0.239, None, None),
    "Custom-Diffusion": (0.434, 0.233, None, None),
    "Subject-Diffusion": (0.605, 0.228, 0.432, 0.205),
    "FastComposer": (0.514, 0.243, 0.461, 0.235),
    "Face-diffuser": (0.708, 0.325, 0.593, 0.319),
}


@dataclass
class ScoreRow:
    """One generated image and its scores (a row of ``scores.csv``)."""

    method: str
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


def write_scores(path: Path, rows: Sequence[ScoreRow]) -> None:
    names = [f.name for f in fields(ScoreRow)]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    tmp.replace(path)


def read_scores(path: Path) -> list[ScoreRow]:
    """Reads a ``scores.csv`` back (NaN scores stay NaN)."""
    types = {f.name: f.type for f in fields(ScoreRow)}
    converters = {"float": float, "int": int, "bool": lambda v: v == "True", "str": str}
    with path.open(newline="", encoding="utf-8") as f:
        return [ScoreRow(**{k: converters[types[k]](v) for k, v in record.items()}) for record in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------------- summary
def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarize(rows: Sequence[ScoreRow], methods: Sequence[Any], header: dict[str, Any]) -> dict[str, Any]:
    """The summary JSON: ``header`` (benchmark, backends, settings) plus per-method and per-group means.

    ``methods`` are :class:`~facediffuser.evaluation.methods.Method` objects, in table order. NaN scores (an image
    whose references show no face, or a metric not computed) are left out of the means and counted.
    """
    by_method: dict[str, list[ScoreRow]] = defaultdict(list)
    for row in rows:
        by_method[row.method].append(row)
    results = {}
    for method in methods:
        mine = by_method.get(method.label, [])
        groups: dict[str, list[ScoreRow]] = defaultdict(list)
        for row in mine:
            groups[row.group].append(row)
        people = [len(r.subjects.split(";")) for r in mine]
        results[method.label] = {
            "method": method.name,
            "display_name": method.display_name,
            "alpha": method.alpha,
            "beta": method.beta,
            "images": len(mine),
            "ip": _json_number(mean_of(r.ip for r in mine)),
            "pc": _json_number(mean_of(r.pc for r in mine)),
            "ip_unscorable": sum(1 for r in mine if not math.isfinite(r.ip)),
            "all_faces_found": (sum(1 for r, n in zip(mine, people) if r.faces >= n) / len(mine)) if mine else None,
            "groups": {
                g: {
                    "images": len(rs),
                    "ip": _json_number(mean_of(r.ip for r in rs)),
                    "pc": _json_number(mean_of(r.pc for r in rs)),
                }
                for g, rs in groups.items()
            },
        }
    return {**header, "methods": results}


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as markdown: the Table 1 columns of its benchmark kind, then the means per prompt group."""
    kind = summary.get("kind", "single")
    backend = summary.get("ip_backend", "?")
    lines = [
        f"# {summary.get('benchmark', 'evaluation')}",
        "",
        f"IP backend: `{backend}` ({json.dumps(summary.get('ip_backend_settings', {}))}). "
        f"PC model: `{summary.get('clip_model', '-')}`. "
        "IP scores of different backends are on different scales: compare rows of one table only.",
        "",
        f"| method | {kind} IP | {kind} PC | images |",
        "|---|---|---|---|",
    ]
    for result in summary["methods"].values():
        lines.append(f"| {result['display_name']} | {_fmt(result['ip'])} | {_fmt(result['pc'])} | {result['images']} |")
    groups = sorted({g for r in summary["methods"].values() for g in r["groups"]})
    if len(groups) > 1:
        lines += ["", "Per prompt group (IP / PC):", "", "| method | " + " | ".join(groups) + " |"]
        lines.append("|---" * (len(groups) + 1) + "|")
        for result in summary["methods"].values():
            cells = []
            for g in groups:
                cell = result["groups"].get(g)
                cells.append(f"{_fmt(cell['ip'])} / {_fmt(cell['pc'])}" if cell else "-")
            lines.append(f"| {result['display_name']} | " + " | ".join(cells) + " |")
    if backend == "facenet":
        lines += ["", "The paper's Table 1 (FaceNet IP, CLIP ViT-L/14 PC), for reference:", ""]
        lines += table1_paper_rows(kind)
    return "\n".join(lines) + "\n"


def table1_paper_rows(kind: str) -> list[str]:
    column = {"single": (0, 1), "multi": (2, 3)}[kind]
    rows = [f"| method | {kind} IP | {kind} PC |", "|---|---|---|"]
    for name, values in PAPER_TABLE_1.items():
        rows.append(f"| {name} (paper) | {_fmt(values[column[0]])} | {_fmt(values[column[1]])} |")
    return rows


def combine_tables(summaries: Sequence[dict[str, Any]]) -> str:
    """One Table 1 (single IP, single PC, multi IP, multi PC) from the summaries of a single- and a multi-subject run.

    Raises:
        ValueError: the summaries used different IP backends or CLIP models, or two share a benchmark kind.
    """
    if not summaries:
        raise ValueError("Give at least one summary to combine.")
    for key in ("ip_backend", "clip_model"):
        values = {s.get(key) for s in summaries}
        if len(values) > 1:
            raise ValueError(f"The runs used different {key} values {sorted(map(str, values))}: one table each.")
    kinds = [s.get("kind") for s in summaries]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"Two runs share a benchmark kind ({kinds}); give one single- and one multi-subject run.")
    by_kind = {s["kind"]: s for s in summaries}
    labels: list[str] = []
    names: dict[str, str] = {}
    for s in summaries:
        for label, result in s["methods"].items():
            if label not in names:
                labels.append(label)
                names[label] = result["display_name"]
    lines = [
        f"IP backend: `{summaries[0].get('ip_backend')}`. PC model: `{summaries[0].get('clip_model')}`.",
        "",
        "| method | single IP | single PC | multi IP | multi PC |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        cells = []
        for kind in ("single", "multi"):
            result = by_kind.get(kind, {}).get("methods", {}).get(label)
            cells += [_fmt(result["ip"]), _fmt(result["pc"])] if result else ["-", "-"]
        lines.append(f"| {names[label]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- plots
def _matplotlib_figure(width: float, height: float):
    """A matplotlib ``Figure`` on an Agg canvas, or ``None`` (with a warning) when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: skipping the plots (pip install 'facediffuser[eval]').")
        return None
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def sweep_plot(summary: dict[str, Any], path: Path) -> bool:
    """Fig. 8: IP and PC against alpha (one line per beta), and the IP-PC trade-off. Returns whether it was drawn."""
    results = [r for r in summary["methods"].values() if r["images"]]
    figure = _matplotlib_figure(13, 4)
    if figure is None or not results:
        return False
    ax_ip, ax_pc, ax_both = figure.subplots(1, 3)
    by_beta: dict[float, list[dict]] = defaultdict(list)
    for r in results:
        by_beta[r["beta"]].append(r)
    for beta, rs in sorted(by_beta.items()):
        rs = sorted(rs, key=lambda r: r["alpha"])
        alphas = [r["alpha"] for r in rs]
        for ax, key in ((ax_ip, "ip"), (ax_pc, "pc")):
            values = [np.nan if r[key] is None else r[key] for r in rs]
            ax.plot(alphas, values, marker="o", label=f"beta={beta:g}")
    for ax, name in ((ax_ip, "IP"), (ax_pc, "PC")):
        ax.set_xlabel("alpha (end of stage I, fraction of steps)")
        ax.set_ylabel(name)
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for r in results:
        if r["ip"] is not None and r["pc"] is not None:
            ax_both.scatter(r["pc"], r["ip"])
            ax_both.annotate(f"a={r['alpha']:g}, b={r['beta']:g}", (r["pc"], r["ip"]), fontsize=8)
    ax_both.set_xlabel("PC")
    ax_both.set_ylabel("IP")
    ax_both.grid(alpha=0.3)
    figure.suptitle(f"{summary.get('benchmark', '')}: alpha/beta sweep (IP backend {summary.get('ip_backend')})")
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88, wspace=0.3)
    figure.savefig(path, dpi=100)
    return True


# ---------------------------------------------------------------------------------------------------- fusion masks
def mask_arrays(trace) -> dict[str, np.ndarray]:
    """A pipeline's :class:`~facediffuser.FusionTrace` -> ``{"<kind>_stage<k>": (B, h, w) mean over the stage}``."""
    out = {}
    for stage in Stage:
        for kind in MASK_KINDS:
            out[f"{kind}_stage{int(stage)}"] = trace.stage_mean(stage, kind).float().numpy()
    return out


class MaskAccumulator:
    """Running NaN-aware means of the per-image stage maps of one method (Fig. 9)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        for key, value in arrays.items():
            value = np.asarray(value, dtype=np.float64).reshape(-1, *np.shape(value)[-2:])  # (B, h, w)
            finite = np.isfinite(value)
            if key not in self.sums:
                self.sums[key] = np.zeros(value.shape[1:])
                self.counts[key] = np.zeros(value.shape[1:])
            if self.sums[key].shape != value.shape[1:]:
                logger.warning("Skipping %s maps of shape %s, not %s.", key, value.shape[1:], self.sums[key].shape)
                continue
            self.sums[key] += np.where(finite, value, 0.0).sum(axis=0)
            self.counts[key] += finite.sum(axis=0)

    def means(self) -> dict[str, np.ndarray]:
        """Keys whose maps were ever evaluated; positions never evaluated are NaN."""
        out = {}
        for key, total in self.sums.items():
            if self.counts[key].any():
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[key] = np.where(self.counts[key] > 0, total / np.maximum(self.counts[key], 1), np.nan)
        return out


def map_to_image(values: np.ndarray, *, normalize: bool, size: int = 256) -> PIL.Image.Image:
    """A ``(h, w)`` map as a gray image (NaN as black). ``normalize`` divides by the map's maximum (for the softmax
    saliency maps, whose values sum to 1); masks are already in ``[0, 1]``."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    if normalize and values.max() > 0:
        values = values / values.max()
    pixels = np.clip(np.round(values * 255), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(pixels, mode="L").resize((size, size), PIL.Image.Resampling.NEAREST)


def write_mask_images(means: dict[str, np.ndarray], folder: Path, title: str = "") -> list[Path]:
    """Fig. 9 for one method: ``<kind>_stage<k>.png`` per map (PIL) and ``fusion_masks.png``, a grid with stages as
    columns (matplotlib, when installed). Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, values in sorted(means.items()):
        path = folder / f"{key}.png"
        map_to_image(values, normalize=not key.startswith("masks")).save(path)
        written.append(path)
    figure = _matplotlib_figure(9, 8)
    if figure is None or not means:
        return written
    axes = figure.subplots(len(MASK_KINDS), len(Stage), squeeze=False)
    for row, kind in enumerate(MASK_KINDS):
        for col, stage in enumerate(Stage):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            key = f"{kind}_stage{int(stage)}"
            if row == 0:
                ax.set_title(f"stage {'I' * int(stage)} ({stage.name.lower()})")
            if col == 0:
                ax.set_ylabel(MASK_TITLES[kind])
            if key in means:
                limits = (0.0, 1.0) if kind == "masks" else (None, None)
                image = ax.imshow(means[key], cmap="viridis", vmin=limits[0], vmax=limits[1])
                figure.colorbar(image, ax=ax, shrink=0.8)
            else:
                ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes)
    figure.suptitle(title or "mean fusion masks and saliency per stage")
    figure.subplots_adjust(left=0.08, right=0.97, bottom=0.03, top=0.9, wspace=0.35, hspace=0.25)
    path = folder / "fusion_masks.png"
    figure.savefig(path, dpi=90)
    written.append(path)
    return written


def save_mask_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_mask_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def join_names(names: Iterable[str]) -> str:
    return ";".join(names)
