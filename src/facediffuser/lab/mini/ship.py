"""``facediffuser mini ship``: put a finished mini build and its world into the package's data folder.

What it writes (:mod:`facediffuser.io.package_data` names the places): every folder is built beside its place and all
are swapped in together once all are complete (a refusal or Ctrl-C before that leaves the old package whole). It
replaces only folders whose files an earlier ship wrote (the package folder's ``.facediffuser.json`` lists them; the
installation's own data folder, shipped into before that record existed, is the package's):

- ``mini/pipeline``: the mini Face-diffuser (the build's ``sdm/train``) with every weight in float16 safetensors and
  the tokenizer as ``vocab.json`` + ``merges.txt``; its text tower pruned to the world's vocabulary
  (:mod:`facediffuser.lab.mini.vocab`: the tokens of the world's texts and the bytes, 701 of CLIP's 49,408 for the
  present world; the world's texts must give exactly the same text features, else nothing is shipped); at most
  ``max_mib`` (40 MiB, the budget) in all, else refused;
- ``mini/stages``: the build's stage markers (``stages/*.json``: each stage's settings and wall time), and the
  package's own markers of the stages the build took from it (``--from``), so that ``facediffuser mini build --from
  STAGE`` can start from the shipped stages with the settings they were built with;
- ``world/clip``: the world's CLIP in float16 safetensors (``--clip-model mini``); without tokenizer files when its
  tokenizer is the project's (:func:`facediffuser.io.tokenizer.load_clip_tokenizer`), which the scorer then uses;
- ``world/faces``: the world's face detector and embedder (``--ip-backend mini``), copied as they are (float32,
  0.7 MB: their held-out figures were measured so);
- ``examples/mini``: 3 renders each of a few held-out people of the world (never seen in training), chosen
  deterministically for varied looks, with ``subjects.json`` (name -> class noun) and a README: a subject folder.

Float16 is storage only: the loaders ask for float32 on the CPU (``load_pipeline``'s ``dtype="auto"``), and each
weight then equals the trained float32 weight rounded to float16 (checked here, before the swap). Nothing outside
the package data folder is written, and nothing in it but the five folders above is replaced; the interim
``mini/vae`` (the VAE stage, shipped before the pipeline) is removed, as ``mini/pipeline/vae`` is the shipped VAE.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io import package_data
from ...io.files import read_json, read_stage_marker

logger = logging.getLogger(__name__)

PIPELINE_BUDGET_MIB = 40.0  # the budget of the mini pipeline's weights: at most 40 MB in all
EXAMPLE_PEOPLE = 8
# Looks that make the examples varied (world.json "people" fields); the first is balanced between the people.
LOOKS = ("gender", "skin", "hair_colour", "hair_style", "glasses", "facial_hair", "face_shape")
TOKENIZER_PROBES = (
    "a woman <|image|> on a beach at night",
    "A man in a purple sweater, with glasses and a kite!",
    "<|startoftext|>two people in the fog<|endoftext|>",
)
MIB = 1024 * 1024


def _f(help_text: str, **extra: Any) -> dict:
    return {"help": help_text, **extra}


@dataclass
class ShipConfig:
    """Settings of ``facediffuser mini ship``: one dataclass, the source of the flags."""

    build: Path = field(metadata=_f("folder of `facediffuser mini build` whose sdm stage is done"))
    world: Path = field(metadata=_f("folder of `facediffuser world build` (clip/, faces/, references/, world.json)"))
    package_dir: Path | None = field(
        default=None, metadata=_f("data folder to write into (default: this installation's facediffuser/data)")
    )
    max_mib: float = field(
        default=PIPELINE_BUDGET_MIB, metadata=_f("largest size of the shipped pipeline folder, in MiB")
    )
    people: int = field(default=EXAMPLE_PEOPLE, metadata=_f("held-out people to ship as example references"))
    subject_guidance_scale: float | None = field(
        default=None,
        metadata=_f(
            "the SDM guidance scale the shipped pipeline draws with when a call gives none (its model_index.json); "
            "default: none, the call's --guidance-scale"
        ),
    )

    def __post_init__(self) -> None:
        self.build, self.world = Path(self.build), Path(self.world)
        if self.package_dir is not None:
            self.package_dir = Path(self.package_dir)
        if not math.isfinite(self.max_mib) or self.max_mib <= 0:
            raise ValueError(f"--max-mib must be a positive number of MiB, got {self.max_mib}.")
        if self.people < 1:
            raise ValueError(f"--people must be at least 1, got {self.people}.")
        from ...settings import SamplingSettings

        SamplingSettings(subject_guidance_scale=self.subject_guidance_scale)  # the sampling rules, with their words

    @property
    def target(self) -> Path:
        return self.package_dir if self.package_dir is not None else package_data.data_dir()


@dataclass
class ShipReport:
    """What was shipped: the folders written, the pipeline's size per component, in bytes, and its vocabulary
    (``kept`` and ``of`` tokens; ``texts`` and ``encoded``: the world texts its check compared)."""

    folders: dict[str, Path]
    pipeline_sizes: dict[str, int]
    people: list[str]
    vocabulary: dict[str, int] = field(default_factory=dict)

    @property
    def pipeline_total(self) -> int:
        return sum(self.pipeline_sizes.values())

    def size_table(self) -> str:
        table = size_table(self.pipeline_sizes)
        if self.vocabulary:
            v = self.vocabulary
            table += (
                f"\nvocabulary: {v['kept']:,d} of {v['of']:,d} tokens kept (the world's words and the bytes); "
                f"{v['texts']:,d} world texts tokenize as before, {v['encoded']:,d} encode exactly as before"
            )
        return table


# ------------------------------------------------------------------------------------------------ checks
def check_build(build: Path) -> Path:
    """The build's final pipeline folder (``sdm/train``), or a ``ValueError`` when the build is not finished."""
    from ...io.loading import check_pipeline_folder
    from .build import marker_path

    pipeline = build / "sdm" / "train"
    marker = marker_path(build, "sdm")
    if not (pipeline / "model_index.json").is_file() or not marker.is_file():
        raise ValueError(
            f"{build} is not a finished mini build: it needs {pipeline}/model_index.json and the stage marker "
            f"{marker}. Finish it with `facediffuser mini build --out {build} --world WORLD` first."
        )
    check_pipeline_folder(pipeline)
    return pipeline


