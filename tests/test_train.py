"""The trainer, on the tiny components and a tiny FFHQ-wild data set: steps, gradients, resume, export, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from conftest import reset_accelerate
from facediffuser.cli.train import main as train_main
from facediffuser.io.tiny import build_tiny_pipeline
from facediffuser.pipeline import FaceDiffuserPipeline
from facediffuser.training import ModelKind, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def tiny_config(data_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data_root=data_root,
        output_dir=out,
        resolution=64,
        train_batch_size=2,
        max_train_steps=3,
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=1,
        log_with="csv",
        validation_inference_steps=2,
        learning_rate=1e-3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def read_metrics(out: Path) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    with (out / "logs" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["name"], []).append(float(row["value"]))
    return rows


@pytest.mark.slow
def test_sdm_trains_checkpoints_validates_and_exports_a_loadable_pipeline(data_root, tmp_path, face_image):
    out = tmp_path / "sdm"
    config = tiny_config(
        data_root, out, checkpointing_steps=1, checkpoints_total_limit=2, validation_steps=3, num_validation_samples=2
    )
    assert Trainer(ModelKind.SDM, config).train() == out

    metrics = read_metrics(out)
    assert len(metrics["train/loss"]) == 3
    assert all(math.isfinite(v) and v > 0 for v in metrics["train/denoising"])
    assert all(math.isfinite(v) and -1 <= v <= 1 for v in metrics["train/localization"])
    assert any(v != 0 for v in metrics["train/localization"])  # people were present and attended to
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-0000002", "checkpoint-0000003"]
    assert (out / "validation" / "step-0000003.png").is_file()

    base = build_tiny_pipeline(seed=0)
    pipe = FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True)
    trained = dict(pipe.subject_unet.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in base.subject_unet.named_parameters())
    assert all(torch.equal(p, dict(pipe.unet.named_parameters())[n]) for n, p in base.unet.named_parameters())
    assert all(torch.equal(p, dict(pipe.vae.named_parameters())[n]) for n, p in base.vae.named_parameters())
    vision = dict(pipe.image_encoder.named_parameters())
    base_vision = dict(base.image_encoder.named_parameters())
    frozen = "vision_model.embeddings.patch_embedding.weight"  # (the tiny tower has only its 2 trained layers)
    assert torch.equal(base_vision[frozen], vision[frozen])
    last = "vision_model.encoder.layers.1.mlp.fc1.weight"
    assert not torch.equal(base_vision[last], vision[last])
    assert not torch.equal(
        dict(base.subject_fuser.named_parameters())["mlp1.fc1.weight"],
        dict(pipe.subject_fuser.named_parameters())["mlp1.fc1.weight"],
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a man <|image|> at sea", reference_images=face_image, num_inference_steps=2, output_type="np")
    assert image.images.shape == (1, 64, 64, 3) and math.isfinite(float(image.images.sum()))


def zero_by_construction(name: str) -> bool:
    """Trained parameters whose gradient is zero in exact arithmetic, so that rounding alone decides whether a given
    CPU's kernels report 0 or 1e-12: connected to the loss, but not required to move."""
    # A key bias adds q.b to every score of a query alike, and softmax ignores a shift: d loss / d b_k = 0.
    if name.endswith(("k_proj.bias", "to_k.bias")):
        return True
    # The tiny UNet's mid block is 1x1 at 64 px: self-attention over one key has softmax = 1 whatever q and k are.
    return ".mid_block." in name and (".attn1.to_q." in name or ".attn1.to_k." in name)


