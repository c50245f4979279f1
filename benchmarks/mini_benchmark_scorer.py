"""How well the mini benchmark's attribute scorer reads images: on the world's own renders of every case (what a
perfect model would draw), and on renders with place, time, every colour and every person changed to another value
(a scorer that reads the image gets 0 there). Renders are shrunk to the mini model's size. Run from the repository
root:

    PYTHONPATH=src python benchmarks/mini_benchmark_scorer.py --world WORLD
"""

from __future__ import annotations

import argparse
import collections
import dataclasses

import numpy as np
import PIL.Image

from facediffuser.evaluation.benchmarks import load_benchmark
from facediffuser.evaluation.clip_score import ClipScorer
from facediffuser.evaluation.identity import build_ip_backend
from facediffuser.lab.world import benchmark as MB


def _next(values, value):
    return values[(values.index(value) + 1) % len(values)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="a `facediffuser world build` folder")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2, help="renders per case")
    args = parser.parse_args()
    benchmark = load_benchmark("mini", f"{args.world}/references")
    identities = MB.load_identities(f"{args.world}/world.json")
    backend = build_ip_backend("mini", options={"mini_weights": f"{args.world}/faces"})
    scorer = MB.MiniAttributeScorer(ClipScorer.from_pretrained(f"{args.world}/clip"), backend, benchmark.gallery)
    names = [p.name for p in benchmark.gallery]
    for changed in (False, True):
        scores = collections.defaultdict(list)
        for seed in range(args.seeds):
            for case in benchmark.cases:
                shown = case.attributes
                if changed:
                    people = [
                        {**p, "clothing": _next(MB.MINI_COLOURS, p["clothing"]), "name": _next(names, p["name"])}
                        for p in shown["people"]
                    ]
                    if len({p["name"] for p in people}) < len(people):
                        continue
                    shown = {
                        **shown,
                        "place": _next(MB.MINI_PLACES, shown["place"]),
                        "time": _next(MB.MINI_TIMES, shown["time"]),
                        "people": people,
                    }
                image = MB.render_case(dataclasses.replace(case, attributes=shown), identities, 64, seed)
                image = image.resize((args.size, args.size), PIL.Image.Resampling.BOX)
                (result,) = scorer.score([image], case)
                for metric in scorer.metrics:
                    scores[(case.group, metric)].append(result[metric])
        print("renders of other scenes and people:" if changed else "renders of the asked scenes and people:")
        for group in ("single", "multi"):
            cells = ", ".join(f"{m} {100 * np.mean(scores[(group, m)]):.1f}%" for m in scorer.metrics)
            print(f"  {group} ({len(scores[(group, 'place')])} images): {cells}")


if __name__ == "__main__":
    main()
