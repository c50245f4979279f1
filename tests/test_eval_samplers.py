"""The sampler study: settings, their cost in UNet evaluations, the paired bootstrap and the study end to end."""

import json
import math
from dataclasses import replace
from importlib import resources

import pytest

from facediffuser.evaluation.reports import ScoreRow
from facediffuser.evaluation.samplers import (
    BUDGET,
    compare,
    markdown,
    mean_of,
    paired_difference,
    pareto_plot,
    parse_setting,
    parse_settings,
    unet_evaluations,
)
from facediffuser.settings import SamplingSettings

MINI_SCHEDULER = json.loads(
    (resources.files("facediffuser") / "data/mini/pipeline/scheduler/scheduler_config.json").read_text()
)


def test_settings_parse_and_refuse_in_one_sentence():
    s = parse_setting("dpm++-karras:10:noise")
    assert (s.scheduler, s.steps, s.stage_boundaries.value, s.label) == (
        "dpm++-karras",
        10,
        "noise",
        "dpm++-karras-10-noise",
    )
    assert s.method == "face-diffuser:stage_boundaries=noise" and parse_setting("ddim:50").method == "face-diffuser"
    for spec, words in (
        ("ddim", "write SCHEDULER:STEPS"),
        ("foo:4", "unknown scheduler 'foo'"),
        ("ddim:0", "from 1 to 1000"),
        ("ddim:ten", "from 1 to 1000"),
        ("ddim:10:sigma", "must be noise or steps"),
        ("lcm:4:wide", "'wide' must be w and a guidance scale"),
        ("lcm:4:w-1", "'w-1' must be w and a guidance scale"),
        ("lcm:4:noise:w1:x", "write SCHEDULER:STEPS"),
        ("lcm:4@", "name a model after '@'"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_setting(spec)
    with pytest.raises(ValueError, match="given twice"):
        parse_settings(["ddim:50", "dpm++:10", "dpm++:10:steps"])
    with pytest.raises(ValueError, match="at least two"):
        parse_settings(["ddim:50"])


def test_a_setting_may_name_its_guidance_scale_and_its_own_model():
    s = parse_setting("lcm:4:noise:w1.5@lcm=runs/LCM")
    assert (s.scheduler, s.steps, s.stage_boundaries.value, s.guidance_scale, s.model) == (
        "lcm",
        4,
        "noise",
        1.5,
        "lcm=runs/LCM",
    )
    assert s.label == "lcm-4-noise-w1.5-lcm" and s.spec == "lcm:4:noise:w1.5@lcm=runs/LCM"
    assert s.short_spec == "lcm:4:noise:w1.5@lcm" and parse_setting(s.spec) == s
    assert parse_setting("lcm:2:w1@runs/my model/").label == "lcm-2-w1-my-model"  # the folder's name, file-name safe
    assert parse_setting("ddim:50").guidance_scale is None and parse_setting("ddim:50").model is None


@pytest.mark.parametrize(
    "spec, evaluations",
    [
        ("lcm:4", 10),  # LCM's 4 timesteps 999 / 759 / 499 / 259: 1 / 1 / 2
        ("lcm:2", 6),  # 0 / 1 / 1: at most 13, a tenth
        ("lcm:4:noise", 10),  # 999, 759 before 700; 499; 259: 2 / 1 / 1
        ("lcm:8", 20),
        ("ddim:50", 130),  # 15 / 15 / 20 steps: docs/method.md, Cost per image
        ("dpm++:10", 26),  # 3 / 3 / 4: a fifth
        ("dpm++:8", 20),  # 2 / 2 / 4
        ("dpm++:4", 10),  # 1 / 1 / 2
        ("dpm++-karras:10:noise", 24),  # 3 / 2 / 5: stage II is the costly one (4 evaluations a step)
        ("pndm:50", 132),  # PLMS as SD1.x ships it: 51 timesteps (the last one twice), 15 / 15 / 21
    ],
)
def test_unet_evaluations_per_image_count_the_schedulers_own_timesteps(spec, evaluations):
    assert unet_evaluations(parse_setting(spec), MINI_SCHEDULER, SamplingSettings()) == evaluations


def _row(case: str, group: str, ip: float, k: int = 0, **scores) -> ScoreRow:
    return ScoreRow(
        model="m", method="m/fd", alpha=0.3, beta=0.6, case_id=case, group=group, subjects="p", prompt="", text="",
        image_index=k, image="", ip=ip, faces=1, pc=scores.pop("pc", 0.5), ip_backend="b", clip_model="c", rank=0,
        generated=True, **scores,
    )  # fmt: skip


def test_the_paired_interval_is_that_of_the_differences():
    # Cases far apart, each moved by about +0.01 by the setting: unpaired intervals overlap widely, the paired one
    # excludes 0 (the point of pairing), and its mean is the mean of the differences.
    base = [_row(f"c{i}", "single", v) for i, v in enumerate([0.1, 0.3, 0.5, 0.7, 0.2, 0.6])]
    moved = [replace(r, ip=r.ip + 0.01 + 0.002 * (i % 2)) for i, r in enumerate(base)]
    difference = paired_difference(moved, base, "ip", "single")
    assert math.isclose(difference.mean, 0.011, abs_tol=1e-12)  # exact arithmetic up to float rounding
    assert 0.01 - 1e-12 <= difference.low <= difference.high <= 0.012 + 1e-12
    unpaired_a, unpaired_b = mean_of(base, "ip", "single"), mean_of(moved, "ip", "single")
    assert unpaired_a.high > unpaired_b.low  # unpaired: overlapping, "no difference"
    # rows of another group, or a score that is NaN on either side, are left out
    other = [replace(_row("m0", "multi", 0.9), subjects="p;q")]
    nan = [replace(moved[0], ip=math.nan)] + moved[1:]
    assert paired_difference(moved + other, base, "ip", "single").cases == 6
    assert paired_difference(nan, base, "ip", "single").cases == 5


def _results(shift: float):
    from facediffuser.evaluation.samplers import SamplerSetting

    base = [
        replace(
            _row(f"c{i}", "single" if i < 6 else "multi", v, scene_acc=float(i % 2), identity_acc=float(i % 3 == 0)),
            subjects="p" if i < 6 else "p;q",
        )
        for i, v in enumerate([0.1, 0.3, 0.5, 0.7, 0.2, 0.6, 0.3, 0.4])
    ]
    worse = [replace(r, ip=r.ip + shift) for r in base]
    same = [replace(r, ip=r.ip + (0.01 if i % 2 else -0.01)) for i, r in enumerate(base)]
    return {
        "ddim-50": {"setting": SamplerSetting("ddim", 50), "evaluations": 130, "rows": base},
        "dpm++-4": {"setting": SamplerSetting("dpm++", 4), "evaluations": 10, "rows": worse},
        "dpm++-10": {"setting": SamplerSetting("dpm++", 10), "evaluations": BUDGET, "rows": same},
    }


def test_the_cheapest_setting_within_noise_is_chosen_and_the_table_and_figure_say_so(tmp_path):
    summary = compare(_results(-0.1), "ddim-50")
    verdicts = {s["label"]: s["within_noise"] for s in summary["settings"]}
    assert verdicts == {"ddim-50": True, "dpm++-4": False, "dpm++-10": True}  # -0.1 IP everywhere is a loss
    assert summary["cheapest_within_noise"] == "dpm++-10"
    text = markdown(summary)
    assert "| `dpm++:4` | 10 |" in text and "**-0.100 [-0.100, -0.100]**" in text
    assert text.strip().endswith("`dpm++:10`.")
    # a gain is no cost: the cheaper setting is chosen when it is better
    assert compare(_results(+0.1), "ddim-50")["cheapest_within_noise"] == "dpm++-4"
    pytest.importorskip("matplotlib")
    assert pareto_plot(summary, tmp_path / "pareto.png") and (tmp_path / "pareto.png").stat().st_size > 10_000


def _study_flags(tmp_path, clip, *extra):
    from PIL import Image

    people = tmp_path / "people"
    (people / "eileen").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 48), (200, 150, 120)).save(people / "eileen" / "1.png")
    (people / "subjects.json").write_text(json.dumps({"eileen": "woman"}))
    return [
        "evaluate", "--data", str(people), "--model", "tiny", "--clip-model", str(clip), "--metrics", "pc",
        "--limit", "2", "--images-per-prompt", "1", "--no-save-masks", "--out", str(tmp_path / "study"), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_the_study_runs_each_setting_as_an_evaluation_and_resumes(tmp_path, clip_folder, capsys):
    from facediffuser.cli.main import main

    argv = _study_flags(tmp_path, clip_folder, "--samplers", "ddim:3", "dpm++:2", "dpm++:2:noise")
    assert main(argv) == 0
    study = tmp_path / "study"
    summary = json.loads((study / "samplers.json").read_text())
    assert [s["label"] for s in summary["settings"]] == ["ddim-3", "dpm++-2", "dpm++-2-noise"]
    for label, scheduler, steps in (("ddim-3", "ddim", 3), ("dpm++-2", "dpm++", 2), ("dpm++-2-noise", "dpm++", 2)):
        run = json.loads((study / label / "run.json").read_text())
        assert run["scheduler"] == scheduler and run["sampling"]["num_inference_steps"] == steps
    assert (
        json.loads((study / "dpm++-2-noise" / "run.json").read_text())["sampling"]
        == json.loads((study / "dpm++-2" / "run.json").read_text())["sampling"]
    )  # the stage rule is the method's (its label), the run's settings are shared
    assert (study / "dpm++-2-noise" / "images" / "tiny" / "face-diffuser_a0.3_b0.6_stage_boundaries-noise").is_dir()
    pc = summary["settings"][1]["differences"]["single PC"]
    assert pc["images"] == 2 and pc["low"] <= pc["mean"] <= pc["high"]
    assert "| `dpm++:2` |" in capsys.readouterr().out
    # a second run draws nothing again: every setting's images are reused
    before = {p: p.stat().st_mtime_ns for p in study.rglob("*.png") if "images" in p.parts}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in study.rglob("*.png") if "images" in p.parts} == before