@pytest.mark.parametrize("exact_zeros", [False, True], ids=["this-cpu", "exact-zeros"])
@pytest.mark.parametrize("kind", [ModelKind.SDM, ModelKind.TDM])
def test_gradients_reach_exactly_the_trainable_parameters(data_root, tmp_path, kind, exact_zeros):
    trainer = Trainer(kind, tiny_config(data_root, tmp_path / kind.value, mask_loss_prob=1.0))
    if exact_zeros:  # what another CPU's kernels report for the gradients that are zero by construction
        for name, p in trainer.denoiser.named_parameters():
            if p.requires_grad and zero_by_construction(f"denoiser.{name}"):
                p.register_hook(torch.zeros_like)
    batch = next(iter(trainer.train_loader))
    if kind is ModelKind.SDM:
        assert batch["subject_positions"].shape[0] > 0
    losses = trainer.compute_loss(batch, micro_step=0)
    trainer.accelerator.backward(losses["loss"])

    modules = {"denoiser": trainer.denoiser, "vae": trainer.vae, "text_encoder": trainer.text_encoder}
    grads = {f"{prefix}.{name}": p.grad for prefix, module in modules.items() for name, p in module.named_parameters()}
    if kind is ModelKind.SDM:
        last = len(trainer.denoiser.image_encoder.vision_model.encoder.layers) - 2
        expected = {
            n
            for n in grads
            if n.startswith(("denoiser.unet.", "denoiser.subject_fuser."))
            or n.startswith(f"denoiser.image_encoder.vision_model.encoder.layers.{last}.")
            or n.startswith(f"denoiser.image_encoder.vision_model.encoder.layers.{last + 1}.")
        }
    else:
        expected = {n for n in grads if n.startswith("denoiser.unet.")}
    assert {f"denoiser.{n}" for n in trainer.trainable_names} == expected
    # Connected to the loss: exactly the trained parameters receive a gradient.
    assert {n for n, g in grads.items() if g is not None} == expected
    # Moved by it: every one whose gradient is not zero by construction, on any CPU.
    must_move = {n for n in expected if not zero_by_construction(n)}
    assert must_move and len(must_move) > 0.9 * len(expected)
    assert {n for n in must_move if grads[n].abs().sum() == 0} == set()
    # The exceptions are zero up to rounding, far below the gradients that do move (1e-7 of the largest).
    largest = max(grads[n].abs().max().item() for n in expected)
    assert all(grads[n].abs().max().item() <= 1e-7 * largest for n in expected - must_move)
    # Frozen parts are in the training precision and take no gradient.
    assert all(not p.requires_grad for p in trainer.vae.parameters())
    assert all(not p.requires_grad for p in trainer.text_encoder.parameters())


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(data_root, tmp_path):
    common = dict(
        train_batch_size=1,
        gradient_accumulation_steps=2,
        checkpointing_steps=2,
        use_ema=True,
        ema_decay=0.9,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=3,
        subject_keep_prob=0.7,
    )
    # 8 images, 1 per micro-batch, 2 micro-batches per step: 4 steps per epoch. The cut at step 2 is mid-epoch (the
    # resumed run skips 4 micro-batches) and step 5 starts the second epoch.
    whole = Trainer(ModelKind.SDM, tiny_config(data_root, tmp_path / "whole", max_train_steps=5, **common))
    whole.train()
    Trainer(ModelKind.SDM, tiny_config(data_root, tmp_path / "cut", max_train_steps=2, **common)).train()
    reset_accelerate()
    resumed = Trainer(
        ModelKind.SDM, tiny_config(data_root, tmp_path / "cut", max_train_steps=5, resume="latest", **common)
    )
    resumed.train()

    a, b = whole.trained_state(), resumed.trained_state()  # EMA weights
    assert a.keys() == b.keys()
    for part in a:
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    live_a = dict(whole.denoiser.named_parameters())
    assert all(torch.equal(live_a[n], p) for n, p in resumed.denoiser.named_parameters())
    # Exact on purpose: one process, one machine, the same kernels on the same inputs (bit-exact resume). Across
    # processes see test_train_multiprocess.py, which states a tolerance.
    assert read_metrics(tmp_path / "whole")["train/loss"] == read_metrics(tmp_path / "cut")["train/loss"]
    assert whole.lr_scheduler.get_last_lr() == resumed.lr_scheduler.get_last_lr()  # the same schedule arithmetic


