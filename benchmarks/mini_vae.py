"""Held-out figures of a mini VAE (``facediffuser mini build``'s ``vae`` stage): reconstruction PSNR on the test
splits of the world (held-out people only), per data set and inside the face boxes, the colour shift of the faces
(what held skin tone back in an earlier try), and a reconstruction grid to look at.

    PYTHONPATH=src python benchmarks/mini_vae.py --vae OUT/vae/vae --world WORLD --grid docs/mini/vae_grid.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from facediffuser.lab.mini.vae import psnr, reconstruct, reconstruction_grid, to_pixels
from facediffuser.lab.world.data import read_samples


def resized(samples, size: int) -> np.ndarray:
    out = []
    for s in samples:
        image = s.image
        if image.shape[0] != size:  # PIL bilinear, as the trainer and the VAE stage resize the renders
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        out.append(image)
    return np.stack(out)


def face_figures(samples, rec: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR inside each person's face box and the absolute error of the face's mean colour (0-255, per channel)."""
    size = target.shape[-1]
    psnrs, shifts = [], []
    for k, s in enumerate(samples):
        scale = size / s.image.shape[0]
        for person in s.data["attributes"]["people"]:
            x0, y0, x1, y1 = (v * scale for v in person["face_box"])
            x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
            x1, y1 = min(size, int(np.ceil(x1))), min(size, int(np.ceil(y1)))
            a, b = rec[k : k + 1, :, y0:y1, x0:x1], target[k : k + 1, :, y0:y1, x0:x1]
            psnrs.append(float(psnr(a, b)))
            shifts.append(((a.clamp(-1, 1) - b).mean((2, 3)).abs() * 127.5)[0].numpy())
    shift = np.stack(shifts)
    return {
        "face_psnr": round(float(np.mean(psnrs)), 2),
        "face_colour_error_rgb": [round(float(v), 2) for v in shift.mean(0)],
        "faces_with_colour_error_over_8": round(float((shift.max(1) > 8).mean()), 4),
        "faces": len(psnrs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", required=True, help="AutoencoderKL folder")
    parser.add_argument("--world", required=True, help="folder of `facediffuser world build`")
    parser.add_argument("--size", type=int, default=32, help="side the renders are resized to")
    parser.add_argument("--grid", default=None, help="write a reconstruction grid PNG here")
    args = parser.parse_args()
    from diffusers import AutoencoderKL

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    report = {"parameters": sum(p.numel() for p in vae.parameters()), "scaling_factor": vae.config.scaling_factor}
    grid_images = []
    for name in ("scenes", "portraits"):
        samples = read_samples(os.path.join(args.world, name), "test")
        images = resized(samples, args.size)
        start = time.perf_counter()
        rec = reconstruct(vae, images)
        seconds = time.perf_counter() - start
        target = to_pixels(images)
        report[name] = {
            "images": len(images),
            "psnr": round(float(psnr(rec, target).mean()), 2),
            **face_figures(samples, rec, target),
            "ms_per_image": round(1000 * seconds / len(images), 2),
        }
        grid_images.append(images[:8])
    print(json.dumps(report, indent=1))
    if args.grid:
        reconstruction_grid(vae, np.concatenate(grid_images), args.grid, scale=4)
        print(f"grid: {args.grid} (originals above their reconstructions; rows 1-2 scenes, 3-4 portraits)")


if __name__ == "__main__":
    main()
