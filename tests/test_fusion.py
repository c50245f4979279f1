"""SNF and the stage schedule on hand-made tensors."""

import pytest
import torch
import torch.nn.functional as F

from facediffuser.fusion import (
    SUBJECT_MODEL_GUIDANCE,
    TEXT_MODEL_GUIDANCE,
    Condition,
    Stage,
    SubjectGuidanceBase,
    fuse_noise,
    fusion_mask,
    normalize_saliency,
    saliency_adaptive_noise_fusion,
    saliency_map,
    smooth,
    stage_boundaries,
    stage_guidance,
    stage_schedule,
    unet_evaluations_per_image,
)
from facediffuser.settings import SamplingSettings


def test_stage_counts_match_reference_table():
    # docs/method.md, Cost per image: T = 50, alpha = 0.3, beta = 0.6 -> 15 / 15 / 20 steps.
    schedule = stage_schedule(50, 0.3, 0.6)
    assert [schedule.count(s) for s in Stage] == [15, 15, 20]
    assert schedule[14] is Stage.TEXT and schedule[15] is Stage.FUSION and schedule[30] is Stage.SUBJECT
    assert stage_boundaries(100, 0.29, 0.6) == (29, 60)  # float error does not lose a step
    assert set(stage_schedule(7, 1.0, 1.0)) == {Stage.TEXT}
    assert set(stage_schedule(7, 0.0, 0.0)) == {Stage.SUBJECT}


@pytest.mark.parametrize("alpha,beta", [(0.7, 0.6), (-0.1, 0.5), (0.2, 1.5), (float("nan"), 0.5)])
def test_bad_stage_fractions_are_refused(alpha, beta):
    with pytest.raises(ValueError, match="alpha|beta"):
        stage_schedule(10, alpha, beta)


def test_zero_steps_refused():
    with pytest.raises(ValueError, match="at least 1"):
        stage_schedule(0, 0.3, 0.6)


def test_mask_picks_the_larger_normalized_saliency():
    # SDM is salient at the top-left quarter, TDM elsewhere.
    r_text = torch.ones(1, 4, 8, 8)
    r_subject = torch.zeros(1, 4, 8, 8)
    r_subject[..., :4, :4] = 5.0
    r_text[..., :4, :4] = 0.0
    eps_t, eps_s = torch.full((1, 4, 8, 8), -1.0), torch.full((1, 4, 8, 8), 1.0)
    eps, mask, norm_t, norm_s = saliency_adaptive_noise_fusion(eps_t, eps_s, r_text, r_subject, kernel_size=1)
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.bool
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert torch.equal(mask[0, 0], expected)
    assert torch.equal(eps, torch.where(expected, 1.0, -1.0).expand(1, 4, 8, 8))
    assert torch.allclose(norm_t.sum((1, 2)), torch.ones(1)) and torch.allclose(norm_s.sum((1, 2)), torch.ones(1))


def test_normalization_is_per_image_and_per_model():
    # Image 0's subject response is 10x larger everywhere: after the softmax it is uniform, like image 1's.
    omega = torch.stack([torch.full((3, 5), 10.0), torch.full((3, 5), 1.0)])
    norm = normalize_saliency(omega)
    assert torch.allclose(norm, torch.full_like(norm, 1 / 15))


def test_ties_go_to_the_text_model():
    same = torch.rand(2, 6, 6)
    norm = normalize_saliency(same)
    assert not fusion_mask(norm, norm).any()


def test_mask_is_shared_across_channels():
    eps_t, eps_s = torch.zeros(2, 4, 6, 10), torch.ones(2, 4, 6, 10)
    r_t = torch.rand(2, 4, 6, 10)
    r_s = torch.rand(2, 4, 6, 10)
    eps, mask, _, _ = saliency_adaptive_noise_fusion(eps_t, eps_s, r_t, r_s)
    assert mask.shape == (2, 1, 6, 10)
    for c in range(4):
        assert torch.equal(eps[:, c], mask[:, 0].float())


