"""Training throughput (optimizer steps per second) and peak memory of the Face-diffuser trainer.

Two model sizes, both with random weights and a synthetic FFHQ-wild data set written to a temporary folder:

- ``tiny``: the tiny test components (:mod:`facediffuser.io.tiny`);
- ``sd15``: the real SD1.5 / CLIP ViT-L/14 architectures (UNet 320-640-1280-1280, 12-layer text encoder, 24-layer
  vision tower, 768-d fuser). To fit a CPU machine's memory the TDM and SDM slots share one UNet object (only the
  trained one matters for throughput).

Each (model, kind) runs in a fresh Python process, as ``facediffuser train`` would: it builds the trainer, runs
``--warmup`` steps, then times ``--steps`` optimizer steps of :meth:`Trainer.train`'s inner work (data loading, VAE
and text encoding, forward, backward, clipping, AdamW). Its peak resident memory is what the kernel reports for that
process when it ends (``ru_maxrss`` from ``wait4``, including any data-loader workers): the "Maximum resident set
size" of ``/usr/bin/time -v``, not a sample taken from inside. POSIX only.

    PYTHONPATH=src python benchmarks/train_throughput.py --models tiny sd15 --kinds sdm tdm --resolution 128
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from facediffuser.io.tiny import SD15_SHAPED, build_tiny_pipeline
from facediffuser.pipeline import FaceDiffuserPipeline
from facediffuser.training import ModelKind, TrainConfig, Trainer
from facediffuser.training.synthetic import write_synthetic_ffhq_wild


def sd15_shaped_pipeline(seed: int = 0) -> FaceDiffuserPipeline:
    """Random weights in the SD1.5 + CLIP ViT-L/14 shapes."""
    return build_tiny_pipeline(seed, SD15_SHAPED)


def measure(model: str, kind: ModelKind, args: argparse.Namespace, data: Path, work: Path) -> float:
    base = build_tiny_pipeline(seed=0) if model == "tiny" else sd15_shaped_pipeline()
    config = TrainConfig(
        data_root=data,
        output_dir=work / f"{model}-{kind.value}",
        pretrained=model,
        resolution=args.resolution,
        train_batch_size=args.batch_size,
        max_train_steps=args.warmup + args.steps,
        checkpointing_steps=0,
        validation_steps=0,
        logging_steps=0,
        log_with="csv",
        gradient_checkpointing=args.gradient_checkpointing,
        mixed_precision=args.mixed_precision,
    )
    trainer = Trainer(kind, config, base_pipeline=base)
    trainer.model.train()
    acc = trainer.accelerator
    batches = iter(trainer.train_loader)
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = next(batches)
        with acc.accumulate(trainer.model):
            losses = trainer.compute_loss(batch, micro_step=step)
            acc.backward(losses["loss"])
            acc.clip_grad_norm_(trainer.model.parameters(), 1.0)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del trainer, base
    return args.steps / elapsed


def run_isolated(model: str, kind: str, argv: list[str], data: Path, work: Path) -> tuple[float, int]:
    """Measures one (model, kind) in a child process; returns its steps per second and its peak RSS in bytes."""
    command = [sys.executable, __file__, *argv, "--child", model, kind, str(data), str(work)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, as /usr/bin/time reads it
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"The {model} {kind} measurement failed (exit status {proc.returncode}).")
    rate = json.loads(out.strip().splitlines()[-1])["steps_per_s"]
    return rate, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--kinds", nargs="+", default=["sdm", "tdm"], choices=["sdm", "tdm"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)  # model kind data work
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    if args.child:
        model, kind, data, work = args.child
        rate = measure(model, ModelKind(kind), args, Path(data), Path(work))
        print(json.dumps({"steps_per_s": rate}), flush=True)
        return

    argv = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = max(8, args.warmup + args.steps) * args.batch_size  # one epoch covers the whole measurement
        data = write_synthetic_ffhq_wild(work / "data", num_images=images, size=args.resolution)
        device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
        print(
            f"device {device}, resolution {args.resolution}, batch {args.batch_size}, "
            f"precision {args.mixed_precision}, gradient checkpointing {args.gradient_checkpointing}"
        )
        print(f"{'model':<6} {'kind':<4} {'steps/s':>9} {'s/step':>8} {'peak RSS GiB':>12} {'max RSS kB':>11}")
        for model in args.models:
            for kind in args.kinds:
                rate, peak = run_isolated(model, kind, argv, data, work)
                print(
                    f"{model:<6} {kind:<4} {rate:>9.3f} {1 / rate:>8.2f} {peak / 2**30:>12.2f} {peak // 1024:>11d}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
