"""Model components of Face-diffuser that diffusers and transformers do not already provide."""

from .face_detector import FaceDetector
from .fuser import FuserMLP, SubjectFuser

__all__ = ["FaceDetector", "FuserMLP", "SubjectFuser"]
