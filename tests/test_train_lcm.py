"""LCM distillation (``facediffuser train lcm``, training.lcm) on the tiny components and a tiny FFHQ-wild data set:
the consistency step's pieces, the teacher's conditions, a falling loss, an exact resume, and the exported folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, LCMScheduler

from conftest import reset_accelerate
from facediffuser.cli.main import main as cli_main
from facediffuser.io.tiny import build_tiny_pipeline
from facediffuser.pipeline import FaceDiffuserPipeline
from facediffuser.training import ModelKind, TrainConfig, Trainer
from facediffuser.training.lcm import (
    LCMTrainer,
    boundary_scalings,
    consistency_loss,
    solver_timesteps,
    x0_and_eps,
)
from facediffuser.training.runs import make_trainer
from test_train import tiny_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def lcm_config(data_root: Path, out: Path, **overrides) -> TrainConfig:
    """The SD1.x trainer tests' tiny config with a 10-step solver schedule."""
    return tiny_config(data_root, out, **{"lcm_solver_steps": 10, **overrides})


def losses(out: Path) -> list[float]:
    with (out / "logs" / "metrics.csv").open() as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/loss"]


# ------------------------------------------------------------------ the pieces
def test_solver_timesteps_are_lcm_schedulers_own():
    timesteps, skip = solver_timesteps(1000, 50)
    assert skip == 20 and timesteps[0] == 19 and timesteps[-1] == 999
    lcm = LCMScheduler(original_inference_steps=50)
    lcm.set_timesteps(4)
    assert set(lcm.timesteps.tolist()) <= set(timesteps.tolist())  # the student is asked only where it was trained


