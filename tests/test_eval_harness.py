"""The evaluation harness end to end on the tiny pipeline, with the real dlib backend and a tiny CLIP folder."""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facediffuser.cli.evaluate import main as evaluate_main
from facediffuser.evaluation.harness import EvaluationConfig, evaluate
from facediffuser.evaluation.methods import ModelSpec, Variant, parse_method
from facediffuser.evaluation.scoring import Scorers
from facediffuser.evaluation.work import WorkUnit, distributed_state
from facediffuser.io.configuration import build_config
from facediffuser.io.tiny import build_tiny_pipeline

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

SRC = Path(__file__).resolve().parents[1] / "src"
METHODS = ["tdm", "face-diffuser"]


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """One subject: the astronaut photo of scikit-image."""
    root = tmp_path_factory.mktemp("subjects")
    (root / "eileen").mkdir()
    Image.fromarray(skimage_data.astronaut()).save(root / "eileen" / "portrait.png")
    (root / "subjects.json").write_text(json.dumps({"eileen": "woman"}))
    return root


def flags(subjects, clip_folder, out, *extra):
    return [
        "--data", str(subjects), "--model", "tiny", "--clip-model", str(clip_folder), "--out", str(out),
        "--limit", "2", "--steps", "2", "--images-per-prompt", "1", "--seed", "7",
        "--dlib-upsample", "0", "--methods", *METHODS, *extra,
    ]  # fmt: skip


def config(subjects, clip_folder, out, **changes):
    values = dict(
        data=subjects,
        model="tiny",
        clip_model=str(clip_folder),
        out=out,
        limit=2,
        steps=2,
        images_per_prompt=1,
        seed=7,
        dlib_upsample=0,
        methods=list(METHODS),
    )
    values.update(changes)
    return EvaluationConfig(**values)


@pytest.mark.slow
def test_end_to_end_writes_every_output_and_resumes(subjects, clip_folder, tmp_path, caplog):
    out = tmp_path / "run"
    first = evaluate(config(subjects, clip_folder, out))
    assert len(first.units) == len(first.generated) == 4  # 2 prompts x 2 methods, all made now
    assert first.cache == {"ip": {"cached": 0, "computed": 4}, "pc": {"cached": 0, "computed": 4}}

    labels = ["tiny/tdm", "tiny/face-diffuser_a0.3_b0.6"]
    cases = ["eileen/accessory-00", "eileen/style-00"]
    images = [out / "images" / m / c / "0.png" for m in labels for c in cases]
    expected = [out / name for name in ("run.json", "scores.csv", "summary.json", "table.md", "sweep.png")]
    expected += images + [out / "masks" / m / f"{c}.npz" for m in labels for c in cases]
    for label in labels:
        expected.append(out / "fusion_masks" / label / "fusion_masks.png")
    expected.append(out / "fusion_masks" / "tiny" / "tdm" / "masks_stage1.png")
    expected += [out / "fusion_masks" / labels[1] / f"masks_stage{k}.png" for k in (2, 3)]
    missing = [str(p.relative_to(out)) for p in expected if not p.is_file()]
    assert not missing, missing

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ip_backend"] == "dlib" and summary["ip_backend_settings"]["centered"] is True
    assert summary["clip_model"] == str(clip_folder)
    assert summary["generated_this_run"] == 4
    assert summary["settings"]["sampling"]["num_inference_steps"] == 2
    assert summary["settings"]["models"] == {"tiny": "tiny"}
    for label in labels:
        result = summary["methods"][label]
        assert result["images"] == 2 and result["model"] == "tiny"
        assert result["ip"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "images": 2}  # noise images: no face, IP 0
        assert -1.0 <= result["pc"]["low"] <= result["pc"]["mean"] <= result["pc"]["high"] <= 1.0
        assert set(result["groups"]) == {"accessory", "style"} and set(result["subjects"]) == {"eileen"}
        assert result["groups"]["style"]["pc"]["images"] == 1
    table = (out / "table.md").read_text()
    assert "| model | method | single IP [95% CI] | single PC [95% CI] | images |" in table and "`dlib`" in table
    assert "| tiny | Face-diffuser (alpha=0.3, beta=0.6) | 0.000 [0.000, 0.000] |" in table and "TDM alone" in table
    assert "Per prompt group:" in table
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 5 and "a photo of a woman wearing a red baseball cap" in rows[1]

    # The fusion masks follow the stages: with 2 steps, alpha 0.3 and beta 0.6 there is no stage-I step, one
    # stage-II step (a 0/1 SNF mask) and one stage-III step (all SDM).
    masks = np.load(out / "masks" / labels[1] / "eileen" / "style-00.npz")
    assert np.isnan(masks["masks_stage1"]).all()
    assert set(np.unique(masks["masks_stage2"])) <= {0.0, 1.0}
    assert np.all(masks["masks_stage3"] == 1.0)
    assert np.isnan(masks["saliency_text_stage3"]).all() and np.isfinite(masks["saliency_subject_stage3"]).all()

    # Rerun through the command line: nothing is generated or scored again, the scores are the same.
    mtimes = [p.stat().st_mtime_ns for p in images]
    caplog.set_level(logging.INFO, logger="facediffuser.evaluation.harness")
    assert evaluate_main(flags(subjects, clip_folder, out)) == 0
    assert [p.stat().st_mtime_ns for p in images] == mtimes
    again = json.loads((out / "summary.json").read_text())
    assert again["generated_this_run"] == 0
    assert again["scores_from_cache"] == {"ip": {"cached": 4, "computed": 0}, "pc": {"cached": 4, "computed": 0}}
    assert "Scores from the cache: IP 4 of 4, PC 4 of 4" in caplog.text
    assert again["methods"] == summary["methods"]

    # A lost image is made again, identically (every case is seeded on its own); only its scores are computed.
    before = np.asarray(Image.open(images[1]))
    images[1].unlink()
    third = evaluate(config(subjects, clip_folder, out, metrics=["pc"]))
    assert [u.key for u in third.generated] == [("tiny/tdm", "eileen/style-00")]
    np.testing.assert_array_equal(np.asarray(Image.open(images[1])), before)
    assert third.cache["pc"] == {"cached": 4, "computed": 0}  # same pixels, same file bytes: the cache still holds
    assert json.loads((out / "summary.json").read_text())["ip_backend"] is None  # IP not computed this time

    # Other generation settings in the same folder are refused rather than mixed.
    with pytest.raises(ValueError, match="other settings.*num_inference_steps': 2.*num_inference_steps': 3"):
        evaluate(config(subjects, clip_folder, out, steps=3))


