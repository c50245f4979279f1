"""An SDM starting pipeline whose subject UNet is freshly initialized instead of the trained TDM's, to measure what
the recipe's start from the TDM buys (docs/mini.md). Run from the repository root:

    PYTHONPATH=src python benchmarks/mini_fresh_subject_unet.py --base BUILD/sdm/base --out OUT [--seed 0]

``--base`` is the SDM stage's starting pipeline (``mini build`` writes it as ``BUILD/sdm/base``). ``OUT`` gets the
same pipeline with ``subject_unet`` replaced by a UNet of the same config, initialized after
``torch.manual_seed(seed)`` as the TDM stage initializes its fresh UNet; every other part is the base's. ``OUT`` must
not exist yet. Train it with the SDM recipe's settings and ``pretrained = OUT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from facediffuser.pipeline import FaceDiffuserPipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the SDM stage's starting pipeline folder")
    parser.add_argument("--out", type=Path, required=True, help="the pipeline folder to write (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new folder (nothing is overwritten).")
    pipe = FaceDiffuserPipeline.from_pretrained(args.base, use_safetensors=True)
    torch.manual_seed(args.seed)
    fresh = UNet2DConditionModel.from_config(pipe.subject_unet.config)
    pipe.register_modules(subject_unet=fresh)
    pipe.save_pretrained(args.out, safe_serialization=True)
    print(args.out)


if __name__ == "__main__":
    main()
