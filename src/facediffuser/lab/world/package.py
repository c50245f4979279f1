"""The world's files as the package ships them (``facediffuser mini ship`` writes them beside the mini pipeline,
:mod:`facediffuser.lab.mini.ship`, in the same all-or-nothing swap):

- ``world/clip``: the world's CLIP in float16 safetensors (``--clip-model mini``); without tokenizer files when its
  tokenizer is the project's (:func:`facediffuser.io.tokenizer.load_clip_tokenizer`), which the scorer then uses;
- ``world/faces``: the world's face detector and embedder (``--ip-backend mini``), copied as they are (float32,
  0.7 MB: their held-out figures were measured so);
- ``examples/mini``: 3 renders each of a few held-out people of the world (never seen in training), chosen
  deterministically for varied looks, with ``subjects.json`` (name -> class noun) and a README: a subject folder;
- ``world/references``: the 20 held-out people of ``evaluate --benchmark mini``.

Each writer fills a new folder; :func:`world_writers` gives them by the name of the place they fill
(:func:`world_folders`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...io import package_data
from ...io.files import read_json, read_stage_marker

logger = logging.getLogger(__name__)

EXAMPLE_PEOPLE = 8
# Looks that make the examples varied (world.json "people" fields); the first is balanced between the people.
LOOKS = ("gender", "skin", "hair_colour", "hair_style", "glasses", "facial_hair", "face_shape")
TOKENIZER_PROBES = (
    "a woman <|image|> on a beach at night",
    "A man in a purple sweater, with glasses and a kite!",
    "<|startoftext|>two people in the fog<|endoftext|>",
)


def world_folders(target: Path) -> dict[str, Path]:
    """The world's folders in the package data folder ``target``, by name."""
    return {
        "clip": target.joinpath(*package_data.WORLD_CLIP),
        "faces": target.joinpath(*package_data.WORLD_FACES),
        "examples": target.joinpath(*package_data.MINI_EXAMPLES),
        "references": target.joinpath(*package_data.WORLD_REFERENCES),
    }


def world_writers(world: Path, people: int, chosen: list[str]) -> dict[str, Callable[[Path], None]]:
    """The writers of :func:`world_folders` from the world folder ``world``, by name; ``chosen`` receives the names
    of the ``people`` example people."""
    return {
        "clip": lambda new: write_world_clip(world / "clip", new),
        "faces": lambda new: write_faces(world / "faces", new),
        "examples": lambda new: chosen.extend(write_examples(world, new, people)),
        "references": lambda new: write_benchmark_people(world, new),
    }


# ------------------------------------------------------------------------------------------------ checks
def check_world(world: Path) -> None:
    from .face_backend import check_faces_folder

    if not (world / "clip" / "config.json").is_file():
        raise FileNotFoundError(f"{world / 'clip'} holds no CLIP: give the folder of `facediffuser world build`.")
    check_faces_folder(world / "faces")
    if not (world / "world.json").is_file() or not (world / "references").is_dir():
        raise FileNotFoundError(
            f"{world} lacks world.json or references/: give the folder of `facediffuser world build`."
        )


def non_float16_tensors(folder: Path) -> list[str]:
    """``file:tensor (dtype)`` of every floating-point tensor in ``folder``'s safetensors that is not float16."""
    from safetensors import safe_open

    found = []
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                dtype = handle.get_slice(key).get_dtype()
                if dtype.startswith(("F", "BF")) and dtype != "F16":
                    found.append(f"{path.relative_to(folder)}:{key} ({dtype})")
    return found


