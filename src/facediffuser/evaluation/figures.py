"""The figures of an evaluation: the alpha/beta sweep (Fig. 8), the mean fusion masks per stage (Fig. 9), and a grid
of generated images beside their references, one column per method.

The plots need matplotlib (the ``eval`` extra) and are drawn with its object-oriented Agg canvas, which changes no
global backend. Without matplotlib they are skipped with a warning; the per-map PNGs are written with PIL regardless.

How the maps are shown:

* SNF masks are in ``[0, 1]`` (1 = the SDM's noise) and are drawn on that fixed scale, in the PNGs too.
* The saliency maps are softmaxes over the latent pixels: they sum to 1, so their values are about ``1 / (h * w)``.
  The figure shows them times ``h * w`` ("x uniform": 1 is a flat map, 3 is three times the mean weight), which keeps
  the colour-bar labels readable at any latent size. Each PNG is stretched from its own minimum (black) to its
  maximum (white), so its structure shows whatever the map's level.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..fusion import Stage
from ..io.outputs import atomic_write
from ..io.visualize import FLAT, map_to_image

logger = logging.getLogger(__name__)

MASK_KINDS = ("masks", "saliency_text", "saliency_subject")
MASK_TITLES = {
    "masks": "SNF mask M\n(1 = SDM noise)",
    "saliency_text": "TDM saliency\nsoftmax(Omega_T), x uniform",
    "saliency_subject": "SDM saliency\nsoftmax(Omega_S), x uniform",
}
STAGE_NAMES = {1: "I", 2: "II", 3: "III"}
GRID = {"color": "0.88", "linewidth": 0.8}


# ---------------------------------------------------------------------------------------------------- matplotlib
def _matplotlib_figure(width: float, height: float):
    """A matplotlib ``Figure`` on an Agg canvas with constrained layout, or ``None`` (with a warning) when matplotlib
    is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: skipping the plots (pip install 'facediffuser[eval]').")
        return None
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _few_ticks(axis, count: int = 4) -> None:
    """At most ``count`` ticks, written with as many decimals as their spacing needs and no offset or exponent, so
    close values neither run together nor repeat."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    formatter = ScalarFormatter(useOffset=False)
    formatter.set_powerlimits((-6, 6))
    axis.set_major_locator(MaxNLocator(count))
    axis.set_major_formatter(formatter)


# ---------------------------------------------------------------------------------------------------- Fig. 8
def _value(result: dict[str, Any], metric: str, which: str = "mean") -> float:
    """A summary's ``result[metric][which]`` (mean, low or high), NaN when it was not computed."""
    value = (result.get(metric) or {}).get(which)
    return np.nan if value is None else float(value)


