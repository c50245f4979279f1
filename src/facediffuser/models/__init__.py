"""Model components of Face-diffuser that diffusers and transformers do not already provide."""

from .fuser import FuserMLP, SubjectFuser

__all__ = ["FuserMLP", "SubjectFuser"]
