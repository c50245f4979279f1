import dataclasses
import math

import pytest

from facediffuser.fusion import Smoothing, SubjectGuidanceBase
from facediffuser.settings import SamplingSettings, check_image_size


def test_defaults_are_the_papers():
    s = SamplingSettings()
    # The number of steps and the guidance scale are the model's own (None), else the paper's 50 and 5
    # (FaceDiffuserPipeline resolves them).
    assert (s.num_inference_steps, s.alpha, s.beta, s.guidance_scale) == (None, 0.3, 0.6, None)
    assert s.effective_guidance_scale == 5.0
    assert s.stage_boundaries.value == "steps" and "stage_boundaries" not in s.to_dict()
    assert s.subject_guidance_base is SubjectGuidanceBase.TEXT and s.smoothing is Smoothing.BOX
    assert s.effective_subject_guidance_scale == 5.0


def test_enums_given_by_value_are_stored_as_members():
    s = SamplingSettings(subject_guidance_base="null", smoothing="gaussian")
    assert s.subject_guidance_base is SubjectGuidanceBase.NULL and s.smoothing is Smoothing.GAUSSIAN
    assert s.to_dict()["subject_guidance_base"] == "null"


def test_frozen_and_replace_validates_again():
    s = SamplingSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.alpha = 0.5
    assert s.replace(alpha=0.5).alpha == 0.5
    with pytest.raises(ValueError, match="must not exceed"):
        s.replace(alpha=0.9)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"alpha": 0.7, "beta": 0.6}, "must not exceed"),
        ({"alpha": math.nan}, "alpha"),
        ({"beta": 1.5}, "beta"),
        ({"num_inference_steps": 0}, "steps"),
        ({"num_inference_steps": 2.5}, "steps"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_scale": math.inf}, "guidance_scale"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"subject_guidance_scale": math.nan}, "subject_guidance_scale"),
        ({"smoothing_kernel_size": 0}, "smoothing_kernel_size"),
        ({"smoothing_sigma": 0.0}, "smoothing_sigma"),
        ({"subject_guidance_base": "paper"}, "paper"),
    ],
)
def test_bad_settings_are_refused_with_a_sentence(changes, words):
    with pytest.raises(ValueError, match=words):
        SamplingSettings(**changes)


def test_pipeline_kwargs_name_the_call_arguments():
    import inspect

    from facediffuser import FaceDiffuserPipeline

    call = inspect.signature(FaceDiffuserPipeline.__call__).parameters
    kwargs = SamplingSettings(subject_guidance_scale=3.0).pipeline_kwargs()
    assert set(kwargs) <= set(call)
    assert kwargs["subject_guidance_scale"] == 3.0


@pytest.mark.parametrize("size", [0, -8, 12, 7.9])
def test_image_size_must_be_a_positive_multiple(size):
    with pytest.raises(ValueError, match="multiple of 8"):
        check_image_size(size, None)
    check_image_size(None, None)
    check_image_size(64, 512)
