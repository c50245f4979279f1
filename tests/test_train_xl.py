"""The trainer on an SDXL base (the tiny SDXL components): the conditions as FaceDiffuserXLPipeline encodes them, the
localization loss on SDXL's cross-attention, resume, export, and the exported folder on the command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import reset_accelerate
from facediffuser.cli.main import main
from facediffuser.io.tiny import build_tiny_xl_pipeline
from facediffuser.pipeline_xl import FaceDiffuserXLPipeline
from facediffuser.prompting import tokenize_prompts
from facediffuser.training import ModelKind, TrainConfig, Trainer
from facediffuser.training.data import size_ids
from facediffuser.training.model_xl import XL_LOCALIZATION_LAYERS
from test_train import assert_checkpointing_changes_nothing, read_metrics, tiny_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def xl_config(data_root: Path, out: Path, **overrides) -> TrainConfig:
    """The SD1.x trainer tests' tiny config on the tiny SDXL base."""
    return tiny_config(data_root, out, **{"pretrained": "tiny-xl", **overrides})


def test_size_ids_are_the_original_size_the_centre_crop_corner_and_the_target():
    # 100 x 80 -> short side 64: 80 x 64, the crop cut (80 - 64) / 2 = 8 columns off the left.
    assert size_ids(100, 80, 64) == [80, 100, 0, 8, 64, 64]
    assert size_ids(60, 90, 64) == [90, 60, 16, 0, 64, 64]  # 64 x 96: 16 rows off the top


def test_the_trainer_conditions_the_unet_as_the_xl_pipeline_samples(data_root, tmp_path):
    trainer = Trainer(ModelKind.SDM, xl_config(data_root, tmp_path / "out"))
    batch = next(iter(trainer.train_loader))
    pipe = build_tiny_xl_pipeline(seed=0)  # the same seeded base the trainer loaded
    prompts = batch["captions"]
    ids, _ = tokenize_prompts(pipe.tokenizer, prompts, pipe.placeholder)
    ids_2, _ = tokenize_prompts(pipe.tokenizer_2, prompts, pipe.placeholder)
    assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["input_ids_2"], ids_2)
    assert (ids_2 != ids).any()  # the second tokenizer pads with '!': its own ids, not the first's

    tokens, extra = trainer.encode_text(batch, batch["input_ids"])
    want_tokens, want_pooled = pipe.encode_text(ids, ids_2, torch.device("cpu"))
    # The same float32 modules on the same ids: equal up to summation order (1e-6 of values of order 1).
    torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=1e-6)
    added = extra["added_cond_kwargs"]
    torch.testing.assert_close(added["text_embeds"], want_pooled, rtol=0, atol=1e-6)
    assert tokens.shape[-1] == 24 and added["time_ids"].tolist() == [[72, 72, 0, 0, 64, 64]] * 2

    # The SDM's forward reads SDXL's cross-attention blocks for the localization loss.
    losses = trainer.compute_loss(batch, micro_step=0)
    assert torch.isfinite(losses["loss"]) and losses["localization"] != 0
    assert not trainer.attention_store.probs  # reset after the loss
    trainer.model(
        torch.zeros(2, 4, 8, 8), torch.tensor([10, 10]), tokens, batch["subject_pixels"],
        batch["subject_positions"], **extra,
    )  # fmt: skip
    assert {name.split(".attentions.")[0] for name in trainer.attention_store.probs} == set(XL_LOCALIZATION_LAYERS)


