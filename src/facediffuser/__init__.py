"""Face-diffuser: person-centric subject-to-image generation with two collaborating diffusion models."""

from .fusion import Smoothing, Stage, SubjectGuidanceBase
from .models import SubjectFuser
from .pipeline import FaceDiffuserPipeline, FaceDiffuserPipelineOutput, FusionTrace

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
