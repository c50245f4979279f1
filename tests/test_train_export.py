"""``facediffuser train export``: a checkpoint of a tiny SDM run exported with its EMA or its raw weights, equal to
the trainer's own tensors; the run folder only read; every refusal one sentence, exit 2, before a model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import reset_accelerate
from facediffuser.cli.main import main
from facediffuser.pipeline import FaceDiffuserPipeline
from facediffuser.training import ModelKind, TrainConfig, Trainer
from facediffuser.training.synthetic import write_synthetic_ffhq_wild

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def files(folder: Path) -> dict[Path, bytes]:
    return {f: f.read_bytes() for f in folder.rglob("*") if f.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A 2-step tiny SDM run with a checkpoint per step and a short EMA, far from the raw weights; the trainer's EMA
    and live weights at its end (step 2)."""
    root = tmp_path_factory.mktemp("export")
    data = write_synthetic_ffhq_wild(root / "data", num_images=4, size=72, test_images=1)
    folder = root / "run"
    settings = dict(data_root=data, output_dir=folder, resolution=64, train_batch_size=2, max_train_steps=2)
    settings.update(checkpointing_steps=1, checkpoints_total_limit=3, validation_steps=0, log_with="csv")
    settings.update(use_ema=True, ema_decay=0.5, learning_rate=1e-2)
    reset_accelerate()
    trainer = Trainer(ModelKind.SDM, TrainConfig(**settings))
    trainer.train()
    ema = trainer.trained_state()
    raw = {
        part: {n.removeprefix(f"{part}."): p.detach().clone() for n, p in trainer.denoiser.named_parameters()
               if n.startswith(f"{part}.") and p.requires_grad}
        for part in ema
    }  # fmt: skip
    reset_accelerate()
    return {"folder": folder, "data": data, "ema": ema, "raw": raw}


PARTS = {"unet": "subject_unet", "subject_fuser": "subject_fuser", "image_encoder": "image_encoder"}


@pytest.mark.slow
def test_export_writes_a_checkpoints_ema_or_raw_weights_and_leaves_the_run_alone(run, tmp_path):
    unet_ema, unet_raw = run["ema"]["unet"], run["raw"]["unet"]
    assert any(not torch.equal(unet_ema[n], unet_raw[n]) for n in unet_ema)  # the two exports can tell apart
    before = files(run["folder"])
    for weights in ("ema", "raw"):
        reset_accelerate()
        out = tmp_path / weights
        argv = ["train", "export", "--run", str(run["folder"]), "--step", "2", "--weights", weights, "--out", str(out)]
        assert main(argv) == 0
        pipe = FaceDiffuserPipeline.from_pretrained(out)
        for part, tensors in run[weights].items():
            exported = dict(getattr(pipe, PARTS[part]).named_parameters())
            for name, tensor in tensors.items():  # float32 in, float32 out: exact by construction
                assert torch.equal(exported[name], tensor), f"{weights}: {part}.{name}"
        assert json.loads((out / ".facediffuser.json").read_text())["command"] == "train export"
    assert files(run["folder"]) == before  # the run is only read


@pytest.mark.slow
def test_an_earlier_step_is_the_checkpoint_of_that_step(run, tmp_path):
    # step 1's EMA differs from step 2's: the export reads the checkpoint named, not the run's end
    assert main(["train", "export", "--run", str(run["folder"]), "--step", "1", "--out", str(tmp_path / "one")]) == 0
    exported = dict(FaceDiffuserPipeline.from_pretrained(tmp_path / "one").subject_unet.named_parameters())
    assert any(not torch.equal(exported[n], t) for n, t in run["ema"]["unet"].items())


def refused(argv: list[str], capsys) -> str:
    assert main(["train", "export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facediffuser train: error: ") and err.count("\n") == 1, err
    return err


def test_refusals_come_before_a_model_loads_and_write_nothing(tmp_path, capsys, monkeypatch):
    import facediffuser.training.trainer as trainer

    monkeypatch.setattr(trainer.Trainer, "__init__", lambda *a, **k: pytest.fail("the trainer was built"))
    # a run folder as `facediffuser train` leaves it, as far as the checks read it: its settings and checkpoints
    run = {"folder": tmp_path / "run"}
    settings = {"model": "sdm", "data_root": str(tmp_path / "data"), "use_ema": True, "reference_region": "whole"}
    (run["folder"] / "checkpoints").mkdir(parents=True)
    (run["folder"] / "train_config.json").write_text(json.dumps(settings))
    for step in (1, 2):
        (run["folder"] / "checkpoints" / f"checkpoint-{step:07d}").mkdir()
        (run["folder"] / "checkpoints" / f"checkpoint-{step:07d}" / "training_state.json").write_text("{}")
    folder = str(run["folder"])
    before = files(run["folder"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("a user's file")
    err = refused(["--run", folder, "--step", "2", "--out", str(tmp_path / "taken")], capsys)
    assert "exists: choose a new folder" in err
    assert (tmp_path / "taken" / "mine.txt").read_text() == "a user's file"
    (tmp_path / "empty").mkdir()
    assert "exists" in refused(["--run", folder, "--step", "2", "--out", str(tmp_path / "empty")], capsys)
    err = refused(["--run", folder, "--step", "7", "--out", str(tmp_path / "seven")], capsys)
    assert "has no checkpoint of step 7 (it keeps steps 1, 2)" in err
    err = refused(["--run", str(tmp_path / "nowhere"), "--step", "2", "--out", str(tmp_path / "x")], capsys)
    assert "--run" in err and "does not exist" in err
    err = refused(["--run", str(tmp_path / "taken"), "--step", "2", "--out", str(tmp_path / "x")], capsys)
    assert "holds no train_config.json" in err
    err = refused(["--run", folder, "--step", "2", "--out", str(run["folder"] / "inside")], capsys)
    assert "lies inside the input" in err

    no_ema = tmp_path / "no-ema"  # the same run, as if trained without an EMA
    shutil.copytree(run["folder"], no_ema)
    (no_ema / "train_config.json").write_text(json.dumps({**settings, "use_ema": False}))
    err = refused(["--run", str(no_ema), "--step", "2", "--weights", "raw", "--out", str(tmp_path / "x")], capsys)
    assert "kept no moving average" in err and "--weights ema" in err

    head = tmp_path / "head"  # an SDM trained on head references needs a face detector in its pipeline
    shutil.copytree(run["folder"], head)
    (head / "train_config.json").write_text(json.dumps({**settings, "reference_region": "head"}))
    err = refused(["--run", str(head), "--step", "2", "--out", str(tmp_path / "x")], capsys)
    assert "needs a face detector: give --face-detector" in err
    not_a_detector = ["--face-detector", str(tmp_path / "taken")]
    err = refused(["--run", str(head), "--step", "2", "--out", str(tmp_path / "x"), *not_a_detector], capsys)
    assert "holds no face detector" in err

    assert not (tmp_path / "x").exists() and not (tmp_path / "seven").exists()
    assert files(run["folder"]) == before