def follow_umask(folder: Path) -> None:
    """safetensors writes files readable by their owner only; package data follows the user's umask, as any file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


# ------------------------------------------------------------------------------------------------ tokenizer
def save_tokenizer_compact(tokenizer, folder: Path) -> None:
    """``tokenizer`` as ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (1.4 MB for CLIP's 49,408
    tokens, against 3.6 MB for ``tokenizer.json``), loadable by the ordinary ``from_pretrained``. When that form
    would not give the same tokens (added tokens, another model type), the full ``save_pretrained`` form is written."""
    folder.mkdir(parents=True, exist_ok=True)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "BPE":
        backend.model.save(str(folder))
        config = {
            "tokenizer_class": type(tokenizer).__name__,
            "model_max_length": tokenizer.model_max_length,
            "padding_side": tokenizer.padding_side,
            "truncation_side": tokenizer.truncation_side,
        }
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                config[name] = str(value)
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if same_tokens(tokenizer, type(tokenizer).from_pretrained(folder)):
            return
        for path in folder.iterdir():
            path.unlink()
    logger.warning("The tokenizer has no vocab.json + merges.txt form with the same tokens: saving tokenizer.json.")
    tokenizer.save_pretrained(folder)


def same_tokens(first, second) -> bool:
    """Whether two tokenizers have the same vocabulary, special tokens, length limit and ids on probe texts."""
    return (
        len(first) == len(second)
        and first.get_vocab() == second.get_vocab()
        and first.model_max_length == second.model_max_length
        and first.pad_token_id == second.pad_token_id
        and first(list(TOKENIZER_PROBES)).input_ids == second(list(TOKENIZER_PROBES)).input_ids
    )


# ------------------------------------------------------------------------------------------------ the parts
def write_world_clip(source: Path, folder: Path) -> None:
    """The world's CLIP in float16; its tokenizer only when it is not the project's (the scorer's fallback)."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from ...io.tokenizer import has_tokenizer_files, load_clip_tokenizer

    model = CLIPModel.from_pretrained(source, dtype=torch.float32)
    model.to(torch.float16).save_pretrained(folder)
    for name in ("training.json",):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    if has_tokenizer_files(source):
        tokenizer = CLIPTokenizer.from_pretrained(source)
        project = load_clip_tokenizer(model_max_length=tokenizer.model_max_length)
        if not same_tokens(tokenizer, project):
            save_tokenizer_compact(tokenizer, folder)
    follow_umask(folder)
    wrong = non_float16_tensors(folder)
    if wrong:
        raise ValueError(f"Some CLIP weights were not stored in float16: {', '.join(wrong[:5])}.")


def write_faces(source: Path, folder: Path) -> None:
    """The detector and embedder folders, file by file (float32, as measured)."""
    for part in ("detector", "embedder"):
        (folder / part).mkdir()
        for path in sorted((source / part).iterdir()):
            if path.is_file() and (path.suffix in (".json", ".safetensors")):
                shutil.copyfile(path, folder / part / path.name)
    follow_umask(folder)


def choose_people(world: Path, count: int) -> list[dict[str, Any]]:
    """``count`` held-out people with reference renders, chosen deterministically for varied looks.

    Men and women alternate (as far as there are both); each next person is the one of that gender whose looks
    (:data:`LOOKS`) add the most values not yet shown, the lowest id on a tie.
    """
    from .attributes import load_people

    identities, split = load_people(world)  # a broken world.json names itself
    heldout = set(split["heldout"])
    people = [p.to_dict() for p in identities]
    people = [p for p in people if p["id"] in heldout and (world / "references" / person_name(p)).is_dir()]
    if len(people) < count:
        raise ValueError(f"{world} has {len(people)} held-out people with references; {count} were asked for.")
    people.sort(key=lambda p: p["id"])
    genders = sorted({p["gender"] for p in people})
    chosen: list[dict[str, Any]] = []
    shown: set[tuple[str, Any]] = set()
    while len(chosen) < count:
        gender = genders[len(chosen) % len(genders)]
        pool = [p for p in people if p not in chosen and p["gender"] == gender] or [
            p for p in people if p not in chosen
        ]
        best = max(pool, key=lambda p: (sum((k, p[k]) not in shown for k in LOOKS), -p["id"]))
        chosen.append(best)
        shown |= {(k, best[k]) for k in LOOKS}
    return chosen


def person_name(person: dict[str, Any]) -> str:
    """The folder name of a person, as in the world's ``references/`` (``id0042``)."""
    return f"id{person['id']:04d}"


def looks_phrase(person: dict[str, Any]) -> str:
    glasses = {"none": "no glasses", "sunglasses": "sunglasses"}.get(person["glasses"], f"{person['glasses']} glasses")
    beard = {"none": "no facial hair"}.get(person["facial_hair"], person["facial_hair"])
    return (
        f"{person['skin']} skin, {person['hair_colour']} {person['hair_style']} hair, {glasses}, {beard}, "
        f"{person['face_shape']} face"
    )


EXAMPLES_README = """\
# Example references: held-out people of the procedural world

Each folder holds {photos} renders of one person of the project's procedural world (`facediffuser world build`,
seed {seed}), at {size} px, copied from the world's `references/`: each a portrait render of its own (the
`portraits` distribution: another place, time and clothing in each), never a crop of a data-set image. They are
**held-out** identities: the world keeps {heldout} of its {identities} people out of every training set, so neither
the mini model nor the world's CLIP and face recognizer ever saw these people.

They were chosen by `facediffuser mini ship` (deterministically: men and women in turn, each next person the one
whose looks add the most not yet shown). The folder is a subject folder for `facediffuser evaluate --data`:
`subjects.json` gives each person's class noun.

| folder | class noun | looks |
|---|---|---|
{rows}

Use one with the mini model, for example:

```bash
facediffuser generate --prompt "a {noun} <|image|> in a yellow sweater on a beach at night" --ref {example}
```

The renders are drawn by the project's own code from random numbers: they show no real person, and they are free
to use for any purpose, like the rest of the project (Apache-2.0).
"""


def write_examples(world: Path, folder: Path, count: int) -> list[str]:
    """Copies the references of :func:`choose_people` into ``folder`` as a subject folder; returns the names."""
    people = choose_people(world, count)
    world_nouns_file = world / "references" / "subjects.json"
    world_nouns = read_json(world_nouns_file, dict, "a map of class nouns") if world_nouns_file.is_file() else {}
    nouns = {}
    for person in people:
        name = person_name(person)
        (folder / name).mkdir()
        photos = sorted((world / "references" / name).glob("*.png"))
        for path in photos:
            shutil.copyfile(path, folder / name / path.name)
        nouns[name] = world_nouns.get(name, person["gender"])
    (folder / "subjects.json").write_text(json.dumps(nouns, indent=1) + "\n", encoding="utf-8")
    settings = _references_settings(world)
    rows = "\n".join(f"| `{person_name(p)}` | {nouns[person_name(p)]} | {looks_phrase(p)} |" for p in people)
    first = people[0]
    text = EXAMPLES_README.format(
        photos=settings.get("references_per_person", len(photos)),
        seed=settings.get("seed", "?"),
        size=settings.get("size", "?"),
        heldout=settings.get("heldout", "?"),
        identities=settings.get("identities", "?"),
        rows=rows,
        noun=nouns[person_name(first)],
        example=f"src/facediffuser/data/examples/mini/{person_name(first)}",
    )
    (folder / "README.md").write_text(text, encoding="utf-8")
    follow_umask(folder)
    return [person_name(p) for p in people]


def write_benchmark_people(world: Path, folder: Path) -> list[str]:
    """The 20 held-out people of ``evaluate --benchmark mini`` (the benchmark's own seeded choice from the world's
    references), as a subject folder, so that the benchmark runs offline on the same people as on the world."""
    from ...evaluation.cases import load_subjects
    from .benchmark import benchmark_people

    chosen = benchmark_people(load_subjects(world / "references"))
    for person in chosen:
        shutil.copytree(world / "references" / person.name, folder / person.name)
    nouns = {person.name: person.class_noun for person in chosen}
    (folder / "subjects.json").write_text(json.dumps(nouns, indent=1) + "\n", encoding="utf-8")
    follow_umask(folder)
    return [person.name for person in chosen]


def _references_settings(world: Path) -> dict[str, Any]:
    marker = world / "stages" / "references.json"
    if marker.is_file():
        rebuild = "rebuild the world's references with `facediffuser world build --redo references`"
        return read_stage_marker(marker, rebuild)["settings"]
    return {}