@pytest.mark.slow
def test_prompts_two_models_and_three_methods_make_one_table_with_intervals(
    subjects, clip_folder, tmp_path, monkeypatch
):
    """The harness end to end: --prompts, two models saved with save_pretrained, three methods, one table; a rerun
    scores nothing twice."""
    for seed, name in ((0, "alpha-model"), (1, "beta-model")):
        build_tiny_pipeline(seed).save_pretrained(tmp_path / name)
    (tmp_path / "prompts.txt").write_text(
        "# two groups of my own\n[outdoor]\na photo of a {subject} on a beach\na {subject} hiking\n"
        "[indoor]\na {subject} reading a book\n"
    )
    out = tmp_path / "run"
    argv = [
        "--data", str(subjects), "--clip-model", str(clip_folder), "--out", str(out), "--steps", "2",
        "--images-per-prompt", "2", "--dlib-upsample", "0", "--prompts", str(tmp_path / "prompts.txt"),
        "--model", f"fd={tmp_path / 'alpha-model'}", "--model", f"fc={tmp_path / 'beta-model'}",
        "--methods", "tdm", "sdm", "face-diffuser",
    ]  # fmt: skip
    counted = CountingScores()
    monkeypatch.setattr("facediffuser.evaluation.scoring.Scorers.score_unit", counted.wrap(Scorers.score_unit))
    assert evaluate_main(argv) == 0
    assert counted.units == 2 * 3 * 3  # 2 models x 3 methods x 3 prompts, each scored once
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == [
        "fd/tdm", "fd/sdm", "fd/face-diffuser_a0.3_b0.6", "fc/tdm", "fc/sdm", "fc/face-diffuser_a0.3_b0.6",
    ]  # fmt: skip
    assert summary["settings"]["prompts_sha256"] and summary["prompts"] == str(tmp_path / "prompts.txt")
    table = (out / "table.md").read_text()
    for model in ("fd", "fc"):
        for method in ("TDM alone (alpha=beta=1)", "SDM alone (alpha=beta=0)", "Face-diffuser (alpha=0.3, beta=0.6)"):
            line = next(x for x in table.splitlines() if x.startswith(f"| {model} | {method} |"))
            assert re.search(r"\| -?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\] \| 6 \|$", line), line  # PC, CI, images
    assert "| fc | SDM alone (alpha=beta=0) | indoor |" in table  # per prompt group
    result = summary["methods"]["fc/sdm"]
    assert result["groups"]["outdoor"]["pc"]["images"] == 4 and result["groups"]["indoor"]["pc"]["images"] == 2
    pc = result["pc"]
    assert pc["low"] <= pc["mean"] <= pc["high"] and pc["images"] == 6
    # The two models drew different images from the same seed (their weights differ).
    a = np.asarray(Image.open(out / "images" / "fd" / "sdm" / "eileen" / "outdoor-00" / "0.png"))
    b = np.asarray(Image.open(out / "images" / "fc" / "sdm" / "eileen" / "outdoor-00" / "0.png"))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0

    # A rerun scores nothing twice.
    counted.units = 0
    assert evaluate_main(argv) == 0
    assert counted.units == 18
    again = json.loads((out / "summary.json").read_text())
    assert again["scores_from_cache"] == {"ip": {"cached": 36, "computed": 0}, "pc": {"cached": 36, "computed": 0}}
    assert again["methods"] == summary["methods"]

    # Other prompts in the same folder are refused, and so is a model name that changes its folder.
    (tmp_path / "other.txt").write_text("a {subject} at sea\n")
    other_prompts = [str(tmp_path / "other.txt") if a.endswith("prompts.txt") else a for a in argv]
    with pytest.raises(ValueError, match="other settings.*prompts_sha256"):
        evaluate(build_config(EvaluationConfig, _parse(other_prompts)))
    renamed = [a.replace("fc=", "fd=") if "beta-model" in a else a.replace("fd=", "fc=") for a in argv]
    with pytest.raises(ValueError, match="model 'fd'"):
        evaluate(build_config(EvaluationConfig, _parse(renamed)))