@pytest.mark.parametrize("force_zeros", [True, False])
def test_a_dropped_caption_is_zeros_or_the_empty_prompt_as_the_base_says(data_root, tmp_path, force_zeros):
    pipe = build_tiny_xl_pipeline(seed=0)
    pipe.register_to_config(force_zeros_for_empty_prompt=force_zeros)
    config = xl_config(data_root, tmp_path / "out", uncondition_prob=1.0, pretrained="given")
    trainer = Trainer(ModelKind.TDM, config, base_pipeline=pipe)
    batch = next(iter(trainer.train_loader))
    assert batch["captions"] == ["", ""]
    tokens, extra = trainer.encode_text(batch, batch["input_ids"])
    pooled = extra["added_cond_kwargs"]["text_embeds"]
    if force_zeros:  # the pipeline's 0 without a negative prompt
        assert not tokens.any() and not pooled.any()
    else:  # the empty prompt encoded, as the pipeline encodes a negative prompt ""
        ids, _ = tokenize_prompts(pipe.tokenizer, [""] * 2)
        ids_2, _ = tokenize_prompts(pipe.tokenizer_2, [""] * 2)
        want_tokens, want_pooled = pipe.encode_text(ids, ids_2, torch.device("cpu"))
        assert tokens.abs().amax() > 0.1
        torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=1e-6)
        torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=1e-6)


def test_gradient_checkpointing_on_the_sdxl_unet_gives_the_same_losses_and_gradients(data_root, tmp_path):
    assert_checkpointing_changes_nothing(lambda folder, **kw: xl_config(data_root, folder, **kw), tmp_path)


@pytest.mark.slow
def test_xl_sdm_resumes_exactly_like_an_uninterrupted_run(data_root, tmp_path):
    common = dict(
        train_batch_size=1,
        gradient_accumulation_steps=2,
        checkpointing_steps=2,
        use_ema=True,
        ema_decay=0.9,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=3,
        subject_keep_prob=0.7,
        uncondition_prob=0.3,
    )
    # 8 images, 4 steps per epoch: the resume at step 2 is mid-epoch, step 5 starts the second epoch.
    whole = Trainer(ModelKind.SDM, xl_config(data_root, tmp_path / "whole", max_train_steps=5, **common))
    whole.train()
    # The cut run dies in its third step, after the checkpoint of step 2: no export, no last checkpoint.
    cut = Trainer(ModelKind.SDM, xl_config(data_root, tmp_path / "cut", max_train_steps=5, **common))

    def killed(running, counted):
        if cut.global_step == 3:
            raise KeyboardInterrupt
        Trainer.log_metrics(cut, running, counted)

    cut.log_metrics = killed
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["checkpoint-0000002"]
    assert not (tmp_path / "cut" / "model_index.json").exists()
    reset_accelerate()
    resumed = Trainer(
        ModelKind.SDM, xl_config(data_root, tmp_path / "cut", max_train_steps=5, resume="latest", **common)
    )
    resumed.train()
    a, b = whole.trained_state(), resumed.trained_state()  # EMA weights
    assert a.keys() == b.keys() == {"unet", "subject_fuser", "image_encoder"}
    for part in a:
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    live = dict(whole.denoiser.named_parameters())
    assert all(torch.equal(live[n], p) for n, p in resumed.denoiser.named_parameters())
    # Exact on purpose: one process, the same kernels on the same inputs (as the SD1.x resume test).
    losses = read_metrics(tmp_path / "whole")["train/loss"]
    assert losses == read_metrics(tmp_path / "cut")["train/loss"] and all(map(torch.isfinite, torch.tensor(losses)))


@pytest.mark.slow
def test_xl_sdm_exports_a_folder_that_the_xl_pipeline_and_generate_load(data_root, tmp_path, face_image):
    config = xl_config(data_root, tmp_path / "sdm", max_train_steps=2, checkpointing_steps=1)
    out = Trainer(ModelKind.SDM, config).train()
    pipe = FaceDiffuserXLPipeline.from_pretrained(out, use_safetensors=True)
    base = build_tiny_xl_pipeline(seed=0)
    trained = dict(pipe.subject_unet.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in base.subject_unet.named_parameters())
    scene = dict(pipe.unet.named_parameters())
    assert all(torch.equal(p, scene[n]) for n, p in base.unet.named_parameters())  # the TDM is the base's
    assert pipe.subject_fuser.config.embed_dim == 24 and pipe.subject_fuser.config.image_embed_dim == 20

    face_image.save(tmp_path / "face.png")
    image = tmp_path / "x.png"
    argv = ["generate", "-p", "a man <|image|> at sea", "--ref", str(tmp_path / "face.png"), "--steps", "2"]
    assert main([*argv, "--no-face-check", "--model", str(out), "-o", str(image)]) == 0
    assert image.is_file()

    # train export: an earlier checkpoint of the run, as an SDXL pipeline folder too.
    first = tmp_path / "step-1"
    assert main(["train", "export", "--run", str(out), "--step", "1", "--out", str(first)]) == 0
    exported = FaceDiffuserXLPipeline.from_pretrained(first, use_safetensors=True).subject_unet
    assert not torch.equal(exported.conv_in.weight, pipe.subject_unet.conv_in.weight)  # step 1, not step 2


