"""What Saliency-adaptive Noise Fusion does at small guidance scales: the stage-II fusion mask and the saliency maps
of a model (a distilled LCM model, or any other) at each guidance scale asked.

SNF's saliency is ``softmax(Smooth(|w * R|))`` over the latent positions of each image, with ``R`` a model's guidance
response (``eps(c) - eps(0)`` for the TDM, ``eps(c_aug) - eps(c)`` for the SDM; docs/method.md). A small ``w`` scales
both maps down alike, so the two softmaxes flatten towards uniform and the mask ``softmax_S > softmax_T`` is decided
by smaller and smaller differences: this script measures how far that goes. Per guidance scale, over the stage-II
steps of one image per person (the first photo of each of ``--people`` people of a subject folder):

- ``SDM share``: the fraction of latent positions where the SDM's noise is taken (the mask's mean);
- ``peak S`` and ``peak T``: the largest value of each softmax-normalized saliency map times the number of positions
  (1 is a flat map: no position stands out; the maps of a guided 50-step model peak far above 1);
- ``mask agreement``: the fraction of positions where the mask equals the one of the largest scale asked (how much of
  the decision the scale changes).

It writes a markdown table (stdout and ``--out``/snf.md) and a figure (``--out``/snf.png): per scale, the image, the
fusion mask of the first stage-II step, and both saliency maps. Example::

    python -m facediffuser.lab.mini.snf_guidance --model LCM --data VAL --steps 4 --scales 1 1.5 2 3 5 --out SNF
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

PROMPTS = (
    "a photo of a {noun} <|image|> in a red sweater in a park",
    "a photo of a {noun} <|image|> at the beach at night",
    "a photo of a {noun} <|image|> in a blue coat in a city street",
    "a photo of a {noun} <|image|> in a forest in the snow",
)


def people(data: Path, count: int) -> list[tuple[str, str, Path]]:
    """``(id, class noun, first photo)`` of the first ``count`` people of a subject folder (``subjects.json``)."""
    nouns = json.loads((data / "subjects.json").read_text(encoding="utf-8"))
    chosen = []
    for person in sorted(nouns)[:count]:
        photos = sorted(p for p in (data / person).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        chosen.append((person, nouns[person], photos[0]))
    return chosen


def measure(pipe, chosen, scales, steps, seed):
    """Per scale: the mean SDM share, the mean saliency peaks, the agreement with the largest scale's masks, and the
    first person's image and maps (for the figure)."""
    from PIL import Image

    from facediffuser.fusion import Stage

    results, masks_of = {}, {}
    for scale in scales:
        shares, peaks_s, peaks_t, masks, first = [], [], [], [], None
        for k, (_, noun, photo) in enumerate(chosen):
            out = pipe(
                PROMPTS[k % len(PROMPTS)].format(noun=noun),
                reference_images=[Image.open(photo).convert("RGB")],
                num_inference_steps=steps,
                guidance_scale=scale,
                return_masks=True,
                generator=torch.Generator().manual_seed(seed + k),
            )
            trace = out.fusion_trace
            fused = [i for i, stage in enumerate(trace.stages) if stage is Stage.FUSION]
            if not fused:
                raise SystemExit(f"{steps} steps at these alpha / beta have no stage II: nothing for SNF to do.")
            m = trace.masks[fused]  # (n, B, h, w)
            positions = m.shape[-1] * m.shape[-2]
            shares.append(m.mean().item())
            peaks_s.append((trace.saliency_subject[fused].flatten(-2).amax(-1) * positions).mean().item())
            peaks_t.append((trace.saliency_text[fused].flatten(-2).amax(-1) * positions).mean().item())
            masks.append(m)
            if first is None:
                i = fused[0]
                first = (
                    np.asarray(out.images[0]),
                    trace.masks[i, 0].numpy(),
                    trace.saliency_text[i, 0].numpy(),
                    trace.saliency_subject[i, 0].numpy(),
                )
        masks_of[scale] = masks
        results[scale] = {"sdm_share": np.mean(shares), "peak_s": np.mean(peaks_s), "peak_t": np.mean(peaks_t)}
        results[scale]["first"] = first
    top = max(scales)
    for scale in scales:
        same = [(a == b).float().mean().item() for a, b in zip(masks_of[scale], masks_of[top])]
        results[scale]["agreement"] = float(np.mean(same))
    return results


def table(results, header: str) -> str:
    lines = [
        header,
        "",
        "| guidance scale | SDM share of stage II | peak S (1 = flat) | peak T (1 = flat) | mask agreement with "
        f"w = {max(results):g} |",
        "|---|---|---|---|---|",
    ]
    for scale, r in results.items():
        lines.append(
            f"| {scale:g} | {r['sdm_share']:.3f} | {r['peak_s']:.2f} | {r['peak_t']:.2f} | {r['agreement']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def figure(results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = len(results)
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2.1 * rows), squeeze=False)
    for row, (scale, r) in enumerate(results.items()):
        image, mask, sal_t, sal_s = r["first"]
        for col, (data, title) in enumerate(
            ((image, f"w = {scale:g}"), (mask, "mask (white: SDM)"), (sal_t, "softmax saliency T"), (sal_s, "S"))
        ):
            ax = axes[row, col]
            ax.imshow(data, cmap=None if col == 0 else "gray" if col == 1 else "magma", vmin=0 if col == 1 else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder (or 'mini')")
    parser.add_argument("--data", type=Path, required=True, help="subject folder (subjects.json, one folder a person)")
    parser.add_argument("--people", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    parser.add_argument("--scheduler", default=None, help="a scheduler name (default: the model's own)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="folder for snf.md and snf.png")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from facediffuser.io.loading import load_pipeline, swap_scheduler

    pipe = load_pipeline(args.model, device="cpu")
    if args.scheduler:
        swap_scheduler(pipe, args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    chosen = people(args.data, args.people)
    results = measure(pipe, chosen, sorted(args.scales), args.steps, args.seed)
    header = (
        f"SNF at small guidance scales: model `{args.model}`, {type(pipe.scheduler).__name__} at {args.steps} steps, "
        f"{len(chosen)} people of {args.data.name} (one image each, seed {args.seed}+k), stage-II steps."
    )
    text = table(results, header)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "snf.md").write_text(text, encoding="utf-8")
        figure(results, args.out / "snf.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