@pytest.mark.slow
def test_tdm_run_exports_the_scene_unet_and_keeps_the_base_subject_model(data_root, tmp_path):
    out = Trainer(ModelKind.TDM, tiny_config(data_root, tmp_path / "tdm", max_train_steps=3, logging_steps=5)).train()
    with (out / "logs" / "metrics.csv").open() as f:
        logged = sorted({int(row["step"]) for row in csv.DictReader(f)})
    assert logged == [1, 3]  # the first step, then the last one (before the 5th)
    assert read_metrics(out)["train/localization"] == [0.0, 0.0]  # no people for the TDM: exactly 0 by construction
    base = build_tiny_pipeline(seed=0)
    pipe = FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True)
    unet = dict(pipe.unet.named_parameters())
    assert any(not torch.equal(p, unet[n]) for n, p in base.unet.named_parameters())
    subject = dict(pipe.subject_unet.named_parameters())
    assert all(torch.equal(p, subject[n]) for n, p in base.subject_unet.named_parameters())


def test_min_snr_weighting_changes_the_loss_by_the_timesteps_weights(data_root, tmp_path, monkeypatch):
    """With ``snr_gamma`` the denoising loss is the per-sample MSE weighted by min(SNR, gamma) / SNR."""
    import facediffuser.training.trainer as trainer_module

    seen = {}
    weighted = trainer_module.denoising_loss

    def spy(pred, target, mask=None, weights=None, pixel_weights=None):
        seen["plain"] = weighted(pred, target, mask).item()
        seen["weights"] = weights
        return weighted(pred, target, mask, weights, pixel_weights)

    monkeypatch.setattr(trainer_module, "denoising_loss", spy)
    trainer = Trainer(ModelKind.TDM, tiny_config(data_root, tmp_path / "snr", snr_gamma=1.0, train_batch_size=4))
    batch = next(iter(trainer.train_loader))
    losses = trainer.compute_loss(batch, micro_step=0)
    w = seen["weights"]
    assert w is not None and w.shape == (4,) and bool((w > 0).all()) and bool((w <= 1).all())
    assert bool((w < 1).any()), "gamma 1 must down-weight some of the sampled low-noise timesteps"
    assert losses["denoising"].item() != pytest.approx(seen["plain"], rel=1e-6)
    with pytest.raises(ValueError, match="snr_gamma"):
        tiny_config(data_root, tmp_path / "bad", snr_gamma=0.0)


@pytest.mark.slow
def test_head_loss_weight_weighs_the_heads_of_the_batch(data_root, tmp_path, monkeypatch):
    """With ``head_loss_weight`` the SDM's denoising loss weighs each latent cell by 1 + the weight times the share of
    it the people's heads cover; 0 (the recipe's) reads no head masks; a data set without head boxes is refused."""
    import json
    import shutil

    import facediffuser.training.trainer as trainer_module

    with_heads = tmp_path / "heads"
    shutil.copytree(data_root, with_heads)
    for annotation_file in with_heads.glob("*/*.json"):  # the top third of each person's box is their head
        annotation = json.loads(annotation_file.read_text())
        for s in annotation["segments"]:
            x1, y1, x2, y2 = s["bbox"]
            s["head_box"] = [x1, y1, x2, y1 + (y2 - y1) / 3]
        annotation_file.write_text(json.dumps(annotation))
    seen = {}
    plain = trainer_module.denoising_loss

    def spy(pred, target, mask=None, weights=None, pixel_weights=None):
        seen["pixel_weights"] = pixel_weights
        return plain(pred, target, mask, weights, pixel_weights)

    monkeypatch.setattr(trainer_module, "denoising_loss", spy)
    recipe = Trainer(ModelKind.SDM, tiny_config(with_heads, tmp_path / "recipe", mask_loss_prob=0.0))
    batch = next(iter(recipe.train_loader))
    assert "head_masks" not in batch
    recipe_loss = recipe.compute_loss(batch, micro_step=0)["denoising"].item()
    assert seen["pixel_weights"] is None

    weighted = Trainer(
        ModelKind.SDM, tiny_config(with_heads, tmp_path / "weighted", mask_loss_prob=0.0, head_loss_weight=3.0)
    )
    batch = next(iter(weighted.train_loader))
    heads = batch["head_masks"]
    assert heads.shape == batch["subject_masks"].shape and heads.sum() > 0
    assert bool((heads <= batch["subject_masks"]).all())
    weighted_loss = weighted.compute_loss(batch, micro_step=0)["denoising"].item()
    w = seen["pixel_weights"]
    assert w.shape == (2, 1, 8, 8) and w.min().item() == 1.0 and w.max().item() == pytest.approx(4.0)
    assert weighted_loss > recipe_loss  # same noise and timesteps (micro step 0), more weight on some cells
    with pytest.raises(ValueError, match="head_loss_weight"):
        tiny_config(data_root, tmp_path / "bad", head_loss_weight=-1.0)
    with pytest.raises(ValueError, match="Head masks are asked for"):  # the synthetic set has no head boxes
        Trainer(ModelKind.SDM, tiny_config(data_root, tmp_path / "none", head_loss_weight=1.0))
    assert "head_masks" not in next(
        iter(Trainer(ModelKind.TDM, tiny_config(with_heads, tmp_path / "tdm", head_loss_weight=1.0)).train_loader)
    )