@pytest.mark.slow
def test_xl_tdm_trains_the_scene_unet_and_keeps_the_base_subject_model(data_root, tmp_path):
    out = Trainer(ModelKind.TDM, xl_config(data_root, tmp_path / "tdm", max_train_steps=2)).train()
    assert read_metrics(out)["train/localization"] == [0.0, 0.0]  # no people for the TDM
    base = build_tiny_xl_pipeline(seed=0)
    pipe = FaceDiffuserXLPipeline.from_pretrained(out, use_safetensors=True)
    unet = dict(pipe.unet.named_parameters())
    assert any(not torch.equal(p, unet[n]) for n, p in base.unet.named_parameters())
    subject = dict(pipe.subject_unet.named_parameters())
    assert all(torch.equal(p, subject[n]) for n, p in base.subject_unet.named_parameters())


@pytest.mark.slow
def test_train_tdm_on_tiny_xl_from_the_command_line(data_root, tmp_path):
    out = tmp_path / "cli"
    argv = ["train", "tdm", "--data-root", str(data_root), "--output-dir", str(out), "--pretrained", "tiny-xl"]
    flags = ["--resolution", "64", "--train-batch-size", "2", "--max-train-steps", "1", "--validation-steps", "0"]
    assert main([*argv, *flags, "--checkpointing-steps", "0", "--log-with", "csv"]) == 0
    assert FaceDiffuserXLPipeline.from_pretrained(out, use_safetensors=True).unet.config.addition_embed_type == (
        "text_time"
    )


@pytest.mark.parametrize("kind", [ModelKind.SDM, ModelKind.TDM])
def test_a_denoiser_cast_whole_to_bfloat16_takes_the_float32_batch(data_root, tmp_path, kind):
    """DeepSpeed with bf16 casts the whole trained module to bfloat16 and leaves the inputs as they come."""
    trainer = Trainer(kind, xl_config(data_root, tmp_path / "out"))
    trainer.denoiser.to(torch.bfloat16)
    losses = trainer.compute_loss(next(iter(trainer.train_loader)), micro_step=0)
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])


def cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1, err
    return err.split("error: ", 1)[1].strip()


def test_train_ip_adapter_on_an_sdxl_base_is_refused_before_a_model_loads(data_root, tmp_path, capsys, monkeypatch):
    from facediffuser.training import model

    monkeypatch.setattr(model, "load_base_pipeline", lambda *a, **k: pytest.fail("a model loaded before the check"))
    xl_folder = tmp_path / "xl"
    build_tiny_xl_pipeline().save_pretrained(xl_folder)
    for base in ("tiny-xl", str(xl_folder)):
        out = tmp_path / "out"
        argv = ["train", "ip-adapter", "--data-root", str(data_root), "--output-dir", str(out), "--pretrained", base]
        message = cli_error(capsys, argv)
        assert message.startswith(f"train ip-adapter takes an SD1.x base, and --pretrained {base} is SDXL")
        assert not out.exists()


def test_a_plain_sdxl_base_folder_is_refused_with_the_way_to_build_one(data_root, tmp_path, capsys):
    from diffusers import StableDiffusionXLPipeline

    from facediffuser.io.tiny import tiny_xl_components

    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")
    base = tmp_path / "sdxl-base"
    components = {k: v for k, v in tiny_xl_components().items() if k in parts}
    StableDiffusionXLPipeline(**components, add_watermarker=False).save_pretrained(base)
    argv = ["train", "sdm", "--data-root", str(data_root), "--output-dir", str(tmp_path / "out"), "--pretrained"]
    assert cli_error(capsys, [*argv, str(base)]) == (
        f"The base model {base} is a plain SDXL pipeline folder, without the subject model's parts (image_encoder, "
        "subject_unet, subject_fuser) that training starts from. Build a Face-diffuser pipeline folder from it with "
        "`facediffuser convert` and give that as --pretrained."
    )
    assert not (tmp_path / "out").exists()