def test_boundary_conditions_are_lcm_schedulers():
    t = torch.tensor([0, 19, 259, 999])
    c_skip, c_out = boundary_scalings(t, 10.0)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # f(x, 0) = x exactly
    lcm = LCMScheduler(timestep_scaling=10.0)
    for i, step in enumerate(t.tolist()):
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(step)
        assert math.isclose(c_skip[i].item(), ref_skip, rel_tol=1e-6)  # float32 against float64
        assert math.isclose(c_out[i].item(), ref_out, rel_tol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_x0_and_eps_invert_the_forward_process(prediction):
    scheduler = DDPMScheduler(prediction_type=prediction)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([5, 400, 990])
    x_t = scheduler.add_noise(x0, eps, t)
    output = {"epsilon": eps, "v_prediction": scheduler.get_velocity(x0, eps, t), "sample": x0}[prediction]
    got_x0, got_eps = x0_and_eps(output, t, x_t, scheduler.alphas_cumprod, prediction)
    torch.testing.assert_close(got_x0, x0, rtol=0, atol=2e-3)  # float32; x0 from eps divides by sqrt(a) ~ 0.07
    torch.testing.assert_close(got_eps, eps, rtol=0, atol=2e-3)


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away():
    small, big = torch.full((4,), 1e-5), torch.full((4,), 10.0)
    zero = torch.zeros(4)
    # d^2 / 2c near 0; 1% for float32's cancellation in sqrt(d^2 + c^2) - c (the L2 loss would be 1e-10, 500x less)
    assert math.isclose(consistency_loss(small, zero, "huber", 1e-3).item(), 1e-10 / 2e-3, rel_tol=1e-2)
    assert math.isclose(consistency_loss(big, zero, "huber", 1e-3).item(), 10.0 - 1e-3, rel_tol=1e-5)
    assert math.isclose(consistency_loss(big, zero, "l2", 1e-3).item(), 100.0, rel_tol=1e-6)


# ------------------------------------------------------------------ the trainer
@pytest.mark.parametrize("unet", ["tdm", "sdm"])
def test_the_teacher_is_guided_on_the_conditions_the_pipeline_guides_it_on(data_root, tmp_path, unet):
    """TDM: c against the empty prompt; SDM: c_aug against c (the release's rule). The target sees the condition."""
    trainer = make_trainer("lcm", lcm_config(data_root, tmp_path / unet, lcm_unet=unet))
    assert isinstance(trainer, LCMTrainer) and trainer.kind is ModelKind(unet) and trainer.run_kind is ModelKind.LCM
    seen = {}
    teacher_forward, target_forward = trainer.teacher.forward, trainer.target.forward
    trainer.teacher.forward = lambda *a, **k: (
        seen.setdefault("teacher", k["encoder_hidden_states"]) is None or (teacher_forward(*a, **k))
    )
    trainer.target.forward = lambda *a, **k: (
        seen.setdefault("target", k["encoder_hidden_states"]) is None or (target_forward(*a, **k))
    )
    batch = next(iter(trainer.train_loader))
    trainer.compute_loss(batch, 0)
    text = trainer.text_encoder(batch["input_ids"])[0]
    cond, base = seen["teacher"].chunk(2)
    if unet == "tdm":
        torch.testing.assert_close(cond, text, rtol=0, atol=0)
        torch.testing.assert_close(base, trainer.null_embeds.expand_as(text), rtol=0, atol=0)
    else:
        assert batch["subject_positions"].shape[0] > 0  # people to fuse
        c_aug = trainer.denoiser.condition(text, batch["subject_pixels"], batch["subject_positions"])
        torch.testing.assert_close(cond, c_aug, rtol=0, atol=0)
        torch.testing.assert_close(base, text, rtol=0, atol=0)
        assert not torch.equal(cond, base)
    torch.testing.assert_close(seen["target"], cond, rtol=0, atol=0)
    assert [n.split(".")[0] for n in trainer.trainable_names] == ["unet"] * len(trainer.trainable_names)


def test_the_consistency_loss_falls_on_a_fixed_batch(data_root, tmp_path):
    trainer = make_trainer("lcm", lcm_config(data_root, tmp_path / "fixed", learning_rate=3e-3))
    batch = next(iter(trainer.train_loader))
    seen = []
    for _ in range(25):
        loss = trainer.compute_loss(batch, 0)["loss"]  # the same noise, timesteps and guidance scales
        assert math.isfinite(loss.item())
        seen.append(loss.item())
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        trainer.after_optimizer_step()
    assert min(seen[-5:]) < 0.5 * seen[0], seen


@pytest.mark.slow
def test_lcm_resumes_exactly_and_exports_an_lcm_pipeline_that_samples(data_root, tmp_path, face_image):
    common = dict(lcm_unet="sdm", checkpointing_steps=2, lcm_target_decay=0.5, lcm_inference_steps=2)
    whole = make_trainer("lcm", lcm_config(data_root, tmp_path / "whole", max_train_steps=4, **common))
    out = whole.train()
    make_trainer("lcm", lcm_config(data_root, tmp_path / "cut", max_train_steps=2, **common)).train()
    reset_accelerate()
    resumed = make_trainer("lcm", lcm_config(data_root, tmp_path / "cut", max_train_steps=4, resume="latest", **common))
    resumed.train()
    # Bit-exact on purpose: one process, the same kernels on the same inputs; the target network was restored too.
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")
    assert all(math.isfinite(v) for v in losses(out))
    for a, b in zip(whole.target.parameters(), resumed.target.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(whole.denoiser.unet.parameters(), resumed.denoiser.unet.parameters()):
        assert torch.equal(a, b)

    pipe = FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True)
    base = build_tiny_pipeline(seed=0)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.default_num_inference_steps == 2
    assert pipe.scheduler.config.original_inference_steps == 10  # the solver's schedule
    student = dict(pipe.subject_unet.named_parameters())
    live = dict(whole.denoiser.unet.named_parameters())
    assert all(torch.equal(student[n], live[n].detach()) for n in student)  # the student, not the target
    assert any(not torch.equal(p, student[n]) for n, p in base.subject_unet.named_parameters())
    scene = dict(pipe.unet.named_parameters())
    assert all(torch.equal(p, scene[n]) for n, p in base.unet.named_parameters())  # the other UNet: the base's
    fuser = dict(pipe.subject_fuser.named_parameters())
    assert all(torch.equal(p, fuser[n]) for n, p in base.subject_fuser.named_parameters())  # frozen
    assert '"model": "lcm"' in (out / "train_config.json").read_text()

    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a photo of a woman <|image|> on a beach",
        reference_images=[face_image],
        guidance_scale=1.5,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 64, 64, 3) and bool((image >= 0).all() and (image <= 1).all())

    # `train export` of a checkpoint writes the same kind of folder (the student of that step, LCMScheduler).
    assert cli_main(["train", "export", "--run", str(out), "--step", "4", "--out", str(tmp_path / "exported")]) == 0
    exported = FaceDiffuserPipeline.from_pretrained(tmp_path / "exported", use_safetensors=True)
    assert isinstance(exported.scheduler, LCMScheduler)
    assert all(torch.equal(p, student[n]) for n, p in exported.subject_unet.named_parameters())


