"""Which form of a reference tells the mini SDM who the person is? (docs/mini.md, "Where the identity is lost")

1. The image encoders: for the world's held-out people (``WORLD/references``, 3 renders each, re-rendered here for
   their segment maps and head boxes), the share of references whose nearest other reference (cosine of the
   encoder's ``image_embeds``) shows the same person, per reference form.
2. With ``--generate N``: the pipeline (``--model``, default the shipped mini model) draws the first N one-person
   cases of the mini benchmark on ``--data`` (default: the shipped benchmark people; pass the validation people of
   ``mini_validation_people.py``), once per reference form, seed 7 + case index; the world's face recognizer then
   picks the person among the cases' people (their whole-render references)::

    PYTHONPATH=src python benchmarks/mini_reference_forms.py --world /work/artifacts/world/w \\
        --encoder src/facediffuser/data/mini/pipeline/image_encoder --encoder /work/artifacts/world/w/clip \\
        --generate 40 --data /work/artifacts/mini/val-people
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facediffuser.images import clip_preprocess, pil_to_tensor
from facediffuser.lab.world.benchmark import identity_gap, load_identities, mini_cases
from facediffuser.lab.world.data import reference_scene
from facediffuser.lab.world.render import render
from facediffuser.training.augment import noise_background_crop, plain_reference


def to_pil(tensor: torch.Tensor) -> Image.Image:
    return Image.fromarray((tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def reference_forms(world: Path, names: list[str], seed: int = 0, size: int = 64) -> dict[str, dict[str, list]]:
    """``{form: {name: [three (3, h, w) crops in [0, 1]]}}``: each person's reference renders in five forms."""
    identities = load_identities(world / "world.json")
    forms: dict[str, dict[str, list]] = {
        name: {} for name in ("whole render", "person, noise around", "head box", "head, noise around", "head x1.5")
    }
    for name in names:
        for crops in forms.values():
            crops[name] = []
        for j in range(3):
            rendered = render(reference_scene(identities[name], seed, j, size))
            stored = world / "references" / name / f"{j + 1}.png"
            if not np.array_equal(np.asarray(rendered.image), np.asarray(Image.open(stored).convert("RGB"))):
                raise SystemExit(f"{stored} is not what the renderer draws for {name}: another world?")
            image = pil_to_tensor(rendered.image)
            mask = torch.from_numpy(rendered.segmap == 1)
            generator = torch.Generator().manual_seed(j)
            x1, y1, x2, y2 = rendered.face_boxes[0]
            cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 1.5 * max(x2 - x1, y2 - y1)
            top, left = max(0, int(cy - side / 2)), max(0, int(cx - side / 2))
            head = image[:, int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
            forms["whole render"][name].append(image)
            forms["person, noise around"][name].append(
                noise_background_crop(image, mask, rendered.person_boxes[0], generator)
            )
            forms["head box"][name].append(head)
            forms["head, noise around"][name].append(
                noise_background_crop(image, mask, rendered.face_boxes[0], generator)
            )
            forms["head x1.5"][name].append(image[:, top : int(cy + side / 2), left : int(cx + side / 2)])
    return forms


def retrieval(encoder_folder: Path, forms: dict[str, dict[str, list]]) -> dict[str, float]:
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_folder, dtype=torch.float32).eval()
    size = encoder.config.image_size
    scores = {}
    for form, people in forms.items():
        crops = [crop for name in people for crop in people[name]]
        person = torch.arange(len(people)).repeat_interleave(3)
        pixels = clip_preprocess(torch.stack([plain_reference(c, size) for c in crops]), size)
        with torch.no_grad():
            embeds = F.normalize(encoder(pixel_values=pixels).image_embeds, dim=-1)
        similarity = embeds @ embeds.T
        similarity.fill_diagonal_(-2.0)
        scores[form] = (person[similarity.argmax(1)] == person).float().mean().item()
    return scores


def generation(args: argparse.Namespace) -> None:
    from facediffuser.io.loading import load_pipeline
    from facediffuser.io.package_data import WORLD_FACES, WORLD_REFERENCES, packaged
    from facediffuser.lab.world.face_backend import MiniFaceBackend

    cases = [c for c in mini_cases(args.data or packaged(WORLD_REFERENCES)).cases if len(c.people) == 1]
    cases = cases[: args.generate]
    names = sorted({c.people[0].name for c in cases})
    forms = reference_forms(args.world, names)
    backend = MiniFaceBackend(packaged(WORLD_FACES))
    gallery = [backend.embed_reference([to_pil(c) for c in forms["whole render"][n]]) for n in names]
    gallery = F.normalize(torch.stack(gallery).double(), dim=-1)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    for form in ("whole render", "head box", "head, noise around"):
        right, gaps, found = 0, [], 0
        for k, case in enumerate(cases):
            name = case.people[0].name
            image = pipe(
                case.prompt,
                reference_images=[[to_pil(c) for c in forms[form][name]]],
                generator=torch.Generator().manual_seed(7 + k),
            ).images[0]
            faces = backend.faces(image)
            if not faces:
                continue
            found += 1
            similarity = gallery @ F.normalize(faces[0].embedding.double(), dim=0)
            index = names.index(name)
            right += int(similarity.argmax() == index)
            gaps.append(identity_gap(similarity, index))
        print(
            f"generate {form:22s} one-person cases {len(cases)}, faces {found}, right person first {right}, "
            f"identity gap {np.mean(gaps):.3f} (among {len(names)} people)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="the folder of `facediffuser world build`")
    parser.add_argument("--encoder", type=Path, action="append", default=[], help="an image encoder folder")
    parser.add_argument("--generate", type=int, default=0, help="also draw this many one-person cases per form")
    parser.add_argument("--model", default="mini", help="the pipeline that draws them")
    parser.add_argument("--data", type=Path, default=None, help="the benchmark's people (default: the shipped)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.encoder:
        names = sorted(json.loads((args.world / "references" / "subjects.json").read_text(encoding="utf-8")))
        forms = reference_forms(args.world, names)
        for folder in args.encoder:
            for form, score in retrieval(folder, forms).items():
                print(f"{str(folder):60s} {form:22s} nearest other reference is the same person: {score:.3f}")
    if args.generate:
        generation(args)


if __name__ == "__main__":
    main()
