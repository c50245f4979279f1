"""Face-diffuser: person-centric subject-to-image generation with two collaborating diffusion models."""

from .notices import silence_irrelevant_notices

silence_irrelevant_notices()  # before diffusers and transformers are imported; see facediffuser.notices

from .fusion import Smoothing, Stage, SubjectGuidanceBase  # noqa: E402
from .models import SubjectFuser  # noqa: E402
from .pipeline import FaceDiffuserPipeline, FaceDiffuserPipelineOutput, FusionTrace  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FaceDiffuserPipeline",
    "FaceDiffuserPipelineOutput",
    "FusionTrace",
    "Smoothing",
    "Stage",
    "SubjectFuser",
    "SubjectGuidanceBase",
]
