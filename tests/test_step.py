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
