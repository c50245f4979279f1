"""A small synthetic data set in the FFHQ-wild layout, for smoke runs, benchmarks and examples.

Each image shows one or two "people" (coloured ellipses) on a random background; the captions name them with
``end`` offsets, exactly as the released data set does. The pictures mean nothing: they exercise the format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = (
    ("a man sitting on a bench in a park", [5]),
    ("a woman and a man walking on a beach", [7, 17]),
    ("a girl holding a red balloon", [6]),
)


def write_synthetic_ffhq_wild(
    root: str | Path, num_images: int = 8, size: int = 96, seed: int = 0, test_images: int = 2
) -> Path:
    """Writes ``num_images`` training and ``test_images`` test samples of ``size x size`` pixels under ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = [f"{k:05d}" for k in range(num_images + test_images)]
    for k, image_id in enumerate(ids):
        caption, ends = CAPTIONS[k % len(CAPTIONS)]
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        segmap = np.zeros((size, size), dtype=np.int32)
        yy, xx = np.mgrid[0:size, 0:size]
        segments = []
        for j, end in enumerate(ends):
            cx = size * (j + 1) / (len(ends) + 1)
            cy, rx, ry = size * 0.55, size / (3 * len(ends)), size * 0.35
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
            segmap[inside] = j + 1
            pixels[inside] = rng.integers(0, 256, 3, dtype=np.uint8)
            bbox = [float(cx - rx), float(cy - ry), float(cx + rx), float(cy + ry)]
            segments.append({"id": j + 1, "bbox": bbox, "coco_label": "person", "end": end})
        segments.append({"id": 99, "bbox": [0.0, 0.0, 4.0, 4.0], "coco_label": "bench", "end": len(caption)})
        folder = root / image_id[:5]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=95)
        np.save(folder / f"{image_id}.npy", segmap)
        (folder / f"{image_id}.json").write_text(json.dumps({"caption": caption, "segments": segments}))
    (root / "image_ids_train.txt").write_text("\n".join(ids[:num_images]) + "\n")
    (root / "image_ids_test.txt").write_text("\n".join(ids[num_images:]) + "\n")
    return root
