"""A pipeline folder from one checkpoint of a training run (SDM or TDM), with its EMA weights or its raw (non-EMA)
ones, so that a lever can be scored by the mini benchmark without training again: the EMA (the same run's two sets
of weights), or the recipe at an earlier step (a run keeps its checkpoints). Run from the repository root:

    PYTHONPATH=src python benchmarks/mini_export_checkpoint.py --train BUILD/sdm/train --step 6000 \\
        --weights raw --world WORLD --out OUT

``--train`` is a trainer's output folder (its ``train_config.json`` gives the run's settings; its ``checkpoints/``
the checkpoint of ``--step``). Nothing in it is written: the trainer is built with ``OUT`` as its output folder,
resumes from the checkpoint (the trainer's own checks: same run, no code in its pickles), and exports; with
``--weights raw`` it exports the weights the optimizer trained instead of their moving average. For an SDM trained on
head references, ``--world``'s face detector goes into the pipeline as ``mini build`` puts it there. ``OUT`` must not
exist yet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facediffuser.io.configuration import build_config
from facediffuser.lab.mini.build import attach_face_detector
from facediffuser.training import checkpoints
from facediffuser.training.config import ModelKind, TrainConfig
from facediffuser.training.trainer import Trainer


def export_checkpoint(train: Path, step: int, out: Path, raw: bool, world: Path | None) -> Path:
    settings = json.loads((train / "train_config.json").read_text(encoding="utf-8"))
    kind = ModelKind(settings.pop("model"))
    checkpoint = train / "checkpoints" / checkpoints.checkpoint_name(step)
    if not checkpoint.is_dir():
        raise SystemExit(f"{train} has no checkpoint of step {step} ({checkpoint}).")
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder (nothing is overwritten).")
    if raw and not settings.get("use_ema"):
        raise SystemExit(f"The run in {train} kept no EMA: its checkpoints' weights are the raw ones already.")
    settings.update(output_dir=str(out), resume=None, validation_steps=0, log_with="csv")
    trainer = Trainer(kind, build_config(TrainConfig, base=settings))
    trainer.resume(str(checkpoint))
    if raw:
        trainer.ema = None  # trained_state() then reads the parameters themselves
    trainer.export()
    if kind is ModelKind.SDM and settings.get("reference_region") == "head":
        if world is None:
            raise SystemExit("This SDM reads head references: give --world for its face detector.")
        attach_face_detector(out, world / "faces" / "detector")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="the trainer's output folder")
    parser.add_argument("--step", type=int, required=True, help="the checkpoint's step")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
    parser.add_argument("--world", type=Path, default=None, help="folder of `facediffuser world build`")
    parser.add_argument("--out", type=Path, required=True, help="the pipeline folder to write (must not exist)")
    args = parser.parse_args(argv)
    print(export_checkpoint(args.train, args.step, args.out, args.weights == "raw", args.world))


if __name__ == "__main__":
    main()
