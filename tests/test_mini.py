"""The mini Face-diffuser's build: the VAE trainer (exact resume), the stage machinery (skip, resume, refuse changed
settings, --from) and the TDM and SDM stages through the project's real trainer, on a tiny world rendered here."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reset_accelerate
from facediffuser.io import package_data
from facediffuser.lab.mini import build as B
from facediffuser.lab.mini.vae import VaeSettings, lr_factor, psnr, train_vae
from facediffuser.lab.mini.vocab import prune_vocabulary
from facediffuser.lab.world import attributes as A
from facediffuser.lab.world.data import write_dataset

TINY_VAE = {
    "channels": [8, 16],
    "norm_groups": 8,
    "steps": 4,
    "batch_size": 4,
    "crop": 16,
    "warmup_steps": 2,
    "checkpoint_every": 2,
    "eval_every": 2,
    "eval_images": 4,
}
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
TINY_UNET = "\n[unet]\nchannels = [8, 16, 16]\nhead_dim = 2\nnorm_groups = 8\n"


def vae_settings(**changes) -> VaeSettings:
    data = {**TINY_VAE, **changes}
    data["channels"] = tuple(data["channels"])
    return VaeSettings(**data)


def images(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ the VAE
def test_psnr_and_learning_rate_schedule_on_known_values():
    target = torch.zeros(1, 3, 4, 4)  # 0.5 grey on [0, 1]
    # An error of 0.1 on [0, 1] (0.2 on [-1, 1]) everywhere: MSE 0.01, 20 dB.
    assert psnr(target + 0.2, target).item() == pytest.approx(20.0, abs=1e-4)  # float32 log10 of 0.01
    s = vae_settings(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert lr_factor(0, s) == pytest.approx(0.5) and lr_factor(1, s) == pytest.approx(1.0)
    assert lr_factor(2, s) == pytest.approx(1.0) and lr_factor(10, s) == pytest.approx(0.1)


def test_vae_trains_and_resumes_exactly_in_one_process(tmp_path):
    train, heldout = images(), images(4, seed=1)
    settings = vae_settings()
    whole = train_vae(train, heldout, tmp_path / "whole", settings, progress=False)
    assert whole["done"] and math.isfinite(whole["heldout"]["psnr"]) and whole["scaling_factor"] > 0
    reset_accelerate()
    half = train_vae(train, heldout, tmp_path / "split", settings, max_steps=2, progress=False)
    assert half == {"step": 2, "done": False}
    reset_accelerate()
    rest = train_vae(train, heldout, tmp_path / "split", settings, progress=False)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["model"]
    for name in a:  # one process, same ops in the same order, same generator state: exact by construction
        assert torch.equal(a[name], b[name]), name
    assert rest["heldout"]["psnr"] == whole["heldout"]["psnr"]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tmp_path / "split" / "vae")
    assert vae.config.scaling_factor == pytest.approx(whole["scaling_factor"])
    reset_accelerate()
    with pytest.raises(ValueError, match="kl_weight"):
        train_vae(train, heldout, tmp_path / "split", vae_settings(kl_weight=1e-3), progress=False)


def test_vae_checkpoint_with_pickled_code_is_refused_unread(tmp_path, pickled_call):
    (tmp_path / "run").mkdir()
    marker = tmp_path / "ran"
    torch.save(
        {"settings": vae_settings().to_dict(), "extra": pickled_call(marker)}, tmp_path / "run" / "checkpoint.pt"
    )
    refused = r"checkpoint.pt holds pickled objects other than tensors .*\(pickled global: \S*open\).*could run code"
    with pytest.raises(ValueError, match=refused):
        train_vae(images(), images(4, seed=1), tmp_path / "run", vae_settings(), progress=False)
    assert not marker.exists()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")  # damaged, not pickled code
    with pytest.raises(ValueError, match=r"checkpoint.pt is damaged \(.+\), so training did not resume"):
        train_vae(images(), images(4, seed=1), tmp_path / "run", vae_settings(), progress=False)


# ------------------------------------------------------------------------------------------------ the build
@pytest.fixture(scope="module")
def world(tmp_path_factory, save_tiny_world_clip) -> Path:
    """A tiny world: both data sets (training and held-out people) and a tiny world CLIP saved as the build reads it."""
    root = tmp_path_factory.mktemp("world")
    people = A.make_identities(30, 0)
    split = A.split_identities(30, 6, 0)
    people = {"train": [people[i] for i in split["train"]], "test": [people[i] for i in split["heldout"]]}
    for name in ("scenes", "portraits"):
        write_dataset(root / name, name, people, {"train": 8, "test": 2}, seed=1, size=64, progress=False)
    save_tiny_world_clip(root / "clip", vision_layers=2)
    from facediffuser.lab.world.faces import FaceDetector

    torch.manual_seed(0)
    FaceDetector(channels=(4, 4, 4)).save_pretrained(root / "faces" / "detector")
    return root


def recipes(folder: Path, tdm_extra: str = "", sdm_extra: str = "") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    vae = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_VAE.items())
    files = {"vae_config": vae, "tdm_config": TINY_TRAIN + tdm_extra + TINY_UNET, "sdm_config": TINY_TRAIN + sdm_extra}
    out = {}
    for key, text in files.items():
        (folder / f"{key}.toml").write_text(text, encoding="utf-8")
        out[key] = folder / f"{key}.toml"
    return out


def mini_config(out: Path, world: Path, recipe: dict[str, Path], **extra) -> B.MiniConfig:
    return B.MiniConfig(out=out, world=world, resolution=32, **recipe, **extra)


def unet_state(folder: Path, slot: str) -> dict[str, torch.Tensor]:
    """The tensors of the model folder ``folder / slot``."""
    from safetensors.torch import load_file

    return load_file(next((folder / slot).glob("*.safetensors")))


@pytest.mark.slow
def test_build_runs_every_stage_through_the_trainer_and_skips_what_is_built(world, tmp_path):
    """(The SDM is trained on head references here, so its pipeline carries the world's face detector.)"""
    reset_accelerate()
    head = 'reference_region = "head"\n'
    config = mini_config(tmp_path / "out", world, recipes(tmp_path / "recipes", sdm_extra=head))
    times = B.run_stages(config)
    assert list(times) == ["vae", "tdm", "sdm"]
    out = config.out
    for stage in ("vae", "tdm", "sdm"):  # the adapter's stage is built only when asked
        record = json.loads(B.marker_path(out, stage).read_text())
        assert record["settings"]["seed"] == 0
    # The TDM trained its scene UNet on `scenes` for the recipe's steps; the SDM started from that UNet.
    tdm_log = json.loads((out / "tdm" / "train" / "train_config.json").read_text())
    assert tdm_log["model"] == "tdm" and tdm_log["data_root"] == str(world / "scenes")
    assert tdm_log["pretrained"] == str(out / "tdm" / "base")
    tdm_unet, sdm_start = unet_state(out / "tdm" / "train", "unet"), unet_state(out / "sdm" / "base", "subject_unet")
    base_unet = unet_state(out / "tdm" / "base", "unet")
    assert any(not torch.equal(tdm_unet[k], base_unet[k]) for k in tdm_unet)  # the TDM stage trained it
    for k in tdm_unet:
        assert torch.equal(tdm_unet[k], sdm_start[k]), k
    sdm_log = json.loads((out / "sdm" / "train" / "train_config.json").read_text())
    assert sdm_log["model"] == "sdm" and sdm_log["data_root"] == str(world / "portraits")
    from facediffuser.pipeline import FaceDiffuserPipeline

    pipe = FaceDiffuserPipeline.from_pretrained(out / "sdm" / "train")
    assert pipe.text_encoder.config.hidden_size == 16 and pipe.vae_scale_factor == 2
    assert sdm_log["reference_region"] == "head"
    world_detector = unet_state(world / "faces", "detector")
    assert world_detector.keys() == pipe.face_detector.state_dict().keys()
    assert all(torch.equal(v, pipe.face_detector.state_dict()[k]) for k, v in world_detector.items())
    assert FaceDiffuserPipeline.from_pretrained(out / "tdm" / "train").face_detector is None
    # Built stages are skipped.
    reset_accelerate()
    assert B.run_stages(config) == {}
    # A changed setting is refused, before anything runs, and the built stage is left as it was.
    changed = mini_config(out, world, recipes(tmp_path / "changed", tdm_extra="adam_weight_decay = 0.0\n"))
    with pytest.raises(ValueError, match="'tdm'.*other settings"):
        B.run_stages(changed)
    assert torch.equal(unet_state(out / "tdm" / "train", "unet")[k], tdm_unet[k])
    with pytest.raises(ValueError, match="seed"):
        B.run_stages(mini_config(out, world, recipes(tmp_path / "recipes", sdm_extra=head), seed=1))


@pytest.mark.slow
def test_an_interrupted_stage_resumes_from_its_checkpoint_and_from_needs_earlier_stages(world, tmp_path, monkeypatch):
    from facediffuser.training.trainer import Trainer

    recipe = recipes(tmp_path / "recipes")
    monkeypatch.setattr(package_data, "data_dir", lambda: tmp_path / "no-package")  # nothing shipped to start from
    with pytest.raises(FileNotFoundError, match="needs the 'vae' stage.*ships no mini VAE"):
        B.run_stages(mini_config(tmp_path / "fresh", world, recipe, from_stage="tdm"))

    reset_accelerate()
    whole = mini_config(tmp_path / "whole", world, recipe, to_stage="tdm")
    assert list(B.run_stages(whole)) == ["vae", "tdm"]  # --to stops after the stage named
    assert not B.marker_path(whole.out, "sdm").exists()
    reset_accelerate()
    assert list(B.run_stages(mini_config(whole.out, world, recipe))) == ["sdm"]

    original = Trainer.save_checkpoint

    def save_then_stop(self):
        original(self)
        raise KeyboardInterrupt  # the run is cut right after the first checkpoint of the TDM

    reset_accelerate()
    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    cut = mini_config(tmp_path / "cut", world, recipe)
    with pytest.raises(KeyboardInterrupt):
        B.run_stages(cut)
    assert B.marker_path(cut.out, "vae").is_file() and not B.marker_path(cut.out, "tdm").is_file()
    # Then a run killed outright (no finally ran) an hour ago: it left its start behind, and its last file 60 s later.
    runs_file = B.runs_path(cut.out, "tdm")
    interrupted = json.loads(runs_file.read_text())["seconds"]
    assert len(interrupted) == 1 and "running_since" not in json.loads(runs_file.read_text())
    last = time.time() - 3600.0
    for path in (cut.out / "tdm").rglob("*"):
        if path.is_file():
            os.utime(path, (last, last))
    runs_file.write_text(json.dumps({"seconds": interrupted, "running_since": last - 60.0}))
    assert B.read_runs(cut.out, "tdm") == [*interrupted, 60.0]
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    reset_accelerate()
    times = B.run_stages(mini_config(tmp_path / "cut", world, recipe, from_stage="tdm"))
    assert list(times) == ["tdm", "sdm"]
    marker = json.loads(B.marker_path(cut.out, "tdm").read_text())
    # the interrupted run, the killed one (up to its last file) and the resumed one
    assert marker["runs"] == [*interrupted, 60.0, round(times["tdm"], 1)]
    assert marker["seconds"] == round(sum(marker["runs"]), 1)
    assert json.loads(runs_file.read_text()) == {"seconds": marker["runs"]}  # no run is going any more
    a = unet_state(tmp_path / "whole" / "sdm" / "train", "subject_unet")
    b = unet_state(cut.out / "sdm" / "train", "subject_unet")
    for k in a:  # the trainer's resume is exact in one process: same weights as the uninterrupted build
        assert torch.equal(a[k], b[k]), k


def test_bad_input_is_refused_before_anything_loads(world, tmp_path):
    with pytest.raises(ValueError, match="--from"):
        B.MiniConfig(out=tmp_path, from_stage="unet")
    with pytest.raises(ValueError, match="no stage to run"):
        B.MiniConfig(out=tmp_path, from_stage="sdm", to_stage="tdm")
    recipe = recipes(tmp_path / "recipes")
    with pytest.raises(FileNotFoundError, match="world build"):
        B.run_stages(mini_config(tmp_path / "out", tmp_path / "nowhere", recipe))
    (tmp_path / "bad.toml").write_text(TINY_TRAIN + 'output_dir = "x"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="sets data_root"):
        B.run_stages(mini_config(tmp_path / "out", world, {**recipe, "sdm_config": tmp_path / "bad.toml"}))
    # A head-reference SDM needs the world's face detector for its pipeline: refused before the VAE stage starts.
    faceless = tmp_path / "faceless"
    for name in ("scenes", "portraits"):
        (faceless / name).mkdir(parents=True)
        (faceless / name / "image_ids_train.txt").write_text("0\n")
    head = recipes(tmp_path / "head", sdm_extra='reference_region = "head"\n')
    with pytest.raises(FileNotFoundError, match="face detector"):
        B.run_stages(mini_config(tmp_path / "out", faceless, head))
    assert not (tmp_path / "out").exists()


def test_shipped_vae_loads_in_float32_and_reconstructs_a_render_of_a_heldout_person():
    from diffusers import AutoencoderKL

    from facediffuser.lab.mini.vae import reconstruct, to_pixels
    from facediffuser.lab.world.data import reference_scene
    from facediffuser.lab.world.render import render

    folder = B.shipped_vae_folder()  # the shipped pipeline's vae/, or the interim mini/vae before it ships
    assert folder is not None, "this checkout ships no mini VAE"
    vae = AutoencoderKL.from_pretrained(folder)
    assert next(vae.parameters()).dtype == torch.float32 and vae.config.block_out_channels == [32, 64]
    person = A.make_identities(1200, 0)[A.split_identities(1200, 200, 0)["heldout"][0]]
    rendered = Image.fromarray(np.asarray(render(reference_scene(person, seed=0, index=0, size=64)).image))
    image = np.asarray(rendered.resize((32, 32), Image.Resampling.BILINEAR))  # as the build resizes the renders
    rec = reconstruct(vae.eval(), image[None])
    # 35.8 dB on average over the held-out renders (docs/mini.md); 28 dB leaves room for one image and other kernels,
    # while an untrained or wrongly loaded VAE scores below 15 dB.
    assert psnr(rec, to_pixels(image[None])).item() > 28.0


# ------------------------------------------------------------------------------------------------ --from shipped stages
@pytest.fixture(scope="module")
def shipped(world, tmp_path_factory) -> tuple[Path, Path, dict[str, Path]]:
    """``(build, package, recipes)``: a tiny build of every stage, shipped by `mini ship` into a package folder that
    also holds an interim ``mini/vae`` (which the ship removes)."""
    from facediffuser.lab.mini import ship as S
    from facediffuser.lab.world.data import write_references
    from facediffuser.lab.world.faces import FaceDetector, FaceEmbedder

    root = tmp_path_factory.mktemp("shipped")
    recipe = recipes(root / "recipes")
    reset_accelerate()
    config = mini_config(root / "build", world, recipe)
    B.run_stages(config)
    # The world as `mini ship` reads it: the build's world (same CLIP) plus a face recognizer and references.
    ship_world = root / "world"
    ship_world.mkdir()
    for name in ("clip", "scenes", "portraits"):
        (ship_world / name).symlink_to(world / name)
    people, split = A.make_identities(30, 0), A.split_identities(30, 6, 0)
    record = {"seed": 0, "split": split, "people": [p.to_dict() for p in people]}
    (ship_world / "world.json").write_text(json.dumps(record))
    write_references(ship_world / "references", [people[i] for i in split["heldout"][:2]], size=64, progress=False)
    torch.manual_seed(0)
    FaceDetector(channels=(4, 4, 4)).save_pretrained(ship_world / "faces" / "detector")
    FaceEmbedder(channels=(4, 4, 4), embed_dim=8).save_pretrained(ship_world / "faces" / "embedder")
    package = root / "package"
    (package / "mini" / "vae").mkdir(parents=True)
    (package / "mini" / "vae" / "config.json").write_text("{}")
    with pytest.MonkeyPatch.context() as patch:  # the installation's own data folder, shipped into before markers
        patch.setattr(package_data, "data_dir", lambda: package)
        S.ship(S.ShipConfig(build=config.out, world=ship_world, people=2))
    return config.out, package, recipe


def pipeline_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a pipeline folder, as ``component/key``, in float32."""
    from safetensors.torch import load_file

    return {
        f"{path.parent.name}/{key}": value.float()
        for path in sorted(folder.glob("*/*.safetensors"))
        for key, value in load_file(path).items()
    }


@pytest.mark.slow
def test_from_sdm_starts_from_the_shipped_stages_as_the_build_would_from_them(shipped, world, tmp_path, monkeypatch):
    from facediffuser.pipeline import FaceDiffuserPipeline

    build, package, recipe = shipped
    monkeypatch.setattr(package_data, "data_dir", lambda: package)
    assert (package / "mini" / "stages" / "tdm.json").read_bytes() == B.marker_path(build, "tdm").read_bytes()
    assert not (package / "mini" / "vae").exists()  # the ship removed the interim VAE: pipeline/vae is the one
    reset_accelerate()
    out = tmp_path / "rerun"
    assert list(B.run_stages(mini_config(out, world, recipe, from_stage="sdm"))) == ["sdm"]
    assert not (out / "vae").exists() and not (out / "tdm").exists()
    # The marker says where the earlier stages came from, and which bytes.
    settings = json.loads(B.marker_path(out, "sdm").read_text())["settings"]
    parts = ["mini/pipeline/" + p for p in ("vae", "text_encoder", "tokenizer", "unet")] + ["world/clip"]
    assert settings["from_package"] == {
        "stages": ["vae", "tdm"],
        "sha256": {part: B.folder_sha256(package / part) for part in parts},
    }
    # What assemble_sdm_base gives from a TDM stage whose weights are the shipped ones: the build's TDM with its
    # VAE, text tower, scene UNet and vision tower (the world CLIP's, untrained) rounded to float16. Its fuser is the
    # fresh seeded one, not rounded: nothing of the TDM stage's fuser is shipped, it is made again.
    tdm = FaceDiffuserPipeline.from_pretrained(build / "tdm" / "train")
    for name in ("vae", "text_encoder", "unet", "image_encoder"):
        for value in getattr(tdm, name).state_dict().values():
            if value.is_floating_point():
                value.copy_(value.half().float())
    # ... and its text tower pruned to the world's vocabulary, as `mini ship` prunes it (mini/vocab.py).
    full_vocab = tdm.tokenizer.get_vocab()
    pruned = prune_vocabulary(tdm.tokenizer, tdm.text_encoder)
    tdm.register_modules(tokenizer=pruned.tokenizer, text_encoder=pruned.text_encoder)
    tdm.save_pretrained(tmp_path / "tdm-shipped", safe_serialization=True)
    B.assemble_sdm_base(tmp_path / "tdm-shipped", tmp_path / "expected")
    ours, expected = pipeline_tensors(out / "sdm" / "base"), pipeline_tensors(tmp_path / "expected")
    assert ours.keys() == expected.keys() and any(k.startswith("subject_fuser/") for k in ours)
    for key, value in expected.items():  # the same float16 values and the same seeded fuser: exact by construction
        assert torch.equal(ours[key], value), key
    original = pipeline_tensors(build / "sdm" / "base")
    (table,) = [k for k in original if k.startswith("text_encoder/") and k.endswith("token_embedding.weight")]
    kept = [full_vocab[t] for t in pruned.tokenizer.convert_ids_to_tokens(range(len(pruned.tokenizer)))]
    original[table] = original[table][kept]  # the kept tokens' rows, in their new order
    for key, value in original.items():
        if key.startswith("subject_fuser/"):
            assert torch.equal(ours[key], value), key
        else:  # float16 keeps 11 significant bits (relative 2**-11), and 2**-25 absolute below its smallest normal
            torch.testing.assert_close(ours[key], value, rtol=2**-11, atol=2**-25, msg=key)
    # Rerun in one process on this machine: the same weights, bit for bit.
    reset_accelerate()
    again = tmp_path / "again"
    B.run_stages(mini_config(again, world, recipe, from_stage="sdm"))
    first, second = pipeline_tensors(out / "sdm" / "train"), pipeline_tensors(again / "sdm" / "train")
    assert any(not torch.equal(first[k], ours[k]) for k in first if k.startswith("subject_unet/"))  # it trained
    for key, value in first.items():
        assert torch.equal(second[key], value), key
    # A later --from tdm in that folder would build a TDM the SDM there was not trained from: refused up front.
    with pytest.raises(ValueError, match="'sdm'.*other settings.*from_package"):
        B.run_stages(mini_config(out, world, recipe, from_stage="tdm"))
    assert not (out / "tdm").exists()


@pytest.mark.slow
def test_from_tdm_takes_the_shipped_vae(shipped, world, tmp_path, monkeypatch):
    build, package, recipe = shipped
    monkeypatch.setattr(package_data, "data_dir", lambda: package)
    reset_accelerate()
    out = tmp_path / "rerun"
    assert list(B.run_stages(mini_config(out, world, recipe, from_stage="tdm", to_stage="tdm"))) == ["tdm"]
    vae = pipeline_tensors(out / "tdm" / "base")
    shipped_vae = pipeline_tensors(package / "mini" / "pipeline")
    keys = [k for k in shipped_vae if k.startswith("vae/")]
    assert keys and all(torch.equal(vae[k], shipped_vae[k]) for k in keys)  # float16 values in float32: exact
    record = json.loads(B.marker_path(out, "tdm").read_text())["settings"]["from_package"]
    assert record == {
        "stages": ["vae"],
        "sha256": {"mini/pipeline/vae": B.folder_sha256(package / "mini/pipeline/vae")},
    }
    # Continued --from sdm, the folder's SDM starts from its TDM and inherits where that TDM's VAE came from; a whole
    # build there would train a VAE the TDM was not built on: refused before anything runs.
    reset_accelerate()
    assert list(B.run_stages(mini_config(out, world, recipe, from_stage="sdm"))) == ["sdm"]
    assert json.loads(B.marker_path(out, "sdm").read_text())["settings"]["from_package"] == record
    with pytest.raises(ValueError, match="'tdm'.*from_package.*shipped in the package: continue it with --from tdm"):
        B.run_stages(mini_config(out, world, recipe))
    assert not (out / "vae").exists()
    # Before a pipeline is shipped, the interim mini/vae is the VAE, with the VAE stage's marker.
    interim = tmp_path / "interim"
    (interim / "mini").mkdir(parents=True)
    (interim / "mini" / "vae").symlink_to(package / "mini" / "pipeline" / "vae")
    monkeypatch.setattr(package_data, "data_dir", lambda: interim)
    config = mini_config(tmp_path / "x", world, recipe, from_stage="tdm")
    with pytest.raises(FileNotFoundError, match="ships no record of that stage's settings"):
        B.run_stages(config)
    (interim / "mini" / "stages").symlink_to(package / "mini" / "stages")
    assert B.package_source(config) == B.PackageSource(stages=("vae",), folders={"vae": interim / "mini" / "vae"})


@pytest.mark.slow
def test_from_tdm_on_a_world_holding_the_shipped_clip_takes_the_projects_tokenizer(
    shipped, world, tmp_path, monkeypatch
):
    """`mini ship` stores the world CLIP without tokenizer files when its tokenizer is the project's. A world whose
    clip/ is that folder (the shipped CLIP copied into a re-rendered world) builds its TDM with the project's
    tokenizer; ``from_pretrained`` on the folder alone gave an empty one, and the trainer failed at its first batch."""
    from transformers import CLIPTokenizer

    from facediffuser.io.tokenizer import has_tokenizer_files, load_clip_tokenizer

    build, package, recipe = shipped
    monkeypatch.setattr(package_data, "data_dir", lambda: package)
    assert not has_tokenizer_files(package / "world" / "clip")
    other = tmp_path / "world"
    other.mkdir()
    (other / "clip").symlink_to(package / "world" / "clip")
    for name in ("scenes", "portraits"):
        (other / name).symlink_to(world / name)
    reset_accelerate()
    out = tmp_path / "rerun"
    assert list(B.run_stages(mini_config(out, other, recipe, from_stage="tdm", to_stage="tdm"))) == ["tdm"]
    tokenizer = CLIPTokenizer.from_pretrained(out / "tdm" / "base" / "tokenizer")
    text = "a woman in a yellow sweater on a beach at night"
    assert tokenizer(text).input_ids == load_clip_tokenizer()(text).input_ids
    assert tokenizer.model_max_length == 77  # the world CLIP's positions


@pytest.mark.slow
def test_from_shipped_stages_refuses_other_settings_another_world_and_a_missing_model(
    shipped, world, tmp_path, monkeypatch
):
    from transformers import CLIPModel

    _, package, recipe = shipped
    monkeypatch.setattr(package_data, "data_dir", lambda: package)
    out = tmp_path / "out"
    changed = recipes(tmp_path / "changed", tdm_extra="adam_weight_decay = 0.0\n")
    with pytest.raises(ValueError, match="'tdm' stage shipped in the package.*changed: tdm\\)"):
        B.run_stages(mini_config(out, world, changed, from_stage="sdm"))
    with pytest.raises(ValueError, match="'vae' stage shipped in the package.*changed: seed, vae\\)"):
        B.run_stages(mini_config(out, world, recipe, from_stage="tdm", seed=1))
    # Another world: its CLIP is not the shipped one (one weight changed).
    other = tmp_path / "other-world"
    other.mkdir()
    for name in ("scenes", "portraits"):
        (other / name).symlink_to(world / name)
    clip = CLIPModel.from_pretrained(world / "clip")
    with torch.no_grad():
        clip.text_projection.weight[0, 0] += 1.0
    clip.save_pretrained(other / "clip")
    for stage in ("tdm", "sdm"):
        with pytest.raises(ValueError, match="CLIP of --world.*not the world CLIP shipped"):
            B.run_stages(mini_config(out, other, recipe, from_stage=stage))
    # Nothing shipped in this installation.
    monkeypatch.setattr(package_data, "data_dir", lambda: tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="needs the 'tdm' stage.*ships no mini model"):
        B.run_stages(mini_config(out, world, recipe, from_stage="sdm"))
    assert not out.exists()  # every refusal came before anything was written


@pytest.mark.parametrize(
    "recipe,text,words",
    [
        ("vae_config", 'steps = "ten"', "`steps` must be an integer, got 'ten'."),
        ("vae_config", "crop = true", "`crop` must be an integer, got True."),
        ("vae_config", 'channels = [8, "16"]', "`channels` must be a list of integers, got [8, '16']."),
        ("vae_config", "learning_rate = -1", ": The VAE's learning rate must be positive"),
        ("tdm_config", 'learning_rate = "1e-3"', "`learning_rate` must be a number, got '1e-3'."),
        ("sdm_config", "use_ema = 1", "`use_ema` must be true or false, got 1."),
        (
            "sdm_config",
            'mixed_precision = "fp64"',
            "`mixed_precision` must be one of 'auto', 'no', 'fp16', 'bf16', got 'fp64'.",
        ),
        ("sdm_config", "learning_rate = -1.0", ": `learning_rate` must be a positive number, got -1.0."),
        ("tdm_unet", 'channels = ["8", "16", "16"]', "In the [unet] table of "),
        ("tdm_unet", "depth = 3", "Unknown [unet] setting(s) ['depth']"),
        ("tdm_unet", "norm_groups = 5", "need at least 3 levels, each a multiple of norm_groups 5"),
    ],
)
def test_a_recipe_value_of_the_wrong_type_is_one_sentence_naming_the_file_and_key(tmp_path, recipe, text, words):
    files = recipes(tmp_path / "recipes")
    path = files["tdm_config" if recipe == "tdm_unet" else recipe]
    key = text.split(" =")[0]
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith(key + " =")]
    # a key of the [unet] table goes at the end (inside the table), any other at the top
    lines = [*lines, text] if recipe == "tdm_unet" else [text, *lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        B.stage_settings(mini_config(tmp_path / "out", tmp_path / "world", files), "sdm")
    message = str(err.value)
    assert str(path) in message and words in message and "\n" not in message, message


def test_recipes_with_a_byte_order_mark_are_read_and_other_encodings_named(tmp_path):
    files = recipes(tmp_path / "recipes")
    config = mini_config(tmp_path / "out", tmp_path / "world", files)
    wanted = B.stage_settings(config, "sdm")
    for path in files.values():  # as a Windows editor may save them
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert B.stage_settings(config, "sdm") == wanted
    files["sdm_config"].write_bytes(TINY_TRAIN.encode() + b'reference_region = "t\xeate"\n')
    with pytest.raises(ValueError, match=r"sdm_config.toml is not UTF-8 text \(byte 0xea at offset \d+\)"):
        B.stage_settings(config, "sdm")


def test_the_shipped_recipes_pass_their_checks():
    configs = Path(__file__).resolve().parents[1] / "configs"
    config = B.MiniConfig(
        out=Path("out"), vae_config=configs / "mini_vae.toml", tdm_config=configs / "mini_tdm.toml",
        sdm_config=configs / "mini_sdm.toml",
    )  # fmt: skip
    assert set(B.stage_settings(config, "sdm")) >= {"vae", "tdm", "sdm", "unet"}


@pytest.mark.parametrize(
    "which,text,words",
    [
        ("marker", '{"seconds": 3}', "is not a stage marker (it records no `settings`"),
        ("marker", "", "is empty: it should hold JSON"),
        ("marker", "{oops", "is not valid JSON (Expecting property name enclosed in double quotes at line 1"),
        ("started", "[1, 2]", "is not the settings of a started stage, a JSON object"),
        ("started", "{", "is not valid JSON"),
    ],
)
def test_a_broken_marker_is_one_sentence_naming_it_and_how_to_rebuild(tmp_path, which, text, words):
    config = mini_config(tmp_path / "out", tmp_path / "world", recipes(tmp_path / "recipes"))
    path = B.marker_path(config.out, "vae") if which == "marker" else B.started_path(config.out, "vae")
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        B.stage_state(config, "vae", B.stage_settings(config, "vae"))
    message = str(err.value)
    assert message.startswith(str(path)) and words in message and "away to rebuild the stage" in message, message
    assert path.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("text", ['{"running_since": 5}', '{"seconds": ["1"]}', "nope"])
def test_a_broken_runs_record_is_one_sentence(tmp_path, text):
    path = B.runs_path(tmp_path, "vae")
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="^" + str(path) + " is not "):
        B.read_runs(tmp_path, "vae")


# ------------------------------------------------------------------------------------------ the world, by what it is
def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_no_shipped_stage_marker_holds_an_absolute_path():
    """The shipped markers record the world by its settings and its CLIP's sha256, never by the folder it lay in on
    the machine that built it; the sha256 is that of the CLIP shipped beside them."""
    from pathlib import PurePosixPath, PureWindowsPath

    from facediffuser.lab.world.build import clip_sha256

    markers = sorted(package_data.packaged(package_data.MINI_STAGES).glob("*.json"))
    assert [p.name for p in markers] == ["sdm.json", "tdm.json", "vae.json"]
    clip = package_data.packaged(package_data.WORLD_CLIP)
    for path in markers:
        record = json.loads(path.read_text(encoding="utf-8"))
        paths = [s for s in _strings(record) if PurePosixPath(s).is_absolute() or PureWindowsPath(s).is_absolute()]
        assert paths == [], path
        world = record["settings"]["world"]
        assert set(world) == {"settings", "clip_sha256"} and world["settings"]["seed"] == 0, path
        if (clip / "config.json").is_file():
            assert world["clip_sha256"] == clip_sha256(clip), path


def test_a_build_records_its_world_by_what_it_is_and_reads_markers_that_named_its_folder(world, tmp_path):
    """A stage's settings hold the world's settings (its markers) and its CLIP's sha256, not its path; a marker
    written when they held the path still counts as built on that folder's world, and on no other."""
    from facediffuser.lab.world.build import clip_sha256

    config = mini_config(tmp_path / "out", world, recipes(tmp_path / "recipes"))
    wanted = B.stage_settings(config, "vae")
    assert wanted["world"] == {"settings": {}, "clip_sha256": clip_sha256(world / "clip")}
    assert wanted["world"]["clip_sha256"] is not None and str(world) not in json.dumps(wanted)
    # The world's float16 copy (as `mini ship` stores it) is the same world.
    from transformers import CLIPModel

    CLIPModel.from_pretrained(world / "clip").half().save_pretrained(tmp_path / "half")
    assert clip_sha256(tmp_path / "half") == wanted["world"]["clip_sha256"]
    # A marker of an earlier build names the folder: the same folder is the same world.
    marker = B.marker_path(config.out, "vae")
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"settings": {**wanted, "world": str(world.resolve())}, "seconds": 1.0}))
    assert B.stage_state(config, "vae", wanted) == "done"
    marker.write_text(json.dumps({"settings": {**wanted, "world": str(tmp_path / "elsewhere")}, "seconds": 1.0}))
    with pytest.raises(ValueError, match=r"'vae'.*other settings \(changed: world\)"):
        B.stage_state(config, "vae", wanted)


def test_mini_ship_writes_a_marker_that_named_its_world_by_what_it_is(world, tmp_path):
    from facediffuser.lab.mini import ship as S
    from facediffuser.lab.world.build import world_record

    build, new = tmp_path / "build", tmp_path / "new"
    (build / "stages").mkdir(parents=True)
    new.mkdir()
    record = {"settings": {"seed": 0, "world": str(world.resolve()), "resolution": 32}, "seconds": 2.0}
    (build / "stages" / "vae.json").write_text(json.dumps(record))
    S.write_stages(build, new, world=world)
    shipped = json.loads((new / "vae.json").read_text())
    assert shipped == {**record, "settings": {**record["settings"], "world": world_record(world)}}
    with pytest.raises(ValueError, match="records its world by the path .* ship it with that world as --world"):
        S.write_stages(build, new, world=tmp_path)
