"""Training throughput (optimizer steps per second) of the Face-diffuser trainer.

Two model sizes, both with random weights and a synthetic FFHQ-wild data set written to a temporary folder:

- ``tiny``: the tiny test components (:mod:`facediffuser.tiny`);
- ``sd15``: the real SD1.5 / CLIP ViT-L/14 architectures (UNet 320-640-1280-1280, 12-layer text encoder, 24-layer
  vision tower, 768-d fuser). To fit a CPU machine's memory the TDM and SDM slots share one UNet object (only the
  trained one matters for throughput).

Each measurement runs ``--warmup`` steps, then times ``--steps`` optimizer steps of :meth:`Trainer.train`'s inner
work (data loading, VAE and text encoding, forward, backward, clipping, AdamW).

    PYTHONPATH=src python benchmarks/train_throughput.py --models tiny sd15 --kinds sdm tdm --resolution 128
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from facediffuser.pipeline import FaceDiffuserPipeline
from facediffuser.tiny import SD15_SHAPED, build_tiny_pipeline
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = max(8, args.warmup + args.steps) * args.batch_size  # one epoch covers the whole measurement
        data = write_synthetic_ffhq_wild(work / "data", num_images=images, size=args.resolution)
        device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
        print(
            f"device {device}, resolution {args.resolution}, batch {args.batch_size}, "
            f"precision {args.mixed_precision}, gradient checkpointing {args.gradient_checkpointing}"
        )
        print(f"{'model':<6} {'kind':<4} {'steps/s':>9} {'s/step':>8}")
        for model in args.models:
            for kind in args.kinds:
                rate = measure(model, ModelKind(kind), args, data, work)
                print(f"{model:<6} {kind:<4} {rate:>9.3f} {1 / rate:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
