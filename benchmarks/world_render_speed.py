"""Rendering speed of the world (``facediffuser.lab.world``): milliseconds per image, render alone and render + write.

Renders ``--images`` scenes of each distribution on one core and prints the median of ``--rounds`` rounds. On a
shared machine the figures vary with the load; the script prints the 1-minute load average beside them.

    PYTHONPATH=src python benchmarks/world_render_speed.py --images 200 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from facediffuser.lab.world.attributes import DISTRIBUTIONS, make_identities, split_identities
from facediffuser.lab.world.data import annotation, image_id, scene_for, write_sample
from facediffuser.lab.world.render import render


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    people = make_identities(1200, 0)
    train = [people[i] for i in split_identities(1200, 200, 0)["train"]]
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, dist in DISTRIBUTIONS.items():
        scenes = [scene_for(dist, train, 0, "train", k, args.size) for k in range(args.images)]
        render_ms, write_ms = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            rendered = [render(s) for s in scenes]
            render_ms.append(1000 * (time.perf_counter() - start) / args.images)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                for k, (scene, r) in enumerate(zip(scenes, rendered)):
                    write_sample(Path(tmp), image_id("train", k), r, annotation(scene, r, name))
                write_ms.append(1000 * (time.perf_counter() - start) / args.images)
        r, w = statistics.median(render_ms), statistics.median(write_ms)
        rate = 60000 / (r + w)
        print(f"{name:10s} {args.size} px: render {r:.1f} ms/image, write {w:.1f} ms/image, {rate:.0f} images/min")


if __name__ == "__main__":
    main()
