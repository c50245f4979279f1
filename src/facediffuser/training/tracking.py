"""Metric logging through accelerate's trackers: TensorBoard when it is installed, a CSV file otherwise.

The trainer passes :func:`trackers` to ``Accelerator(log_with=...)`` and logs with ``accelerator.log``;
``accelerator.init_trackers(RUN_NAME)`` starts them on the main process and ``accelerator.end_training()`` closes
them. Both write under ``<output_dir>/logs``. accelerate has no CSV tracker, hence :class:`CsvTracker`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from .config import LogBackend

logger = logging.getLogger(__name__)

# The run name given to init_trackers: with the output folder as the logging folder, every tracker writes to logs/.
RUN_NAME = "logs"


class CsvTracker(GeneralTracker):
    """Appends ``step,name,value`` rows to ``<logging_dir>/<run_name>/metrics.csv`` (images are saved by the
    caller as PNG files, so none are logged here). The file is opened by :meth:`start`, on the main process only."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / run_name / "metrics.csv"
        self._file = None
        self._writer = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "name", "value"])

    @property
    def tracker(self) -> Any:
        return self._writer

    def store_init_configuration(self, values: dict) -> None:
        """Nothing: the trainer writes the settings to ``train_config.json`` itself."""

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        if self._writer is None:
            self.start()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._writer.writerow([step, name, f"{value:.8g}"])
        self._file.flush()

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: LogBackend | str) -> LogBackend:
    """``auto`` becomes TensorBoard when installed, else CSV; TensorBoard asked for but missing is a ``ValueError``."""
    backend = LogBackend(backend)
    if backend is LogBackend.TENSORBOARD and not tensorboard_available():
        raise ValueError("--log-with tensorboard needs the tensorboard package: pip install 'facediffuser[train]'.")
    if backend is LogBackend.AUTO:
        backend = LogBackend.TENSORBOARD if tensorboard_available() else LogBackend.CSV
        if backend is LogBackend.CSV:
            logger.info("TensorBoard is not installed: logging metrics to a CSV file.")
    return backend


def trackers(backend: LogBackend | str, output_dir: Path) -> list[str | GeneralTracker]:
    """What ``Accelerator(log_with=...)`` takes for ``backend``, with ``project_config.logging_dir = output_dir``."""
    if resolve_backend(backend) is LogBackend.TENSORBOARD:
        return ["tensorboard"]
    return [CsvTracker(RUN_NAME, output_dir)]


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The settings as tracker hyperparameters: the scalar values only (TensorBoard refuses ``None``)."""
    return {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
