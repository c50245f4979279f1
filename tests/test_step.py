"""The Face-diffuser step on hand-made predictions: which model draws in each stage, and what it traces."""

import pytest
import torch

from facediffuser.fusion import Stage, saliency_adaptive_noise_fusion
from facediffuser.settings import SamplingSettings
from facediffuser.step import FusionTrace, StepTrace, face_diffuser_step

SHAPE = (2, 4, 6, 5)


def _predictions(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(SHAPE, generator=g) for _ in range(n))


def test_stage_one_takes_the_text_model_alone():
    settings = SamplingSettings(guidance_scale=3.0)
    null, cond = _predictions(2, 0)
    eps, trace = face_diffuser_step(Stage.TEXT, (null, cond), None, settings)
    assert trace is None
    # eq. 1 with the same operations as Stable Diffusion's guidance: exact by construction.
    assert torch.equal(eps, null + 3.0 * (cond - null))


def test_stage_three_takes_the_subject_model_alone_with_either_base():
    null, cond, aug = _predictions(3, 1)
    eps, _ = face_diffuser_step(Stage.SUBJECT, None, (cond, aug), SamplingSettings(subject_guidance_scale=2.0))
    assert torch.equal(eps, cond + 2.0 * (aug - cond))  # the release
    settings = SamplingSettings(subject_guidance_scale=2.0, subject_guidance_base="null")
    eps, _ = face_diffuser_step(Stage.SUBJECT, None, (null, cond, aug), settings)
    assert torch.equal(eps, null + 2.0 * (aug - cond))  # paper eq. 2


@pytest.mark.parametrize("smoothing", ["box", "gaussian"])
def test_stage_two_fuses_with_the_settings_smoothing(smoothing):
    settings = SamplingSettings(guidance_scale=4.0, subject_guidance_scale=6.0, smoothing=smoothing)
    t_null, t_cond = _predictions(2, 2)
    s_cond, s_aug = _predictions(2, 3)
    eps, trace = face_diffuser_step(Stage.FUSION, (t_null, t_cond), (s_cond, s_aug), settings, trace=True)
    scaled_t, scaled_s = 4.0 * (t_cond - t_null), 6.0 * (s_aug - s_cond)
    expected = saliency_adaptive_noise_fusion(
        t_null + scaled_t, s_cond + scaled_s, scaled_t, scaled_s, smoothing=smoothing, kernel_size=4, sigma=1.0
    )
    assert torch.equal(eps, expected[0])
    assert torch.equal(trace.mask, expected[1]) and 0 < trace.mask.float().mean() < 1  # both models draw somewhere
    assert torch.equal(trace.saliency_text, expected[2]) and torch.equal(trace.saliency_subject, expected[3])
    # Each value is one model's guided prediction, never a blend.
    assert torch.equal(eps, torch.where(trace.mask, s_cond + scaled_s, t_null + scaled_t))


def test_trace_of_the_single_model_stages():
    settings = SamplingSettings()
    _, trace = face_diffuser_step(Stage.TEXT, _predictions(2, 4), None, settings, trace=True)
    assert trace.mask.shape == (2, 1, 6, 5) and not trace.mask.any()
    assert trace.saliency_subject is None
    torch.testing.assert_close(trace.saliency_text.sum((1, 2)), torch.ones(2))  # a softmax over positions
    _, trace = face_diffuser_step(Stage.SUBJECT, None, _predictions(2, 5), settings, trace=True)
    assert trace.mask.all() and trace.saliency_text is None


def test_missing_predictions_are_refused():
    with pytest.raises(ValueError, match="subject_predictions"):
        face_diffuser_step(Stage.FUSION, _predictions(2, 6), None, SamplingSettings())
    with pytest.raises(ValueError, match="3 conditions"):  # eq. 2 needs eps_S(0) too
        face_diffuser_step(Stage.SUBJECT, None, _predictions(2, 6), SamplingSettings(subject_guidance_base="null"))


def test_fusion_trace_stacks_steps_with_nan_for_models_not_run():
    stages = [Stage.TEXT, Stage.FUSION, Stage.SUBJECT]
    settings = SamplingSettings()
    traces: list[StepTrace] = [
        face_diffuser_step(stage, _predictions(2, 7), _predictions(2, 8), settings, trace=True)[1] for stage in stages
    ]
    trace = FusionTrace.from_steps(stages, torch.tensor([900, 500, 100]), traces)
    assert trace.masks.shape == trace.saliency_text.shape == (3, 2, 6, 5)
    assert trace.masks.dtype == torch.float32 and torch.equal(trace.masks[2], torch.ones(2, 6, 5))
    assert torch.isnan(trace.saliency_subject[0]).all() and torch.isnan(trace.saliency_text[2]).all()
    assert not torch.isnan(trace.saliency_text[:2]).any()
    assert torch.equal(trace.stage_mean(Stage.FUSION), traces[1].mask[:, 0].float())


# ------------------------------------------------------------------ stages by noise level
def _scheduler(name: str, **options):
    """A scheduler of the shipped mini model's config (SD1.x's DDIM: 1000 training timesteps, "leading" spacing,
    offset 1), as another class or with other options."""
    import json
    from importlib import resources

    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

    config = json.loads(
        (resources.files("facediffuser") / "data/mini/pipeline/scheduler/scheduler_config.json").read_text()
    )
    config = {k: v for k, v in config.items() if k != "_class_name"}
    config["_class_name"] = "DDIMScheduler"
    classes = {
        "ddim": DDIMScheduler,
        "pndm": PNDMScheduler,
        "dpm++": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
        "euler": EulerDiscreteScheduler,
    }
    return classes[name].from_config(config, **options)