@pytest.mark.slow
def test_reference_colour_augmentation_comes_from_the_config(data_root, tmp_path):
    """The SDM's references are colour-jittered and greyed as the config says (the recipe's 0.5 / 10% by default; the
    mini recipe keeps the world's colours); validation references are never augmented."""
    from facediffuser.training.augment import ReferenceAugmentation

    default = Trainer(ModelKind.SDM, tiny_config(data_root, tmp_path / "default"))
    assert default.train_dataset.augmentation == ReferenceAugmentation()
    assert (default.train_dataset.augmentation.jitter_strength, default.train_dataset.augmentation.grayscale_prob) == (
        0.5,
        0.1,
    )
    kept = Trainer(
        ModelKind.SDM,
        tiny_config(data_root, tmp_path / "kept", reference_jitter_strength=0.1, reference_grayscale_prob=0.0),
    )
    augmentation = kept.train_dataset.augmentation
    assert (augmentation.jitter_strength, augmentation.grayscale_prob) == (0.1, 0.0)
    assert augmentation.zoom_prob == ReferenceAugmentation().zoom_prob  # the geometric ones stay the recipe's
    assert not kept.make_dataset("test", augment=False).augment
    for bad in (
        {"reference_jitter_strength": 1.5},
        {"reference_grayscale_prob": -0.1},
        {"other_image_reference_prob": 2.0},
        {"reference_region": "face"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tiny_config(data_root, tmp_path / "bad", **bad)
    # the SDM data set gets the other-image probability: the synthetic set names no one, which it then refuses
    assert default.train_dataset.other_image_reference_prob == 0.0
    assert default.train_dataset.reference_region == "person"
    with pytest.raises(ValueError, match="has a 'head_box'"):  # the synthetic set has no head boxes
        Trainer(ModelKind.SDM, tiny_config(data_root, tmp_path / "head", reference_region="head"))
    with pytest.raises(ValueError, match="has an 'identity'"):
        Trainer(ModelKind.SDM, tiny_config(data_root, tmp_path / "other", other_image_reference_prob=0.5))


@pytest.mark.slow
def test_fuser_learning_rate_is_its_own_parameter_group(data_root, tmp_path):
    """With ``fuser_learning_rate`` the SDM's fuser moves at its own rate: Adam's first step moves each parameter by
    about its group's rate (g / (|g| + eps)), so the largest move of the fuser and of the rest tell the two rates
    apart (10x here). A checkpoint saved with other groups is refused on resume."""
    out = tmp_path / "fuser"
    config = tiny_config(
        data_root,
        out,
        max_train_steps=1,
        checkpointing_steps=1,
        learning_rate=1e-3,
        fuser_learning_rate=1e-2,
        adam_weight_decay=0.0,
        mask_loss_prob=1.0,
    )
    trainer = Trainer(ModelKind.SDM, config)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-2, 1e-3]
    fuser = {id(p) for p in trainer.denoiser.subject_fuser.parameters()}
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == fuser
    before = {n: p.detach().clone() for n, p in trainer.denoiser.named_parameters() if p.requires_grad}
    trainer.train()
    moved = {
        n: (p.detach() - before[n]).abs().max().item() for n, p in trainer.denoiser.named_parameters() if n in before
    }
    fuser_move = max(v for n, v in moved.items() if n.startswith("subject_fuser."))
    rest_move = max(v for n, v in moved.items() if not n.startswith("subject_fuser."))
    # rel 1e-3: the float32 rounding of a 1e-2 step on weights of order 1, far below the 10x between the rates
    assert fuser_move == pytest.approx(1e-2, rel=1e-3)
    assert rest_move == pytest.approx(1e-3, rel=1e-3)
    one_group = Trainer(ModelKind.TDM, tiny_config(data_root, tmp_path / "tdm", fuser_learning_rate=1e-2))
    assert len(one_group.optimizer.param_groups) == 1  # the TDM trains no fuser

    reset_accelerate()
    plain = tiny_config(data_root, out, max_train_steps=2, learning_rate=1e-3, resume="latest")
    with pytest.raises(ValueError, match=r"fuser_learning_rate: checkpoint 0.01, now None"):
        Trainer(ModelKind.SDM, plain).train()
    for bad in (0.0, -1e-4, float("nan")):
        with pytest.raises(ValueError, match="fuser_learning_rate"):
            tiny_config(data_root, tmp_path / "bad", fuser_learning_rate=bad)


@pytest.mark.slow
def test_resume_that_does_not_match_the_config_is_refused(data_root, tmp_path):
    out = tmp_path / "run"
    Trainer(ModelKind.TDM, tiny_config(data_root, out, max_train_steps=1, checkpointing_steps=1)).train()
    reset_accelerate()
    changed = tiny_config(data_root, out, max_train_steps=2, train_batch_size=4, resume="latest")
    with pytest.raises(ValueError, match=r"train_batch_size: checkpoint 2, now 4"):
        Trainer(ModelKind.TDM, changed).train()
    reset_accelerate()
    other_model = tiny_config(data_root, out, max_train_steps=2, resume="latest")
    with pytest.raises(ValueError, match=r"model: checkpoint 'tdm', now 'sdm'"):
        Trainer(ModelKind.SDM, other_model).train()
    with pytest.raises(ValueError, match="not a training checkpoint"):
        Trainer(ModelKind.TDM, tiny_config(data_root, out, resume=str(data_root))).train()
    with pytest.raises(ValueError, match="already holds checkpoints"):  # a new run would rotate them away
        Trainer(ModelKind.TDM, tiny_config(data_root, out, max_train_steps=2)).train()


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_whose_pickles_could_run_code(data_root, tmp_path, pickled_call):
    out = tmp_path / "run"
    config = dict(checkpointing_steps=1, use_ema=True)
    Trainer(ModelKind.SDM, tiny_config(data_root, out, max_train_steps=1, **config)).train()
    ema = out / "checkpoints" / "checkpoint-0000001" / "custom_checkpoint_0.pkl"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ema) == []  # the trainer's own: tensors, plain values
    marker = tmp_path / "ran"
    state = torch.load(ema, weights_only=True)
    state["extra"] = pickled_call(marker)
    torch.save(state, ema)

    def resume() -> None:
        reset_accelerate()
        Trainer(ModelKind.SDM, tiny_config(data_root, out, max_train_steps=2, resume="latest", **config)).train()

    with pytest.raises(ValueError, match=r"holds pickled objects other than tensors \(\S*open\).*could run code"):
        resume()
    ema.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged or not a torch.save file"):
        resume()
    assert not marker.exists()  # nothing was unpickled


