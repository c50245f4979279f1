"""The shipped mini model draws the person of the reference in the scene of the prompt (its CI test).

One seeded image for each of the first six example people of the package (``data/examples/mini``: held-out people
of the world, never seen in training), each in a place that the SDM's training data (``portraits``) never or rarely
shows, drawn by Face-diffuser at the default settings; scored with the world's CLIP and face recognizer the package
ships:

* **place:** the world CLIP's zero-shot choice among the world's six places is the asked one in at least
  :data:`PLACE_MIN` of the images.
* **identity:** per image, the recognizer's cosine similarity between the image's largest face and the right
  person's references, minus the mean of its similarities to the other example people's references; its mean over
  the images must reach :data:`IDENTITY_MARGIN`. (SDMs trained on whole-person references do not pass it:
  docs/mini-findings.md.)

The bounds were set from the mini benchmark's run (``docs/mini.md``: other prompts and 20 other people), not from
these images. Across CPUs the images differ in their last bits (float32 kernels), far below what moves these
scores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facediffuser.evaluation.benchmarks import Case, load_subjects
from facediffuser.io.package_data import MINI_EXAMPLES, MINI_PIPELINE, WORLD_CLIP, WORLD_FACES, packaged

NEEDED = ((MINI_PIPELINE, "model_index.json"), (WORLD_CLIP, "config.json"), (WORLD_FACES, "detector"))
SHIPPED = all((packaged(part) / name).exists() for part, name in NEEDED)
if not SHIPPED and os.environ.get("CI"):
    raise RuntimeError("The mini model is not in the package (src/facediffuser/data/mini/pipeline): CI must test it.")
pytestmark = [
    pytest.mark.skipif(not SHIPPED, reason="the mini model is not shipped in this checkout"),
    pytest.mark.slow,  # its fixture draws the benchmark's cases with the shipped model: about 20 s
]

PLACES = ("beach", "desert", "mountains", "forest")  # portraits: never, never, never, 5% (docs/world.md)
COLOURS = ("yellow", "green", "red", "blue")
# The mini benchmark (docs/mini.md, Face-diffuser 0.3/0.6, 60 cases of 20 other people): the place was right in
# PLACE_MEASURED of its images; the bound leaves two of the six images here to chance.
PLACE_MEASURED = 0.95  # the shipped 6,000-step SDM; 0.967 with the 3,500-step one
PEOPLE = 6  # 50 steps each: about 4 s an image on 2 CPU cores, so the module stays under a minute
PLACE_MIN = 4  # of the PEOPLE images
# A modest bar set by hand, not from any images: a tenth of the cosine scale. (The world's recognizer tells renders
# of one person from others' with an AUC of 0.9999, docs/world.md; the shipped model's benchmark gap: docs/mini.md.)
IDENTITY_MARGIN = 0.1


@pytest.fixture(scope="module")
def drawn():
    from facediffuser.io.loading import load_pipeline
    from facediffuser.lab.world.benchmark import mini_prompt

    people = load_subjects(packaged(MINI_EXAMPLES))[:PEOPLE]
    pipe = load_pipeline("mini", device=torch.device("cpu"), dtype=torch.float32)
    cases, images = [], []
    for i, person in enumerate(people):
        place, colour = PLACES[i % len(PLACES)], COLOURS[i % len(COLOURS)]
        prompt = mini_prompt([person], [colour], ["shirt"], place, "day")
        attributes = {"place": place, "time": "day", "people": [{"name": person.name, "class_noun": person.class_noun,
                                                                  "clothing": colour, "garment": "shirt"}]}  # fmt: skip
        cases.append(Case(f"{person.name}/{place}", prompt, (person,), "single", attributes))
        photos = [photo.load() for photo in person.photos]
        result = pipe(prompt, reference_images=[photos], generator=torch.Generator("cpu").manual_seed(i))
        images.append(result.images[0])
    return people, cases, images


def test_the_right_person_is_drawn(drawn):
    from facediffuser.lab.world.benchmark import identity_gap
    from facediffuser.lab.world.face_backend import MiniFaceBackend

    people, _, images = drawn
    backend = MiniFaceBackend(packaged(WORLD_FACES))
    refs = [backend.embed_reference([p.load() for p in person.photos]) for person in people]
    assert all(r is not None for r in refs), "every example reference shows a face the recognizer finds"
    refs = F.normalize(torch.stack(refs), dim=-1)
    gaps, found = [], 0
    for i, image in enumerate(images):
        faces = backend.faces(image)
        if not faces:
            gaps.append(0.0)  # no face: no evidence for the right person, counted as no gap
            continue
        found += 1
        gaps.append(identity_gap(refs @ F.normalize(faces[0].embedding.double(), dim=0).to(refs.dtype), i))
    assert found >= len(images) - 1, f"faces found in {found} of {len(images)} images"
    assert np.mean(gaps) >= IDENTITY_MARGIN, f"identity gaps {np.round(gaps, 3)}"


def test_the_asked_place_is_drawn(drawn):
    from facediffuser.evaluation.clip_score import ClipScorer
    from facediffuser.lab.world.benchmark import MiniAttributeScorer
    from facediffuser.lab.world.face_backend import MiniFaceBackend

    people, cases, images = drawn
    scorer = MiniAttributeScorer(
        ClipScorer.from_pretrained("mini"), MiniFaceBackend(packaged(WORLD_FACES)), gallery=people
    )
    scores = [scorer.score([image], case)[0] for image, case in zip(images, cases)]
    read = [s["predicted"]["place"] for s in scores]
    right = sum(s["place"] for s in scores)
    assert right >= PLACE_MIN, f"asked {[c.attributes['place'] for c in cases]}, read {read}"
