"""Training the two models of Face-diffuser on FFHQ-wild data (paper Sec. 4.1; docs/method.md, Training).

Importing this package loads only the settings (:mod:`.config`); the trainer, the data reader and the losses load
on first use (``from facediffuser.training import Trainer``), so a command that only parses flags never pays for
them. Install the extra for TensorBoard logging: ``pip install 'facediffuser[train]'`` (without it, metrics go to
CSV).

Modules, one job each: :mod:`.config` (settings), :mod:`.data` and :mod:`.augment` (FFHQ-wild samples), :mod:`.model`
(what is trained), :mod:`.losses` and :mod:`.attention` (the loss terms), :mod:`.trainer` (the loop), :mod:`.runs`
(which trainer a kind gets), :mod:`.lcm` (latent-consistency distillation, ``train lcm``), :mod:`.checkpoints`,
:mod:`.tracking`, :mod:`.validation`, :mod:`.export`, :mod:`.checkpoint_export` (``train export``), :mod:`.launch`
(processes), :mod:`.allocator` (the C allocator of a CPU run).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import LogBackend, MixedPrecision, ModelKind, TrainConfig

# Public names that live in heavier modules, imported on first access (PEP 562).
_LAZY = {
    "FFHQWild": ".data",
    "collate": ".data",
    "denoising_loss": ".losses",
    "localization_loss": ".losses",
    "subject_union_masks": ".losses",
    "Trainer": ".trainer",
    "train": ".runs",
}

__all__ = ["LogBackend", "MixedPrecision", "ModelKind", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
