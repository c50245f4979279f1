"""Metric logging: TensorBoard when present, CSV otherwise; checkpoint bookkeeping."""

from __future__ import annotations

import csv

import pytest

from facediffuser.training import checkpoints, tracking
from facediffuser.training.config import LogBackend


def test_auto_falls_back_to_csv_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    logger = tracking.make_logger(LogBackend.AUTO, tmp_path / "logs")
    assert isinstance(logger, tracking.CsvLogger)
    logger.log_scalars({"train/loss": 0.5, "train/lr": 1e-5}, step=3)
    logger.close()
    rows = list(csv.reader((tmp_path / "logs" / "metrics.csv").open()))
    assert rows == [["step", "name", "value"], ["3", "train/loss", "0.5"], ["3", "train/lr", "1e-05"]]
    with pytest.raises(ValueError, match="tensorboard"):
        tracking.make_logger(LogBackend.TENSORBOARD, tmp_path / "tb")


def test_tensorboard_logger_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    logger = tracking.make_logger(LogBackend.AUTO, tmp_path / "logs")
    assert isinstance(logger, tracking.TensorBoardLogger)
    logger.log_scalars({"train/loss": 0.5}, step=1)
    logger.close()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "logs").iterdir())


def test_checkpoint_rotation_and_resolution(tmp_path):
    for step in (5, 10, 15):
        tmp = checkpoints.temporary_path(tmp_path, step)
        tmp.mkdir(parents=True)
        final = checkpoints.finalize(tmp, {"step": step, "model": "sdm"}, keep=2)
        assert final.name == checkpoints.checkpoint_name(step) and not tmp.exists()
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-0000010", "checkpoint-0000015"]
    assert checkpoints.resolve_resume("latest", tmp_path).name == "checkpoint-0000015"
    (tmp_path / ".checkpoint-0000020.tmp").mkdir()  # an interrupted save is never picked
    assert checkpoints.resolve_resume("latest", tmp_path).name == "checkpoint-0000015"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.resolve_resume("latest", tmp_path / "empty")
    with pytest.raises(ValueError, match=r"model: checkpoint 'sdm', now 'tdm'"):
        checkpoints.check_compatible({"model": "sdm"}, {"model": "tdm"}, tmp_path)
