"""Tables, combined tables, bootstrap intervals and figures, on hand-made scores and maps."""

import copy
import json

import numpy as np
import pytest
from PIL import Image

from facediffuser.evaluation.figures import MaskAccumulator, map_to_image, sweep_plot, write_mask_images
from facediffuser.evaluation.methods import ModelSpec, Variant, parse_method
from facediffuser.evaluation.reports import ScoreRow, combine_tables, markdown_table, summarize
from facediffuser.evaluation.statistics import bootstrap_mean

pytest.importorskip("matplotlib")


# ---------------------------------------------------------------------------------------------------- statistics
def test_bootstrap_of_two_cases_spans_both_extremes():
    # Resampling 2 cases: both the first (p = 1/4, mean 0.6), one of each (1/2, 0.35), both the second (1/4, 0.1).
    estimate = bootstrap_mean({"a": [0.5, 0.7], "b": [0.1, 0.1]})
    assert estimate.mean == pytest.approx(0.35) and estimate.images == 4 and estimate.cases == 2
    assert estimate.low == pytest.approx(0.1) and estimate.high == pytest.approx(0.6)


def test_bootstrap_width_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    cases = {str(k): [v] for k, v in enumerate(rng.normal(0.5, 0.1, 400))}
    estimate = bootstrap_mean(cases)
    values = np.array([v[0] for v in cases.values()])
    expected = 2 * 1.96 * values.std() / np.sqrt(len(values))
    # 2000 resamples estimate the 2.5/97.5 percentiles to a few percent; 15% catches a wrong unit or formula.
    assert (estimate.high - estimate.low) == pytest.approx(expected, rel=0.15)
    assert estimate.low < values.mean() < estimate.high


def test_bootstrap_skips_nan_and_keeps_count():
    estimate = bootstrap_mean([[0.2, float("nan")], [float("nan")], [0.4]])
    assert estimate.mean == pytest.approx(0.3) and estimate.images == 2 and estimate.cases == 2
    assert np.isnan(bootstrap_mean([[float("nan")]]).mean)
    single = bootstrap_mean([[0.2, 0.4]])
    assert single.low == single.high == pytest.approx(0.3)  # one case: nothing to resample


# ---------------------------------------------------------------------------------------------------- tables
def row(variant, case, subjects, group, ip, pc, k=0):
    return ScoreRow(
        model=variant.model.name, method=variant.label, alpha=variant.method.alpha, beta=variant.method.beta,
        case_id=case, group=group, subjects=subjects, prompt="p", text="p", image_index=k, image="x.png", ip=ip,
        faces=1, pc=pc, ip_backend="dlib", clip_model="clip", rank=0, generated=True,
    )  # fmt: skip


FD = Variant(ModelSpec("fd", "pipes/fd"), parse_method("face-diffuser"))
FC = Variant(ModelSpec("fastcomposer", "pipes/fc"), parse_method("sdm"))


def summary_of(kind="single", variants=(FD, FC), **settings):
    rows = []
    for v in variants:
        shift = -0.2 if v == FC else 0.0  # FastComposer's IP 0.2 below Face-diffuser's
        rows += [
            row(v, "ada/style-00", "ada", "style", 0.7 + shift, 0.30, 0),
            row(v, "ada/style-00", "ada", "style", 0.6 + shift, 0.32, 1),
            row(v, "bob/style-00", "bob", "style", 0.5 + shift, 0.28, 0),
            row(v, "bob/action-00", "bob", "action", float("nan"), 0.25, 0),
        ]
    base = {"seed": 42, "sampling": {"num_inference_steps": 50}, "scheduler": "ddim", "dtype": "auto"}
    base |= {"height": None, "width": None, "benchmark": f"{kind}-subject", "data": "/d", "prompts_sha256": None}
    base |= {"images_per_prompt": 4, **settings}
    header = {"benchmark": f"{kind}-subject", "kind": kind, "ip_backend": "dlib", "ip_backend_settings": {"u": 1}}
    return summarize(rows, list(variants), {**header, "clip_model": "clip", "settings": base})


def test_summary_and_table_give_intervals_groups_subjects_and_counts():
    summary = summary_of()
    fd = summary["methods"]["fd/face-diffuser_a0.3_b0.6"]
    assert fd["images"] == 4 and fd["ip"]["images"] == 3 and fd["ip_unscorable"] == 1
    assert fd["ip"]["mean"] == pytest.approx(0.6) and fd["ip"]["low"] <= 0.6 <= fd["ip"]["high"]
    assert fd["groups"]["action"]["pc"] == {"mean": 0.25, "low": 0.25, "high": 0.25, "images": 1}
    assert set(fd["subjects"]) == {"ada", "bob"} and fd["subjects"]["ada"]["pc"]["images"] == 2
    table = markdown_table(summary)
    assert "| model | method | single IP [95% CI] | single PC [95% CI] | images |" in table
    line = next(x for x in table.splitlines() if x.startswith("| fd | Face-diffuser (alpha=0.3, beta=0.6) | 0.600"))
    assert "(n=3)" in line and line.endswith("| 4 |")  # 3 images behind the IP mean, 4 behind the row
    assert "| fastcomposer | SDM alone (alpha=beta=0) | bob |" in table  # per subject
    assert "| fd | Face-diffuser (alpha=0.3, beta=0.6) | action | - | 0.250 [0.250, 0.250] | 1 |" in table
    assert json.loads(json.dumps(summary, allow_nan=False))  # no NaN in the JSON


