"""Equal-steps probe of the mini VAE's scale factor: factor 2 at 32 px against factor 4 at 64 px (4 and 8 latent
channels), 300 steps each, scored on every 5th held-out render; the factor-4 reconstructions are also scored after
resizing them to 32 px (PIL bilinear), so that both are judged at the size the mini models draw (docs/mini.md).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mini_vae_scale_probe.py --world WORLD --out /tmp/probe
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facediffuser.lab.mini.data import world_images
from facediffuser.lab.mini.vae import VaeSettings, psnr, reconstruct, to_pixels, train_vae

COMMON = {"steps": 300, "warmup_steps": 50, "eval_every": 100, "checkpoint_every": 1000}
RUNS = {
    "factor 2 at 32 px": (32, VaeSettings(channels=(32, 64), crop=16, batch_size=32, **COMMON)),
    "factor 4 at 64 px": (64, VaeSettings(channels=(32, 64, 64), crop=32, batch_size=16, **COMMON)),
    "factor 4 at 64 px, 8 latent channels": (
        64,
        VaeSettings(channels=(32, 64, 64), latent_channels=8, crop=32, batch_size=16, **COMMON),
    ),
}


def to_32(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, 32, 32, 3), resized as the data is."""
    u = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.stack([np.asarray(Image.fromarray(a).resize((32, 32), Image.Resampling.BILINEAR)) for a in u])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = {
        size: (world_images(args.world, "train", size), world_images(args.world, "test", size)[::5])
        for size in (32, 64)
    }
    for k, (name, (size, settings)) in enumerate(RUNS.items()):
        train, heldout = data[size]
        result = train_vae(train, heldout, args.out / f"run{k}", settings, progress=False)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.out / f"run{k}" / "vae").eval()
        rec = reconstruct(vae, heldout)
        at_32 = rec if size == 32 else to_pixels(to_32(rec))
        figures = {
            "psnr_at_own_size": round(result["heldout"]["psnr"], 2),
            "psnr_at_32px": round(float(psnr(at_32, to_pixels(data[32][1])).mean()), 2),
            "train_seconds": result["train_seconds"],
        }
        print(name, json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