@pytest.mark.slow
def test_a_setting_with_its_own_model_and_guidance_scale_runs_as_such(tmp_path, clip_folder, capsys):
    """A distilled model (here the tiny one under another name) against the study's reference: its run takes the
    setting's model, scheduler and guidance scale; the table names the model, and the tenth's budget line appears."""
    from facediffuser.cli.main import main

    argv = _study_flags(tmp_path, clip_folder, "--samplers", "ddim:3", "lcm:2:w1.5@other=tiny")
    assert main(argv) == 0
    study = tmp_path / "study"
    run = json.loads((study / "lcm-2-w1.5-other" / "run.json").read_text())
    assert run["scheduler"] == "lcm" and run["sampling"]["guidance_scale"] == 1.5 and run["models"] == {"other": "tiny"}
    assert json.loads((study / "ddim-3" / "run.json").read_text())["sampling"]["guidance_scale"] == 5.0
    summary = json.loads((study / "samplers.json").read_text())
    assert summary["settings"][1]["evaluations"] == 6 and summary["settings"][1]["model"] == "other=tiny"
    out = capsys.readouterr().out
    assert "| `lcm:2:w1.5@other` | 6 |" in out and "within noise at <= 13 UNet evaluations" in out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--samplers", "ddim:3", "foo:4"], "Sampler setting 'foo:4': unknown scheduler 'foo'"),
        (["--samplers", "ddim:3", "lcm:2@no/such/folder"], "Sampler setting 'lcm:2@no/such/folder': "),
        (["--samplers", "ddim:3"], "Give at least two sampler settings"),
        (["--samplers", "ddim:3", "dpm++:2", "--steps", "5"], "--samplers sets the scheduler and the steps"),
    ],
)
def test_a_bad_study_is_refused_in_one_sentence_before_any_model_loads(tmp_path, clip_folder, capsys, extra, words):
    from facediffuser.cli.main import main

    assert main(_study_flags(tmp_path, clip_folder, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("facediffuser evaluate: error: ") and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "study").exists()


def _finished_study(folder, seed, shifts, **run):
    """A sampler study's folder as `evaluate --samplers` leaves it, at ``seed``: per setting label its rows
    (``shifts``: the IP added to the reference's, per case) and samplers.json."""
    from facediffuser.evaluation.reports import write_scores
    from facediffuser.evaluation.samplers import SamplerSetting

    base = [_row(f"c{i}", "single", 0.1 * i + 0.01 * seed, k) for i in range(6) for k in range(2)]
    results = {"ddim-50": {"setting": SamplerSetting("ddim", 50), "evaluations": 130, "rows": base}}
    for label, shift in shifts.items():
        name, steps = label.rsplit("-", 1)
        rows = [replace(r, ip=r.ip + shift(r)) for r in base]
        results[label] = {"setting": SamplerSetting(name, int(steps)), "evaluations": 26, "rows": rows}
    for label, result in results.items():
        (folder / label).mkdir(parents=True)
        write_scores(folder / label / "scores.csv", result["rows"])
    summary = compare(results, "ddim-50")
    summary["run"] = {"benchmark": "mini", "data": "val", "model": "mini", "seed": seed, "alpha": 0.3, "beta": 0.6}
    summary["run"].update(run)
    (folder / "samplers.json").write_text(json.dumps(summary))
    return results


def test_pooled_studies_pair_each_image_with_its_own_seeds_reference(tmp_path, capsys):
    """Two seeds' studies pooled: every image is compared with the same case, image and seed of the reference (a
    pairing across seeds would give other numbers), cases are resampled with all their images, and a setting that
    only one study ran is left out and named."""
    from facediffuser.cli.main import main

    a = _finished_study(tmp_path / "a", 7, {"dpm++-10": lambda r: -0.02, "unipc-10": lambda r: 0.0})
    b = _finished_study(tmp_path / "b", 8, {"dpm++-10": lambda r: -0.04 * (r.image_index + 1)})
    pool = ["evaluate", "--pool-studies", str(tmp_path / "a"), str(tmp_path / "b")]
    assert main([*pool, "--out", str(tmp_path / "p")]) == 0
    pooled = json.loads((tmp_path / "p" / "samplers.json").read_text())
    assert [s["label"] for s in pooled["settings"]] == ["ddim-50", "dpm++-10"] and pooled["left_out"] == ["unipc-10"]
    assert pooled["run"]["seeds"] == [7, 8]
    ip = pooled["settings"][1]["differences"]["single IP"]
    # 12 images at -0.02 (seed 7), 6 at -0.04 and 6 at -0.08 (seed 8): the mean of the 24 paired differences
    assert ip["images"] == 24 and math.isclose(ip["mean"], (12 * -0.02 + 6 * -0.04 + 6 * -0.08) / 24, abs_tol=1e-6)
    # each case moved alike, so resampling cases keeps the interval at the mean
    assert math.isclose(ip["low"], ip["mean"], abs_tol=1e-6) and math.isclose(ip["high"], ip["mean"], abs_tol=1e-6)
    # the reference's own mean pools both seeds' images
    reference_ip = pooled["settings"][0]["means"]["single IP"]
    expected = sum(r.ip for s in (a, b) for r in s["ddim-50"]["rows"]) / 24
    assert math.isclose(reference_ip["mean"], expected, abs_tol=1e-6)
    out = capsys.readouterr().out
    assert "pooled over seeds 7, 8" in out and "left out: unipc-10" in out and "**-0.040 [-0.040, -0.040]**" in out
    # the pooled table is written beside the studies, never into one
    inside = tmp_path / "a" / "pooled"
    assert main([*pool, "--out", str(inside)]) == 2
    assert "lies inside the input" in capsys.readouterr().err and not inside.exists()


@pytest.mark.parametrize(
    "second, words",
    [
        ({"seed": 7}, "Two of the studies drew seed 7"),
        ({"model": "other"}, "differs from"),
        ({"alpha": 0.4}, "in its alpha (0.4 against 0.3)"),
        (None, "holds no samplers.json"),
    ],
)
def test_pooling_refuses_studies_that_are_not_the_same_study_again(tmp_path, capsys, second, words):
    from facediffuser.cli.main import main

    _finished_study(tmp_path / "a", 7, {"dpm++-10": lambda r: 0.0})
    if second is None:
        (tmp_path / "b").mkdir()
    else:
        _finished_study(tmp_path / "b", second.pop("seed", 8), {"dpm++-10": lambda r: 0.0}, **second)
    out = tmp_path / "p"
    assert main(["evaluate", "--pool-studies", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and not out.exists()
    # a pool of one is no pool, and pooling is not a study to run
    args = ["evaluate", "--pool-studies", str(tmp_path / "a")]
    assert main([*args, "--out", str(out)]) == 2
    assert main([*args, "--samplers", "--out", str(out)]) == 2
    assert not out.exists()
