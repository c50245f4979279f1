"""CPU seconds per image of each default method of ``facediffuser evaluate --benchmark mini``, on one single-subject
and one two-subject case of the benchmark, and the whole benchmark's generation time they add up to. The cost does
not depend on the weights: any pipeline folder of the mini shapes will do. Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mini_benchmark_cost.py --model PIPELINE --data WORLD/references
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from facediffuser.evaluation.benchmarks import benchmark_defaults, load_benchmark
from facediffuser.evaluation.methods import parse_method
from facediffuser.io.loading import load_pipeline
from facediffuser.settings import SamplingSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a pipeline folder of the mini shapes")
    parser.add_argument("--data", required=True, help="the world's reference folder")
    parser.add_argument("--images-per-prompt", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="calls per method and case; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pipe = load_pipeline(args.model, device="cpu", dtype="float32", scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    benchmark = load_benchmark("mini", args.data)
    images = args.images_per_prompt or benchmark.images_per_prompt
    groups = {g: next(c for c in benchmark.cases if c.group == g) for g in ("single", "multi")}
    per_case = dict.fromkeys(groups, 0.0)
    for spec in benchmark_defaults("mini").methods:
        sampling = parse_method(spec).sampling(SamplingSettings())
        for group, case in groups.items():
            references = [[photo.load() for photo in person.photos] for person in case.people]
            cpu, wall = [], []
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                pipe(
                    prompt=case.prompt,
                    reference_images=references,
                    num_images_per_prompt=images,
                    generator=torch.Generator().manual_seed(42),
                    return_masks=True,
                    **sampling.pipeline_kwargs(),
                )
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            per_case[group] += min(cpu)
            print(f"{spec:28s} {group:6s} {images} image(s): CPU {min(cpu):.2f} s, wall {min(wall):.2f} s", flush=True)
    counts = {g: sum(c.group == g for c in benchmark.cases) for g in groups}
    total = sum(per_case[g] * counts[g] for g in groups)
    print(f"per case, all methods: {', '.join(f'{g} {v:.1f} s' for g, v in per_case.items())} (CPU)")
    print(f"benchmark: {counts} cases x {images} image(s): {total:.0f} s of generation ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
