"""Benchmark scripts run on tiny inputs: the speed benchmark end to end on the tiny components (its figures are for
docs/performance.md, not tests), the identity-feature count of a mini run on a hand-made one, the validation-people
script's training people on a tiny rendered world."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_speed.py"


@pytest.fixture(scope="module")
def pipeline_speed():
    spec = importlib.util.spec_from_file_location("pipeline_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def script_module(name: str):
    """A script of benchmarks/ loaded as a module (its ``main`` and helpers, without running it)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_pipeline_speed_runs_on_tiny_components(pipeline_speed, capsys):
    # 4 steps split 1 / 1 / 2, so every stage runs; the script raises if a pipeline's UNet hooks see another number
    # of evaluations than the stage schedule gives.
    pipeline_speed.main(["--configs", "tiny", "--steps", "4", "--rounds", "1", "--images", "1"])
    out = capsys.readouterr().out
    rows = {
        line.split()[0] + " " + line.split()[1]: line.split() for line in out.splitlines() if line.startswith("  FD")
    }
    assert rows["FD text"][4] == "10" and rows["FD null"][4] == "13"  # (2) + (2+2) + 2*(2) and (2) + (2+3) + 2*(3)
    assert "SNF:" in out and "VAE decode" in out
    assert "ratios at T=50, alpha 0.3 beta 0.6: text 1.30x, null 1.65x" in out  # docs/method.md, Cost per image


def test_flags_default_to_the_sampling_settings(pipeline_speed):
    from facediffuser.settings import SamplingSettings

    args = pipeline_speed.parse_args([])
    defaults = SamplingSettings()
    assert (args.alpha, args.beta, args.guidance_scale) == (defaults.alpha, defaults.beta, defaults.guidance_scale)