def test_train_registers_as_a_subcommand():
    import argparse

    from facediffuser.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "sdm", "--data-root", "d", "--max-train-steps", "5", "--use-ema"])
    assert args.func is train_cli.run
    assert (args.model, args.data_root, args.max_train_steps, args.use_ema) == ("sdm", Path("d"), 5, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "xdm", "--data-root", "d"])


def test_cli_flags_toml_and_clean_errors(data_root, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    out = tmp_path / "cli"
    toml.write_text(
        f'data_root = "{data_root}"\noutput_dir = "{out}"\nresolution = 64\ntrain_batch_size = 4\n'
        'max_train_steps = 1\ncheckpointing_steps = 0\nvalidation_steps = 0\nlog_with = "csv"\n'
    )
    assert train_main(["tdm", "--config", str(toml), "--train-batch-size", "2"]) == 0
    saved = (out / "train_config.json").read_text()
    assert '"train_batch_size": 2' in saved and '"model": "tdm"' in saved and '"resolution": 64' in saved
    assert (out / "model_index.json").is_file()

    assert train_main(["sdm", "--data-root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train_main(["sdm", "--data-root", str(tmp_path / "empty")]) == 2
    assert "image_ids_train.txt" in capsys.readouterr().err
    assert train_main(["sdm", "--config", str(toml), "--resolution", "60"]) == 2
    assert "multiple of 8" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1."),
        (["--seed", str(2**70)], f"--seed must be an integer from 0 to 4294967295, got {2**70}."),
        (["--resolution", "0"], "--resolution must be at least 1, got 0."),
    ],
)
def test_a_bad_setting_is_refused_by_its_flag_before_the_trainer_loads(flags, message, data_root, tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
    # a seed out of range was refused by torch after the base model had loaded ("expected non-negative integer")
    import facediffuser.training.runs as runs

    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("the trainer ran before the settings' check"))
    out = tmp_path / "out"
    assert train_main(["sdm", "--data-root", str(data_root), "--output-dir", str(out), *flags]) == 2
    assert capsys.readouterr().err == f"facediffuser train: error: {message}\n"
    assert not out.exists()


def test_fp16_on_the_cpu_is_refused_before_the_base_loads(data_root, tmp_path, monkeypatch):
    # was RuntimeError: mat1 and mat2 must have the same dtype, at the first step
    import facediffuser.training.trainer as trainer

    monkeypatch.setattr(trainer, "load_base_pipeline", lambda *a, **k: pytest.fail("the base loaded first"))
    with pytest.raises(ValueError, match=r"--mixed-precision fp16 needs a GPU.*--mixed-precision bf16"):
        Trainer(ModelKind.SDM, tiny_config(data_root, tmp_path / "out", mixed_precision="fp16"))


def assert_checkpointing_changes_nothing(make_config, tmp_path):
    """One SDM step without and with gradient checkpointing (``make_config(folder, gradient_checkpointing=...)``):
    the same losses and gradients."""
    results = []
    for checkpointing in (False, True):
        reset_accelerate()
        trainer = Trainer(
            ModelKind.SDM, make_config(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing)
        )
        assert trainer.denoiser.unet.is_gradient_checkpointing is checkpointing
        batch = next(iter(trainer.train_loader))
        losses = trainer.compute_loss(batch, micro_step=0)
        trainer.accelerator.backward(losses["loss"])
        grads = {n: p.grad.clone() for n, p in trainer.denoiser.named_parameters() if p.requires_grad}
        results.append((losses, grads))
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    assert plain["localization"] != 0
    # Recomputation replays the same float32 operations: agreement far below the step's scale (losses ~0.3-1).
    for key in ("denoising", "localization"):
        assert torch.allclose(plain[key], ckpt[key], atol=1e-6)
    assert all(torch.allclose(plain_grads[n], ckpt_grads[n], atol=1e-5) for n in plain_grads)


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(data_root, tmp_path):
    assert_checkpointing_changes_nothing(lambda folder, **kw: tiny_config(data_root, folder, **kw), tmp_path)


def test_shipped_training_configs_are_valid():
    import argparse

    from facediffuser.io.configuration import build_config

    folder = Path(__file__).resolve().parents[1] / "configs"
    tomls = sorted(folder.glob("train_*.toml"))
    assert tomls
    for path in tomls:
        config = build_config(TrainConfig, argparse.Namespace(data_root=Path("data")), path)
        assert config.max_train_steps >= 1, path


@pytest.mark.slow
def test_training_from_a_pipeline_folder(data_root, tmp_path):
    base_dir = tmp_path / "base"
    build_tiny_pipeline(seed=3).save_pretrained(base_dir, safe_serialization=True)
    out = Trainer(
        ModelKind.TDM, tiny_config(data_root, tmp_path / "out", pretrained=str(base_dir), max_train_steps=1)
    ).train()
    pipe = FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True)
    base = FaceDiffuserPipeline.from_pretrained(base_dir, use_safetensors=True)
    assert torch.equal(pipe.vae.encoder.conv_in.weight, base.vae.encoder.conv_in.weight)
    assert not torch.equal(pipe.unet.conv_in.weight, base.unet.conv_in.weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(ModelKind.TDM, tiny_config(data_root, tmp_path / "x", pretrained=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="model_index.json"):
        Trainer(ModelKind.TDM, tiny_config(data_root, tmp_path / "x", pretrained=str(data_root)))


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = Path(__file__).resolve().parents[1] / "configs"
    multi = load_config_from_file(str(folder / "accelerate_multi_gpu.yaml"))
    assert multi.distributed_type is DistributedType.MULTI_GPU and multi.mixed_precision == "bf16"
    zero2 = load_config_from_file(str(folder / "accelerate_deepspeed_zero2.yaml"))
    assert zero2.distributed_type is DistributedType.DEEPSPEED and zero2.deepspeed_config["zero_stage"] == 2
    assert zero2.deepspeed_config["gradient_clipping"] == TrainConfig(data_root=Path("d")).max_grad_norm


def test_people_that_cannot_be_placed_are_counted_and_reported(data_root, tmp_path, caplog):
    """A json without `segments` trains its image without people: logged as `data/flawed_annotations` and warned."""
    import json
    import logging
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    annotation = root / "00003" / "00003.json"
    annotation.write_text(json.dumps({"caption": json.loads(annotation.read_text())["caption"]}))
    config = tiny_config(root, tmp_path / "out", train_batch_size=8, max_train_steps=2, subject_keep_prob=1.0)
    with caplog.at_level(logging.WARNING):
        Trainer(ModelKind.SDM, config).train()
    # One epoch is one step of 8 images: the flawed image is read once per step. Counts are exact integers.
    assert read_metrics(tmp_path / "out")["data/flawed_annotations"] == [1.0, 2.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("00003" in w and "no 'segments'" in w for w in warnings) == 1  # once per image id
    assert any(w.startswith("2 sample read(s) on this process trained without their people") for w in warnings)


def test_validation_images_take_the_sampling_settings():
    from facediffuser.settings import SamplingSettings

    config = TrainConfig(data_root=Path("d"))
    defaults = SamplingSettings()
    sdm, tdm = config.validation_settings(ModelKind.SDM), config.validation_settings(ModelKind.TDM)
    assert (sdm.alpha, sdm.beta, tdm.alpha, tdm.beta) == (0.0, 0.0, 1.0, 1.0)  # each trained model draws alone
    # the paper's w: a model in training names none of its own
    assert sdm.guidance_scale == config.validation_guidance_scale == defaults.effective_guidance_scale
    assert sdm.num_inference_steps == config.validation_inference_steps
    left = ("alpha", "beta", "num_inference_steps", "guidance_scale")
    assert sdm.replace(**{name: getattr(defaults, name) for name in left}) == defaults
    with pytest.raises(ValueError, match="validation settings.*guidance_scale"):
        TrainConfig(data_root=Path("d"), validation_guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="validation settings.*steps"):
        TrainConfig(data_root=Path("d"), validation_inference_steps=0)


@pytest.mark.slow
def test_the_training_package_loads_no_trainer_until_asked(tmp_path):
    """`facediffuser.cli.train` (and so `facediffuser generate`, which registers it) loads the settings only."""
    import subprocess
    import sys

    probe = (
        "import sys, facediffuser.cli.train, facediffuser.training as t\n"
        "print(sorted(m for m in sys.modules if m.startswith('facediffuser.training')))\n"
        "t.Trainer\n"
        "print('facediffuser.training.trainer' in sys.modules)\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={"PYTHONPATH": str(src)}, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    loaded, after = result.stdout.splitlines()
    assert loaded == "['facediffuser.training', 'facediffuser.training.config']"
    assert after == "True"
