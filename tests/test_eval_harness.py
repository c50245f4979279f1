"""The evaluation harness end to end on the tiny pipeline, with the real dlib backend and a tiny CLIP folder."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from facediffuser.cli.evaluate import main as evaluate_main
from facediffuser.evaluation.harness import EvaluationConfig, WorkUnit, distributed_state, evaluate, shard
from facediffuser.evaluation.methods import parse_method
from facediffuser.evaluation.reports import MaskAccumulator, combine_tables
from facediffuser.tokenizer import load_clip_tokenizer

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

SRC = Path(__file__).resolve().parents[1] / "src"
METHODS = ["tdm", "face-diffuser"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIP saved like a hub checkpoint, so the harness loads it through its real code path."""
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    text = {"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    text.update({"num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407})
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision.update({"image_size": 32, "patch_size": 8})
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    load_clip_tokenizer().save_pretrained(folder)
    return folder


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


def test_end_to_end_writes_every_output_and_resumes(subjects, clip_folder, tmp_path):
    out = tmp_path / "run"
    first = evaluate(config(subjects, clip_folder, out))
    assert len(first.units) == len(first.generated) == 4  # 2 prompts x 2 methods, all made now

    labels = ["tdm", "face-diffuser_a0.3_b0.6"]
    cases = ["eileen/accessory-00", "eileen/style-00"]
    images = [out / "images" / m / c / "0.png" for m in labels for c in cases]
    expected = [out / name for name in ("run.json", "scores.csv", "summary.json", "table.md", "sweep.png")]
    expected += images + [out / "masks" / m / f"{c}.npz" for m in labels for c in cases]
    for label in labels:
        expected.append(out / "fusion_masks" / label / "fusion_masks.png")
    expected.append(out / "fusion_masks" / "tdm" / "masks_stage1.png")
    expected += [out / "fusion_masks" / labels[1] / f"masks_stage{k}.png" for k in (2, 3)]
    missing = [str(p.relative_to(out)) for p in expected if not p.is_file()]
    assert not missing, missing
    assert not (out / "_shards").exists() or not any((out / "_shards").iterdir())

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ip_backend"] == "dlib" and summary["ip_backend_settings"]["centered"] is True
    assert summary["clip_model"] == str(clip_folder)
    assert summary["generated_this_run"] == 4
    for label in labels:
        result = summary["methods"][label]
        assert result["images"] == 2
        assert result["ip"] == 0.0  # noise images: no face, IP 0
        assert -1.0 <= result["pc"] <= 1.0
        assert set(result["groups"]) == {"accessory", "style"}
    table = (out / "table.md").read_text()
    assert "| method | single IP | single PC | images |" in table and "`dlib`" in table
    assert "Face-diffuser (alpha=0.3, beta=0.6)" in table and "TDM alone" in table
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 5 and "a photo of a woman wearing a red baseball cap" in rows[1]

    # The fusion masks follow the stages: with 2 steps, alpha 0.3 and beta 0.6 there is no stage-I step, one
    # stage-II step (a 0/1 SNF mask) and one stage-III step (all SDM).
    masks = np.load(out / "masks" / labels[1] / "eileen" / "style-00.npz")
    assert np.isnan(masks["masks_stage1"]).all()
    assert set(np.unique(masks["masks_stage2"])) <= {0.0, 1.0}
    assert np.all(masks["masks_stage3"] == 1.0)
    assert np.isnan(masks["saliency_text_stage3"]).all() and np.isfinite(masks["saliency_subject_stage3"]).all()

    # Rerun through the command line: nothing is generated again, the scores are the same.
    mtimes = [p.stat().st_mtime_ns for p in images]
    assert evaluate_main(flags(subjects, clip_folder, out)) == 0
    assert [p.stat().st_mtime_ns for p in images] == mtimes
    again = json.loads((out / "summary.json").read_text())
    assert again["generated_this_run"] == 0
    assert again["methods"] == summary["methods"]

    # A lost image is made again, identically (every case is seeded on its own).
    before = np.asarray(Image.open(images[1]))
    images[1].unlink()
    third = evaluate(config(subjects, clip_folder, out, metrics=["pc"]))
    assert [(u.method.label, u.case.case_id) for u in third.generated] == [("tdm", "eileen/style-00")]
    np.testing.assert_array_equal(np.asarray(Image.open(images[1])), before)
    assert json.loads((out / "summary.json").read_text())["ip_backend"] is None  # IP not computed this time

    # Other generation settings in the same folder are refused rather than mixed.
    with pytest.raises(ValueError, match="other settings.*steps: 2 -> 3"):
        evaluate(config(subjects, clip_folder, out, steps=3))


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


def test_shards_are_disjoint_and_complete():
    units = list(range(11))
    for count in (1, 2, 3, 4, 16):
        parts = [shard(units, i, count) for i in range(count)]
        flat = [u for part in parts for u in part]
        assert sorted(flat) == units and len(flat) == len(set(flat))
    with pytest.raises(ValueError):
        shard(units, 2, 2)


