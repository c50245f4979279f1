"""``facediffuser mini people``: a folder of validation people, on whom the mini model's settings are chosen.

The mini benchmark (``facediffuser evaluate --benchmark mini``) scores 20 held-out people of the world, the ones the
package ships (``facediffuser/data/world/references``): they are the test set, and no setting is chosen on them. The
world holds more held-out people (``WORLD/references``, 200 with the default settings); this command copies the
others into a new folder of the same layout (``idNNNN/1.png ...`` and ``subjects.json``), so that the same
benchmark runs on them::

    facediffuser mini people --world WORLD --out VAL
    facediffuser evaluate --benchmark mini --data VAL --seed 7 --out RUN ...

On a folder of more than 20 people the benchmark draws 10 women and 10 men with its fixed seed, and their cases
(scenes, prompts) as for the test people.

``--training N`` instead renders reference photos of N people the SDM was trained on, drawn with a fixed seed from
the world's training split, exactly as the world renders the held-out people's: scored the same way, they tell
whether identity is lost to new people or to drawing.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ...evaluation.cases import load_subjects
from ...io import output_folders
from ...io.files import read_json, read_stage_marker
from ...io.outputs import atomic_write
from ...io.package_data import WORLD_REFERENCES, packaged
from ..world.attributes import load_people
from ..world.build import marker_path
from ..world.data import write_references

COMMAND = "mini people"


@dataclass
class PeopleConfig:
    """Settings of ``facediffuser mini people``: one dataclass, the source of the flags."""

    world: Path = field(metadata={"help": "the folder of `facediffuser world build` (or `world render`)"})
    out: Path = field(metadata={"help": "the folder of validation people to write (new or empty)"})
    training: int | None = field(
        default=None,
        metadata={"help": "render N of the world's training people instead of copying the held-out ones"},
    )

    def __post_init__(self) -> None:
        self.world = Path(self.world)
        self.out = Path(self.out)
        if self.training is not None and (isinstance(self.training, bool) or self.training < 1):
            raise ValueError(f"--training must be a positive number of people, got {self.training!r}.")


def check(config: PeopleConfig) -> Path:
    """Every check before anything is written: the world's files and the output folder."""
    references = config.world / "references"
    if config.training is None and not (references / "subjects.json").is_file():
        raise FileNotFoundError(
            f"{references} has no subjects.json: build the world's references first "
            f"(`facediffuser world render --out {config.world}`)."
        )
    if config.training is not None and not marker_path(config.world, "references").is_file():
        raise FileNotFoundError(
            f"{config.world} has no stages/references.json: build the world first "
            f"(`facediffuser world render --out {config.world}`)."
        )
    return output_folders.check(config.out, command=COMMAND, inputs=[config.world])


def copy_heldout(config: PeopleConfig) -> list[str]:
    """Copies the world's held-out people that the benchmark does not score; returns their names."""
    source = config.world / "references"
    test_people = {p.name for p in load_subjects(packaged(WORLD_REFERENCES))}
    nouns = read_json(source / "subjects.json", dict, "a map of class nouns")
    missing = sorted(test_people - set(nouns))
    if missing:
        raise ValueError(
            f"{source} is not the world of the shipped benchmark: it lacks its people {missing[:3]}. Build the world "
            "with the default settings."
        )
    kept = {name: noun for name, noun in sorted(nouns.items()) if name not in test_people}
    out = output_folders.claim(config.out, command=COMMAND, inputs=[config.world])
    output_folders.own(out, "subjects.json", *(f"{name}/" for name in kept), command=COMMAND)
    for name in kept:
        shutil.copytree(source / name, out / name, dirs_exist_ok=True)
    text = (json.dumps(kept, indent=1) + "\n").encode("utf-8")
    atomic_write(out / "subjects.json", lambda f: f.write(text), overwrite=True)
    return list(kept)


def render_training(config: PeopleConfig) -> list[str]:
    """Renders references of ``config.training`` training people as the world renders the held-out people's."""
    settings = read_stage_marker(
        marker_path(config.world, "references"), "rebuild the world's references with --redo references"
    )["settings"]
    people, split = load_people(config.world)
    if config.training > len(split["train"]):
        raise ValueError(f"--training must be at most the world's {len(split['train'])} training people.")
    chosen = [people[i] for i in sorted(random.Random(0).sample(split["train"], config.training))]
    out = output_folders.claim(config.out, command=COMMAND, inputs=[config.world])
    output_folders.own(out, "subjects.json", *(f"{p.name}/" for p in chosen), command=COMMAND)
    write_references(
        out, chosen, seed=settings["seed"], size=settings["size"], per_person=settings["references_per_person"]
    )
    return [p.name for p in chosen]


def write_people(config: PeopleConfig) -> list[str]:
    """Writes the folder of validation people; returns their names."""
    check(config)
    return copy_heldout(config) if config.training is None else render_training(config)
