"""An SDXL pipeline folder, an SDXL base with an IP-Adapter and SDXL scene models on the command line, the demo and
the evaluation; the scene-model refusals between SD1.x and SDXL, before any model loads."""

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

from facediffuser import FaceDiffuserPipeline, FaceDiffuserXLPipeline
from facediffuser.cli.main import main
from facediffuser.io.loading import check_model_source, is_xl_model, load_pipeline, scene_model_is_xl
from facediffuser.io.tiny import build_tiny_xl_pipeline, tiny_unet, tiny_xl_components, tiny_xl_unet
from test_ip_adapter import adapter_state, plus_adapter_state, tiny_image_encoder

PROMPT = "a man <|image|> at sea"
BASE_PARTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")


@pytest.fixture
def xl_folder(tmp_path):
    build_tiny_xl_pipeline().save_pretrained(tmp_path / "xl")
    return tmp_path / "xl"


@pytest.fixture
def xl_base(tmp_path):
    """A plain SDXL base folder, diffusers' StableDiffusionXLPipeline layout."""
    parts = {k: v for k, v in tiny_xl_components().items() if k in BASE_PARTS}
    StableDiffusionXLPipeline(**parts, add_watermarker=False).save_pretrained(tmp_path / "sdxl-base")
    return tmp_path / "sdxl-base"


@pytest.fixture
def no_model_load(monkeypatch):
    from facediffuser.io import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("a model loaded before the check"))


@pytest.fixture
def ref(tmp_path, face_image):
    face_image.save(tmp_path / "face.png")
    return str(tmp_path / "face.png")


def cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1, err
    return err.split("error: ", 1)[1].strip()


def test_load_pipeline_takes_the_class_the_folder_names(xl_folder):
    pipe = load_pipeline(xl_folder, device="cpu")
    assert type(pipe) is FaceDiffuserXLPipeline and pipe.subject_fuser.config.image_embed_dim == 20
    assert type(load_pipeline("tiny-xl", device="cpu")) is FaceDiffuserXLPipeline
    assert type(load_pipeline("tiny", device="cpu")) is FaceDiffuserPipeline


@pytest.mark.slow
def test_generate_with_an_xl_folder_and_with_tiny_xl(xl_folder, ref, tmp_path):
    common = ["generate", "-p", PROMPT, "--ref", ref, "--steps", "3", "--no-face-check", "--save-masks"]
    assert main([*common, "--model", str(xl_folder), "-o", str(tmp_path / "a.png")]) == 0
    assert main([*common, "--model", "tiny-xl", "-o", str(tmp_path / "b.png")]) == 0
    assert {"a.png", "a-masks.png", "b.png", "b-masks.png"} <= {p.name for p in tmp_path.iterdir()}


