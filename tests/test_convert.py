"""Importing released checkpoints: a synthetic state dict with the release's key names and tiny shapes."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from facediffuser import FaceDiffuserPipeline
from facediffuser.cli.main import main
from facediffuser.io.convert import convert_release, load_state_dict, map_old_vae_attention, save_pipeline_atomically
from facediffuser.io.tiny import SD_SCHEDULER_CONFIG, build_tiny_pipeline

NEW_TO_OLD_VAE = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def old_vae_names(state):
    """Today's VAE names -> diffusers 0.16's, as the released files have them."""
    out = {}
    for k, v in state.items():
        for new, old in NEW_TO_OLD_VAE.items():
            if ".attentions." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
        out[k] = v
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny 'SD v1.5 folder' and tiny SDM/TDM files laid out like the release."""
    root = tmp_path_factory.mktemp("release")
    source = build_tiny_pipeline(seed=3)
    scene = build_tiny_pipeline(seed=4).unet  # stands in for SD v1.5's own UNet
    sd = StableDiffusionPipeline(
        vae=source.vae,
        text_encoder=source.text_encoder,
        tokenizer=source.tokenizer,
        unet=scene,
        scheduler=PNDMScheduler.from_config({**SD_SCHEDULER_CONFIG, "skip_prk_steps": True}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.save_pretrained(root / "sd15")
    sdm = {"unet." + k: v for k, v in source.subject_unet.state_dict().items()}
    sdm |= {"text_encoder." + k.removeprefix("text_model."): v for k, v in source.text_encoder.state_dict().items()}
    sdm |= {"image_encoder." + k: v for k, v in source.image_encoder.state_dict().items()}
    sdm |= {"postfuse_module." + k: v for k, v in source.subject_fuser.state_dict().items()}
    sdm |= {"vae." + k: v for k, v in old_vae_names(source.vae.state_dict()).items()}
    torch.save(sdm, root / "sdm.bin")
    torch.save({"unet." + k: v for k, v in source.unet.state_dict().items()}, root / "tdm.bin")
    source.image_encoder.config.to_json_file(root / "vision_config.json")
    return root, source, scene


def test_old_vae_names_are_mapped():
    mapped = map_old_vae_attention({"encoder.mid_block.attentions.0.query.weight": torch.zeros(4, 4, 1, 1)})
    assert list(mapped) == ["encoder.mid_block.attentions.0.to_q.weight"]
    assert mapped["encoder.mid_block.attentions.0.to_q.weight"].shape == (4, 4)


def test_convert_reproduces_every_component(release, face_image):
    root, source, _ = release
    pipe = convert_release(
        root / "sd15", root / "sdm.bin", root / "tdm.bin", image_encoder_config=root / "vision_config.json"
    )
    for name in ("unet", "subject_unet", "text_encoder", "image_encoder", "subject_fuser", "vae"):
        a, b = getattr(source, name).state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(reference_images=[face_image], num_inference_steps=3, output_type="np")
    a = pipe("a man <|image|>", generator=torch.Generator().manual_seed(1), **kwargs).images
    b = source("a man <|image|>", generator=torch.Generator().manual_seed(1), **kwargs).images
    # The weights are equal (above); storages read by torch.load sit at other alignments, which can pick another
    # matmul kernel (float32 rounding, ~1e-6 here). A component wired to the wrong slot moves pixels by 1e-2 or more.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_without_tdm_the_sd_unet_draws_the_scene(release):
    root, _, scene = release
    pipe = convert_release(root / "sd15", root / "sdm.bin", image_encoder_config=root / "vision_config.json")
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in scene.state_dict().items())


@pytest.mark.slow
def test_scene_model_from_a_single_safetensors_file(release, tmp_path):
    root, _, _ = release
    community = build_tiny_pipeline(seed=9).unet
    save_file({"unet." + k: v.contiguous() for k, v in community.state_dict().items()}, tmp_path / "scene.safetensors")
    pipe = convert_release(
        root / "sd15",
        root / "sdm.bin",
        scene_model=tmp_path / "scene.safetensors",
        image_encoder_config=root / "vision_config.json",
    )
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in community.state_dict().items())