def test_identity_features_counts_what_the_first_choice_shares_with_the_asked_person(tmp_path, capsys):
    import csv
    import json

    from facediffuser.lab.world.attributes import Identity

    module = script_module("mini_identity_features")
    looks = dict(hair_colour="black", hair_style="short", glasses="none", facial_hair="none", face_shape="round")
    people = [
        Identity(1, "man", "light", **looks),
        Identity(2, "man", "dark", **looks),  # differs from id0001 in skin only
        Identity(3, "woman", "dark", **{**looks, "face_shape": "long"}),
    ]
    (tmp_path / "world.json").write_text(json.dumps({"people": [p.to_dict() for p in people]}))
    run = tmp_path / "run"
    run.mkdir()
    rows = [  # id0001 taken for id0002 once, id0003 right, a face not found
        ("fd", "id0001", {"identity": ["id0002"]}),
        ("fd", "id0003", {"identity": ["id0003"]}),
        ("fd", "id0002;id0003", {"identity": [None, "id0001"]}),
    ]
    with (run / "scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "subjects", "predicted"])
        writer.writerows([m, s, json.dumps(p)] for m, s, p in rows)
    module.main([str(run), "--world", str(tmp_path)])
    out = capsys.readouterr().out
    assert "fd: 3 persons, 1 right" in out
    # skin: id0002 for id0001 no, id0003 right yes, id0001 for id0003 no -> 1 of 3; the others of the gallery share
    # id0001's skin 0 of 2, id0003's dark skin 1 of 2 (id0002), twice -> (0 + 0.5 + 0.5) / 3
    assert "skin 33% (33%)" in out
    # gender: man for man, right, man for woman -> 2 of 3; blind: 1/2 (id0002), 0/2, 0/2 -> 17%
    assert "gender 67% (17%)" in out
    # face shape: round for round, right, round for long -> 2 of 3; blind: 1/2 (id0002 round), 0/2, 0/2 -> 17%
    assert "face_shape 67% (17%)" in out


def test_validation_people_renders_training_people_as_the_world_renders_references(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from facediffuser.cli.main import main as cli
    from facediffuser.lab.world.attributes import load_people

    module = script_module("mini_validation_people")
    world = tmp_path / "w"
    counts = ["--scenes-train", "2", "--scenes-test", "1", "--portraits-train", "2", "--portraits-test", "1"]
    assert cli(["world", "render", "--out", str(world), "--identities", "20", "--heldout", "4", *counts]) == 0
    people, split = load_people(world)

    out = tmp_path / "train-people"
    assert module.render_training(world, out, 5).startswith("5 training people, 3 renders each")
    chosen = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(chosen) == 5 and {f"id{i:04d}" for i in split["train"]} >= set(chosen)
    nouns = json.loads((out / "subjects.json").read_text())
    assert nouns == {p.name: p.noun for p in people if p.name in chosen}
    assert all(sorted(f.name for f in (out / name).iterdir()) == ["1.png", "2.png", "3.png"] for name in chosen)
    # the same form as the held-out people's references (same size), and none of them is a training image
    held = next(p for p in (world / "references").iterdir() if p.is_dir())
    assert Image.open(out / chosen[0] / "1.png").size == Image.open(held / "1.png").size
    train_images = [np.asarray(Image.open(p).convert("RGB")) for p in (world / "portraits").rglob("*.jpg")]
    for reference in out.rglob("*.png"):
        pixels = np.asarray(Image.open(reference).convert("RGB")).astype(int)
        # the same render through the data set's JPEG differs by a few levels on average; another render by tens
        assert min(np.abs(pixels - image).mean() for image in train_images) > 8.0
    # seeded: a second folder holds the same people and bytes; an existing folder is refused, untouched
    module.render_training(world, tmp_path / "again", 5)
    assert sorted(p.name for p in (tmp_path / "again").iterdir() if p.is_dir()) == chosen
    assert (tmp_path / "again" / chosen[0] / "2.png").read_bytes() == (out / chosen[0] / "2.png").read_bytes()
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    with pytest.raises(SystemExit, match="exists already"):
        module.main(["--world", str(world), "--out", str(out), "--training", "5"])
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    with pytest.raises(SystemExit, match="between 1 and"):
        module.render_training(world, tmp_path / "too-many", 17)


def test_export_checkpoint_writes_a_checkpoints_ema_or_raw_weights_and_leaves_the_run_alone(tmp_path):
    import torch
    from accelerate.state import AcceleratorState, GradientState

    from facediffuser.pipeline import FaceDiffuserPipeline
    from facediffuser.training import ModelKind, TrainConfig, Trainer
    from facediffuser.training.synthetic import write_synthetic_ffhq_wild

    def fresh_accelerate_state() -> None:  # each trainer builds its own Accelerator (process-wide singletons)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    module = script_module("mini_export_checkpoint")
    data = write_synthetic_ffhq_wild(tmp_path / "data", num_images=4, size=72, test_images=1)
    run = tmp_path / "run"
    settings = dict(data_root=data, output_dir=run, resolution=64, train_batch_size=2, max_train_steps=2)
    settings.update(checkpointing_steps=1, checkpoints_total_limit=3, validation_steps=0, log_with="csv")
    settings.update(use_ema=True, ema_decay=0.5, learning_rate=1e-2)  # a short EMA, far from the raw weights
    fresh_accelerate_state()
    trainer = Trainer(ModelKind.SDM, TrainConfig(**settings))
    trainer.train()
    ema = trainer.trained_state()["unet"]
    raw = {n.removeprefix("unet."): p.detach() for n, p in trainer.denoiser.named_parameters() if n.startswith("unet.")}
    assert any(not torch.equal(ema[n], raw[n]) for n in ema)
    before = {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}

    for weights, expected in (("ema", ema), ("raw", raw)):
        fresh_accelerate_state()
        module.main(["--train", str(run), "--step", "2", "--weights", weights, "--out", str(tmp_path / weights)])
        exported = dict(FaceDiffuserPipeline.from_pretrained(tmp_path / weights).subject_unet.named_parameters())
        for name, tensor in expected.items():  # float32 in, float32 out: exact by construction
            assert torch.equal(exported[name], tensor), f"{weights}: {name}"
    assert {f: f.read_bytes() for f in run.rglob("*") if f.is_file()} == before  # the run is only read

    fresh_accelerate_state()
    with pytest.raises(SystemExit, match="exists"):
        module.main(["--train", str(run), "--step", "2", "--out", str(tmp_path / "raw")])
    with pytest.raises(SystemExit, match="no checkpoint of step 7"):
        module.main(["--train", str(run), "--step", "7", "--out", str(tmp_path / "seven")])
    fresh_accelerate_state()


def test_fresh_subject_unet_replaces_only_the_subject_unet_seeded(tmp_path, tiny_pipe):
    import torch

    from facediffuser.pipeline import FaceDiffuserPipeline

    module = script_module("mini_fresh_subject_unet")
    tiny_pipe.subject_unet.load_state_dict(tiny_pipe.unet.state_dict())  # as the SDM's base: the TDM in both slots
    tiny_pipe.save_pretrained(tmp_path / "base")
    for name in ("a", "b"):
        module.main(["--base", str(tmp_path / "base"), "--out", str(tmp_path / name), "--seed", "3"])
    a, b = (FaceDiffuserPipeline.from_pretrained(tmp_path / name) for name in ("a", "b"))
    tdm = tiny_pipe.unet.state_dict()
    fresh = a.subject_unet.state_dict()
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in tdm.items()}  # the same architecture
    assert not any(torch.equal(fresh[k], tdm[k]) for k in fresh if k.endswith("conv_in.weight"))
    assert all(torch.equal(fresh[k], v) for k, v in b.subject_unet.state_dict().items())  # seeded
    for part in ("unet", "vae", "text_encoder", "image_encoder", "subject_fuser"):
        kept, base = getattr(a, part).state_dict(), getattr(tiny_pipe, part).state_dict()
        assert all(torch.equal(kept[k], v) for k, v in base.items()), part
    with pytest.raises(SystemExit, match="exists"):
        module.main(["--base", str(tmp_path / "base"), "--out", str(tmp_path / "a")])


def test_step_variants_read_labels_and_toml_settings():
    module = script_module("mini_sdm_step_variants")
    assert module.parse_variant("recipe") == ("recipe", {})
    label, overrides = module.parse_variant(' no loss : localization_weight=0, mixed_precision="bf16", use_ema=false ')
    assert label == "no loss" and overrides == {"localization_weight": 0, "mixed_precision": "bf16", "use_ema": False}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        module.parse_variant("x: localization_weight")
    with pytest.raises(SystemExit, match="not a TOML value"):
        module.parse_variant("x: mixed_precision=bf16")  # a string needs its quotes
    defaults = [module.parse_variant(v) for v in module.DEFAULT_VARIANTS]
    assert defaults[0] == ("recipe", {}) and all(overrides for _, overrides in defaults[1:])
