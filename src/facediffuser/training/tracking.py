"""Metric logging: TensorBoard when it is installed, a CSV file otherwise."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .config import LogBackend

logger = logging.getLogger(__name__)


class MetricsLogger(Protocol):
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...

    def log_image(self, tag: str, image: Image.Image, step: int) -> None: ...

    def close(self) -> None: ...


class CsvLogger:
    """Appends ``step,name,value`` rows to ``metrics.csv``; images are saved by the caller, so they are skipped."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.csv"
        new = not self.path.exists()
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "name", "value"])

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self._writer.writerow([step, name, f"{value:.8g}"])
        self._file.flush()

    def log_image(self, tag: str, image: Image.Image, step: int) -> None:
        return None

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(folder))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def log_image(self, tag: str, image: Image.Image, step: int) -> None:
        self._writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def make_logger(backend: LogBackend, folder: Path) -> MetricsLogger:
    """A logger writing under ``folder``. ``auto`` falls back to CSV (with an info message) without TensorBoard."""
    backend = LogBackend(backend)
    if backend is LogBackend.TENSORBOARD and not tensorboard_available():
        raise ValueError("--log-with tensorboard needs the tensorboard package: pip install 'facediffuser[train]'.")
    if backend is LogBackend.AUTO:
        backend = LogBackend.TENSORBOARD if tensorboard_available() else LogBackend.CSV
        if backend is LogBackend.CSV:
            logger.info("TensorBoard is not installed: logging metrics to %s", folder / "metrics.csv")
    return TensorBoardLogger(folder) if backend is LogBackend.TENSORBOARD else CsvLogger(folder)