class CountingScores:
    """Counts calls of ``Scorers.score_unit`` (one per unit scored, cached or not) and the images of each."""

    def __init__(self):
        self.units = 0

    def wrap(self, original):
        def counted(scorers, unit, paths):
            self.units += 1
            return original(scorers, unit, paths)

        return counted


def _parse(argv):
    import argparse

    from facediffuser.cli.evaluate import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_bad_input_gets_a_clear_error(subjects, clip_folder, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "subjects"
    (empty / "nobody").mkdir(parents=True)
    assert evaluate_main(flags(empty, clip_folder, tmp_path / "a")) == 2
    assert "Subject 'nobody' has no photos" in capsys.readouterr().err

    assert evaluate_main(flags(subjects, clip_folder, tmp_path / "b", "--ip-backend", "arcface")) == 2
    assert "Unknown IP backend 'arcface'; choose from dlib, facenet" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    assert evaluate_main(flags(subjects, clip_folder, tmp_path / "c", "--ip-backend", "facenet")) == 2
    err = capsys.readouterr().err
    assert "pip install facenet-pytorch --no-deps" in err and "--ip-backend dlib" in err
    assert not (tmp_path / "c" / "images").exists()  # it failed before generating anything

    assert evaluate_main(flags(subjects, tmp_path / "no-clip", tmp_path / "d", "--metrics", "pc", "iq")) == 2
    assert "Unknown metrics ['iq']" in capsys.readouterr().err


def test_a_launch_whose_processes_cannot_see_each_other_is_refused(monkeypatch):
    distributed_state("cpu")  # this process's single-process state
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 processes were launched but accelerate sees 1"):
        distributed_state("cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_split_the_work_without_duplicates_or_gaps(subjects, clip_folder, tmp_path):
    out = tmp_path / "two"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "facediffuser.cli.evaluate",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        launch + flags(subjects, clip_folder, out), env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 0 of 2" in done.stderr and "process 1 of 2" in done.stderr
    assert "Process 0 generated 2 units" in done.stderr and "Process 1 generated 2 units" in done.stderr

    import csv

    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = [(r["method"], r["case_id"], r["image_index"]) for r in rows]
    methods = ["tiny/" + parse_method(m).label for m in METHODS]
    expected = {(m, c, "0") for m in methods for c in ("eileen/accessory-00", "eileen/style-00")}
    assert len(keys) == len(set(keys)) == 4 and set(keys) == expected  # no duplicates, no gaps
    assert {r["rank"] for r in rows} == {"0", "1"}  # both processes worked
    assert all(r["generated"] == "True" for r in rows)
    units = {(r["method"], r["case_id"]): r["rank"] for r in rows}
    assert sorted(units.values()) == ["0", "0", "1", "1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["generated_this_run"] == 4


def test_work_unit_paths(tmp_path):
    from facediffuser.evaluation.benchmarks import Case

    variant = Variant(ModelSpec("fd", "pipes/fd"), parse_method("face-diffuser:0.2:0.7"))
    unit = WorkUnit(variant, Case("ada/style-01", "p", (), "style"))
    folder = tmp_path / "images" / "fd" / "face-diffuser_a0.2_b0.7" / "ada" / "style-01"
    assert unit.image_paths(tmp_path, 2)[1] == folder / "1.png"
    assert unit.mask_path(tmp_path) == tmp_path / "masks" / "fd" / "face-diffuser_a0.2_b0.7" / "ada" / "style-01.npz"


def test_flags_and_toml_build_the_config(tmp_path):
    import argparse

    from facediffuser.cli.evaluate import add_arguments
    from facediffuser.fusion import SubjectGuidanceBase
    from facediffuser.io.configuration import build_config

    (tmp_path / "eval.toml").write_text(
        'model = "pipe/"\nmethods = ["sdm", "face-diffuser:0.2:0.6"]\nsubject_guidance_base = "null"\nlimit = 8\n'
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "people/", "--limit", "3", "--facenet-weights", "w.pt", "--no-save-masks"])
    config = build_config(EvaluationConfig, args, tmp_path / "eval.toml")
    assert config.model == ["pipe/"] and config.data == Path("people/")  # one model from the file, as a list
    assert config.methods == ["sdm", "face-diffuser:0.2:0.6"] and config.limit == 3  # the flag beats the file
    assert config.subject_guidance_base is SubjectGuidanceBase.NULL and config.save_masks is False
    assert config.facenet_weights == Path("w.pt") and config.seed == 42
    assert config.scheduler is None and config.steps is None  # each model's own (converted weights: DDIM, 50 steps)
    assert config.alpha == 0.3 and config.guidance_scale is None  # SamplingSettings' defaults: each model's own w
    assert build_config(EvaluationConfig, parser.parse_args(["--data", "people/"])).model == ["mini"]  # the default
    with pytest.raises(ValueError, match="needs --data: a subject folder"):  # checked once the benchmark is known
        build_config(EvaluationConfig, parser.parse_args(["--model", "tiny"])).resolved()
    two = parser.parse_args(["--data", "d", "--model", "a=x/", "--model", "b=y/", "--methods", "tdm", "sdm@b"])
    assert build_config(EvaluationConfig, two).model == ["a=x/", "b=y/"]


@pytest.mark.slow
def test_scoring_finds_the_person_in_a_real_photo(subjects, tmp_path):
    """The scoring path on a real face: the mirrored reference photo stands in for a generated image."""
    from facediffuser.evaluation.benchmarks import load_benchmark
    from facediffuser.evaluation.identity import build_ip_backend
    from facediffuser.evaluation.scoring import score_units

    case = load_benchmark("single-subject", subjects).cases[0]
    unit = WorkUnit(Variant(ModelSpec("m", "m"), parse_method("face-diffuser")), case)
    (path,) = unit.image_paths(tmp_path, 1)
    path.parent.mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    scorers = Scorers(build_ip_backend("dlib", options={"dlib_upsample": 0}), None, tmp_path / "cache")
    (row,) = score_units([unit], tmp_path, 1, scorers)
    assert row.ip > 0.9 and row.faces >= 1 and np.isnan(row.pc)
    assert row.ip_backend == "dlib" and row.text == "a photo of a woman wearing a red baseball cap"
    assert scorers.cache_counts()["ip"] == {"cached": 0, "computed": 1}

    # Read back by a new process: the same image and references hit the cache; other reference photos do not.
    again = Scorers(scorers.ip_backend, None, tmp_path / "cache", rank=1)
    assert score_units([unit], tmp_path, 1, again)[0].ip == row.ip
    assert again.cache_counts()["ip"] == {"cached": 1, "computed": 0}
    other = tmp_path / "other"
    shutil.copytree(subjects, other)
    Image.fromarray(skimage_data.astronaut()).resize((400, 400)).save(other / "eileen" / "portrait.png")
    moved = WorkUnit(unit.variant, load_benchmark("single-subject", other).cases[0])
    score_units([moved], tmp_path, 1, again)
    assert again.cache_counts()["ip"] == {"cached": 1, "computed": 1}
