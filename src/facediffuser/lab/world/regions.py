"""Where a model's person regions lie, measured on the world, whose people's true segments are known.

Two probes, both printed by ``python -m facediffuser.lab.world.regions --model FOLDER [--data-root PORTRAITS]``:

* :func:`world_numbers`: the pipeline's own region code (:class:`~facediffuser.regions.RegionSampler`) on rendered
  two-person scenes, encoded with the model's VAE and noised to chosen steps of a 50-step DDIM schedule, with each
  person's world references. Each scene is read with the people named left to right and right to left, and, with
  ``mirror``, on the mirrored render: a region that follows its person follows them in every case; one that follows
  the token's place in the prompt does not.
* :func:`training_attention`: the SDM's cross-attention the way its localization loss reads it, on two-person images
  of its own training data with the references the trainer cuts from them: whether each fused token attends more to
  its own person than to the other one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import numpy as np
import PIL.ImageOps
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from ...fusion import TEXT_MODEL_GUIDANCE, Condition, Stage
from ...pipeline import FaceDiffuserPipeline
from ...prompting import tokenize_prompts
from ...regions import RegionSampler
from ...settings import SamplingSettings
from . import attributes as A
from .data import reference_scene
from .render import render

STAGE_ONE = (2, 5, 8, 11, 14)  # stage-I steps of a 50-step DDIM schedule (alpha = 0.3); 14 is its last


def world_regions(
    pipe: FaceDiffuserPipeline,
    scene: A.SceneSpec,
    source: str,
    reverse: bool = False,
    mirror: bool = False,
    steps: Sequence[int] = STAGE_ONE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The regions the pipeline's own code reads for a rendered two-person ``scene`` at ``steps`` of a 50-step
    schedule (``source="sdm"`` probes the SDM at the last of them, as the pipeline does at the end of stage I), with
    each person's world references; with ``reverse`` the prompt names the people right to left, with ``mirror`` the
    render is mirrored (the people change sides, the prompt does not).

    Returns ``(share, iou)``, people in the scene's order: ``share[k, j]``, the mass of person ``k``'s soft region
    inside person ``j``'s true segment; ``iou[k, j]``, the IoU of ``k``'s hard region with ``j``'s segment."""
    rendered = render(scene)
    image, segmap = rendered.image, rendered.segmap
    if mirror:
        image, segmap = PIL.ImageOps.mirror(image), np.ascontiguousarray(segmap[:, ::-1])
    named = replace(scene, people=scene.people[::-1]) if reverse else scene
    text, ends = A.caption(named)
    for end in reversed(ends):
        text = text[:end] + f" {pipe.placeholder}" + text[end:]
    size = image.size[0]
    refs = [[render(reference_scene(p.identity, 0, j, size)).image for j in range(2)] for p in named.people]
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    marks = tokenize_prompts(pipe.tokenizer, [text], pipe.placeholder)[1]
    c, null, c_aug = pipe.encode_prompt([text], [pipe.cut_to_faces([refs])[0]], [""], torch.device("cpu"), 1)
    embeds = {Condition.TEXT: c, Condition.NULL: null, Condition.SUBJECT: c_aug}
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # the paper's schedule, whatever the model's own
    scheduler.set_timesteps(50)
    settings = SamplingSettings(region_source=source)
    sampler = RegionSampler(settings, marks, 1, latents.shape[-2:], c.shape[1], c.device)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    with sampler.installed(pipe.unet, pipe.subject_unet):
        for i in steps:
            t = scheduler.timesteps[i]
            x = scheduler.add_noise(latents, noise, t[None])
            sampler.before_text_model(pipe.unet, Stage.TEXT, TEXT_MODEL_GUIDANCE)
            FaceDiffuserPipeline._predict_noise(pipe.unet, TEXT_MODEL_GUIDANCE, x, t, embeds)
            next_stage = Stage.TEXT if i < steps[-1] else Stage.FUSION
            predict = partial(FaceDiffuserPipeline._predict_noise, pipe.subject_unet, latents=x, t=t, embeds=embeds)
            sampler.probe_subject_model(pipe.subject_unet, Stage.TEXT, next_stage, predict)
            sampler.after_step(Stage.TEXT, next_stage)
    seg = torch.from_numpy(segmap.astype(np.int64))
    segments = torch.stack([(seg == k + 1).float() for k in range(2)])[None]
    segments = F.interpolate(segments, size=latents.shape[-2:], mode="area")[0] > 0.5
    regions, hard = sampler.regions[0], sampler.assignment[0]
    if reverse:  # back to the scene's order
        regions, hard = regions.flip(0), torch.where(hard >= 0, 1 - hard, hard)
    share = torch.stack([torch.stack([(regions[k] * segments[j]).sum() for j in range(2)]) for k in range(2)])
    iou = torch.tensor(
        [
            [float(((hard == k) & segments[j]).sum() / ((hard == k) | segments[j]).sum()) for j in range(2)]
            for k in range(2)
        ]
    )
    return share, iou


def world_scenes(pipe: FaceDiffuserPipeline, seeds: Sequence[int]) -> list[A.SceneSpec]:
    """One two-person scene of the ``scenes`` distribution per seed, of 2 of the world's first 20 people each."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    people = A.make_identities(20, 0)
    return [
        A.sample_scene(A.SCENES, people[2 * s % 20 : 2 * s % 20 + 2], np.random.default_rng(s), size) for s in seeds
    ]


@torch.no_grad()
def world_numbers(
    pipe: FaceDiffuserPipeline,
    source: str,
    seeds: Sequence[int] = range(4),
    mirror: bool = False,
    steps: Sequence[int] = STAGE_ONE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`world_regions` over one scene per seed, each with the prompt in both orders (left to right first):
    ``(share, iou)`` stacked ``(2 * len(seeds), 2, 2)``."""
    shares, ious = [], []
    for scene in world_scenes(pipe, seeds):
        for reverse in (False, True):
            share, iou = world_regions(pipe, scene, source, reverse, mirror, steps)
            shares.append(share)
            ious.append(iou)
    return torch.stack(shares), torch.stack(ious)


