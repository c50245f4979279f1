"""Draws the two-person cases of mini benchmark runs side by side: the references, then each method's image.

    python docs/mini/two_people.py --runs RUN [RUN ...] --out docs/mini/two_people.png [--cases 8]

Each RUN is a folder of ``facediffuser evaluate --benchmark mini`` with its ``scores.csv``; runs of the same
benchmark data and seed (their images of one case start from the same noise) give comparable columns. The
references come from the run's data folder (``run.json``'s ``data``), as the benchmark's grid shows them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import PIL.Image

from facediffuser.evaluation.benchmarks import load_benchmark
from facediffuser.evaluation.figures import image_grid
from facediffuser.evaluation.reports import read_scores
from facediffuser.prompting import strip_placeholders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="mini benchmark run folders")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--cases", type=int, default=8, help="the first N two-person cases")
    args = parser.parse_args(argv)

    data = {json.loads((run / "run.json").read_text(encoding="utf-8"))["data"] for run in args.runs}
    if len(data) != 1:
        parser.error(f"the runs read different reference folders: {sorted(data)}")
    benchmark = load_benchmark("mini", data.pop())
    people = {p.name: p for p in benchmark.gallery}
    images: dict[str, dict[str, Path]] = {}  # case -> method -> image
    titles: dict[str, str] = {}  # case -> prompt
    for run in args.runs:
        for row in read_scores(run / "scores.csv"):
            if row.group == "multi" and row.image_index == 0:
                images.setdefault(row.case_id, {})[row.method.split("/", 1)[-1].replace("_", " ")] = run / row.image
                titles[row.case_id] = strip_placeholders(row.prompt)
    columns = list(dict.fromkeys(method for case in images.values() for method in case))
    rows = [
        {
            "title": titles[case],
            "references": [people[name].photos[0].load() for name in case.split("/")[0].split("+")],
            "images": {m: PIL.Image.open(path).convert("RGB") for m, path in images[case].items() if path.is_file()},
        }
        for case in list(images)[: args.cases]
    ]
    if not image_grid(rows, columns, args.out):
        parser.error("the runs hold no two-person images")
    print(f"wrote {args.out}: {len(rows)} cases, {len(columns)} methods")


if __name__ == "__main__":
    main()