def test_combine_puts_models_side_by_side_and_keeps_counts():
    fd_single = summary_of("single", (FD,))
    fc_single = summary_of("single", (FC,))
    multi = summary_of("multi", (FD,), data="/d")
    table = combine_tables([fd_single, fc_single, multi])  # two single-subject runs of different models
    lines = table.splitlines()
    fd_line = next(x for x in lines if x.startswith("| fd |"))
    fc_line = next(x for x in lines if x.startswith("| fastcomposer |"))
    assert fd_line.count("| 4 |") == 2  # single images and multi images
    assert fc_line.endswith("| - | - | - |")  # no multi-subject run of FastComposer
    assert "0.400 [" in fc_line  # its IP, 0.2 below Face-diffuser's


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["settings"].update(seed=1), "seed"),
        (lambda s: s["settings"].update(sampling={"num_inference_steps": 25}), "sampling"),
        (lambda s: s["settings"].update(scheduler="pndm"), "scheduler"),
        (lambda s: s.update(ip_backend="facenet"), "IP backend"),
        (lambda s: s.update(ip_backend_settings={"u": 0}), "IP backend settings"),
        (lambda s: s.update(clip_model="other"), "CLIP model"),
        (lambda s: s["settings"].update(prompts_sha256="abc"), "prompts_sha256"),
        (lambda s: s["settings"].update(data="/other"), "data"),
    ],
)
def test_combine_refuses_runs_that_differ_in_what_changes_a_score(change, message):
    first, second = summary_of("single", (FD,)), summary_of("single", (FC,))
    changed = copy.deepcopy(second)
    change(changed)
    with pytest.raises(ValueError, match=f"differ in {message}"):
        combine_tables([first, changed])


def test_combine_refuses_a_row_twice_and_a_model_name_for_two_models():
    with pytest.raises(ValueError, match="both have the row 'fd/face-diffuser_a0.3_b0.6'"):
        combine_tables([summary_of("single", (FD,)), summary_of("single", (FD,))])
    other = Variant(ModelSpec("fd", "elsewhere/"), parse_method("tdm"))
    with pytest.raises(ValueError, match="model name 'fd' means pipes/fd in one run and elsewhere/"):
        combine_tables([summary_of("single", (FD,)), summary_of("multi", (other,))])


def test_facenet_table_lists_the_papers_rows():
    summary = {"benchmark": "single-subject", "kind": "single", "ip_backend": "facenet", "methods": {}}
    assert "| Face-diffuser (paper) | 0.708 | 0.325 |" in markdown_table(summary)
    summary["ip_backend"] = "dlib"
    assert "(paper)" not in markdown_table(summary)


# ---------------------------------------------------------------------------------------------------- figures
def test_mask_means_skip_unevaluated_steps():
    acc = MaskAccumulator()
    acc.add(
        {"masks_stage2": np.array([[[0.0, 1.0]], [[1.0, 1.0]]]), "saliency_subject_stage1": np.full((2, 1, 2), np.nan)}
    )
    acc.add({"masks_stage2": np.array([[[1.0, np.nan]]]), "saliency_subject_stage1": np.full((1, 1, 2), np.nan)})
    means = acc.means()
    np.testing.assert_allclose(means["masks_stage2"], [[2 / 3, 1.0]])
    assert "saliency_subject_stage1" not in means  # never evaluated


def softmax_map(h=8, w=8, seed=0):
    logits = np.random.default_rng(seed).normal(0, 0.05, (h, w))
    e = np.exp(logits)
    return e / e.sum()  # values near 1/64 = 0.0156, differing in the 4th decimal


def test_mask_pngs_use_the_full_range(tmp_path):
    saliency = softmax_map()
    mask = np.linspace(0, 1, 64).reshape(8, 8)
    files = write_mask_images(
        {"saliency_subject_stage3": saliency, "masks_stage2": mask, "saliency_text_stage2": np.full((8, 8), 1 / 64)},
        tmp_path,
        "title",
    )
    assert tmp_path / "fusion_masks.png" in files
    pixels = np.asarray(Image.open(tmp_path / "saliency_subject_stage3.png"))
    assert pixels.min() == 0 and pixels.max() == 255  # stretched: not the near-white of divide-by-max
    assert np.asarray(Image.open(tmp_path / "saliency_text_stage2.png")).max() == 128  # a flat map is mid-gray
    mask_pixels = np.asarray(Image.open(tmp_path / "masks_stage2.png"))
    assert mask_pixels.min() == 0 and mask_pixels.max() == 255  # [0, 1] -> [0, 255], not stretched
    gray = map_to_image(np.full((2, 2), 0.25), stretch=False, size=2)
    assert np.asarray(gray).tolist() == [[64, 64], [64, 64]]  # round(0.25 * 255)
    assert np.asarray(map_to_image(np.array([[np.nan, 1.0]]), stretch=False, size=2))[0, 0] == 0  # NaN black