@pytest.mark.slow
def test_convert_command_writes_a_loadable_folder(release, tmp_path):
    root, source, _ = release
    out = tmp_path / "face-diffuser"
    argv = [
        "convert",
        "--sd15",
        str(root / "sd15"),
        "--sdm",
        str(root / "sdm.bin"),
        "--tdm",
        str(root / "tdm.bin"),
        "--image-encoder-config",
        str(root / "vision_config.json"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert not list((out / "subject_unet").glob("*.bin")) and list((out / "subject_unet").glob("*.safetensors"))
    loaded = FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True)
    assert all(
        torch.equal(v, loaded.subject_fuser.state_dict()[k]) for k, v in source.subject_fuser.state_dict().items()
    )
    assert main(argv) == 2  # refuses to overwrite


class NotAStateDict:
    pass


def test_untrusted_checkpoints_are_refused(tmp_path):
    torch.save(NotAStateDict(), tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="could run code.*pickled global: .*NotAStateDict"):
        load_state_dict(tmp_path / "evil.bin")
    (tmp_path / "system.bin").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")  # a protocol-0 pickle that runs code
    with pytest.raises(ValueError, match="could run code.*os.system"):
        load_state_dict(tmp_path / "system.bin")
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "list.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch or safetensors weight file"):
        load_state_dict(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.bin")


def test_damaged_checkpoints_are_called_damaged_not_unsafe(tmp_path):
    state = {"a": torch.arange(1000.0)}
    torch.save(state, tmp_path / "zip.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "real.safetensors")
    for name in ("zip.bin", "legacy.bin", "real.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"half-{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="damaged or truncated") as err:
            load_state_dict(tmp_path / f"half-{name}")
        assert "could run code" not in str(err.value)
    (tmp_path / "zero.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty \(0 bytes\)"):
        load_state_dict(tmp_path / "zero.bin")
    # The first bytes decide the format: a safetensors file named .bin loads (no pickle involved)...
    shutil.copy(tmp_path / "real.safetensors", tmp_path / "named.bin")
    assert torch.equal(load_state_dict(tmp_path / "named.bin")["a"], state["a"])
    # ...while a pickle named .safetensors is refused: its name promised no pickle.
    shutil.copy(tmp_path / "zip.bin", tmp_path / "renamed.safetensors")
    with pytest.raises(ValueError, match="PyTorch pickle file .*named .safetensors. Rename it to .bin"):
        load_state_dict(tmp_path / "renamed.safetensors")


def test_wrong_checkpoint_and_folder_errors(release, tmp_path):
    root, _, _ = release
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="is it the TDM checkpoint"):
        convert_release(root / "sd15", root / "sdm.bin", tdm_checkpoint=tmp_path / "other.bin")
    with pytest.raises(ValueError, match="holds no 'unet"):
        convert_release(root / "sd15", tmp_path / "other.bin")
    with pytest.raises(ValueError, match="lacks"):
        convert_release(tmp_path, root / "sdm.bin")


def convert_argv(root, out, *extra, sd15=None, sdm=None):
    return [
        "convert",
        "--sd15",
        str(sd15 or root / "sd15"),
        "--sdm",
        str(sdm or root / "sdm.bin"),
        "--image-encoder-config",
        str(root / "vision_config.json"),
        "--out",
        str(out),
        *extra,
    ]


def error_line(capsys) -> str:
    """The one stderr line of a refused command (asserting there is no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("facediffuser convert: error:")]
    assert len(lines) == 1, err
    return lines[0]


def with_sdm(root, tmp_path, change):
    """A copy of the release's SDM file with ``change(state)`` applied."""
    state = torch.load(root / "sdm.bin", weights_only=True)
    change(state)
    torch.save(state, tmp_path / "sdm.bin")
    return {"sdm": tmp_path / "sdm.bin"}


def with_sd15(root, tmp_path, change):
    """A copy of the release's SD v1.5 folder with ``change(folder)`` applied."""
    shutil.copytree(root / "sd15", tmp_path / "sd15")
    change(tmp_path / "sd15")
    return {"sd15": tmp_path / "sd15"}


def poke(key, value):
    def change(state):
        state[key] = state[key].clone()
        state[key].view(-1)[0] = value

    return change


def with_bytes(path, data):
    path.write_bytes(data)
    return {"sdm": path}


def scene_model(tmp_path, folder):
    """A scene model the TDM cannot be: a unet/ folder with a config and no weights, or a UNet of another shape."""
    unet = build_tiny_pipeline(seed=5).unet
    if folder:
        unet.save_config(tmp_path / "scene" / "unet")
        return {"extra": ["--scene-model", str(tmp_path / "scene")]}
    state = {k: v.contiguous() for k, v in unet.state_dict().items()} | {"conv_in.weight": torch.zeros(3, 3, 3, 3)}
    save_file(state, tmp_path / "scene.safetensors")
    return {"extra": ["--scene-model", str(tmp_path / "scene.safetensors")]}


def empty_folder(folder):
    shutil.rmtree(folder)
    folder.mkdir()


BAD_RELEASES = {
    "unet of another shape": (
        lambda r, t: with_sdm(r, t, lambda s: s.update({"unet.conv_in.weight": torch.zeros(3, 3, 3, 3)})),
        r"SDM UNet weights in .* do not fit: 1 tensor has another shape \(e.g. conv_in.weight: \(3, 3, 3, 3\)",
    ),
    "fuser of another shape": (
        lambda r, t: with_sdm(r, t, lambda s: s.update({"postfuse_module.mlp1.fc1.weight": torch.zeros(3, 3)})),
        r"subject fuser weights in .* do not fit: 1 tensor has another shape \(e.g. mlp1.fc1.weight",
    ),
    "missing image-encoder key": (
        lambda r, t: with_sdm(r, t, lambda s: s.pop("image_encoder.visual_projection.weight")),
        r"image encoder weights in .* do not fit: 1 is missing \(e.g. \['visual_projection.weight'\]\)",
    ),
    "NaN weight": (
        lambda r, t: with_sdm(r, t, poke("unet.conv_in.weight", float("nan"))),
        r"tensor unet.conv_in.weight holds NaN, so it was not converted",
    ),
    "infinite weight": (
        lambda r, t: with_sdm(r, t, poke("postfuse_module.layer_norm.weight", float("inf"))),
        r"tensor postfuse_module.layer_norm.weight holds infinite values",
    ),
    ".bin renamed .safetensors": (
        lambda r, t: {"sdm": shutil.copy(r / "sdm.bin", t / "sdm.safetensors")},
        r"sdm.safetensors is a PyTorch pickle file \(a .bin\) named .safetensors. Rename it to .bin",
    ),
    "truncated .bin": (
        lambda r, t: with_bytes(t / "sdm.bin", (r / "sdm.bin").read_bytes()[:5000]),
        r"sdm.bin is damaged or truncated, so it was not loaded: download or copy it again",
    ),
    "0-byte .bin": (
        lambda r, t: with_bytes(t / "sdm.bin", b""),
        r"sdm.bin is empty \(0 bytes\): the download or copy did not finish",
    ),
    "unet/ without weights": (
        lambda r, t: with_sd15(r, t, lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink()),
        r"unet holds no weights: download diffusion_pytorch_model.safetensors into it",
    ),
    "--scene-model unet/ without weights": (
        lambda r, t: scene_model(t, folder=True),
        r"scene/unet holds no weights: download diffusion_pytorch_model.safetensors into it",
    ),
    "--scene-model of another shape": (
        lambda r, t: scene_model(t, folder=False),
        r"scene.safetensors does not fit an SD1.x UNet like the SDM's \(size mismatch for conv_in.weight",
    ),
    "empty tokenizer/": (
        lambda r, t: with_sd15(r, t, lambda f: empty_folder(f / "tokenizer")),
        r"tokenizer holds no tokenizer \(vocab.json and merges.txt, or tokenizer.json\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RELEASES))
def test_bad_release_files_are_one_sentence_and_write_nothing(release, tmp_path, capsys, case):
    root, _, _ = release
    make, message = BAD_RELEASES[case]
    paths = make(root, tmp_path)
    out = tmp_path / "out"
    assert main(convert_argv(root, out, *paths.pop("extra", []), **paths)) == 2
    assert re.search(message, error_line(capsys))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_tokenizer_that_is_not_the_text_encoders_is_refused(release, tmp_path, capsys):
    root, _, _ = release
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text('{"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}')
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")

    def replace_tokenizer(folder):
        shutil.rmtree(folder / "tokenizer")
        shutil.copytree(tmp_path / "tok", folder / "tokenizer")

    paths = with_sd15(root, tmp_path, replace_tokenizer)
    assert main(convert_argv(root, tmp_path / "out", **paths)) == 2
    assert re.search(r"tokenizer has 3 tokens but the text encoder embeds 49408", error_line(capsys))


def test_a_missing_image_encoder_key_without_a_config_is_a_sentence(release, tmp_path):
    root, _, _ = release
    with_sdm(root, tmp_path, lambda s: s.pop("image_encoder.vision_model.embeddings.class_embedding"))
    with pytest.raises(ValueError, match="lacks image_encoder.vision_model.embeddings.class_embedding, so the image"):
        convert_release(root / "sd15", tmp_path / "sdm.bin")


def pipeline_folder(path: Path) -> Path:
    """A folder that looks like an earlier conversion, with a file to tell whether it survived."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text("{}")
    (path / "marker").write_text("old")
    return path


def test_overwrite_replaces_only_a_pipeline_folder(release, tmp_path, monkeypatch, capsys):
    root, _, _ = release
    work = pipeline_folder(tmp_path / "home" / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pipeline_folder(tmp_path / "home")
    monkeypatch.chdir(work)
    inputs = pipeline_folder(tmp_path / "inputs")
    shutil.copy(root / "sdm.bin", inputs / "sdm.bin")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    refused = {
        ".": "the current folder",
        "..": "your home folder",
        str(tmp_path): "a folder above the current one",
        str(inputs): "which holds the input",
        str(root / "sd15"): "which is the input",
        str(plain): r"has no model_index.json\), so --overwrite does not replace it",
        str(tmp_path / "file"): "is a file, not a pipeline folder",
    }
    for out, reason in refused.items():
        sdm = inputs / "sdm.bin" if out == str(inputs) else None
        assert main(convert_argv(root, out, "--overwrite", sdm=sdm)) == 2, out
        assert re.search(reason, error_line(capsys)), out
    assert (work / "marker").is_file() and (inputs / "sdm.bin").is_file() and (plain / "notes.txt").is_file()
    assert (tmp_path / "home" / "marker").is_file() and (root / "sd15" / "model_index.json").is_file()
    assert (tmp_path / "file").read_text() == "mine"


def test_overwrite_swaps_in_a_complete_folder_that_follows_the_umask(release, tmp_path):
    root, _, _ = release
    out = pipeline_folder(tmp_path / "face-diffuser")
    umask = os.umask(0o022)
    try:
        assert main(convert_argv(root, out, "--overwrite")) == 0
    finally:
        os.umask(umask)
    assert not (out / "marker").exists() and (out / "subject_fuser").is_dir()
    assert (out.stat().st_mode & 0o777) == 0o755  # not a temporary folder's private 0o700
    assert [p.name for p in tmp_path.iterdir()] == ["face-diffuser"]


def test_a_failed_swap_leaves_the_old_folder(tiny_pipe, tmp_path, monkeypatch):
    """The new folder is written beside the old one; if it cannot be moved into place, the old one stays."""
    out = pipeline_folder(tmp_path / "face-diffuser")
    rename = Path.rename

    def refuse_the_new_folder(self, target):
        if Path(target) == out and self.name.startswith(".face-diffuser.") and ".old-" not in self.name:
            raise OSError("simulated failure while moving the new folder into place")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse_the_new_folder)
    with pytest.raises(OSError, match="simulated"):
        save_pipeline_atomically(tiny_pipe, out, overwrite=True)
    assert (out / "marker").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["face-diffuser"]  # no half-written sibling left behind


def test_an_interrupted_save_leaves_the_old_folder(tiny_pipe, tmp_path, monkeypatch):
    out = pipeline_folder(tmp_path / "face-diffuser")

    def interrupted(folder, **kwargs):
        (Path(folder) / "model_index.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_pipe, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_pipeline_atomically(tiny_pipe, out, overwrite=True)
    assert (out / "marker").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["face-diffuser"]


def test_out_below_a_file_is_refused_before_any_model_loads(release, tmp_path, capsys, monkeypatch):
    root, _, _ = release
    (tmp_path / "file").write_text("mine")
    monkeypatch.setattr("facediffuser.io.convert.convert_release", lambda *a, **k: pytest.fail("models were loaded"))
    assert main(convert_argv(root, tmp_path / "file" / "out")) == 2
    assert re.search(r"lies below .*file, which is a file, not a folder", error_line(capsys))