def sweep_plot(summary: dict[str, Any], path: Path) -> bool:
    """Fig. 8: IP and PC against alpha with their 95% intervals (one line per model and beta), and IP against PC;
    one colour per line in all three panels and one legend for them. Returns whether it was drawn."""
    results = [r for r in summary["methods"].values() if r["images"]]
    figure = _matplotlib_figure(14, 4.8)
    if figure is None or not results:
        return False
    several_models = len({r.get("model") for r in results}) > 1
    series: dict[tuple[str, float, str], list[dict]] = defaultdict(list)
    for r in results:  # a method with its own SDM guidance base or sampling options is a line of its own
        options = ", ".join(f"{k}={v}" for k, v in (r.get("options") or {}).items())
        base = ", ".join(filter(None, [f"SDM base {r['guidance_base']}" if r.get("guidance_base") else "", options]))
        series[(r.get("model") or "", r["beta"], base)].append(r)
    ax_ip, ax_pc, ax_both = figure.subplots(1, 3)
    points = np.array([[_value(r, "pc"), _value(r, "ip")] for r in results])
    finite = points[np.isfinite(points).all(axis=1)]
    spans = np.ptp(finite, axis=0) if len(finite) else np.ones(2)
    near = np.where(spans > 0, spans, 1.0) * 0.02  # points closer than 2% of the axis span share one label
    handles = []
    for index, ((model, beta, base), rs) in enumerate(sorted(series.items())):
        colour = f"C{index % 10}"
        rs = sorted(rs, key=lambda r: r["alpha"])
        name = f"{model}, beta={beta:g}" if several_models else f"beta={beta:g}"
        name += f", {base}" if base else ""
        alphas = [r["alpha"] for r in rs]
        for ax, key in ((ax_ip, "ip"), (ax_pc, "pc")):
            means = np.array([_value(r, key) for r in rs])
            spans_ci = np.array([[_value(r, key, "low"), _value(r, key, "high")] for r in rs])
            errors = np.abs(spans_ci.T - means)  # (2, n): below and above the mean
            line = ax.errorbar(alphas, means, yerr=errors, marker="o", color=colour, capsize=3).lines[0]
        line.set_label(name)
        handles.append(line)
        labelled: list[tuple[np.ndarray, list[str]]] = []  # (position, alphas) of this line's labels
        for r in rs:
            point = np.array([_value(r, "pc"), _value(r, "ip")])
            if not np.isfinite(point).all():
                continue
            ax_both.scatter(*point, color=colour, zorder=3)
            for position, names in labelled:
                if (np.abs(position - point) <= near).all():
                    names.append(f"{r['alpha']:g}")
                    break
            else:
                labelled.append((point, [f"{r['alpha']:g}"]))
        for position, names in labelled:
            ax_both.annotate(
                "a=" + "/".join(names),
                tuple(position),
                xytext=(5, 5 - 11 * (index % 2)),  # alternate lines above and below their points
                textcoords="offset points",
                fontsize=8,
                color=colour,
            )
    for ax, name in ((ax_ip, "IP"), (ax_pc, "PC")):
        ax.set_xlabel("alpha (end of stage I, fraction of steps)")
        ax.set_ylabel(name)
        ax.set_xlim(-0.05, 1.05)
        _few_ticks(ax.yaxis, 5)
        ax.grid(**GRID)
    ax_both.set_xlabel("PC")
    ax_both.set_ylabel("IP")
    ax_both.margins(x=0.2, y=0.15)  # room for the point labels
    _few_ticks(ax_both.xaxis, 4)
    _few_ticks(ax_both.yaxis, 5)
    ax_both.grid(**GRID)
    ax_both.set_title("IP against PC (labels: alpha)", fontsize=10)
    ax_ip.set_title("IP, 95% intervals", fontsize=10)
    ax_pc.set_title("PC, 95% intervals", fontsize=10)
    figure.legend(handles=handles, loc="outside right center", fontsize=9, title="line")
    figure.suptitle(f"{summary.get('benchmark', '')}: alpha/beta sweep (IP backend {summary.get('ip_backend')})")
    figure.savefig(path, dpi=100)
    return True


# ---------------------------------------------------------------------------------------------------- Fig. 9
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


def relative_to_uniform(values: np.ndarray) -> np.ndarray:
    """A softmax map (sums to 1 over ``h * w`` pixels) times ``h * w``: 1 where the weight is the mean weight."""
    return np.asarray(values, dtype=np.float64) * values.shape[-2] * values.shape[-1]