def test_the_zero2_accelerate_config_takes_the_trainers_accumulation_and_clipping(monkeypatch):
    """What accelerate hands DeepSpeed from the shipped ZeRO-2 config: the trainer's accumulation, its clipping norm."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    from facediffuser.training.launch import fill_deepspeed_settings

    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    yaml = load_config_from_file(
        str(Path(__file__).resolve().parents[1] / "configs" / "accelerate_deepspeed_zero2.yaml")
    )
    assert yaml.deepspeed_config["zero_stage"] == 2 and yaml.mixed_precision == "bf16"

    def handed():  # what accelerate hands DeepSpeed, as `accelerate launch` builds its plugin from the config
        return DeepSpeedPlugin(**yaml.deepspeed_config).deepspeed_config

    ds = handed()
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_accumulation_steps"] == "auto"
    assert "optimizer" not in ds and "scheduler" not in ds  # the trainer's AdamW and schedule, prepared by accelerate
    fill_deepspeed_settings(ds, TrainConfig(data_root=Path("d"), gradient_accumulation_steps=4))
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 1.0
    with pytest.raises(ValueError, match=r"DeepSpeed gradient_clipping is 1.0 but --max-grad-norm is 0.5"):
        fill_deepspeed_settings(handed(), TrainConfig(data_root=Path("d"), max_grad_norm=0.5))
    with pytest.raises(ValueError, match=r"DeepSpeed gradient_accumulation_steps is 4 but --gradient-accumulation-st"):
        fill_deepspeed_settings(ds, TrainConfig(data_root=Path("d"), gradient_accumulation_steps=2))
    # A config that leaves the clipping out takes --max-grad-norm.
    monkeypatch.delenv("ACCELERATE_GRADIENT_CLIPPING", raising=False)
    settings = {k: v for k, v in yaml.deepspeed_config.items() if k != "gradient_clipping"}
    unclipped = DeepSpeedPlugin(**settings).deepspeed_config
    fill_deepspeed_settings(unclipped, TrainConfig(data_root=Path("d"), max_grad_norm=0.5))
    assert unclipped["gradient_clipping"] == 0.5


def test_a_module_held_in_bfloat16_as_deepspeed_holds_it_trains_with_float32_averages(data_root, tmp_path, monkeypatch):
    """DeepSpeed with bf16 casts the whole prepared module to bfloat16 and passes the inputs as they come."""
    from accelerate import Accelerator

    prepare = Accelerator.prepare

    def prepare_in_bf16(self, model, *rest):
        return prepare(self, model.to(torch.bfloat16), *rest)

    monkeypatch.setattr(Accelerator, "prepare", prepare_in_bf16)
    trainer = Trainer(ModelKind.SDM, xl_config(data_root, tmp_path / "out", max_train_steps=1, use_ema=True))
    assert trainer.denoiser.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.ema.shadow_params)
    trainer.train()
    assert all(map(math.isfinite, read_metrics(tmp_path / "out")["train/loss"]))


def test_an_sdxl_vae_encodes_in_float32_in_a_float16_run():
    from facediffuser.training.model_xl import vae_dtype

    xl_vae = build_tiny_xl_pipeline().vae  # force_upcast, as SDXL's
    assert vae_dtype(xl_vae, torch.float16) == torch.float32
    assert vae_dtype(xl_vae, torch.bfloat16) == torch.bfloat16  # bfloat16 has float32's range
    xl_vae.register_to_config(force_upcast=False)  # a VAE fine-tuned for float16
    assert vae_dtype(xl_vae, torch.float16) == torch.float16


@pytest.mark.slow
def test_train_sdm_from_the_folder_convert_assembles_from_an_sdxl_base(data_root, tmp_path):
    """The docs' path: `convert --sdxl BASE --image-encoder CLIP` (an untrained SDM), then `train sdm` from it."""
    from diffusers import StableDiffusionXLPipeline

    from facediffuser.io.tiny import tiny_xl_components

    components = tiny_xl_components()
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")
    StableDiffusionXLPipeline(**{k: components[k] for k in parts}, add_watermarker=False).save_pretrained(
        tmp_path / "sdxl-base"
    )
    components["image_encoder"].save_pretrained(tmp_path / "clip-vision")
    start = tmp_path / "start"
    argv = ["convert", "--sdxl", str(tmp_path / "sdxl-base"), "--image-encoder", str(tmp_path / "clip-vision")]
    assert main([*argv, "--out", str(start)]) == 0
    config = xl_config(data_root, tmp_path / "sdm", pretrained=str(start), max_train_steps=1)
    out = Trainer(ModelKind.SDM, config).train()
    trained = FaceDiffuserXLPipeline.from_pretrained(out, use_safetensors=True)
    before = FaceDiffuserXLPipeline.from_pretrained(start, use_safetensors=True)
    assert not torch.equal(trained.subject_unet.conv_in.weight, before.subject_unet.conv_in.weight)
    assert torch.equal(trained.unet.conv_in.weight, components["unet"].conv_in.weight)  # SDXL base's UNet, the TDM


