"""``facediffuser train export``: a pipeline folder from one checkpoint of a training run, with the weights the
run's own export ships (its moving average when it kept one) or the raw weights the optimizer trained."""

from __future__ import annotations

import os
from pathlib import Path

from .config import ModelKind
from .export import attach_face_detector, trained_tensors

COMMAND = "train export"
WEIGHTS = ("ema", "raw")


def _check_export(
    run: Path, step: int, out: Path, weights: str, face_detector: Path | None
) -> tuple[dict, Path, Path | None]:
    """Everything ``train export`` refuses, before any model loads: the run's settings, the checkpoint's folder and
    the face detector to copy in (or None)."""
    from ..io import output_folders
    from ..io.files import read_json
    from . import checkpoints

    if weights not in WEIGHTS:
        raise ValueError(f"--weights {weights}: choose ema or raw.")
    settings_file = run / "train_config.json"
    if not run.is_dir():
        raise FileNotFoundError(f"--run {run} does not exist: give the --output-dir of a `facediffuser train` run.")
    if not settings_file.is_file():
        raise FileNotFoundError(f"--run {run} holds no train_config.json: give the --output-dir of a `facediffuser "
                                "train` run.")  # fmt: skip
    settings = read_json(settings_file, dict, "a run's settings")
    checkpoint = run / "checkpoints" / checkpoints.checkpoint_name(step)
    if not checkpoint.is_dir():
        steps = [
            int(p.name.removeprefix(checkpoints.PREFIX)) for p in checkpoints.list_checkpoints(run / "checkpoints")
        ]
        kept = f"it keeps steps {', '.join(map(str, steps))}" if steps else "it keeps none"
        raise FileNotFoundError(f"--run {run} has no checkpoint of step {step} ({kept}): choose one of its --step.")
    if weights == "raw" and not settings.get("use_ema"):
        raise ValueError(
            f"--weights raw: the run in {run} kept no moving average (use_ema is false), so its weights are the raw "
            "ones already: export them with --weights ema."
        )
    if os.path.lexists(out):
        raise ValueError(f"--out {out} exists: choose a new folder (nothing is written over).")
    output_folders.check(out, command=COMMAND, inputs=[run, face_detector], flag="--out")
    head = settings.get("model") == ModelKind.SDM.value and settings.get("reference_region") == "head"
    if face_detector is not None:
        if not (face_detector / "config.json").is_file():
            raise FileNotFoundError(
                f"--face-detector {face_detector} holds no face detector (no config.json): give the faces/detector "
                "folder of `facediffuser world build`."
            )
    elif head:
        face_detector = run / "face_detector"
        if not (face_detector / "config.json").is_file():
            raise ValueError(
                f"The run in {run} trains the SDM on head references, so its pipeline needs a face detector: give "
                "--face-detector (the faces/detector folder of `facediffuser world build`)."
            )
    return settings, checkpoint, face_detector


def export_checkpoint(
    run: str | os.PathLike,
    step: int,
    out: str | os.PathLike,
    *,
    weights: str = "ema",
    face_detector: str | os.PathLike | None = None,
) -> Path:
    """``facediffuser train export``: the pipeline folder ``out`` from the checkpoint of ``step`` of the training run
    in ``run`` (the ``--output-dir`` of ``facediffuser train``), as the run's own export would write it then.

    ``weights="ema"`` exports what the run ships (the moving average when the run kept one); ``"raw"`` the weights
    the optimizer trained, before averaging. The run folder is only read: the trainer is rebuilt from its
    ``train_config.json`` (its data and base model must still be where they were), resumes the checkpoint with its
    own checks (the same run, no code in its pickles) and exports into ``out``, a new folder that appears only once
    complete. An SDM trained on head references gets ``face_detector`` (default: the run's own ``face_detector/``,
    which ``mini build`` puts there). Every refusal comes before a model loads, as a ``ValueError`` or
    ``FileNotFoundError`` of one sentence.
    """
    from ..io import output_folders
    from ..io.configuration import build_config
    from .config import TrainConfig
    from .model import load_base_pipeline
    from .runs import make_trainer

    run, out = Path(run), Path(out)
    detector = Path(face_detector) if face_detector is not None else None
    settings, checkpoint, detector = _check_export(run, step, out, weights, detector)
    kind = ModelKind(settings.pop("model"))
    settings.update(output_dir=str(out), resume=None, validation_steps=0, log_with="csv")
    trainer = make_trainer(kind, build_config(TrainConfig, base=settings))
    trainer.resume(str(checkpoint))
    state = trainer.trained_state() if weights == "ema" else trained_tensors(trainer.denoiser)
    base = load_base_pipeline(trainer.config.pretrained)

    def write(folder: Path) -> None:
        trainer.write_pipeline(state, base, folder)
        if detector is not None:
            attach_face_detector(folder, detector)
        output_folders.write_marker(folder, COMMAND, output_folders.listed_files(folder, folder))

    output_folders.write_folder_atomically(out, write, recheck=lambda: _check_new(out))
    return out


def _check_new(out: Path) -> None:
    if os.path.lexists(out):
        raise ValueError(f"--out {out} appeared while the export ran: nothing was written over it.")