@pytest.mark.slow
def test_an_sdxl_base_with_an_ip_adapter_is_a_face_diffuser(xl_base, ref, tmp_path):
    models = tmp_path / "adapter" / "models"
    models.mkdir(parents=True)
    save_file(adapter_state(tiny_xl_unet()), models / "ip-adapter_sdxl.safetensors")
    tiny_image_encoder().save_pretrained(models / "image_encoder")
    argv = ["generate", "-p", PROMPT, "--ref", ref, "--steps", "3", "--no-face-check", "--model", str(xl_base)]
    assert main([*argv, "--ip-adapter", str(models), "-o", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()
    # from Python: the base's UNet is both models, the adapter the subject model
    pipe = FaceDiffuserXLPipeline.from_base(xl_base)
    assert pipe.shares_unet and pipe.subject_fuser is None and pipe.image_encoder is None
    with pytest.raises(ValueError, match="no subject model .* load an IP-Adapter with `load_ip_adapter` first"):
        pipe(PROMPT, reference_images=[ref], num_inference_steps=2)


def test_an_sdxl_base_with_plus_face_and_its_image_encoder_elsewhere(xl_base, ref, tmp_path, capsys):
    # The layout of docs/sdxl.md's command: sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors, with the ViT-H
    # encoder in models/image_encoder (not beside the file).
    root = tmp_path / "ip-adapter"
    (root / "sdxl_models").mkdir(parents=True)
    weights = root / "sdxl_models" / "ip-adapter-plus-face_sdxl_vit-h.safetensors"
    save_file(plus_adapter_state(tiny_xl_unet()), weights)
    tiny_image_encoder().save_pretrained(root / "models" / "image_encoder")
    argv = ["generate", "-p", PROMPT, "--ref", ref, "--steps", "3", "--no-face-check", "--model", str(xl_base)]
    adapter = ["--ip-adapter", str(weights), "--ip-adapter-image-encoder", str(root / "models" / "image_encoder")]
    assert main([*argv, *adapter, "-o", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()
    # without the encoder flag there is none beside the file: one sentence, before any model loads
    assert cli_error(capsys, [*argv, "--ip-adapter", str(weights), "-o", str(tmp_path / "y.png")]).startswith(
        f"{weights.parent} has no image_encoder folder beside the adapter: give the adapter's CLIP image encoder with "
        "--ip-adapter-image-encoder"
    )
    assert not (tmp_path / "y.png").exists()


@pytest.mark.slow
def test_an_sd15_base_with_an_ip_adapter_works_the_same_way(tmp_path, ref):
    from diffusers import StableDiffusionPipeline

    from facediffuser.io.tiny import tiny_components

    sd = {k: v for k, v in tiny_components().items() if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    StableDiffusionPipeline(**sd, safety_checker=None, feature_extractor=None).save_pretrained(tmp_path / "sd15")
    models = tmp_path / "models"
    models.mkdir()
    save_file(adapter_state(tiny_unet()), models / "ip-adapter_sd15.safetensors")
    tiny_image_encoder().save_pretrained(models / "image_encoder")
    argv = [
        "generate",
        "-p",
        PROMPT,
        "--ref",
        ref,
        "--steps",
        "3",
        "--no-face-check",
        "--model",
        str(tmp_path / "sd15"),
    ]
    assert main([*argv, "--ip-adapter", str(models), "-o", str(tmp_path / "x.png")]) == 0
    assert type(load_pipeline(tmp_path / "sd15", device="cpu")) is FaceDiffuserPipeline


def test_a_base_folder_without_an_adapter_is_refused_before_any_model_loads(xl_base, ref, capsys, no_model_load):
    argv = ["generate", "-p", PROMPT, "--ref", ref, "--no-face-check", "--model", str(xl_base), "-o", "x.png"]
    assert cli_error(capsys, argv) == (
        f"{xl_base} is a plain SDXL base folder, which has no subject model: give an IP-Adapter with --ip-adapter "
        "to draw the people, or a Face-diffuser pipeline folder as --model."
    )


def test_an_incomplete_xl_folder_names_its_missing_sdxl_parts(xl_folder):
    import shutil

    shutil.rmtree(xl_folder / "text_encoder_2")
    with pytest.raises(ValueError, match=r"is missing: text_encoder_2/\.$"):
        check_model_source(xl_folder)


# ------------------------------------------------------------------ a hub id
@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A hub cache in huggingface_hub's own layout (``models--owner--name/snapshots/<commit>``, ``refs/main``), read
    in offline mode as a cached hub model is: ``put(repo_id, folder)`` puts a saved folder there."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def put(repo_id, folder):
        repo, commit = cache / f"models--{repo_id.replace('/', '--')}", "0123456789abcdef" * 2 + "01234567"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        return repo_id

    return put


def test_a_hub_id_loads_as_the_class_its_model_index_names(offline_hub, xl_folder, tmp_path, scene_models):
    from facediffuser.io.tiny import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(tmp_path / "sd1")
    xl, sd1 = offline_hub("acme/face-diffuser-xl", xl_folder), offline_hub("acme/face-diffuser", tmp_path / "sd1")
    assert is_xl_model(xl) is True and is_xl_model(sd1) is False
    pipe = load_pipeline(xl, device="cpu")
    assert type(pipe) is FaceDiffuserXLPipeline and pipe.subject_fuser.config.image_embed_dim == 20
    assert type(load_pipeline(sd1, device="cpu")) is FaceDiffuserPipeline
    # its index is read before the pipeline loads, so an SD1.x scene model is refused first, as for a folder
    with pytest.raises(ValueError, match="is not an SDXL UNet"):
        load_pipeline(xl, device="cpu", scene_model=scene_models["sd1"][1])


def test_an_sdxl_base_on_the_hub_takes_an_adapter_as_a_base_folder_does(offline_hub, xl_base, ref, tmp_path, capsys):
    base = offline_hub("acme/sdxl-base", xl_base)
    pipe = load_pipeline(base, device="cpu")
    assert type(pipe) is FaceDiffuserXLPipeline and pipe.shares_unet and pipe.subject_fuser is None
    models = tmp_path / "models"
    models.mkdir()
    save_file(adapter_state(tiny_xl_unet()), models / "ip-adapter_sdxl.safetensors")
    tiny_image_encoder().save_pretrained(models / "image_encoder")
    argv = ["generate", "-p", PROMPT, "--ref", ref, "--steps", "3", "--no-face-check", "--model", base]
    assert main([*argv, "--ip-adapter", str(models), "-o", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_an_sdxl_base_on_the_hub_without_an_adapter_is_refused_before_any_model_loads(
    offline_hub, xl_base, ref, capsys, no_model_load
):
    base = offline_hub("acme/sdxl-base", xl_base)
    argv = ["generate", "-p", PROMPT, "--ref", ref, "--no-face-check", "--model", base, "-o", "x.png"]
    assert cli_error(capsys, argv) == (
        "acme/sdxl-base is a plain SDXL base model, which has no subject model: give an IP-Adapter with --ip-adapter "
        "to draw the people, or a Face-diffuser pipeline folder as --model."
    )


# ------------------------------------------------------------------ --scene-model, both ways
@pytest.fixture
def scene_models(tmp_path):
    """An SD1.x and an SDXL UNet, each as a diffusers folder and as one .safetensors file."""
    torch.manual_seed(4)
    made = {}
    for name, unet in (("sd1", tiny_unet()), ("xl", tiny_xl_unet())):
        unet.save_pretrained(tmp_path / f"{name}-unet")
        save_file(unet.state_dict(), tmp_path / f"{name}.safetensors")
        made[name] = (tmp_path / f"{name}-unet", tmp_path / f"{name}.safetensors", unet)
    return made


def test_scene_models_are_told_apart_by_their_config_or_header(scene_models):
    for name, (folder, file, _) in scene_models.items():
        assert scene_model_is_xl(folder) is scene_model_is_xl(file) is (name == "xl")


@pytest.mark.parametrize("form", [0, 1])
def test_the_other_base_as_scene_model_is_one_sentence_before_any_model_loads(
    scene_models, xl_folder, ref, capsys, no_model_load, form
):
    argv = ["generate", "-p", PROMPT, "--ref", ref, "--no-face-check", "-o", "x.png", "--scene-model"]
    sd1, xl = scene_models["sd1"][form], scene_models["xl"][form]
    assert cli_error(capsys, [*argv, str(sd1), "--model", str(xl_folder)]) == (
        f"--scene-model {sd1} is not an SDXL UNet (it lacks SDXL's added conditions and 2048-wide tokens), but "
        f"'{xl_folder}' is an SDXL pipeline: give an SDXL UNet (a diffusers folder or a .safetensors file)."
    )
    assert cli_error(capsys, [*argv, str(xl), "--model", "tiny"]) == (
        f"--scene-model {xl} is an SDXL UNet, but 'tiny' is an SD1.x pipeline: give an SD v1.x UNet, or an SDXL "
        "pipeline folder as --model."
    )


def test_load_pipeline_refuses_the_other_base_before_the_pipeline_loads(scene_models, xl_folder, monkeypatch):
    monkeypatch.setattr(FaceDiffuserXLPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ValueError, match="is not an SDXL UNet"):
        load_pipeline(xl_folder, device="cpu", scene_model=scene_models["sd1"][1])


@pytest.mark.parametrize("form", [0, 1])
def test_an_sdxl_scene_model_replaces_the_tdm_of_an_sdxl_pipeline(scene_models, xl_folder, form):
    pipe = load_pipeline(xl_folder, device="cpu", scene_model=scene_models["xl"][form])
    for key, value in scene_models["xl"][2].state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[key], value, rtol=0, atol=0)
    assert pipe.subject_unet is not pipe.unet


# ------------------------------------------------------------------ the demo and the evaluation
def test_the_demo_runs_an_xl_folder(xl_folder, ref, tmp_path):
    from facediffuser.demo.core import DemoRequest, DemoRunner
    from facediffuser.settings import SamplingSettings

    runner = DemoRunner(
        load_pipeline(xl_folder, device="cpu"), tmp_path / "out", model=str(xl_folder), face_check=False
    )
    settings = SamplingSettings(num_inference_steps=3, alpha=0.34, beta=0.67)
    result = runner.run(DemoRequest(prompt=PROMPT, people=[[ref]], settings=settings, seed=1))
    assert len(result.images) == 1 and result.images[0].is_file()


@pytest.mark.slow
def test_evaluate_runs_an_xl_folder(xl_folder, clip_folder, tmp_path, face_image):
    import json

    pytest.importorskip("dlib")
    subjects = tmp_path / "subjects"
    (subjects / "eileen").mkdir(parents=True)
    face_image.save(subjects / "eileen" / "portrait.png")
    (subjects / "subjects.json").write_text(json.dumps({"eileen": "woman"}))
    argv = [
        "evaluate", "--data", str(subjects), "--model", str(xl_folder), "--clip-model", str(clip_folder),
        "--out", str(tmp_path / "run"), "--limit", "1", "--steps", "2", "--images-per-prompt", "1",
        "--dlib-upsample", "0", "--methods", "tdm", "face-diffuser",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sorted(r["images"] for r in summary["methods"].values()) == [1, 1]


# ------------------------------------------------------------------ convert: an SDXL pipeline folder
@pytest.mark.slow
def test_convert_assembles_an_xl_folder_from_a_base_then_takes_its_trained_sdm(xl_base, scene_models, tmp_path, ref):
    encoder = tmp_path / "image_encoder"
    tiny_image_encoder().save_pretrained(encoder)
    start = tmp_path / "start"
    assert main(["convert", "--sdxl", str(xl_base), "--image-encoder", str(encoder), "--out", str(start)]) == 0
    pipe = load_pipeline(start, device="cpu")
    assert type(pipe) is FaceDiffuserXLPipeline and not pipe.shares_unet
    assert pipe.subject_fuser.config.embed_dim == 24 and pipe.subject_fuser.config.image_embed_dim == 12
    torch.testing.assert_close(pipe.subject_unet.state_dict(), pipe.unet.state_dict(), rtol=0, atol=0)
    # the folder as a trained SDM, on another SDXL scene model
    out = tmp_path / "assembled"
    argv = ["convert", "--sdxl", str(xl_base), "--sdm", str(start), "--scene-model", str(scene_models["xl"][1])]
    assert main([*argv, "--out", str(out)]) == 0
    again = load_pipeline(out, device="cpu")
    torch.testing.assert_close(again.subject_fuser.state_dict(), pipe.subject_fuser.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(again.unet.state_dict(), scene_models["xl"][2].state_dict(), rtol=0, atol=0)
    assert main(["generate", "-p", PROMPT, "--ref", ref, "--model", str(out), "--steps", "2", "--no-face-check",
                 "-o", str(tmp_path / "x.png")]) == 0  # fmt: skip


def test_convert_refuses_what_does_not_make_an_sdxl_folder(xl_base, xl_folder, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from facediffuser.io.tiny import tiny_components

    sd = {k: v for k, v in tiny_components().items() if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    StableDiffusionPipeline(**sd, safety_checker=None, feature_extractor=None).save_pretrained(tmp_path / "sd")
    out = str(tmp_path / "out")
    assert cli_error(capsys, ["convert", "--sdxl", str(tmp_path / "sd"), "--sdm", str(xl_folder), "--out", out]) == (
        f"--sdxl {tmp_path / 'sd'} is not an SDXL base folder (its model_index.json names another pipeline): give "
        "the diffusers folder of SDXL base (stabilityai/stable-diffusion-xl-base-1.0)."
    )
    assert cli_error(capsys, ["convert", "--sdxl", str(xl_base), "--out", out]).startswith(
        "With --sdxl give either --sdm (a trained SDXL Face-diffuser folder) or --image-encoder"
    )
    assert cli_error(capsys, ["convert", "--sdxl", str(xl_base), "--sd15", str(tmp_path / "sd"), "--out", out]) == (
        "Give --sd15 (with --sdm, the released checkpoint) or --sdxl (an SDXL base), one of the two."
    )
    assert not (tmp_path / "out").exists()