def summary(share: torch.Tensor, iou: torch.Tensor) -> str:
    """Mean own / other share and hard-region IoU, and for how many people (over the prompt orders) the region lies
    more on their own segment than on the other's."""
    own, other = share.diagonal(dim1=1, dim2=2), share.flip(2).diagonal(dim1=1, dim2=2)
    iou_own, iou_other = iou.diagonal(dim1=1, dim2=2), iou.flip(2).diagonal(dim1=1, dim2=2)
    return (
        f"share own {own.mean():.2f} other {other.mean():.2f}, IoU own {iou_own.mean():.2f} other "
        f"{iou_other.mean():.2f}, own > other for {int((own > other).sum())}/{own.numel()} people"
    )


@torch.no_grad()
def training_attention(
    pipe: FaceDiffuserPipeline, data_root: str, images: int = 40, timestep: int = 500, seed: int = 0
) -> dict[str, tuple[int, int]]:
    """The SDM's attention on the first ``images`` two-person images of ``data_root``'s train split (the trainer's
    data pipeline: flips, the references it cuts, every person kept), noised to ``timestep``, read at the
    localization loss's layers: per case ``"first named on the left/right, person k"``, ``(layers where the fused
    token's attention lies more on its own person than on the other, layers read)``."""
    from ...training.attention import AttentionStore, install_attention_capture
    from ...training.data import FFHQWild, collate
    from ...training.losses import attention_grid
    from ...training.model import ModelKind, build_denoiser

    data = FFHQWild(
        root=data_root, split="train", tokenizer=pipe.tokenizer, resolution=pipe.unet.config.sample_size
        * pipe.vae_scale_factor, reference_size=pipe.image_encoder.config.image_size, with_subjects=True,
        max_subjects=2, subject_keep_prob=1.0, augment=True, placeholder=pipe.placeholder, seed=seed,
        reference_region="head" if pipe.face_detector is not None else "person",
    )  # fmt: skip
    denoiser = build_denoiser(ModelKind.SDM, pipe).eval()
    store = AttentionStore()
    install_attention_capture(denoiser.unet, store)
    counts: dict[str, list[int]] = {}
    generator = torch.Generator().manual_seed(seed)
    t = torch.tensor([timestep])
    read = 0
    for index in range(len(data)):
        sample = data[(0, index)]
        if sample["subject_masks"].shape[0] != 2:
            continue
        batch = collate([{**sample, "skipped": []}])
        latents = pipe.vae.encode(batch["pixel_values"]).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        noisy = DDIMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, t)
        store.reset()
        denoiser(
            noisy, t, pipe.text_encoder(batch["input_ids"])[0], batch["subject_pixels"], batch["subject_positions"]
        )
        masks = batch["subject_masks"]
        columns = torch.arange(masks.shape[-1], dtype=torch.float32)
        centre = [float((m.sum(0) * columns).sum() / m.sum()) for m in masks]
        side = "left" if centre[0] < centre[1] else "right"
        for probs in store.maps():
            grid = attention_grid(probs.shape[2], tuple(latents.shape[-2:]))
            fg = F.interpolate(masks[:, None], size=grid, mode="area").flatten(1)
            for k in range(2):
                column = probs[0, :, :, int(batch["subject_positions"][k, 1])].mean(0)
                hit = counts.setdefault(f"first named on the {side}, person {k + 1}", [0, 0])
                hit[0] += int((column * fg[k]).sum() > (column * fg[1 - k]).sum())
                hit[1] += 1
        read += 1
        if read >= images:
            break
    return {key: (hits, total) for key, (hits, total) in sorted(counts.items())}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m facediffuser.lab.world.regions",
        description="where a model's person regions lie on the world's two-person scenes",
    )
    parser.add_argument("--model", default="mini", help="pipeline folder, or 'mini' (the shipped model)")
    parser.add_argument("--sources", nargs="+", default=["tdm", "sdm"], choices=["tdm", "sdm"])
    parser.add_argument("--seeds", type=int, default=4, help="scenes (one per seed)")
    parser.add_argument(
        "--data-root", help="the SDM's training data (WORLD/portraits): also read its attention on training images"
    )
    args = parser.parse_args(argv)
    from ...io.package_data import data_dir

    folder = data_dir() / "mini" / "pipeline" if args.model == "mini" else args.model
    pipe = FaceDiffuserPipeline.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for source in args.sources:
        for mirror in (False, True):
            share, iou = world_numbers(pipe, source, range(args.seeds), mirror)
            for order, rows in (("left to right", slice(0, None, 2)), ("right to left", slice(1, None, 2))):
                render_side = "mirrored render" if mirror else "render"
                print(f"{source} | {render_side} | named {order} | {summary(share[rows], iou[rows])}")
    if args.data_root:
        for key, (hits, total) in training_attention(pipe, args.data_root).items():
            print(f"training images | {key} | own > other at {hits}/{total} layer readings ({hits / total:.0%})")


if __name__ == "__main__":
    main()


__all__ = ["STAGE_ONE", "summary", "training_attention", "world_numbers", "world_regions", "world_scenes"]
