"""``train ip-adapter``: an IP-Adapter trained on the frozen tiny scene UNet, resumed, exported, loaded and drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reset_accelerate
from facediffuser.cli.train import main as train_main
from facediffuser.io.adapters import read_ip_adapter_file
from facediffuser.io.tiny import build_tiny_pipeline
from facediffuser.subject_models import SubjectModelKind, check_ip_adapter_state
from facediffuser.training import ModelKind, TrainConfig, Trainer
from facediffuser.training.adapter import WEIGHT_NAME, is_adapter_parameter

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def config(data_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data_root=data_root, output_dir=out, resolution=64, train_batch_size=2, max_train_steps=3,
        checkpointing_steps=0, validation_steps=0, logging_steps=1, log_with="csv", learning_rate=1e-2,
        validation_inference_steps=2,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def test_only_the_adapter_trains_and_its_export_loads_the_diffusers_way(data_root, tmp_path):
    trainer = Trainer(ModelKind.IP_ADAPTER, config(data_root, tmp_path / "run", validation_steps=3))
    names = trainer.trainable_names
    assert names and all(n.startswith("unet.") and is_adapter_parameter(n.removeprefix("unet.")) for n in names)
    assert len(names) == 4 + 2 * 10  # the projection's weight, bias and norm; k and v of the tiny UNet's 10 layers
    out = trainer.train()
    assert (out / "validation" / "step-0000003.png").is_file()  # the adapter alone drew the validation grid

    # The UNet is frozen: every base weight is the base's; the adapter's weights moved off their start.
    base = build_tiny_pipeline(seed=0)
    trained = dict(trainer.denoiser.unet.named_parameters())
    for name, p in base.unet.named_parameters():
        assert torch.equal(trained[name].float(), p), name
    state = read_ip_adapter_file(out / WEIGHT_NAME)
    check_ip_adapter_state(state, base.unet, "the export")  # the layout and widths load_ip_adapter checks
    k = trainer.denoiser.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    start = k.to_k.weight  # the image key layer starts as a copy of the text key layer (the paper's init)
    assert not torch.equal(state["ip_adapter"]["3.to_k_ip.weight"], start.float())
    assert torch.equal(state["ip_adapter"]["3.to_k_ip.weight"], k.processor.to_k_ip[0].weight.float())

    # The project's pipeline and diffusers' StableDiffusionPipeline both load the folder and draw with it.
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8))
    pipe = build_tiny_pipeline(seed=0)
    pipe.load_ip_adapter(out, weight_name=WEIGHT_NAME)
    assert pipe.subject_model_kind is SubjectModelKind.IP_ADAPTER and pipe.shares_unet
    ours = pipe("a man <|image|> at the beach", reference_images=[photo], num_inference_steps=2, alpha=0.0,
                beta=0.0, output_type="np", generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    sd = build_tiny_pipeline(seed=0).text_model_pipeline()
    sd.load_ip_adapter(str(out), subfolder="", weight_name=WEIGHT_NAME)
    theirs = sd("a man at the beach", ip_adapter_image=photo, num_inference_steps=2, output_type="np").images
    assert ours.shape == theirs.shape == (1, 64, 64, 3)
    assert np.isfinite(ours).all() and np.isfinite(theirs).all()


def test_resume_continues_exactly_like_an_uninterrupted_run(data_root, tmp_path):
    common = dict(train_batch_size=1, gradient_accumulation_steps=2, checkpointing_steps=2, use_ema=True,
                  ema_decay=0.9, image_drop_prob=0.3, text_drop_prob=0.3, uncondition_prob=0.2)  # fmt: skip
    whole = Trainer(ModelKind.IP_ADAPTER, config(data_root, tmp_path / "whole", max_train_steps=5, **common))
    whole.train()
    Trainer(ModelKind.IP_ADAPTER, config(data_root, tmp_path / "cut", max_train_steps=2, **common)).train()
    reset_accelerate()
    resumed = Trainer(
        ModelKind.IP_ADAPTER, config(data_root, tmp_path / "cut", max_train_steps=5, resume="latest", **common)
    )
    resumed.train()
    a, b = whole.trained_state(), resumed.trained_state()
    assert a.keys() == b.keys() == {"unet"}
    for name in a["unet"]:  # bit-exact: one process, the same kernels on the same inputs
        assert torch.equal(a["unet"][name], b["unet"][name]), name
    files = [read_ip_adapter_file(folder / WEIGHT_NAME) for folder in (tmp_path / "whole", tmp_path / "cut")]
    for part in ("image_proj", "ip_adapter"):
        assert all(torch.equal(v, files[1][part][k]) for k, v in files[0][part].items())


def test_the_drops_take_the_reference_or_the_caption_away_per_image(data_root, tmp_path):
    trainer = Trainer(ModelKind.IP_ADAPTER, config(data_root, tmp_path / "run", train_batch_size=4))
    batch = next(iter(trainer.train_loader))
    assert batch["subject_positions"].shape[0] >= 1  # the synthetic images have people
    # At most one reference per image, also where an image shows two people (the plain adapter reads one image).
    assert len(set(batch["subject_positions"][:, 0].tolist())) == batch["subject_positions"].shape[0]

    def drops(image: float, text: float):
        trainer.config.image_drop_prob, trainer.config.text_drop_prob = image, text
        return trainer.adapter_drops(batch, torch.Generator().manual_seed(0))

    ids, pixels, positions = drops(0.0, 0.0)
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(positions, batch["subject_positions"])
    ids, pixels, positions = drops(1.0, 0.0)
    assert torch.equal(ids, batch["input_ids"]) and positions.shape[0] == pixels.shape[0] == 0
    ids, pixels, positions = drops(0.0, 1.0)
    assert (ids == trainer.empty_ids).all() and torch.equal(pixels, batch["subject_pixels"])
    # A dropped reference is the adapter's "no image": zero embeddings, what the pipeline gives its no-image rows.
    embeds = trainer.denoiser.image_embeds(4, pixels[:0], positions[:0])
    assert embeds.shape[:2] == (4, 1) and not embeds.any()


def test_drop_probabilities_that_cannot_be_exclusive_are_refused_by_their_flags(data_root, tmp_path, capsys):
    code = train_main(["ip-adapter", "--data-root", str(data_root), "--output-dir", str(tmp_path / "o"),
                       "--image-drop-prob", "0.6", "--text-drop-prob", "0.5"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "image_drop_prob" in err.replace("-", "_") and "at most 1" in err
    assert not (tmp_path / "o").exists()