def test_fusion_figure_colour_bars_are_readable(tmp_path, monkeypatch):
    import facediffuser.evaluation.figures as figures

    drawn = []
    original = figures._matplotlib_figure

    def keep(*args):
        figure = original(*args)
        drawn.append(figure)
        return figure

    monkeypatch.setattr(figures, "_matplotlib_figure", keep)
    write_mask_images({"saliency_subject_stage3": softmax_map(), "masks_stage2": np.eye(8)}, tmp_path)
    (figure,) = drawn
    figure.canvas.draw()
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    for bar in bars:
        labels = [t.get_text() for t in bar.get_yticklabels() if t.get_text()]
        assert len(labels) >= 2 and len(set(labels)) == len(labels), labels  # no repeated "0.0156"
        renderer = figure.canvas.get_renderer()
        for t in bar.get_yticklabels():
            if t.get_text():
                box = t.get_window_extent(renderer)
                assert box.x1 <= figure.bbox.x1 + 1, t.get_text()  # not cut at the right edge


def test_sweep_plot_ticks_labels_and_colours(tmp_path, monkeypatch):
    import facediffuser.evaluation.figures as figures

    drawn = []
    original = figures._matplotlib_figure
    monkeypatch.setattr(figures, "_matplotlib_figure", lambda *a: drawn.append(original(*a)) or drawn[-1])
    results = {}
    for k, (alpha, beta) in enumerate([(0, 0.6), (0.1, 0.6), (0.3, 0.6), (0.5, 0.6), (0.3, 0.3), (0.3, 1.0)]):
        results[f"fd/fd{k}"] = {"model": "fd", "alpha": alpha, "beta": beta, "images": 8}
        ip, pc = 0.3 + 0.05 * k, 0.2501 + 0.0004 * k  # PC over a 0.002 range
        results[f"fd/fd{k}"] |= {"ip": {"mean": ip, "low": ip - 0.02, "high": ip + 0.03, "images": 8}}
        results[f"fd/fd{k}"] |= {"pc": {"mean": pc, "low": pc - 1e-4, "high": pc + 1e-4, "images": 8}}
    assert sweep_plot({"benchmark": "b", "ip_backend": "dlib", "methods": results}, tmp_path / "sweep.png")
    (figure,) = drawn
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    ax_ip, ax_pc, ax_both = figure.axes[:3]
    for labels in ([t.get_text() for t in ax_pc.get_yticklabels()], [t.get_text() for t in ax_both.get_xticklabels()]):
        shown = [x for x in labels if x]
        assert len(shown) == len(set(shown)) >= 2, shown  # distinct PC ticks
    boxes = [t.get_window_extent(renderer) for t in ax_both.get_xticklabels() if t.get_text()]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # they do not run together
    for text in ax_both.texts:  # point labels inside the figure
        box = text.get_window_extent(renderer)
        assert box.x1 <= figure.bbox.x1 and box.x0 >= 0
    legend_colours = {tuple(h.get_color()) if not isinstance(h.get_color(), str) else h.get_color()
                      for h in figure.legends[0].legend_handles}  # fmt: skip
    scatter_colours = set()
    for collection in ax_both.collections:
        scatter_colours.add(tuple(np.round(collection.get_facecolor()[0], 3)))
    from matplotlib.colors import to_rgba

    assert {tuple(np.round(to_rgba(c), 3)) for c in legend_colours} == scatter_colours  # one colour per line
    image = np.asarray(Image.open(tmp_path / "sweep.png"))
    assert image.shape[1] == 1400  # 14 in at 100 dpi


def test_sweep_plot_draws_a_method_with_sampling_options_as_its_own_line(tmp_path, monkeypatch):
    import facediffuser.evaluation.figures as figures

    drawn = []
    original = figures._matplotlib_figure
    monkeypatch.setattr(figures, "_matplotlib_figure", lambda *a: drawn.append(original(*a)) or drawn[-1])
    estimate = {"mean": 0.3, "low": 0.2, "high": 0.4, "images": 4}
    results = {
        f"m/{label}": {"model": "m", "alpha": alpha, "beta": 0.6, "images": 4, "ip": estimate, "pc": estimate}
        | ({"options": {"region_attention": True}} if label.endswith("ra") else {})
        for label, alpha in [("a1", 0.1), ("a3", 0.3), ("a1_ra", 0.1), ("a3_ra", 0.3)]
    }
    assert sweep_plot({"benchmark": "b", "ip_backend": "dlib", "methods": results}, tmp_path / "sweep.png")
    legend = [t.get_text() for t in drawn[0].legends[0].get_texts()]
    assert legend == ["beta=0.6", "beta=0.6, region_attention=True"]
