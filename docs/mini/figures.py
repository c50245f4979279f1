"""The README's two pictures of the mini model (docs/mini/example.png and docs/mini/seeds.png).

- ``example.png``: the references of the README's example person, then what the README's command draws (seed 0,
  the defaults), each shown at 128 px (nearest-neighbour, so the model's 32 px stay visible);
- ``seeds.png``: the same prompt and person, seeds 0-3 at the default alpha (top row), then at alpha 0.1 (bottom).

    PYTHONPATH=src python docs/mini/figures.py --out docs/mini

It lives beside the pictures it draws: rerun it when the shipped model or the README's command changes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from facediffuser.images import list_image_files, load_image
from facediffuser.io.loading import load_pipeline
from facediffuser.io.package_data import MINI_EXAMPLES, packaged

PROMPT = "a woman <|image|> in a yellow sweater on a beach at night"  # the README's command
PERSON = "id0006"
TILE, GAP = 128, 8


def draw(pipe, photos: list[Image.Image], seed: int, **kwargs) -> Image.Image:
    # As `facediffuser generate --seed SEED` draws: a CPU generator seeded with SEED.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return pipe(PROMPT, reference_images=[photos], generator=generator, **kwargs).images[0]


def strip(images: list[Image.Image], extra_gap_before: int | None = None) -> Image.Image:
    """Tiles of TILE px in a row on white, GAP apart (twice that before tile ``extra_gap_before``)."""
    width = GAP + len(images) * (TILE + GAP) + (GAP if extra_gap_before is not None else 0)
    canvas = Image.new("RGB", (width, TILE + 2 * GAP), "white")
    x = GAP
    for k, image in enumerate(images):
        if k == extra_gap_before:
            x += GAP
        canvas.paste(image.resize((TILE, TILE), Image.Resampling.NEAREST), (x, GAP))
        x += TILE + GAP
    return canvas


def grid(rows: list[list[Image.Image]], side: int = 96) -> Image.Image:
    canvas = Image.new("RGB", (side * len(rows[0]), side * len(rows)))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas.paste(image.resize((side, side), Image.Resampling.NEAREST), (c * side, r * side))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for example.png and seeds.png")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the sampling default)")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    photos = [load_image(p) for p in list_image_files(packaged(MINI_EXAMPLES) / PERSON)]
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {} if args.steps is None else {"num_inference_steps": args.steps}
    strip([*photos, draw(pipe, photos, 0, **steps)], extra_gap_before=len(photos)).save(args.out / "example.png")
    rows = [[draw(pipe, photos, seed, **kwargs) for seed in range(4)] for kwargs in (steps, {**steps, "alpha": 0.1})]
    grid(rows).save(args.out / "seeds.png")
    print(f"wrote {args.out / 'example.png'} and {args.out / 'seeds.png'}")


if __name__ == "__main__":
    main()
