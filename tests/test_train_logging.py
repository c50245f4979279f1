"""Metric logging through accelerate's trackers (TensorBoard when present, CSV otherwise); checkpoint bookkeeping."""

from __future__ import annotations

import csv

import pytest

from facediffuser.training import checkpoints, tracking
from facediffuser.training.config import LogBackend


def test_auto_falls_back_to_a_csv_tracker_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    (tracker,) = tracking.trackers(LogBackend.AUTO, tmp_path)
    assert isinstance(tracker, tracking.CsvTracker) and tracker.name == "csv"
    assert not (tmp_path / "logs").exists()  # nothing is written before accelerate starts it (main process only)
    tracker.start()
    tracker.log({"train/loss": 0.5, "train/lr": 1e-5, "note": "text is not a metric"}, step=3)
    tracker.finish()
    rows = list(csv.reader((tmp_path / tracking.RUN_NAME / "metrics.csv").open()))
    assert rows == [["step", "name", "value"], ["3", "train/loss", "0.5"], ["3", "train/lr", "1e-05"]]
    tracker.start()  # a resumed run appends, without a second header
    tracker.log({"train/loss": 0.25}, step=4)
    tracker.finish()
    rows = list(csv.reader((tmp_path / tracking.RUN_NAME / "metrics.csv").open()))
    assert rows[1:] == [["3", "train/loss", "0.5"], ["3", "train/lr", "1e-05"], ["4", "train/loss", "0.25"]]
    with pytest.raises(ValueError, match="tensorboard"):
        tracking.trackers(LogBackend.TENSORBOARD, tmp_path)
    assert tracking.hyperparameters({"a": 1, "b": None, "c": [1], "d": "x"}) == {"a": 1, "d": "x"}


def test_tensorboard_is_accelerates_own_tracker_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    assert tracking.trackers(LogBackend.AUTO, tmp_path) == ["tensorboard"]


@pytest.mark.slow
def test_a_run_logs_scalars_and_the_validation_grid_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from accelerate.state import AcceleratorState, GradientState
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from facediffuser.training import ModelKind, TrainConfig, Trainer
    from facediffuser.training.synthetic import write_synthetic_ffhq_wild

    data = write_synthetic_ffhq_wild(tmp_path / "data", num_images=2, size=64, test_images=1)
    out = tmp_path / "out"
    config = TrainConfig(
        data_root=data,
        output_dir=out,
        resolution=64,
        train_batch_size=2,
        max_train_steps=1,
        checkpointing_steps=0,
        validation_steps=1,
        num_validation_samples=1,
        validation_inference_steps=2,
        logging_steps=1,
        log_with="tensorboard",
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        Trainer(ModelKind.TDM, config).train()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    events = EventAccumulator(str(out / tracking.RUN_NAME))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "data/skipped_samples", "data/flawed_annotations"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1]
    assert tags["images"] == ["validation"]
    assert (out / "validation" / "step-0000001.png").is_file()


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