def test_a_launch_whose_processes_cannot_see_each_other_is_refused(monkeypatch):
    distributed_state("cpu")  # this process's single-process state
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 processes were launched but accelerate sees 1"):
        distributed_state("cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    methods = [parse_method(m).label for m in METHODS]
    expected = {(m, c, "0") for m in methods for c in ("eileen/accessory-00", "eileen/style-00")}
    assert len(keys) == len(set(keys)) == 4 and set(keys) == expected  # no duplicates, no gaps
    assert {r["rank"] for r in rows} == {"0", "1"}  # both processes worked
    assert all(r["generated"] == "True" for r in rows)
    units = {(r["method"], r["case_id"]): r["rank"] for r in rows}
    assert sorted(units.values()) == ["0", "0", "1", "1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["generated_this_run"] == 4


def test_mask_means_skip_unevaluated_steps():
    acc = MaskAccumulator()
    acc.add(
        {"masks_stage2": np.array([[[0.0, 1.0]], [[1.0, 1.0]]]), "saliency_subject_stage1": np.full((2, 1, 2), np.nan)}
    )
    acc.add({"masks_stage2": np.array([[[1.0, np.nan]]]), "saliency_subject_stage1": np.full((1, 1, 2), np.nan)})
    means = acc.means()
    np.testing.assert_allclose(means["masks_stage2"], [[2 / 3, 1.0]])
    assert "saliency_subject_stage1" not in means  # never evaluated


def test_combined_table_refuses_mixed_backends():
    def summary(kind, backend, ip):
        result = {"display_name": "Face-diffuser (alpha=0.3, beta=0.6)", "ip": ip, "pc": 0.3}
        return {"kind": kind, "ip_backend": backend, "clip_model": "clip", "methods": {"fd": result}}

    table = combine_tables([summary("single", "facenet", 0.7), summary("multi", "facenet", 0.6)])
    assert "| Face-diffuser (alpha=0.3, beta=0.6) | 0.700 | 0.300 | 0.600 | 0.300 |" in table
    with pytest.raises(ValueError, match="different ip_backend"):
        combine_tables([summary("single", "facenet", 0.7), summary("multi", "dlib", 0.6)])


def test_work_unit_paths(tmp_path):
    from facediffuser.evaluation.benchmarks import Case

    unit = WorkUnit(parse_method("face-diffuser:0.2:0.7"), Case("ada/style-01", "p", (), "style"))
    assert (
        unit.image_paths(tmp_path, 2)[1]
        == tmp_path / "images" / "face-diffuser_a0.2_b0.7" / "ada" / "style-01" / "1.png"
    )
    assert unit.mask_path(tmp_path) == tmp_path / "masks" / "face-diffuser_a0.2_b0.7" / "ada" / "style-01.npz"


def test_combine_command_writes_one_table_1(tmp_path, capsys):
    for kind, ip in (("single", 0.71), ("multi", 0.59)):
        run = tmp_path / kind
        run.mkdir()
        result = {"display_name": "Face-diffuser (alpha=0.3, beta=0.6)", "ip": ip, "pc": 0.32}
        summary = {"kind": kind, "ip_backend": "facenet", "clip_model": "clip", "methods": {"fd": result}}
        (run / "summary.json").write_text(json.dumps(summary))
    assert evaluate_main(["--combine", str(tmp_path / "single"), str(tmp_path / "multi"), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table1.md").read_text()
    assert "| Face-diffuser (alpha=0.3, beta=0.6) | 0.710 | 0.320 | 0.590 | 0.320 |" in table
    assert evaluate_main(["--combine", str(tmp_path / "nowhere")]) == 2
    assert "No summary.json" in capsys.readouterr().err


def test_facenet_table_lists_the_papers_rows():
    from facediffuser.evaluation.reports import markdown_table

    summary = {"benchmark": "single-subject", "kind": "single", "ip_backend": "facenet", "methods": {}}
    assert "| Face-diffuser (paper) | 0.708 | 0.325 |" in markdown_table(summary)
    summary["ip_backend"] = "dlib"
    assert "(paper)" not in markdown_table(summary)


def test_flags_and_toml_build_the_config(tmp_path):
    import argparse

    from facediffuser.cli.evaluate import add_arguments
    from facediffuser.configuration import build_config
    from facediffuser.fusion import SubjectGuidanceBase

    (tmp_path / "eval.toml").write_text(
        'model = "pipe/"\nmethods = ["sdm", "face-diffuser:0.2:0.6"]\nsubject_guidance_base = "null"\nlimit = 8\n'
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "people/", "--limit", "3", "--facenet-weights", "w.pt", "--no-save-masks"])
    config = build_config(EvaluationConfig, args, tmp_path / "eval.toml")
    assert config.model == "pipe/" and config.data == Path("people/")
    assert config.methods == ["sdm", "face-diffuser:0.2:0.6"] and config.limit == 3  # the flag beats the file
    assert config.subject_guidance_base is SubjectGuidanceBase.NULL and config.save_masks is False
    assert config.facenet_weights == Path("w.pt") and config.scheduler == "ddim" and config.seed == 42
    with pytest.raises(ValueError, match="Missing required setting.*--model"):
        build_config(EvaluationConfig, parser.parse_args(["--data", "people/"]))


def test_scoring_finds_the_person_in_a_real_photo(subjects, tmp_path):
    """The scoring path on a real face: the mirrored reference photo stands in for a generated image."""
    from facediffuser.evaluation.benchmarks import load_benchmark
    from facediffuser.evaluation.harness import score_units
    from facediffuser.evaluation.identity import build_ip_backend

    case = load_benchmark("single-subject", subjects).cases[0]
    unit = WorkUnit(parse_method("face-diffuser"), case)
    (path,) = unit.image_paths(tmp_path, 1)
    path.parent.mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    (row,) = score_units([unit], tmp_path, 1, build_ip_backend("dlib", options={"dlib_upsample": 0}), None)
    assert row.ip > 0.9 and row.faces >= 1 and np.isnan(row.pc)
    assert row.ip_backend == "dlib" and row.text == "a photo of a woman wearing a red baseball cap"
