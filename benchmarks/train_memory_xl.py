"""Memory of an SDXL SDM training step: measured on the CPU, the figures docs/training.md scales to the real SDXL.

Three measurements, each printed as one line of ``key=value``:

* ``--what tiny-xl``: one optimizer step of ``facediffuser train sdm --pretrained tiny-xl`` (the trainer itself, on a
  synthetic FFHQ-wild set): the peak resident memory the step adds to the process (``/proc/self/statm`` sampled
  every 0.2 ms from a thread) and the bytes autograd saved for the backward pass (unique storages, from
  ``torch.autograd.graph.saved_tensors_hooks``), beside the trained parameters, gradients and AdamW states counted
  from the tensors.
* ``--what sdxl-params``: the parameter counts of the real SDXL SDM's parts, built on the meta device (no memory):
  SDXL base's UNet (its published config), CLIP ViT-H/14's vision tower (SDXL's IP-Adapter image encoder), the
  fuser on 2048-wide tokens, the two text towers and the VAE.
* ``--what sdxl-activations``: the activations of one SDM UNet step on SDXL's layout (the real depths, attention
  head width 64, 2048-wide tokens, the localization loss's capture of every cross-attention block) with every
  channel count and head count divided by ``--width-divisor``, the module held in bfloat16 as DeepSpeed holds it:
  the bytes autograd saves for backward besides the parameters (``saved_total``: the activations without
  checkpointing), the largest single resnet or transformer block's share (``largest_block_saved``: what a
  checkpointed backward recomputes at once) and the captured attention maps. With ``--checkpointing``,
  ``saved_total`` is what the forward keeps (the checkpointed blocks' inputs). Activations are linear in the
  channel count at a fixed head width; run several resolutions to see them linear in the latent area.

Usage (one process per measurement; ``OMP_NUM_THREADS=1`` on a shared machine)::

    PYTHONPATH=src python benchmarks/train_memory_xl.py --what tiny-xl
    PYTHONPATH=src python benchmarks/train_memory_xl.py --what sdxl-params
    PYTHONPATH=src python benchmarks/train_memory_xl.py --what sdxl-activations --resolution 512 [--checkpointing]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

GIB = 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")

SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20),  # head counts (diffusers' naming), 64 channels each
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


@contextmanager
def peak_rss():
    """Yields a dict that holds, on exit, ``before`` and ``peak`` resident bytes sampled every 0.2 ms."""
    out = {"before": rss(), "peak": rss()}
    done = threading.Event()

    def sample():
        while not done.is_set():
            out["peak"] = max(out["peak"], rss())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out["peak"] = max(out["peak"], rss())


@contextmanager
def saved_bytes(skip: frozenset[int] = frozenset()):
    """Counts the unique storages autograd saves for backward: ``total`` (all saved in the block), ``peak`` (the most
    alive at once: a storage counts until the last saved tensor on it is freed)."""
    import weakref

    out = {"total": 0, "live": 0, "peak": 0}
    holders: dict[int, int] = {}  # storage -> live saved tensors on it
    sizes: dict[int, int] = {}

    def release(key: int) -> None:
        holders[key] -= 1
        if holders[key] == 0:
            out["live"] -= sizes.pop(key)
            del holders[key]

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if not key or key in skip:  # the parameters themselves are not activations
            return t
        if key not in holders:
            holders[key] = 0
            sizes[key] = storage.nbytes()
            out["total"] += storage.nbytes()
            out["live"] += storage.nbytes()
            out["peak"] = max(out["peak"], out["live"])
        holders[key] += 1
        weakref.finalize(t, release, key)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def tiny_xl() -> None:
    from facediffuser.training import ModelKind, TrainConfig, Trainer
    from facediffuser.training.synthetic import write_synthetic_ffhq_wild

    tmp = Path(tempfile.mkdtemp())
    root = write_synthetic_ffhq_wild(tmp / "data", num_images=8, size=72, test_images=2)
    config = TrainConfig(
        data_root=root, output_dir=tmp / "out", pretrained="tiny-xl", resolution=64, train_batch_size=2,
        checkpointing_steps=0, validation_steps=0, log_with="csv",
    )  # fmt: skip
    trainer = Trainer(ModelKind.SDM, config)
    batches = iter(trainer.train_loader)

    def step(batch):
        losses = trainer.compute_loss(batch, 0)
        trainer.accelerator.backward(losses["loss"])
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=False)

    step(next(batches))  # warm-up: gradients and AdamW states exist from here on
    batch = next(batches)
    with peak_rss() as mem, saved_bytes() as saved:
        step(batch)
    trained = trainer.trainable_parameters()
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    print(
        f"what=tiny-xl batch=2 resolution=64 step_peak_rss_added_MiB={(mem['peak'] - mem['before']) / 2**20:.1f} "
        f"saved_for_backward_MiB={saved['total'] / 2**20:.2f} trained_params={sum(p.numel() for p in trained)} "
        f"params_MiB={tensor_bytes(trained) / 2**20:.2f} grads_MiB={tensor_bytes(p.grad for p in trained) / 2**20:.2f} "
        f"adamw_MiB={tensor_bytes(states) / 2**20:.2f} process_rss_MiB={rss() / 2**20:.0f}"
    )


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sdxl_params() -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from facediffuser.models import SubjectFuser

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET)
        vision = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu",
            )
        )  # fmt: skip
        fuser = SubjectFuser(embed_dim=2048, image_embed_dim=1024)
        text = CLIPTextModel(
            CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        )
        text_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                projection_dim=1280,
            )
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip
    last_two = sum(count(layer) for layer in vision.vision_model.encoder.layers[-2:])
    print(
        f"what=sdxl-params unet={count(unet)} fuser={count(fuser)} vision_tower={count(vision)} "
        f"vision_last_2_layers={last_two} text_encoder={count(text)} text_encoder_2={count(text_2)} vae={count(vae)}"
    )


def sdxl_activations(resolution: int, divisor: int, checkpointing: bool, batch: int) -> None:
    from diffusers import UNet2DConditionModel

    from facediffuser.attention import AttentionStore, install_attention_capture
    from facediffuser.training.model_xl import XL_LOCALIZATION_LAYERS

    config = dict(SDXL_UNET)
    config["block_out_channels"] = tuple(c // divisor for c in SDXL_UNET["block_out_channels"])
    heads = tuple(h // divisor for h in SDXL_UNET["attention_head_dim"])
    if any(h * divisor != h0 for h, h0 in zip(heads, SDXL_UNET["attention_head_dim"])) or 0 in heads:
        raise SystemExit(f"--width-divisor {divisor} must divide SDXL's head counts {SDXL_UNET['attention_head_dim']}")
    config["attention_head_dim"] = heads
    unet = UNet2DConditionModel(**config)
    store = AttentionStore()
    install_attention_capture(unet, store, XL_LOCALIZATION_LAYERS)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    side = resolution // 8
    x = torch.randn(batch, 4, side, side)
    tokens = torch.randn(batch, 77, 2048)
    added = {
        "text_embeds": torch.randn(batch, 1280),
        "time_ids": torch.tensor([[resolution] * 2 + [0, 0] + [resolution] * 2] * batch).float(),
    }
    t = torch.tensor([500] * batch)
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    # The module in bfloat16 as DeepSpeed holds it with bf16 (no autocast): what autograd saves besides the
    # parameters themselves is activations.
    unet.to(torch.bfloat16)
    params = frozenset(p.untyped_storage().data_ptr() for p in unet.parameters())
    units = [m for m in unet.modules() if isinstance(m, (BasicTransformerBlock, ResnetBlock2D))]
    largest = {"unit": 0}

    def measure(module, args, kwargs=None):
        module._saved_before = saved["total"]

    def measured(module, args, *rest):
        largest["unit"] = max(largest["unit"], saved["total"] - module._saved_before)

    x, tokens = x.bfloat16(), tokens.bfloat16()
    added = {k: v.bfloat16() for k, v in added.items()}
    with saved_bytes(params) as saved:
        hooks = [h for m in units for h in (m.register_forward_pre_hook(measure), m.register_forward_hook(measured))]
        pred = unet(x, t, encoder_hidden_states=tokens, added_cond_kwargs=added).sample
        for h in hooks:
            h.remove()
        loss = pred.float().pow(2).mean() + sum(p.float().mean() for p in store.maps())
        after_forward = saved["live"]
        captured = len(store.maps())
        captured_bytes = sum(p.numel() * p.element_size() for p in store.maps())
        del pred
        store.reset()
        loss.backward()
    mib = 2**20
    print(
        f"what=sdxl-activations resolution={resolution} batch={batch} width_divisor={divisor} "
        f"checkpointing={checkpointing} unet_params={count(unet)} captured_layers={captured} "
        f"saved_after_forward_MiB={after_forward / mib:.1f} saved_total_MiB={saved['total'] / mib:.1f} "
        f"captured_maps_MiB={captured_bytes / mib:.1f} "
        f"largest_block_saved_MiB={largest['unit'] / mib:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", choices=("tiny-xl", "sdxl-params", "sdxl-activations"), required=True)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--width-divisor", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.what == "tiny-xl":
        tiny_xl()
    elif args.what == "sdxl-params":
        sdxl_params()
    else:
        sdxl_activations(args.resolution, args.width_divisor, args.checkpointing, args.batch)


if __name__ == "__main__":
    main()
