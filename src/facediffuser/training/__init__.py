"""Training the two models of Face-diffuser on FFHQ-wild data (REFERENCE section 5).

Install the extra for TensorBoard logging: ``pip install 'facediffuser[train]'`` (without it, metrics go to CSV).
"""

from .config import LogBackend, MixedPrecision, ModelKind, TrainConfig
from .data import FFHQWild, collate
from .losses import denoising_loss, localization_loss, subject_union_masks
from .trainer import Trainer, train

__all__ = [
    "FFHQWild",
    "LogBackend",
    "MixedPrecision",
    "ModelKind",
    "TrainConfig",
    "Trainer",
    "collate",
    "denoising_loss",
    "localization_loss",
    "subject_union_masks",
    "train",
]