def check_world(world: Path) -> None:
    from ..world.face_backend import check_faces_folder

    if not (world / "clip" / "config.json").is_file():
        raise FileNotFoundError(f"{world / 'clip'} holds no CLIP: give the folder of `facediffuser world build`.")
    check_faces_folder(world / "faces")
    if not (world / "world.json").is_file() or not (world / "references").is_dir():
        raise FileNotFoundError(
            f"{world} lacks world.json or references/: give the folder of `facediffuser world build`."
        )


COMMAND = "mini ship"  # the command named in the package folder's marker (see facediffuser.io.output_folders)


def shipped_folders(target: Path) -> dict[str, Path]:
    """The folders ``mini ship`` replaces in ``target``, by name."""
    return {
        "pipeline": target.joinpath(*package_data.MINI_PIPELINE),
        "stages": target.joinpath(*package_data.MINI_STAGES),
        "clip": target.joinpath(*package_data.WORLD_CLIP),
        "faces": target.joinpath(*package_data.WORLD_FACES),
        "examples": target.joinpath(*package_data.MINI_EXAMPLES),
        "references": target.joinpath(*package_data.WORLD_REFERENCES),
    }


def _is_installation(target: Path) -> bool:
    return target.resolve() == package_data.data_dir().resolve()


def check_target(target: Path, inputs: tuple[Path, ...] = ()) -> dict | None:
    """Refuses a ``--package-dir`` that ``mini ship`` may not write into; returns its marker (None without one).

    Each folder it replaces must be new, empty, or hold only files that an earlier ship wrote (its marker lists
    them); none may be, hold or lie inside an input (the build, the world). The installation's own data folder,
    shipped before markers existed, is the package's: its shipped folders are replaced as they are.
    """
    from ...io.output_folders import absolute, check_apart, foreign_files, protected_reason, read_marker

    if str(target).strip() == "":
        raise ValueError("--package-dir is empty: name the package's data folder, or leave the flag out.")
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"--package-dir {target} is a file, not a folder.")
    reason = protected_reason(absolute(target).resolve())
    if reason:
        raise ValueError(f"--package-dir {target} is {reason}: choose the package's data folder or a new one.")
    for folder in [*shipped_folders(target).values(), target.joinpath(*package_data.MINI_VAE)]:
        check_apart(folder, inputs, flag="--package-dir's")
    marker = read_marker(target) if target.is_dir() else None
    if marker is not None and marker["command"] != COMMAND:
        raise ValueError(
            f"--package-dir {target} was made by `facediffuser {marker['command']}`, not `facediffuser {COMMAND}`: "
            "choose the package's data folder or a new one."
        )
    if marker is None and target.is_dir() and _is_installation(target):
        return None
    places = [*shipped_folders(target).values(), target.joinpath(*package_data.MINI_VAE)]
    foreign = sorted(f for folder in places for f in foreign_files(folder, target, marker))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f", and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(
            f"--package-dir {target} holds files facediffuser did not write where `mini ship` replaces whole "
            f"folders ({shown}): move them away, or choose a new or empty --package-dir. Nothing was shipped."
        )
    return marker