@pytest.mark.parametrize("shape", [(1, 4, 5, 9), (3, 4, 16, 12), (2, 4, 2, 2)])
def test_box_smoothing_matches_release_recipe_at_any_size(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    # The release: 4x4 average pool, stride 1, padding 1 (zeros counted), bilinear resize back, channel mean.
    pooled = F.avg_pool2d(x.abs(), 4, stride=1, padding=1, count_include_pad=True)
    expected = F.interpolate(pooled, size=shape[-2:], mode="bilinear", align_corners=False).mean(1)
    got = saliency_map(x)
    assert got.shape == (shape[0], *shape[-2:])
    assert torch.allclose(got, expected)


def test_box_smoothing_by_hand_on_a_point():
    # A single 1 at (2, 2) of a 5x5 map, 3x3 box with padding 1: a 3x3 block of 1/9 around it.
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    got = smooth(x, kernel_size=3)[0]
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 1 / 9
    assert torch.allclose(got, expected)


def test_gaussian_smoothing_keeps_mass_and_size():
    x = torch.zeros(1, 2, 9, 7)
    x[:, :, 4, 3] = 1.0
    y = smooth(x, smoothing="gaussian", kernel_size=5, sigma=1.0)
    assert y.shape == (1, 9, 7)
    assert torch.isclose(y.sum(), torch.tensor(1.0), atol=1e-5)
    assert y[0].argmax() == 4 * 7 + 3  # the peak stays where the point was
    # A symmetric kernel gives a symmetric response; convolution algorithms may round the two sides differently.
    torch.testing.assert_close(y[0, 4, 2], y[0, 4, 4], rtol=1e-5, atol=1e-7)


def test_fuse_noise_copies_values_exactly():
    eps_t = torch.tensor([[[[1.0, 2.0]]]])
    eps_s = torch.tensor([[[[float("inf"), 4.0]]]])
    mask = torch.tensor([[[[False, True]]]])
    assert torch.equal(fuse_noise(eps_t, eps_s, mask), torch.tensor([[[[1.0, 4.0]]]]))


def test_box_filter_too_large_for_latent():
    with pytest.raises(ValueError, match="does not fit"):
        smooth(torch.zeros(1, 4, 1, 1), kernel_size=4)


# ------------------------------------------------------------------------------------------ guidance (eqs. 1-2)
def _chunks(*values):
    return [torch.full((1, 4, 2, 3), float(v)) for v in values]


def test_text_model_guidance_is_eq_1():
    # eps_T(0) = 1, eps_T(c) = 3, w = 2: R_T = 2, eps_T = 1 + 2 * 2 = 5.
    eps, scaled = TEXT_MODEL_GUIDANCE(_chunks(1, 3), 2.0)
    assert TEXT_MODEL_GUIDANCE.conditions == (Condition.NULL, Condition.TEXT)
    assert torch.equal(eps, torch.full((1, 4, 2, 3), 5.0)) and torch.equal(scaled, torch.full((1, 4, 2, 3), 4.0))


def test_subject_model_guidance_bases():
    # R_S = eps_S(c_aug) - eps_S(c) = 7 - 3 = 4 with w = 0.5 in both; the base is eps_S(c) = 3 or eps_S(0) = 1.
    release = SUBJECT_MODEL_GUIDANCE[SubjectGuidanceBase.TEXT]
    eps, scaled = release(_chunks(3, 7), 0.5)  # (c, c_aug)
    assert release.conditions == (Condition.TEXT, Condition.SUBJECT)
    assert torch.equal(eps, torch.full_like(eps, 5.0)) and torch.equal(scaled, torch.full_like(eps, 2.0))
    eq2 = SUBJECT_MODEL_GUIDANCE[SubjectGuidanceBase.NULL]
    eps, scaled = eq2(_chunks(1, 3, 7), 0.5)  # (0, c, c_aug)
    assert eq2.conditions == (Condition.NULL, Condition.TEXT, Condition.SUBJECT)
    assert torch.equal(eps, torch.full_like(eps, 3.0)) and torch.equal(scaled, torch.full_like(eps, 2.0))


def test_guidance_refuses_the_wrong_number_of_chunks():
    with pytest.raises(ValueError, match="3 conditions"):
        SUBJECT_MODEL_GUIDANCE[SubjectGuidanceBase.NULL](_chunks(1, 3), 5.0)


def test_unet_evaluations_match_reference_table():
    # docs/method.md, Cost per image: T = 50, default fractions (15 / 15 / 20 steps): plain SD takes 100 evaluations.
    defaults = SamplingSettings()
    stages = stage_schedule(50, defaults.alpha, defaults.beta)
    assert unet_evaluations_per_image(stages, "text") == 130
    assert unet_evaluations_per_image(stages, "null") == 165
    assert unet_evaluations_per_image(stage_schedule(50, 1.0, 1.0), "null") == 100  # the TDM alone is plain SD
    assert stage_guidance(Stage.TEXT, "null")[1] is None and stage_guidance(Stage.SUBJECT, "text")[0] is None