def write_mask_images(means: dict[str, np.ndarray], folder: Path, title: str = "") -> list[Path]:
    """Fig. 9 for one method: ``<kind>_stage<k>.png`` per map (PIL) and ``fusion_masks.png``, a grid with stages as
    columns (matplotlib, when installed). Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, values in sorted(means.items()):
        path = folder / f"{key}.png"
        map_to_image(values, stretch=not key.startswith("masks")).save(path)
        written.append(path)
    figure = _matplotlib_figure(11, 9)
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
                ax.set_title(f"stage {STAGE_NAMES[int(stage)]} ({stage.name.lower()})")
            if col == 0:
                ax.set_ylabel(MASK_TITLES[kind], fontsize=9)
            if key not in means:
                ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes)
                continue
            if kind == "masks":
                shown, low, high = means[key], 0.0, 1.0
            else:
                shown = relative_to_uniform(means[key])
                finite = shown[np.isfinite(shown)]
                low, high = float(finite.min()), float(finite.max())
                if high - low <= FLAT * abs(float(finite.mean())):  # flat: a band around its level, not noise
                    low, high = low - 0.05, high + 0.05
            image = ax.imshow(shown, cmap="viridis", vmin=low, vmax=high)
            bar = figure.colorbar(image, ax=ax, shrink=0.85)
            _few_ticks(bar.ax.yaxis, 4)
            bar.ax.tick_params(labelsize=8)
    figure.suptitle(title or "mean fusion masks and saliency per stage")
    path = folder / "fusion_masks.png"
    figure.savefig(path, dpi=90)
    written.append(path)
    return written


def save_mask_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes the stage maps of one unit (through a temporary file and a rename)."""
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays), overwrite=True)


def load_mask_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


# ---------------------------------------------------------------------------------------------------- image grid
GRID_TILE = 96  # pixels per image in the grid (small images are enlarged with nearest neighbour, large ones shrunk)
GRID_ROWS = 12


def _tile(image, size: int = GRID_TILE):
    """``image`` scaled to fit a ``size`` square (nearest neighbour when enlarged, so small pixels stay sharp) on
    white."""
    import PIL.Image

    image = image.convert("RGB")
    scale = size / max(image.size)
    resample = PIL.Image.Resampling.NEAREST if scale >= 1 else PIL.Image.Resampling.LANCZOS
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    canvas = PIL.Image.new("RGB", (size, size), "white")
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def image_grid(rows: list[dict[str, Any]], columns: list[str], path: Path, tile: int = GRID_TILE) -> bool:
    """A grid of generated images beside their references, written with PIL.

    Args:
        rows: one per case, ``{"title": str, "references": [PIL images, one per person], "images": {column: PIL
            image or None}}``.
        columns: the method columns, in order (their titles).
    Returns whether anything was drawn.
    """
    import PIL.Image
    import PIL.ImageDraw
    import PIL.ImageFont

    if not rows:
        return False
    refs = max(len(r["references"]) for r in rows)
    font = PIL.ImageFont.load_default()
    gap, header, caption = 4, 28, 26
    width = (refs + len(columns)) * (tile + gap) + gap
    height = header + len(rows) * (tile + caption + gap) + gap
    canvas = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(canvas)

    def label(x: int, y: int, text: str, limit: int) -> None:
        """``text`` in at most two lines of ``limit`` pixels, broken between words, cut after that."""
        lines = [""]
        for word in text.split():
            if draw.textlength(f"{lines[-1]} {word}".strip(), font=font) > limit and lines[-1] and len(lines) < 2:
                lines.append("")
            lines[-1] = f"{lines[-1]} {word}".strip()
        for k, line in enumerate(lines):
            while line and draw.textlength(line, font=font) > limit:
                line = line[:-1]
            draw.text((x, y + 12 * k), line, fill="black", font=font)

    titles = [f"reference {k + 1}" for k in range(refs)] + columns
    for c, title in enumerate(titles):
        label(gap + c * (tile + gap), 2, title, tile)
    for r, row in enumerate(rows):
        y = header + r * (tile + caption + gap)
        label(gap, y, row["title"], width - 2 * gap)
        y += caption
        cells = list(row["references"]) + [None] * (refs - len(row["references"]))
        cells += [row["images"].get(c) for c in columns]
        for c, image in enumerate(cells):
            x = gap + c * (tile + gap)
            if image is None:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=(200, 200, 200))
            else:
                canvas.paste(_tile(image, tile), (x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: canvas.save(f, format="PNG"), overwrite=True)
    return True