# ------------------------------------------------------------------------------------------------ sizes
def component_sizes(folder: Path) -> dict[str, int]:
    """Bytes per top-level entry of ``folder`` (a component folder, or a file such as ``model_index.json``)."""
    sizes = {}
    for entry in sorted(folder.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name] = sum(p.stat().st_size for p in files)
    return sizes


def size_table(sizes: dict[str, int]) -> str:
    rows = [f"{name:<20} {size / MIB:8.2f} MiB {size:>12,d} B" for name, size in sorted(sizes.items())]
    total = sum(sizes.values())
    rows.append(f"{'total':<20} {total / MIB:8.2f} MiB {total:>12,d} B")
    return "\n".join(rows)


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


def _follow_umask(folder: Path) -> None:
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
def write_pipeline(
    source: Path, folder: Path, max_mib: float, subject_guidance_scale: float | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """The pipeline of ``source`` in float16 into ``folder``, its text tower pruned to the world's vocabulary
    (:mod:`facediffuser.lab.mini.vocab`), drawing with ``subject_guidance_scale`` by default when it is given (else as
    the build's); its sizes and what the pruning kept and checked. ``ValueError`` when over
    ``max_mib``; :class:`~facediffuser.lab.mini.vocab.PruningError` when the shipped tokenizer and text encoder do not
    give exactly what the full ones give on the world's texts."""
    import copy

    import torch

    from ...pipeline import FaceDiffuserPipeline
    from . import vocab

    pipe = FaceDiffuserPipeline.from_pretrained(source, use_safetensors=True, dtype=torch.float32)
    # The full text tower as it would ship (float16 weights, loaded in float32): what the pruned one must equal.
    full_tokenizer, full_encoder = pipe.tokenizer, copy.deepcopy(pipe.text_encoder).half().float().eval()
    pruned = vocab.prune_vocabulary(pipe.tokenizer, pipe.text_encoder)
    pipe.register_modules(tokenizer=pruned.tokenizer, text_encoder=pruned.text_encoder)
    if subject_guidance_scale is not None:
        pipe.register_to_config(subject_guidance_scale=subject_guidance_scale)
    expected = {name: _half_state(module) for name, module in _modules(pipe).items()}
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")
    save_tokenizer_compact(pipe.tokenizer, folder / "tokenizer")
    forget_source_paths(folder)
    _follow_umask(folder)
    wrong = non_float16_tensors(folder)
    if wrong:
        raise ValueError(f"Some weights were not stored in float16: {', '.join(wrong[:5])}.")
    sizes = component_sizes(folder)
    total = sum(sizes.values())
    if total > max_mib * MIB:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        raise ValueError(
            f"The mini pipeline takes {total / MIB:.2f} MiB in float16, over the {max_mib:g} MiB budget by "
            f"{(total - max_mib * MIB) / MIB:.2f} MiB; nothing was shipped. Biggest: "
            + ", ".join(f"{n} {s / MIB:.2f} MiB" for n, s in biggest)
            + ". Per component:\n"
            + size_table(sizes)
            + "\nMake the model smaller, or pass --max-mib to accept the size."
        )
    # Loaded back as the package loads it (float32), every weight is the trained one rounded to float16, exactly.
    loaded = FaceDiffuserPipeline.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    for name, module in _modules(loaded).items():
        state = module.state_dict()
        for key, value in expected[name].items():
            if state[key].dtype != torch.float32 or not torch.equal(state[key], value):
                raise ValueError(f"The shipped {name} does not load back as written ({key}).")
    if loaded.subject_guidance_scale != pipe.subject_guidance_scale:
        raise ValueError("The shipped pipeline does not load back with its subject guidance scale.")
    if not same_tokens(pipe.tokenizer, loaded.tokenizer):
        raise ValueError("The shipped tokenizer does not give the build's tokens.")
    checked = vocab.check_pruning(full_tokenizer, full_encoder, loaded.tokenizer, loaded.text_encoder)
    kept = {"kept": pruned.size, "of": len(full_tokenizer), "texts": checked["texts"], "encoded": checked["encoded"]}
    return sizes, kept


def forget_source_paths(folder: Path) -> None:
    """Drops ``_name_or_path`` from the configs of a saved pipeline folder. diffusers records there the folder each
    part was loaded from: the build's paths on the machine that shipped it, which say nothing to a user and would
    change the shipped folders' sha256 (what ``mini build --from`` records of them) at every ship, even of parts
    whose weights did not change."""
    for path in [folder / "model_index.json", *sorted(folder.glob("*/config.json"))]:
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _modules(pipe) -> dict[str, Any]:
    import torch

    return {name: getattr(pipe, name) for name in pipe.components if isinstance(getattr(pipe, name), torch.nn.Module)}


def _half_state(module) -> dict[str, Any]:
    """The module's floating-point tensors as they load back from float16 storage: rounded, then float32."""
    return {k: v.half().float() for k, v in module.state_dict().items() if v.is_floating_point()}


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
    _follow_umask(folder)
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
    _follow_umask(folder)


def choose_people(world: Path, count: int) -> list[dict[str, Any]]:
    """``count`` held-out people with reference renders, chosen deterministically for varied looks.

    Men and women alternate (as far as there are both); each next person is the one of that gender whose looks
    (:data:`LOOKS`) add the most values not yet shown, the lowest id on a tie.
    """
    from ..world.attributes import load_people

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
    _follow_umask(folder)
    return [person_name(p) for p in people]


def write_benchmark_people(world: Path, folder: Path) -> list[str]:
    """The 20 held-out people of ``evaluate --benchmark mini`` (the benchmark's own seeded choice from the world's
    references), as a subject folder, so that the benchmark runs offline on the same people as on the world."""
    from ...evaluation.benchmarks import load_subjects
    from ..world.benchmark import benchmark_people

    chosen = benchmark_people(load_subjects(world / "references"))
    for person in chosen:
        shutil.copytree(world / "references" / person.name, folder / person.name)
    nouns = {person.name: person.class_noun for person in chosen}
    (folder / "subjects.json").write_text(json.dumps(nouns, indent=1) + "\n", encoding="utf-8")
    _follow_umask(folder)
    return [person.name for person in chosen]


def _references_settings(world: Path) -> dict[str, Any]:
    marker = world / "stages" / "references.json"
    if marker.is_file():
        rebuild = "rebuild the world's references with `facediffuser world build --redo references`"
        return read_stage_marker(marker, rebuild)["settings"]
    return {}


def write_stages(build: Path, folder: Path, shipped: Path | None = None) -> None:
    """The build's stage markers, as they are (small JSON: each stage's settings and wall time). A stage the build
    took from the package (``mini build --from``, recorded in its later stages' ``from_package``) keeps the marker
    shipped in ``shipped``: the shipped stages stay described, and ``--from`` can continue from them again."""
    from .build import STAGES, marker_path

    from_package: set[str] = set()
    for stage in STAGES:
        if marker_path(build, stage).is_file():
            rebuild = f"move it and {build / stage} away and rebuild the stage with `facediffuser mini build`"
            record = read_stage_marker(marker_path(build, stage), rebuild)
            from_package.update((record["settings"].get("from_package") or {}).get("stages", []))
    for stage in STAGES:
        if marker_path(build, stage).is_file():
            shutil.copyfile(marker_path(build, stage), folder / f"{stage}.json")
        elif stage in from_package:
            if shipped is None or not (shipped / f"{stage}.json").is_file():
                raise ValueError(
                    f"{build} was built on the {stage!r} stage shipped in the package, whose marker is not in "
                    f"{shipped}: ship into the package the build started from."
                )
            shutil.copyfile(shipped / f"{stage}.json", folder / f"{stage}.json")
    _follow_umask(folder)


# ------------------------------------------------------------------------------------------------ the command
def ship(config: ShipConfig) -> ShipReport:
    """Checks the build, the world, the people asked for and the target; builds every shipped folder beside its
    place (a pipeline over budget, or any refusal, stops the ship before anything is replaced), then swaps them all
    in, and removes the interim ``mini/vae``. A refusal or Ctrl-C before the swap leaves the old package whole."""
    from ...io.output_folders import listed_files, write_folders_atomically, write_marker

    target = config.target
    inputs = (config.build, config.world)
    marker = check_target(target, inputs)
    source = check_build(config.build)
    check_world(config.world)
    choose_people(config.world, config.people)  # enough held-out people, before anything is written
    folders = shipped_folders(target)
    interim = target.joinpath(*package_data.MINI_VAE)
    sizes: dict[str, int] = {}
    kept: dict[str, int] = {}
    people: list[str] = []
    written: dict[str, list[str]] = {}

    def pipeline(new: Path) -> None:
        result, pruned = write_pipeline(source, new, config.max_mib, config.subject_guidance_scale)
        sizes.update(result)
        kept.update(pruned)

    writers = {
        "pipeline": pipeline,
        "stages": lambda new: write_stages(config.build, new, folders["stages"]),
        "clip": lambda new: write_world_clip(config.world / "clip", new),
        "faces": lambda new: write_faces(config.world / "faces", new),
        "examples": lambda new: people.extend(write_examples(config.world, new, config.people)),
        "references": lambda new: write_benchmark_people(config.world, new),
    }

    def recorded(name: str) -> Callable[[Path], None]:
        def write(new: Path) -> None:
            writers[name](new)
            base = folders[name].relative_to(target).as_posix()
            written[name] = [f"{base}/{f}" for f in listed_files(new, new)]

        return write

    replaced = [folders[name].relative_to(target).as_posix() + "/" for name in folders]
    replaced.append(interim.relative_to(target).as_posix() + "/")
    kept_files = [f for f in (marker or {"files": []})["files"] if not any(f.startswith(r) for r in replaced)]
    new_files = lambda: [f for files in written.values() for f in files]  # noqa: E731

    def before_swap() -> None:
        check_target(target, inputs)  # nothing of a user's appeared meanwhile
        # Until the old folders are gone, the marker lists both: an interrupted swap leaves nothing unlisted.
        write_marker(target, COMMAND, [*(marker or {"files": []})["files"], *new_files()])

    write_folders_atomically({folders[name]: recorded(name) for name in writers}, recheck=before_swap)
    logger.info("Shipped the mini pipeline to %s (%.2f MiB)", folders["pipeline"], sum(sizes.values()) / MIB)
    if interim.is_dir():
        shutil.rmtree(interim)
        logger.info("Removed the interim %s: the shipped VAE is now %s", interim, folders["pipeline"] / "vae")
    write_marker(target, COMMAND, [*kept_files, *new_files()])
    logger.info("Shipped the world's CLIP, face recognizer and %d example people to %s", len(people), target)
    return ShipReport(folders=folders, pipeline_sizes=sizes, people=people, vocabulary=kept)