def test_the_exported_lcm_folder_names_its_own_guidance_scale_and_validation_draws_with_it(data_root, tmp_path):
    """A distilled model samples well at a small scale: the exported folder's model_index.json names it (so that
    generate, the demo and evaluate take it), and the validation images are drawn with it."""
    trainer = make_trainer("lcm", lcm_config(data_root, tmp_path / "run", lcm_inference_guidance_scale=1.5))
    assert trainer.validation_sampling().guidance_scale == 1.5
    assert trainer.validation_sampling().num_inference_steps == trainer.config.lcm_inference_steps
    out = trainer.write_pipeline(trainer.trained_state(), build_tiny_pipeline(seed=0), tmp_path / "exported")
    index = json.loads((out / "model_index.json").read_text())
    assert (index["guidance_scale"], index["num_inference_steps"]) == (1.5, trainer.config.lcm_inference_steps)
    assert FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True).default_guidance_scale == 1.5
    assert TrainConfig.__dataclass_fields__["lcm_inference_guidance_scale"].default == 2.0  # the mini model's best


def test_an_sdxl_base_is_refused_before_it_loads(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "lcm", "--data-root", str(data_root), "--output-dir", str(out), "--pretrained", "tiny-xl"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "train lcm distils an SD1.x pipeline, and --pretrained tiny-xl is SDXL" in err, err
    assert not out.exists()


def test_the_plain_trainer_refuses_the_lcm_kind(data_root, tmp_path):
    with pytest.raises(ValueError, match="make_trainer"):
        Trainer(ModelKind.LCM, lcm_config(data_root, tmp_path / "x"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lcm-unet", "ip-adapter"], "--lcm-unet must be one of tdm, sdm, got 'ip-adapter'."),
        (["--lcm-loss", "l1"], "--lcm-loss must be one of huber, l2, got 'l1'."),
        (["--lcm-guidance-min", "9", "--lcm-guidance-max", "2"], "--lcm-guidance-min (9.0) must not exceed"),
        (["--lcm-solver-steps", "0"], "--lcm-solver-steps must be a whole number from 1 to 1000, got 0."),
        (["--lcm-target-decay", "1.5"], "--lcm-target-decay must be within [0, 1], got 1.5."),
        (["--lcm-inference-guidance-scale", "-1"], "--lcm-inference-guidance-scale must be a non-negative number"),
        (["--lcm-inference-guidance-scale", "nan"], "--lcm-inference-guidance-scale must be a non-negative number"),
        (["--lcm-inference-guidance-scale", "1e39"], "--lcm-inference-guidance-scale must be at most 3.403e+38"),
    ],
)
def test_bad_lcm_settings_are_refused_before_the_trainer_loads(flags, message, data_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["train", "lcm", "--data-root", str(data_root), "--output-dir", str(out), *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert "facediffuser train: error:" in err and message in err, err
    assert not out.exists()
