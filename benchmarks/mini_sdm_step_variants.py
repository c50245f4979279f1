"""What a training setting costs or saves per step of the mini SDM recipe (``configs/mini_sdm.toml``) on the world's
``portraits``: each variant (the recipe with some settings changed) is timed in fresh processes, the variants
alternately round after round, so that all see the same machine; prints the median seconds per step of each, and its
ratio to the first. Run from the repository root:

    PYTHONPATH=src python benchmarks/mini_sdm_step_variants.py --world WORLD [--base PIPELINE] \\
        [--variant "recipe" --variant "no localization loss: localization_weight=0" ...] [--steps 30] [--rounds 2]

A variant is ``LABEL`` or ``LABEL: KEY=VALUE, KEY=VALUE`` with the trainer's setting names and TOML values
(``mixed_precision="bf16"``). The defaults compare the recipe with the localization loss off (which also removes its
cross-attention capture: the capture's cost) and with bfloat16 autocast. ``--base`` is a pipeline folder of the mini
shapes (default: the shipped mini model; the rate does not depend on the weights). The timed steps are the trainer's
own (``compute_loss``, backward, gradient clipping, AdamW, the EMA) after :data:`WARMUP` untimed ones, without
start-up, checkpoints or validation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import tomllib

WARMUP = 5
DEFAULT_VARIANTS = (
    "recipe",
    "no localization loss: localization_weight=0",
    'bf16 autocast: mixed_precision="bf16"',
)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"label: a=1, b='x'"`` -> ``("label", {"a": 1, "b": "x"})``."""
    label, _, settings = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in settings.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r} in variant {text!r}: write KEY=VALUE")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError as err:
            raise SystemExit(f"{value.strip()!r} in variant {text!r} is not a TOML value ({err})") from err
    return label.strip(), overrides


def time_steps(
    world: str, base: str, steps: int, threads: int, overrides: dict[str, Any], keep_freed_blocks: bool = True
) -> dict[str, float]:
    """In this process: ``steps`` optimizer steps of the trainer on the recipe with ``overrides``, after
    :data:`WARMUP` untimed ones; seconds and minor page faults per step. ``keep_freed_blocks=False`` leaves glibc's
    malloc at its defaults (``training.allocator``)."""
    import resource

    import torch

    from facediffuser.io.configuration import build_config, load_toml
    from facediffuser.training import trainer as trainer_module
    from facediffuser.training.config import ModelKind, TrainConfig
    from facediffuser.training.trainer import Trainer

    if not keep_freed_blocks:
        # Off in this process: setting any malloc variable would not do, glibc then stops adjusting its mmap threshold.
        trainer_module.keep_freed_blocks = lambda: False

    torch.set_num_threads(threads)
    values = load_toml("configs/mini_sdm.toml")
    with tempfile.TemporaryDirectory() as out:
        values.update(overrides)
        values.update(
            data_root=f"{world}/portraits",
            output_dir=out,
            pretrained=base,
            max_train_steps=steps + WARMUP,
            checkpointing_steps=0,
            validation_steps=0,
            log_with="csv",
        )
        trainer = Trainer(ModelKind.SDM, build_config(TrainConfig, base=values))
        acc, batches = trainer.accelerator, iter(trainer.train_loader)
        torch.set_flush_denormal(True)  # as Trainer.train does on a CPU
        for step in range(steps + WARMUP):
            if step == WARMUP:
                start, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            losses = trainer.compute_loss(next(batches), step)
            acc.backward(losses["loss"])
            acc.clip_grad_norm_(trainer.model.parameters(), trainer.config.max_grad_norm)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if trainer.ema is not None:
                trainer.ema.step(trainer.trainable_parameters())
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"seconds_per_step": seconds / steps, "faults_per_step": faults / steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="folder of `facediffuser world build`")
    parser.add_argument("--base", default=None, help="pipeline folder of the mini shapes (default: the shipped one)")
    parser.add_argument("--variant", action="append", help="LABEL[: KEY=VALUE, ...] (repeatable; default: three)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.base is None:
        from facediffuser.io import package_data

        args.base = str(package_data.packaged(package_data.MINI_PIPELINE))
    if args.child:
        overrides = json.loads(args.child)
        print(json.dumps(time_steps(args.world, args.base, args.steps, args.threads, overrides)))
        return

    variants = dict(parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS))
    results: dict[str, list[float]] = {label: [] for label in variants}
    command = [sys.executable, __file__, "--world", args.world, "--base", args.base]
    command += ["--steps", str(args.steps), "--threads", str(args.threads)]
    for round_ in range(args.rounds):
        for label, overrides in variants.items():
            done = subprocess.run(
                command + ["--child", json.dumps(overrides)], capture_output=True, text=True, check=False
            )
            if done.returncode:
                raise SystemExit(f"variant {label!r} failed:\n{done.stderr[-3000:]}")
            results[label].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_step"])
            print(f"round {round_ + 1}, {label}: {results[label][-1]:.3f} s/step", flush=True)
    medians = {label: statistics.median(runs) for label, runs in results.items()}
    first = next(iter(medians.values()))
    print(f"\n{args.steps} steps x {args.rounds} rounds, --threads {args.threads}, medians:")
    for label, seconds in medians.items():
        print(f"  {label:40s} {seconds:.3f} s/step  ({seconds / first:.3f} of the first)")


if __name__ == "__main__":
    main()