def _counts(stages) -> tuple[int, int, int]:
    return tuple(sum(s is stage for s in stages) for stage in (Stage.TEXT, Stage.FUSION, Stage.SUBJECT))


def test_stages_by_noise_level_are_the_papers_at_ddim_50_leading():
    from facediffuser.fusion import stage_schedule
    from facediffuser.step import sampling_stages

    scheduler = _scheduler("ddim")
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[0] == 981 and scheduler.timesteps[-1] == 1  # "leading" spacing, offset 1
    noise = sampling_stages(scheduler.timesteps, SamplingSettings(stage_boundaries="noise"), 1000)
    assert noise == stage_schedule(50, 0.3, 0.6)
    assert _counts(noise) == (15, 15, 20)
    # the same at other fractions on this grid of 20-timestep strides
    for alpha, beta in ((0.1, 0.5), (0.2, 0.8), (0.0, 1.0)):
        settings = SamplingSettings(alpha=alpha, beta=beta, stage_boundaries="noise")
        assert sampling_stages(scheduler.timesteps, settings, 1000) == stage_schedule(50, alpha, beta), (alpha, beta)


@pytest.mark.parametrize(
    "name, options, steps",
    [
        ("ddim", {}, 7),
        ("ddim", {"timestep_spacing": "trailing"}, 10),
        ("ddim", {"timestep_spacing": "linspace"}, 4),
        ("pndm", {"skip_prk_steps": True}, 20),
        ("dpm++", {}, 10),
        ("dpm++", {"use_karras_sigmas": True}, 10),
        ("dpm++", {"use_karras_sigmas": True}, 6),
        ("unipc", {}, 8),
        ("euler", {}, 10),
    ],
)
def test_stages_by_noise_level_end_at_the_noise_levels_asked(name, options, steps):
    from facediffuser.step import sampling_stages

    scheduler = _scheduler(name, **options)
    scheduler.set_timesteps(steps)
    t = [float(x) for x in scheduler.timesteps]
    for alpha, beta in ((0.3, 0.6), (0.15, 0.45), (0.5, 0.5)):
        settings = SamplingSettings(alpha=alpha, beta=beta, stage_boundaries="noise")
        stages = sampling_stages(scheduler.timesteps, settings, 1000)
        assert len(stages) == len(t)
        for level, stage in zip(t, stages):
            # the stage of each step is the band its timestep lies in: [700, 1000) stage I at alpha 0.3, etc.
            expected = (
                Stage.TEXT
                if level >= 1000 * (1 - alpha)
                else Stage.FUSION
                if level >= 1000 * (1 - beta)
                else Stage.SUBJECT
            )
            assert stage is expected, (level, alpha, beta)
        # the schedule runs from noise to image, so the stages come in order
        assert stages == sorted(stages, key=[Stage.TEXT, Stage.FUSION, Stage.SUBJECT].index)
    edges = SamplingSettings(alpha=1.0, beta=1.0, stage_boundaries="noise")
    assert set(sampling_stages(scheduler.timesteps, edges, 1000)) == {Stage.TEXT}  # the TDM alone
    edges = SamplingSettings(alpha=0.0, beta=0.0, stage_boundaries="noise")
    assert set(sampling_stages(scheduler.timesteps, edges, 1000)) == {Stage.SUBJECT}  # the SDM alone


def test_few_steps_by_step_fraction_fall_at_another_noise_level():
    """Why the option exists: DPM-Solver++ at 10 steps with Karras sigmas spends its steps near the image, so the
    step rule's stage II (steps 3-5 of 10) runs on down to t = 327, below beta's noise level t = 400; by noise level
    that step is stage III."""
    from facediffuser.fusion import stage_schedule
    from facediffuser.step import sampling_stages

    scheduler = _scheduler("dpm++", use_karras_sigmas=True)
    scheduler.set_timesteps(10)
    by_steps = stage_schedule(10, 0.3, 0.6)
    by_noise = sampling_stages(scheduler.timesteps, SamplingSettings(stage_boundaries="noise"), 1000)
    assert _counts(by_steps) == (3, 3, 4) and _counts(by_noise) == (3, 2, 5)
    assert by_steps[5] is Stage.FUSION and by_noise[5] is Stage.SUBJECT and 300 < float(scheduler.timesteps[5]) < 400


def test_stages_by_noise_level_are_a_flag_and_a_recorded_setting():
    """--stage-boundaries noise reaches SamplingSettings, a PNG's parameters record it (and only when it is on), and
    the recorded parameters build the same settings again."""
    from facediffuser.cli.generate import GenerateConfig
    from facediffuser.cli.main import build_parser
    from facediffuser.io.configuration import build_config, config_to_dict

    parser = build_parser("generate")
    config = build_config(GenerateConfig, parser.parse_args(["generate", "-p", "x", "--stage-boundaries", "noise"]))
    assert config.sampling.stage_boundaries.value == "noise"
    assert config.sampling.to_dict()["stage_boundaries"] == "noise"
    assert build_config(GenerateConfig, base=config_to_dict(config)).sampling == config.sampling
    with pytest.raises(ValueError, match=r"`stage_boundaries` must be one of \['steps', 'noise'\], got 'sigma'"):
        SamplingSettings(stage_boundaries="sigma")