def exported_weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every weight file a run exported into its pipeline folder (its checkpoints aside), by relative path."""
    from safetensors.torch import load_file

    files = [p for p in out.rglob("*.safetensors") if "checkpoints" not in p.relative_to(out).parts]
    return {str(p.relative_to(out)): load_file(p) for p in files}


@pytest.mark.slow
def test_xl_sdm_resumes_exactly_after_the_process_is_killed(data_root, tmp_path):
    """`facediffuser train sdm --pretrained tiny-xl` in a process of its own, SIGKILLed (no handler runs, no last
    checkpoint) once its first checkpoint is in place, then `--resume latest` in a second process: the exported
    weights are those of an uninterrupted process, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    script = Path(sys.executable).with_name("facediffuser")
    command = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "from facediffuser.cli.main import main; exit(main())"]
    )

    def train(out: Path, *extra: str) -> list[str]:
        flags = [
            "--data-root", str(data_root), "--output-dir", str(out), "--pretrained", "tiny-xl", "--resolution", "64",
            "--train-batch-size", "1", "--gradient-accumulation-steps", "2", "--max-train-steps", "10",
            "--checkpointing-steps", "2", "--use-ema", "--ema-decay", "0.9", "--lr-scheduler", "constant_with_warmup",
            "--lr-warmup-steps", "3", "--learning-rate", "1e-3", "--subject-keep-prob", "0.7",
            "--uncondition-prob", "0.3", "--validation-steps", "0", "--logging-steps", "1", "--log-with", "csv",
            "--mixed-precision", "no",
        ]  # fmt: skip
        return [*command, "train", "sdm", *flags, *extra]

    def run(argv: list[str]) -> None:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    cut = tmp_path / "cut"
    log = tmp_path / "cut.log"  # a file, not a pipe: an unread pipe that fills up would stall the run
    with log.open("w") as stderr:
        process = subprocess.Popen(train(cut), env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (cut / "checkpoints" / "checkpoint-0000002").is_dir():
            assert process.poll() is None, f"the run ended before its first checkpoint: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (cut / "model_index.json").exists(), "the run finished before the kill: nothing was interrupted"
    left = sorted(p.name for p in (cut / "checkpoints").iterdir() if not p.name.startswith("."))
    assert left and left[-1] < "checkpoint-0000010"

    run(train(cut, "--resume", "latest"))
    whole = tmp_path / "whole"
    run(train(whole))
    a, b = exported_weights(whole), exported_weights(cut)
    assert a.keys() == b.keys() and any(k.startswith("subject_unet/") for k in a)
    for path in a:
        assert a[path].keys() == b[path].keys(), path
        for name, tensor in a[path].items():
            assert torch.equal(tensor, b[path][name]), f"{path}: {name}"
