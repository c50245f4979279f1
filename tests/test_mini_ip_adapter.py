"""The mini IP-Adapter: the ``ip-adapter`` stage of ``mini build`` (on a tiny world rendered here), its ship beside
the mini model, and ``--ip-adapter mini``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reset_accelerate
from facediffuser.io import package_data
from facediffuser.io.adapters import find_ip_adapter_file, read_ip_adapter_file
from facediffuser.lab.mini import build as B
from facediffuser.lab.world import attributes as A
from facediffuser.lab.world.data import write_dataset

TINY_TRAIN = """
train_batch_size = 2
max_train_steps = 2
learning_rate = 1e-3
mixed_precision = "no"
checkpointing_steps = 1
validation_steps = 0
logging_steps = 1
log_with = "csv"
"""
TINY_VAE = {"channels": [8, 16], "norm_groups": 8, "steps": 2, "batch_size": 4, "crop": 16, "warmup_steps": 1,
            "checkpoint_every": 2, "eval_every": 2, "eval_images": 4}  # fmt: skip
TINY_UNET = "\n[unet]\nchannels = [8, 16, 16]\nhead_dim = 2\nnorm_groups = 8\n"


def recipes(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "vae_config": "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_VAE.items()),
        "tdm_config": TINY_TRAIN + TINY_UNET,
        "sdm_config": TINY_TRAIN,
        "ip_adapter_config": TINY_TRAIN + "uncondition_prob = 0.05\nimage_drop_prob = 0.05\ntext_drop_prob = 0.05\n",
    }
    for key, text in texts.items():
        (folder / f"{key}.toml").write_text(text, encoding="utf-8")
    return {key: folder / f"{key}.toml" for key in texts}


def test_the_adapter_stage_runs_only_when_asked(tmp_path):
    assert B.MiniConfig(out=tmp_path).stages == ("vae", "tdm", "sdm")
    assert B.MiniConfig(out=tmp_path, to_stage="ip-adapter").stages == ("vae", "tdm", "sdm", "ip-adapter")
    assert B.MiniConfig(out=tmp_path, from_stage="ip-adapter").stages == ("ip-adapter",)


def test_ip_adapter_mini_without_a_shipped_adapter_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file or folder named mini here
    monkeypatch.setattr(package_data, "data_dir", lambda: tmp_path / "no-package")
    with pytest.raises(FileNotFoundError, match=r"ships no mini IP-Adapter .*mini build --to ip-adapter"):
        find_ip_adapter_file("mini")


def test_the_shipped_adapter_fits_the_shipped_model_and_generate_draws_with_it(tmp_path, monkeypatch):
    from facediffuser.cli.main import main

    path = find_ip_adapter_file("mini")
    assert path == package_data.packaged(package_data.MINI_IP_ADAPTER) / "ip-adapter.safetensors"
    monkeypatch.chdir(tmp_path)
    ref = package_data.packaged(package_data.MINI_EXAMPLES) / "id0004" / "1.png"
    prompt = "a man <|image|> in a red shirt and a woman <|image|> in a blue shirt on a beach during the day"
    other = package_data.packaged(package_data.MINI_EXAMPLES) / "id0006" / "1.png"
    code = main(["generate", "--model", "mini", "--ip-adapter", "mini", "--prompt", prompt, "--ref", str(ref),
                 "--ref", str(other), "--steps", "4", "--save-masks", "--out", "two.png"])  # fmt: skip
    assert code == 0
    image = np.asarray(Image.open(tmp_path / "two.png"))
    assert image.shape == (32, 32, 3) and image.std() > 5  # a picture, not a flat field
    assert (tmp_path / "two-regions.png").is_file()  # the two people's regions, their adapter masks


@pytest.mark.slow
def test_the_stage_trains_an_adapter_on_the_frozen_tdm_and_ships_it_for_ip_adapter_mini(
    tmp_path, save_tiny_world_clip, monkeypatch
):
    from safetensors.torch import load_file
    from transformers import CLIPVisionModelWithProjection

    from facediffuser.lab.mini import ship as S
    from facediffuser.lab.world.data import write_references
    from facediffuser.lab.world.faces import FaceDetector, FaceEmbedder
    from facediffuser.pipeline import FaceDiffuserPipeline

    world = tmp_path / "world"
    people, split = A.make_identities(30, 0), A.split_identities(30, 6, 0)
    groups = {"train": [people[i] for i in split["train"]], "test": [people[i] for i in split["heldout"]]}
    for name in ("scenes", "portraits"):
        write_dataset(world / name, name, groups, {"train": 8, "test": 2}, seed=1, size=64, progress=False)
    save_tiny_world_clip(world / "clip", vision_layers=2)
    (world / "world.json").write_text(json.dumps({"seed": 0, "split": split, "people": [p.to_dict() for p in people]}))
    write_references(world / "references", [people[i] for i in split["heldout"][:2]], size=64, progress=False)
    torch.manual_seed(0)
    FaceDetector(channels=(4, 4, 4)).save_pretrained(world / "faces" / "detector")
    FaceEmbedder(channels=(4, 4, 4), embed_dim=8).save_pretrained(world / "faces" / "embedder")

    reset_accelerate()
    config = B.MiniConfig(out=tmp_path / "build", world=world, resolution=32, to_stage="ip-adapter",
                          **recipes(tmp_path / "recipes"))  # fmt: skip
    assert list(B.run_stages(config)) == ["vae", "tdm", "sdm", "ip-adapter"]
    run = config.out / "ip-adapter" / "train"
    settings = json.loads((run / "train_config.json").read_text())
    assert settings["model"] == "ip-adapter" and settings["data_root"] == str(world / "portraits")
    assert settings["pretrained"] == str(config.out / "tdm" / "train")  # the trained TDM, its UNet frozen
    # The adapter reads the world CLIP's own vision tower (not the SDM's fine-tuned copy).
    encoder = load_file(run / "image_encoder" / "model.safetensors")
    clip = CLIPVisionModelWithProjection.from_pretrained(world / "clip").state_dict()
    assert all(torch.equal(v, clip[k]) for k, v in encoder.items())
    reset_accelerate()
    assert B.run_stages(config) == {}  # built: skipped

    package = tmp_path / "package"
    monkeypatch.setattr(package_data, "data_dir", lambda: package)
    S.ship(S.ShipConfig(build=config.out, world=world, people=2))
    monkeypatch.chdir(tmp_path)
    path = find_ip_adapter_file("mini")
    assert path == package / "mini" / "ip_adapter" / "ip-adapter.safetensors"
    shipped, trained = read_ip_adapter_file(path), read_ip_adapter_file(run / "ip-adapter.safetensors")
    for part in ("image_proj", "ip_adapter"):  # float16 storage: the trained tensors rounded, exactly
        assert all(torch.equal(shipped[part][k].float(), v.half().float()) for k, v in trained[part].items())

    pipe = FaceDiffuserPipeline.from_pretrained(package / "mini" / "pipeline", dtype=torch.float32)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(path.parent / "image_encoder", dtype=torch.float32)
    pipe.load_ip_adapter(shipped, image_encoder=image_encoder, image_encoder_folder=None)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    image = pipe("a man <|image|> in a red shirt on a beach", reference_images=[photo], num_inference_steps=2,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
