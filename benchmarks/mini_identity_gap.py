"""The identity gap of a mini benchmark run (``facediffuser evaluate --benchmark mini --out RUN``).

Per one-person image of each method: the world recognizer's cosine between the image's largest face and the right
person's references, minus its mean cosine to the other people's references; how many images show a face it finds;
how often the right person is its first choice. Usage::

    PYTHONPATH=src python benchmarks/mini_identity_gap.py RUN [--references DATA]   # DATA: the run's --data, if any
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facediffuser.evaluation.benchmarks import load_subjects
from facediffuser.io.package_data import WORLD_FACES, WORLD_REFERENCES, packaged
from facediffuser.lab.world.benchmark import benchmark_people, identity_gap
from facediffuser.lab.world.face_backend import MiniFaceBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the --out folder of `facediffuser evaluate --benchmark mini`")
    parser.add_argument(
        "--references", type=Path, default=None, help="the run's --data folder (default: the shipped benchmark people)"
    )
    args = parser.parse_args()
    run = args.run
    backend = MiniFaceBackend(packaged(WORLD_FACES))
    people = benchmark_people(load_subjects(args.references or packaged(WORLD_REFERENCES)))
    names = [p.name for p in people]
    refs = torch.stack([backend.embed_reference([photo.load() for photo in p.photos]) for p in people])
    refs = F.normalize(refs.double(), dim=-1)
    models = sorted(p for p in (run / "images").iterdir() if p.is_dir())
    if len(models) != 1:
        raise SystemExit(f"{run / 'images'} holds {len(models)} models' images; this script reads a run of one model.")
    images = models[0]
    for method in sorted(p.name for p in images.iterdir()):
        gaps, found, total, top1 = [], 0, 0, 0
        for i, name in enumerate(names):
            for path in sorted((images / method / name).glob("single-*/*.png")):
                total += 1
                faces = backend.faces(Image.open(path).convert("RGB"))
                if not faces:
                    continue
                found += 1
                sims = refs @ F.normalize(faces[0].embedding.double(), dim=0)
                gaps.append(identity_gap(sims, i))
                top1 += int(sims.argmax() == i)
        print(
            f"{method:32s} one-person images {total}, faces {found}, mean gap {np.mean(gaps):.3f} "
            f"(sd {np.std(gaps):.3f}), top-1 {top1}/{total}"
        )


if __name__ == "__main__":
    main()
