"""A pipeline folder's own sampling defaults (its scheduler and number of steps) are what a call, `generate`, the
demo and `evaluate` use unless told otherwise; the paper's DDIM at 50 steps is one flag away."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from PIL import Image

from facediffuser import FaceDiffuserPipeline
from facediffuser.cli.main import main
from facediffuser.io.loading import scheduler_name, swap_scheduler
from facediffuser.io.tiny import build_tiny_pipeline

OWN_STEPS = 3  # the folder's own; neither the paper's 50 nor anything a caller below passes


def _steps_taken(pipe, **kwargs) -> int:
    steps = []
    pipe(
        "a man <|image|> on a boat",
        reference_images=[Image.new("RGB", (32, 32), (200, 150, 120))],
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        callback_on_step_end=lambda _p, i, t, tensors: steps.append(int(t)) or {},
        **kwargs,
    )
    return len(steps)


@pytest.fixture
def own_folder(tmp_path):
    """A tiny pipeline folder that names its own sampling: DPM-Solver++ with Karras sigmas, 3 steps."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    pipe.register_to_config(num_inference_steps=OWN_STEPS)
    pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_a_call_without_steps_takes_the_folders_own(own_folder):
    pipe = FaceDiffuserPipeline.from_pretrained(own_folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    assert json.loads((own_folder / "model_index.json").read_text())["num_inference_steps"] == OWN_STEPS
    assert pipe.default_num_inference_steps == OWN_STEPS and scheduler_name(pipe.scheduler) == "dpm++-karras"
    assert _steps_taken(pipe) == OWN_STEPS
    assert _steps_taken(pipe, num_inference_steps=2) == 2  # a call's own number wins
    # a folder that names none samples with the paper's 50
    assert build_tiny_pipeline(seed=0).default_num_inference_steps == 50
    with pytest.raises(ValueError, match="num_inference_steps"):
        FaceDiffuserPipeline(**{**pipe.components, "num_inference_steps": 0})


def test_a_swap_by_name_sets_what_the_name_says():
    """``dpm++`` from a model whose own scheduler has Karras sigmas is without them, and the DDIM settings of the
    config (no clipping, no alpha set to one) survive the round trip through another class."""
    pipe = build_tiny_pipeline(seed=0)
    ddim = dict(pipe.scheduler.config)
    swap_scheduler(pipe, "dpm++-karras")
    assert pipe.scheduler.config.use_karras_sigmas and scheduler_name(pipe.scheduler) == "dpm++-karras"
    swap_scheduler(pipe, "dpm++")
    assert not pipe.scheduler.config.use_karras_sigmas and scheduler_name(pipe.scheduler) == "dpm++"
    swap_scheduler(pipe, "ddim")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert {k: pipe.scheduler.config[k] for k in ddim if not k.startswith("_")} == {
        k: v for k, v in ddim.items() if not k.startswith("_")
    }


def _generate(folder, out, *flags) -> dict:
    code = main(
        ["generate", "--model", str(folder), "-p", "a man <|image|> on a boat", "--ref", str(folder.parent / "p.png")]
        + ["--no-face-check", "-o", str(out), *flags]
    )
    assert code == 0
    return json.loads(Image.open(out).text["parameters"])


def test_generate_uses_the_folders_own_sampling_and_the_papers_on_one_flag(own_folder):
    Image.new("RGB", (32, 32), (200, 150, 120)).save(own_folder.parent / "p.png")
    params = _generate(own_folder, own_folder.parent / "own.png")
    # recorded as what it was, in the form the flags take back
    assert params["num_inference_steps"] == OWN_STEPS and params["scheduler"] == "dpm++-karras"
    params = _generate(own_folder, own_folder.parent / "paper.png", "--paper-sampling", "--steps", "2")
    assert params["scheduler"] == "ddim" and params["num_inference_steps"] == 2  # --steps given wins


def test_paper_sampling_is_ddim_at_50_steps():
    from facediffuser.cli.generate import GenerateConfig, with_paper_sampling
    from facediffuser.evaluation.harness import EvaluationConfig
    from facediffuser.settings import SamplingSettings

    config = with_paper_sampling(GenerateConfig(prompt="x", paper_sampling=True))
    assert (config.scheduler, config.sampling.num_inference_steps) == ("ddim", 50)
    config = with_paper_sampling(GenerateConfig(prompt="x", scheduler="pndm", paper_sampling=True))
    assert (config.scheduler, config.sampling.num_inference_steps) == ("pndm", 50)
    assert with_paper_sampling(GenerateConfig(prompt="x")).sampling == SamplingSettings()  # off: the model's own
    # evaluate: each model's own by default, the paper's on one flag
    plain = EvaluationConfig(benchmark="single-subject", data=".").resolved()
    assert (plain.scheduler, plain.steps) == (None, None)
    paper = EvaluationConfig(benchmark="single-subject", data=".", paper_sampling=True).resolved()
    assert (paper.scheduler, paper.steps) == ("ddim", 50)


def test_the_demo_offers_the_models_own_steps(own_folder):
    from facediffuser.demo.core import page_controls

    pipe = FaceDiffuserPipeline.from_pretrained(own_folder, use_safetensors=True)
    assert page_controls(pipe)["num_inference_steps"].default == OWN_STEPS
    assert page_controls(build_tiny_pipeline(seed=0))["num_inference_steps"].default == 50


@pytest.mark.parametrize("value, words", [("10", "got '10'"), (0, "got 0"), (5000, "at most 1000")])
def test_a_folders_bad_number_of_steps_is_refused_naming_the_file_before_any_model_loads(
    own_folder, capsys, monkeypatch, value, words
):
    from facediffuser.io import loading

    index = own_folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "num_inference_steps": value}))
    Image.new("RGB", (32, 32)).save(own_folder.parent / "p.png")
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded before the check"))
    argv = ["generate", "--model", str(own_folder), "-p", "a man <|image|>", "--ref", str(own_folder.parent / "p.png")]
    assert main([*argv, "--no-face-check", "--steps", "2", "-o", str(own_folder.parent / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"facediffuser generate: error: In {index}, `num_inference_steps` (the number of denoising")
    assert words in err and len(err.splitlines()) == 1 and not (own_folder.parent / "x.png").exists()


def test_the_shipped_model_samples_with_the_studys_setting_and_the_papers_is_the_old_default():
    """The shipped mini pipeline's own sampling is the sampler study's choice (DPM-Solver++ 2M with Karras sigmas, 10
    steps, 26 UNet evaluations; docs/performance.md), and --paper-sampling on it is exactly the DDIM the model was
    trained and first shipped with: SD1.x's DDIM config, which the DPM config carries for the classes it is
    compatible with."""
    import inspect

    from facediffuser.evaluation.samplers import SamplerSetting, unet_evaluations
    from facediffuser.io.loading import scheduler_from_config
    from facediffuser.io.package_data import MINI_PIPELINE, packaged
    from facediffuser.io.tiny import SD_SCHEDULER_CONFIG
    from facediffuser.settings import SamplingSettings

    folder = packaged(MINI_PIPELINE)
    if not (folder / "model_index.json").is_file():
        pytest.skip("this checkout has no shipped mini model")
    index = json.loads((folder / "model_index.json").read_text())
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert index["num_inference_steps"] == 10 and config["_class_name"] == "DPMSolverMultistepScheduler"
    assert config["use_karras_sigmas"] and config["solver_order"] == 2 and config["algorithm_type"] == "dpmsolver++"
    assert unet_evaluations(SamplerSetting("dpm++-karras", 10), config, SamplingSettings()) <= 26
    ddim = scheduler_from_config("ddim", config)
    keys = set(inspect.signature(type(ddim).__init__).parameters) - {"self", "kwargs"}
    assert {k: ddim.config[k] for k in keys} == {k: DDIMScheduler(**SD_SCHEDULER_CONFIG).config[k] for k in keys}


# ------------------------------------------------------------------ the folder's own guidance scale
OWN_SCALE = 2.0  # the folder's own; not the paper's 5


def _draw(pipe, **kwargs):
    """One tiny image's latents (2 steps, seeded), for comparing calls."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a man <|image|> on a boat",
        reference_images=[Image.new("RGB", (32, 32), (200, 150, 120))],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **kwargs,
    ).images


@pytest.fixture
def scale_folder(tmp_path):
    """A tiny pipeline folder that names its own guidance scale, 2."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.register_to_config(guidance_scale=OWN_SCALE)
    pipe.save_pretrained(tmp_path / "model")
    Image.new("RGB", (32, 32), (200, 150, 120)).save(tmp_path / "p.png")
    return tmp_path / "model"


def test_a_call_without_a_guidance_scale_takes_the_folders_own(scale_folder):
    pipe = FaceDiffuserPipeline.from_pretrained(scale_folder, use_safetensors=True)
    assert json.loads((scale_folder / "model_index.json").read_text())["guidance_scale"] == OWN_SCALE
    assert pipe.default_guidance_scale == OWN_SCALE
    own = _draw(pipe)
    # Exact equality is right: the same computation with the same number. 2 and 5 differ by far more than nothing.
    assert torch.equal(own, _draw(pipe, guidance_scale=OWN_SCALE))
    assert not torch.equal(own, _draw(pipe, guidance_scale=5.0))  # a call's own scale wins
    # the SDM's too, unless the folder names a subject guidance scale of its own
    assert torch.equal(own, _draw(pipe, guidance_scale=OWN_SCALE, subject_guidance_scale=OWN_SCALE))


def test_a_folder_without_a_guidance_scale_draws_as_before_with_the_papers_5():
    pipe = build_tiny_pipeline(seed=0)
    assert pipe.config.guidance_scale is None and pipe.default_guidance_scale == 5.0
    assert torch.equal(_draw(pipe), _draw(pipe, guidance_scale=5.0))
    with pytest.raises(ValueError, match="`guidance_scale` must be a finite number >= 0"):
        FaceDiffuserPipeline(**{**pipe.components, "guidance_scale": -1})


def test_the_shipped_model_names_no_guidance_scale_and_draws_with_5():
    from facediffuser.io.package_data import MINI_PIPELINE, packaged

    folder = packaged(MINI_PIPELINE)
    if not (folder / "model_index.json").is_file():
        pytest.skip("this checkout has no shipped mini model")
    assert "guidance_scale" not in json.loads((folder / "model_index.json").read_text())
    assert FaceDiffuserPipeline.from_pretrained(folder, use_safetensors=True).default_guidance_scale == 5.0


def test_generate_records_the_folders_own_guidance_scale_and_the_flag_wins(scale_folder):
    out = scale_folder.parent
    assert _generate(scale_folder, out / "own.png", "--steps", "2")["guidance_scale"] == OWN_SCALE
    assert _generate(scale_folder, out / "flag.png", "--steps", "2", "--guidance-scale", "3")["guidance_scale"] == 3.0
    # the paper's sampling is the paper's w = 5 unless --guidance-scale says otherwise
    assert _generate(scale_folder, out / "paper.png", "--paper-sampling", "--steps", "2")["guidance_scale"] == 5.0
    params = _generate(scale_folder, out / "paper3.png", "--paper-sampling", "--steps", "2", "--guidance-scale", "3")
    assert params["guidance_scale"] == 3.0
    # what the PNG records draws the same image again
    own, again = Image.open(out / "own.png"), out / "again.png"
    _generate(scale_folder, again, "--parameters-from", str(out / "own.png"))
    assert list(own.getdata()) == list(Image.open(again).getdata())


@pytest.mark.parametrize(
    "value, words", [(-1, "must be a finite number >= 0 (non-negative), got -1"), ("x", "got 'x'"), (1e39, "at most")]
)
def test_a_folders_bad_guidance_scale_is_refused_naming_the_file_before_any_model_loads(
    scale_folder, capsys, monkeypatch, value, words
):
    from facediffuser.io import loading

    index = scale_folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "guidance_scale": value}))
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded before the check"))
    argv = [
        "generate",
        "--model",
        str(scale_folder),
        "-p",
        "a man <|image|>",
        "--ref",
        str(scale_folder.parent / "p.png"),
    ]
    assert main([*argv, "--no-face-check", "--guidance-scale", "2", "-o", str(scale_folder.parent / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"facediffuser generate: error: In {index}, `guidance_scale` must be")
    assert words in err and len(err.splitlines()) == 1 and not (scale_folder.parent / "x.png").exists()


def test_the_demo_starts_at_the_models_own_guidance_scale(scale_folder):
    from facediffuser.demo.core import page_controls

    pipe = FaceDiffuserPipeline.from_pretrained(scale_folder, use_safetensors=True)
    assert page_controls(pipe)["guidance_scale"].default == OWN_SCALE
    assert page_controls(build_tiny_pipeline(seed=0))["guidance_scale"].default == 5.0
    pipe.register_to_config(guidance_scale=30.0)  # beyond the slider's 20: the slider reaches it
    control = page_controls(pipe)["guidance_scale"]
    assert control.default == 30.0 and control.maximum >= 30.0


def test_evaluate_draws_each_model_with_its_own_guidance_scale_and_records_the_number(scale_folder, tmp_path):
    from facediffuser.evaluation.harness import EvaluationConfig
    from facediffuser.evaluation.methods import ModelSpec

    models = [ModelSpec("own", str(scale_folder)), ModelSpec("tiny", "tiny")]
    config = EvaluationConfig(benchmark="single-subject", data=tmp_path)
    assert config.sampling().guidance_scale is None  # each model's own, resolved by its pipeline
    assert config.guidance_scales(models) == {"own": OWN_SCALE, "tiny": 5.0}
    sampling = config.generation_settings(1, models, None)["sampling"]
    assert sampling["guidance_scale"] == {"own": OWN_SCALE, "tiny": 5.0}  # they differ: one number per model
    assert config.generation_settings(1, models[:1], None)["sampling"]["guidance_scale"] == OWN_SCALE
    given = EvaluationConfig(benchmark="single-subject", data=tmp_path, guidance_scale=3.0)
    assert given.generation_settings(1, models, None)["sampling"]["guidance_scale"] == 3.0
    paper = EvaluationConfig(benchmark="single-subject", data=tmp_path, paper_sampling=True).resolved()
    assert paper.guidance_scale == 5.0
    index = scale_folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "guidance_scale": "x"}))
    with pytest.raises(ValueError, match=r"^In .*model_index.json, `guidance_scale` must be a finite number"):
        config.guidance_scales(models)
