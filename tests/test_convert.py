"""Importing released checkpoints: a synthetic state dict with the release's key names and tiny shapes."""

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from facediffuser import FaceDiffuserPipeline
from facediffuser.cli.main import main
from facediffuser.convert import convert_release, load_state_dict, map_old_vae_attention
from facediffuser.tiny import SD_SCHEDULER_CONFIG, build_tiny_pipeline

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
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_without_tdm_the_sd_unet_draws_the_scene(release):
    root, _, scene = release
    pipe = convert_release(root / "sd15", root / "sdm.bin", image_encoder_config=root / "vision_config.json")
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in scene.state_dict().items())


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
    with pytest.raises(ValueError, match="could run code"):
        load_state_dict(tmp_path / "evil.bin")
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict(tmp_path / "list.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_state_dict(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.bin")


def test_wrong_checkpoint_and_folder_errors(release, tmp_path):
    root, _, _ = release
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="is it the TDM checkpoint"):
        convert_release(root / "sd15", root / "sdm.bin", tdm_checkpoint=tmp_path / "other.bin")
    with pytest.raises(ValueError, match="holds no 'unet"):
        convert_release(root / "sd15", tmp_path / "other.bin")
    with pytest.raises(ValueError, match="lacks"):
        convert_release(tmp_path, root / "sdm.bin")
