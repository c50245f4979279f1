"""A validation set of people for the mini model's sampling knobs: held-out people of the world that the mini
benchmark does not use.

The mini benchmark (`facediffuser evaluate --benchmark mini`) scores 20 held-out people, the ones the package ships
(`facediffuser/data/world/references`). A knob chosen on them would be tuned on the test cases; one chosen on
training people would be chosen on people the SDM has seen. The world holds 200 held-out people
(`WORLD/references`): this script copies the other 180 into OUT, in the same layout (`idNNNN/1.png ...` and
`subjects.json`), so that the same benchmark runs on them::

    python benchmarks/mini_validation_people.py --world /work/artifacts/world/w --out /work/artifacts/mini/val-people
    facediffuser evaluate --benchmark mini --data /work/artifacts/mini/val-people --seed 7 --out RUN ...

On a folder of more than 20 people the benchmark draws 10 women and 10 men of them with its fixed seed, and its
cases (scenes, prompts) are drawn as for the test people. OUT must not exist yet: nothing is overwritten.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from facediffuser.evaluation.benchmarks import load_subjects
from facediffuser.package_data import WORLD_REFERENCES, packaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="the folder of `facediffuser world build`")
    parser.add_argument("--out", type=Path, required=True, help="the validation reference folder to write (new)")
    args = parser.parse_args()
    source = args.world / "references"
    if not (source / "subjects.json").is_file():
        raise SystemExit(f"{source} has no subjects.json: build the world's references first (`world build`).")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists already; give a new folder (nothing is overwritten).")
    test_people = {p.name for p in load_subjects(packaged(WORLD_REFERENCES))}
    nouns = json.loads((source / "subjects.json").read_text(encoding="utf-8"))
    missing = test_people - set(nouns)
    if missing:
        raise SystemExit(f"{source} is not the world of the shipped benchmark: it lacks {sorted(missing)}.")
    kept = {name: noun for name, noun in sorted(nouns.items()) if name not in test_people}
    args.out.mkdir(parents=True)
    for name in kept:
        shutil.copytree(source / name, args.out / name)
    (args.out / "subjects.json").write_text(json.dumps(kept, indent=1), encoding="utf-8")
    print(f"{len(kept)} held-out people ({len(test_people)} benchmark people left out) -> {args.out}")


if __name__ == "__main__":
    main()
