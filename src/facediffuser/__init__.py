"""Face-diffuser: person-centric subject-to-image generation with two collaborating diffusion models.

The public names below are imported when first used (PEP 562), so that ``import facediffuser`` (and with it the
command line's entry point) costs nothing before a command needs torch and diffusers: ``facediffuser --help`` stays
fast, and a Ctrl-C while those load is handled by the command line like any other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .notices import silence_irrelevant_notices

silence_irrelevant_notices()  # before diffusers and transformers are imported; see facediffuser.notices

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "FaceDiffuserPipeline": ".pipeline",
    "FaceDiffuserPipelineOutput": ".pipeline",
    "FaceDiffuserXLPipeline": ".pipeline_xl",
    "FusionTrace": ".pipeline",
    "Smoothing": ".fusion",
    "Stage": ".fusion",
    "SubjectGuidanceBase": ".fusion",
    "SubjectFuser": ".models",
}

__all__ = [
    "FaceDiffuserPipeline",
    "FaceDiffuserPipelineOutput",
    "FaceDiffuserXLPipeline",
    "FusionTrace",
    "Smoothing",
    "Stage",
    "SubjectFuser",
    "SubjectGuidanceBase",
]

if TYPE_CHECKING:  # pragma: no cover
    from .fusion import Smoothing, Stage, SubjectGuidanceBase
    from .models import SubjectFuser
    from .pipeline import FaceDiffuserPipeline, FaceDiffuserPipelineOutput, FusionTrace
    from .pipeline_xl import FaceDiffuserXLPipeline


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
