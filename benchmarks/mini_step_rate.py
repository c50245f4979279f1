"""Step rate of the mini TDM and SDM recipes (``configs/mini_tdm.toml``, ``configs/mini_sdm.toml``) through the
project's trainer on the world's data: a few steps each from a TDM base folder (``mini build``'s ``tdm/base``; the
rate does not depend on the weights, so the SDM runs from it too). The steady seconds per step are the progress bar's;
the total includes start-up and export. Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mini_step_rate.py --world WORLD --base MINI/tdm/base --out /tmp/r
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from accelerate.state import AcceleratorState, GradientState

from facediffuser.io.configuration import build_config, load_toml
from facediffuser.training.config import ModelKind, TrainConfig
from facediffuser.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--base", required=True, help="a pipeline folder of the mini shapes (mini build's tdm/base)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for kind, data in (("tdm", "scenes"), ("sdm", "portraits")):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        values = load_toml(f"configs/mini_{kind}.toml")
        values.pop("unet", None)
        values.update(
            data_root=f"{args.world}/{data}",
            output_dir=f"{args.out}/{kind}",
            pretrained=args.base,
            max_train_steps=args.steps,
            checkpointing_steps=0,
            validation_steps=0,
            logging_steps=5,
            log_with="csv",
        )
        trainer = Trainer(ModelKind(kind), build_config(TrainConfig, base=values))
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
        print(
            f"{kind}: {args.steps} steps in {total:.1f} s with start-up and export ({args.steps / total:.3f} steps/s)"
        )


if __name__ == "__main__":
    main()
