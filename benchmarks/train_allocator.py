"""What ``training.allocator.keep_freed_blocks`` buys a CPU training step: the mini SDM recipe
(``configs/mini_sdm.toml``) on the world's ``portraits``, timed in fresh processes with glibc's default malloc and
with the trainer's settings, alternately, so that both see the same machine. Prints seconds and minor page faults
per step (the kernel mapping and zeroing pages; counted by ``getrusage``, so they do not depend on the machine's
load) and their ratios. Run from the repository root:

    PYTHONPATH=src python benchmarks/train_allocator.py --world WORLD [--base PIPELINE] [--steps 30] [--rounds 2]

``--base`` is a pipeline folder of the mini shapes (default: the shipped mini model; the rate does not depend on
the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def child(world: str, base: str, steps: int, threads: int, kept: bool) -> dict[str, float]:
    """One process: the recipe's steps, with glibc's default malloc unless ``kept``."""
    from mini_sdm_step_variants import time_steps  # this script's folder is on sys.path when the script runs

    return time_steps(world, base, steps, threads, {}, keep_freed_blocks=kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="folder of `facediffuser world build`")
    parser.add_argument("--base", default=None, help="pipeline folder of the mini shapes (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("default", "kept"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base is None:
        from facediffuser.io import package_data

        args.base = str(package_data.packaged(package_data.MINI_PIPELINE))
    if args.child:
        print(json.dumps(child(args.world, args.base, args.steps, args.threads, args.child == "kept")))
        return

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    modes = {"glibc default": "default", "kept (the trainer's)": "kept"}
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    command = [sys.executable, __file__, "--world", args.world, "--base", args.base]
    command += ["--steps", str(args.steps), "--threads", str(args.threads)]
    for round_ in range(args.rounds):
        for mode, flag in modes.items():
            done = subprocess.run(command + ["--child", flag], env=env, capture_output=True, text=True, check=True)
            results[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}, {mode}: {results[mode][-1]}", flush=True)
    medians = {
        mode: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for mode, runs in results.items()
    }
    (default, kept) = medians.values()
    print(f"\n{args.steps} steps x {args.rounds} rounds, --threads {args.threads}, medians:")
    for mode, m in medians.items():
        print(f"  {mode:22s} {m['seconds_per_step']:.3f} s/step  {m['faults_per_step']:,.0f} minor faults/step")
    print(
        f"  kept / default: time {kept['seconds_per_step'] / default['seconds_per_step']:.3f}, "
        f"faults {kept['faults_per_step'] / max(default['faults_per_step'], 1):.3f}"
    )


if __name__ == "__main__":
    main()
