"""A validation set of people for the mini model's sampling knobs: held-out people of the world that the mini
benchmark does not use; or, with ``--training N``, people the SDM was trained on.

The mini benchmark (`facediffuser evaluate --benchmark mini`) scores 20 held-out people, the ones the package ships
(`facediffuser/data/world/references`). A knob chosen on them would be tuned on the test cases; one chosen on
training people would be chosen on people the SDM has seen. The world holds 200 held-out people
(`WORLD/references`): this script copies the other 180 into OUT, in the same layout (`idNNNN/1.png ...` and
`subjects.json`), so that the same benchmark runs on them::

    python benchmarks/mini_validation_people.py --world /work/artifacts/world/w --out /work/artifacts/mini/val-people
    facediffuser evaluate --benchmark mini --data /work/artifacts/mini/val-people --seed 7 --out RUN ...

``--training N`` instead renders reference photos of N training people, drawn with a fixed seed from the world's
training split, exactly as the world renders the held-out people's (``world.data.write_references``: the world's
seed and size, portraits of their own seed, none of them a training image). Scored the same way, they tell whether
the SDM draws the people it was trained on better than new ones: whether identity is lost to generalization or to
drawing.

On a folder of more than 20 people the benchmark draws 10 women and 10 men of them with its fixed seed, and its
cases (scenes, prompts) are drawn as for the test people. OUT must not exist yet: nothing is overwritten.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

from facediffuser.evaluation.benchmarks import load_subjects
from facediffuser.io.package_data import WORLD_REFERENCES, packaged


def copy_heldout(world: Path, out: Path) -> str:
    source = world / "references"
    if not (source / "subjects.json").is_file():
        raise SystemExit(f"{source} has no subjects.json: build the world's references first (`world build`).")
    test_people = {p.name for p in load_subjects(packaged(WORLD_REFERENCES))}
    nouns = json.loads((source / "subjects.json").read_text(encoding="utf-8"))
    missing = test_people - set(nouns)
    if missing:
        raise SystemExit(f"{source} is not the world of the shipped benchmark: it lacks {sorted(missing)}.")
    kept = {name: noun for name, noun in sorted(nouns.items()) if name not in test_people}
    out.mkdir(parents=True)
    for name in kept:
        shutil.copytree(source / name, out / name)
    (out / "subjects.json").write_text(json.dumps(kept, indent=1), encoding="utf-8")
    return f"{len(kept)} held-out people ({len(test_people)} benchmark people left out) -> {out}"


def render_training(world: Path, out: Path, count: int) -> str:
    from facediffuser.lab.world.build import load_people, marker_path
    from facediffuser.lab.world.data import write_references

    marker = marker_path(world, "references")
    if not (world / "world.json").is_file() or not marker.is_file():
        raise SystemExit(f"{world} has no world.json or stages/references.json: build the world first.")
    settings = json.loads(marker.read_text(encoding="utf-8"))["settings"]
    people, split = load_people(world)
    if not 0 < count <= len(split["train"]):
        raise SystemExit(f"--training must be between 1 and the world's {len(split['train'])} training people.")
    chosen = sorted(random.Random(0).sample(split["train"], count))
    write_references(
        out,
        [people[i] for i in chosen],
        seed=settings["seed"],
        size=settings["size"],
        per_person=settings["references_per_person"],
    )
    return f"{count} training people, {settings['references_per_person']} renders each -> {out}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="the folder of `facediffuser world build`")
    parser.add_argument("--out", type=Path, required=True, help="the validation reference folder to write (new)")
    parser.add_argument(
        "--training", type=int, metavar="N", help="render N training people's references instead of the held-out"
    )
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists already; give a new folder (nothing is overwritten).")
    if args.training is None:
        print(copy_heldout(args.world, args.out))
    else:
        print(render_training(args.world, args.out, args.training))


if __name__ == "__main__":
    main()
