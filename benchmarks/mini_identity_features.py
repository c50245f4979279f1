"""Which identity features the recognizer's first choice shares with the asked person, in a mini benchmark run.

For every person of every image of each method of a run (``facediffuser evaluate --benchmark mini --out RUN``;
``predicted`` of its ``scores.csv``), whether the person the face recognizer chose first has the asked person's value
of each of the world's seven categorical identity features (a right choice agrees on all seven); beside it, in
brackets, the share of the run's other gallery people who have that value (what a choice blind to the feature would
give). Persons whose face was not found are left out. Usage::

    PYTHONPATH=src python benchmarks/mini_identity_features.py RUN [RUN ...] --world WORLD   # WORLD/world.json
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path

from facediffuser.lab.world.benchmark import load_identities


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="--out folders of `facediffuser evaluate --benchmark mini`")
    parser.add_argument("--world", type=Path, required=True, help="the `facediffuser world build` folder")
    args = parser.parse_args(argv)
    features = {name: person.features() for name, person in load_identities(args.world / "world.json").items()}
    for run in args.runs:
        rows = list(csv.DictReader((run / "scores.csv").open(encoding="utf-8")))
        gallery = sorted({name for row in rows for name in row["subjects"].split(";")})
        by_method = collections.defaultdict(list)
        for row in rows:
            by_method[row["method"]].append(row)
        for method, method_rows in by_method.items():
            agree, blind = collections.Counter(), collections.Counter()
            counted = right = 0
            for row in method_rows:
                chosen = json.loads(row["predicted"])["identity"]
                for asked, first in zip(row["subjects"].split(";"), chosen):
                    if first is None:
                        continue
                    counted += 1
                    right += first == asked
                    wanted, drawn = features[asked], features[first]
                    others = [features[name] for name in gallery if name != asked]
                    for feature, value in wanted.items():
                        agree[feature] += drawn[feature] == value
                        blind[feature] += sum(o[feature] == value for o in others) / len(others)
            if not counted:
                print(f"{run} {method}: no face found")
                continue
            shares = "  ".join(
                f"{f} {100 * agree[f] / counted:.0f}% ({100 * blind[f] / counted:.0f}%)" for f in sorted(agree)
            )
            print(f"{run} {method}: {counted} persons, {right} right; {shares}")


if __name__ == "__main__":
    main()
