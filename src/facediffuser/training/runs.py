"""Which trainer runs a kind of model: the project's loop (:mod:`.trainer`) for ``sdm``, ``tdm`` and ``ip-adapter``,
latent-consistency distillation (:mod:`.lcm`, a subclass of it) for ``lcm``.

Apart from both, so that neither module imports the other in a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.tiny import TinyConfig
from .config import ModelKind, TrainConfig
from .trainer import Trainer


def make_trainer(kind: ModelKind | str, config: TrainConfig, **kwargs: Any) -> Trainer:
    """The trainer of ``kind``: :class:`~.trainer.Trainer`, or for ``lcm`` :class:`~.lcm.LCMTrainer`."""
    if ModelKind(kind) is ModelKind.LCM:
        from .lcm import LCMTrainer

        return LCMTrainer(config, **kwargs)
    return Trainer(kind, config, **kwargs)


def train(kind: ModelKind | str, config: TrainConfig, *, tiny_config: TinyConfig | None = None) -> Path:
    """Trains ``kind`` with ``config`` and returns the pipeline folder (see :class:`~.trainer.Trainer`)."""
    return make_trainer(kind, config, tiny_config=tiny_config).train()
