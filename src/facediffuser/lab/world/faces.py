"""The world's face recognizer: a small face detector (the world's MTCNN) and an identity embedder (its FaceNet).

- :class:`FaceDetector` is a CenterNet-style fully convolutional network: on a ``64 x 64`` input it predicts, per
  ``4 x 4`` cell, a face-centre heat map, the sub-cell offset and the box size. It is trained here on the renderer's
  face boxes (head and hair) of training images; the network itself is in :mod:`facediffuser.models.face_detector`,
  since a pipeline can carry it as a component.
- :class:`FaceEmbedder` maps a square crop around a face box (resized to ``32 x 32``) to a unit vector, trained with a
  large-margin cosine loss (CosFace) over the training identities, so that cosine similarity separates people it
  has never seen.

Both are diffusers ``ModelMixin, ConfigMixin`` classes: ``save_pretrained`` / ``from_pretrained`` round-trip a
folder of ``config.json`` plus safetensors, the path a user's real weights take. Training augments with down- and
up-sampling and blur, so the networks also read the smaller, softer images a small diffusion model draws.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image, ImageOps
from torch import nn
from tqdm.auto import tqdm

from ...models.face_detector import DETECTOR_SIZE, STRIDE, FaceDetector, conv_block, to_input

logger = logging.getLogger(__name__)

CROP_SIZE = 32  # embedder input side
CROP_MARGIN = 1.25  # square crop side / longer side of the face box


class FaceEmbedder(ModelMixin, ConfigMixin):
    """``(N, 3, 32, 32)`` face crops in [-1, 1] -> ``(N, D)`` unit identity embeddings."""

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), embed_dim: int = 64):
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            conv_block(3, c1),
            conv_block(c1, c1),
            nn.MaxPool2d(2),  # 16
            conv_block(c1, c2),
            conv_block(c2, c2),
            nn.MaxPool2d(2),  # 8
            conv_block(c2, c3),
            nn.MaxPool2d(2),  # 4: the layout (eyes, hair, chin) stays in the flattened features
        )
        self.proj = nn.Linear(c3 * 16, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.body(x).flatten(1)), dim=-1)


# ------------------------------------------------------------------------------------------------ geometry
def square_crop_box(box: Sequence[float], margin: float = CROP_MARGIN) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, margin * max(x2 - x1, y2 - y1)
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_face(image: Image.Image, box: Sequence[float], size: int = CROP_SIZE) -> np.ndarray:
    """The square crop around ``box`` (black beyond the image's edges), resized to ``size``: ``(size, size, 3)``."""
    x1, y1, x2, y2 = square_crop_box(box)
    pad = int(math.ceil(max(0.0, -x1, -y1, x2 - image.width, y2 - image.height)))
    if pad:
        image = ImageOps.expand(image, border=pad, fill=(0, 0, 0))
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=(x1, y1, x2, y2)))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class FaceSettings:
    detector_steps: int = 1000
    detector_batch: int = 32
    detector_lr: float = 2e-3
    embedder_steps: int = 1000
    embedder_batch: int = 128
    embedder_lr: float = 3e-3
    cosface_scale: float = 24.0
    cosface_margin: float = 0.25
    soften_prob: float = 0.4  # down- and up-sample (or blur) a batch item, as a small generator's images look
    seed: int = 0


def _cosine_lr(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 50) -> torch.optim.lr_scheduler.LambdaLR:
    def at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, at)


def soften(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Down-sample by 2 (and back) or blur a random share of a ``(N, 3, H, W)`` batch."""
    n, _, h, w = x.shape
    pick = torch.rand(n, generator=generator) < prob
    if not pick.any():
        return x
    low = F.interpolate(x[pick], size=(h // 2, w // 2), mode="bilinear", align_corners=False, antialias=True)
    x = x.clone()
    x[pick] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return x


def detector_targets(boxes: Sequence[Sequence[Sequence[float]]], grid: int) -> tuple[torch.Tensor, ...]:
    """CenterNet targets for per-image face boxes (input pixels): a Gaussian centre map ``(N, G, G)``, and at each
    centre cell the offset and log size ``(N, 4, G, G)`` with a 0/1 mask ``(N, G, G)``."""
    n = len(boxes)
    heat = torch.zeros(n, grid, grid)
    reg = torch.zeros(n, 4, grid, grid)
    mask = torch.zeros(n, grid, grid)
    ys, xs = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    for i, faces in enumerate(boxes):
        for x1, y1, x2, y2 in faces:
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            bw, bh = max(x2 - x1, 1.0) / STRIDE, max(y2 - y1, 1.0) / STRIDE
            gx, gy = min(int(cx), grid - 1), min(int(cy), grid - 1)
            sigma = max(0.5, min(bw, bh) / 6)
            g = torch.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * sigma**2))
            heat[i] = torch.maximum(heat[i], g)
            reg[i, :, gy, gx] = torch.tensor([cx - gx, cy - gy, math.log(bw), math.log(bh)])
            mask[i, gy, gx] = 1.0
    return heat, reg, mask


def detector_loss(out: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the centre map plus L1 on offset and size at the centres."""
    p = torch.sigmoid(out[:, 0]).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * (1 - heat) ** 4 * p**2 * torch.log(1 - p)).sum()
    focal = focal / pos.sum().clamp_min(1)
    l1 = (F.l1_loss(out[:, 1:], reg, reduction="none") * mask[:, None]).sum() / mask.sum().clamp_min(1)
    return focal + l1


def train_detector(
    images: np.ndarray, boxes: Sequence[Sequence[Sequence[float]]], out_dir: str | Path, settings: FaceSettings
) -> Path:
    """Trains :class:`FaceDetector` on ``(N, 64, 64, 3)`` uint8 images and their face boxes; saves it."""
    if images.shape[1:3] != (DETECTOR_SIZE, DETECTOR_SIZE):
        raise ValueError(f"The detector trains on {DETECTOR_SIZE} px images, got {images.shape[1:3]}.")
    torch.manual_seed(settings.seed)
    model = FaceDetector().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.detector_lr, weight_decay=1e-4)
    scheduler = _cosine_lr(optimizer, settings.detector_steps)
    rng = np.random.default_rng([settings.seed, 40])
    generator = torch.Generator().manual_seed(settings.seed)
    grid = DETECTOR_SIZE // STRIDE
    losses = []
    bar = tqdm(range(settings.detector_steps), desc="face detector", mininterval=5)
    for step in bar:
        index = rng.choice(len(images), size=min(settings.detector_batch, len(images)), replace=False)
        x = soften(to_input(torch.from_numpy(images[index])), settings.soften_prob, generator)
        flip = torch.rand(len(index), generator=generator) < 0.5
        batch_boxes = []
        for k, i in enumerate(index):
            faces = boxes[i]
            if flip[k]:
                faces = [[DETECTOR_SIZE - b[2], b[1], DETECTOR_SIZE - b[0], b[3]] for b in faces]
            batch_boxes.append(faces)
        x[flip] = x[flip].flip(-1)
        loss = detector_loss(model(x), *detector_targets(batch_boxes, grid))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == settings.detector_steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            logger.info("face detector step %d loss %.4f", step, np.mean(losses[-50:]))
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    (Path(out_dir) / "training.json").write_text(json.dumps({"settings": asdict(settings), "losses": losses[::10]}))
    return Path(out_dir)


def jittered_crops(
    images: Sequence[np.ndarray], faces: Sequence[tuple[int, Sequence[float]]], rng: np.random.Generator
) -> np.ndarray:
    """One crop per ``(image index, face box)``, the box shifted and scaled by up to 8%: ``(F, 32, 32, 3)``."""
    out = np.empty((len(faces), CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    pil = {}
    for k, (i, box) in enumerate(faces):
        if i not in pil:
            pil[i] = Image.fromarray(images[i])
        x1, y1, x2, y2 = box
        s = max(x2 - x1, y2 - y1)
        dx, dy = rng.uniform(-0.08, 0.08, 2) * s
        scale = rng.uniform(0.92, 1.08)
        cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
        hw, hh = (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
        out[k] = crop_face(pil[i], (cx - hw, cy - hh, cx + hw, cy + hh))
    return out


def train_embedder(
    images: Sequence[np.ndarray],
    faces: Sequence[tuple[int, Sequence[float]]],
    identities: Sequence[int],
    out_dir: str | Path,
    settings: FaceSettings,
    *,
    crops_per_face: int = 2,
) -> Path:
    """Trains :class:`FaceEmbedder` with a CosFace loss: ``faces[k] = (image index, box)`` shows ``identities[k]``."""
    classes = sorted(set(identities))
    if len(classes) < 2:
        raise ValueError("Metric learning needs at least two identities.")
    label_of = {c: k for k, c in enumerate(classes)}
    labels = torch.tensor([label_of[i] for i in identities]).repeat(crops_per_face)
    rng = np.random.default_rng([settings.seed, 41])
    crops = np.concatenate([jittered_crops(images, faces, rng) for _ in range(crops_per_face)])
    torch.manual_seed(settings.seed)
    model = FaceEmbedder().train()
    weight = nn.Parameter(torch.randn(len(classes), model.config.embed_dim) * 0.01)
    optimizer = torch.optim.AdamW([*model.parameters(), weight], lr=settings.embedder_lr, weight_decay=5e-4)
    scheduler = _cosine_lr(optimizer, settings.embedder_steps)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    bar = tqdm(range(settings.embedder_steps), desc="face embedder", mininterval=5)
    for step in bar:
        index = rng.choice(len(crops), size=min(settings.embedder_batch, len(crops)), replace=False)
        x = soften(to_input(torch.from_numpy(crops[index])), settings.soften_prob, generator)
        flip = torch.rand(len(index), generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        y = labels[index]
        cos = model(x) @ F.normalize(weight, dim=-1).T  # (B, C)
        logits = settings.cosface_scale * (cos - settings.cosface_margin * F.one_hot(y, len(classes)))
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == settings.embedder_steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            logger.info("face embedder step %d loss %.4f", step, np.mean(losses[-50:]))
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    (Path(out_dir) / "training.json").write_text(
        json.dumps({"settings": asdict(settings), "identities": len(classes), "losses": losses[::10]})
    )
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------ held-out figures
def roc_auc(same: np.ndarray, different: np.ndarray) -> float:
    """Area under the ROC curve: P(a same-pair score > a different-pair score), ties counting half."""
    d = np.sort(np.asarray(different, dtype=np.float64))
    s = np.asarray(same, dtype=np.float64)
    below = np.searchsorted(d, s, side="left")
    ties = np.searchsorted(d, s, side="right") - below
    return float(np.mean(below + 0.5 * ties) / len(d))


def equal_error_rate(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """``(EER, threshold)``: where the false-reject rate of same pairs meets the false-accept rate of different ones
    (accept when score >= threshold); the mean of the two rates at the closest threshold."""
    same, different = np.sort(same), np.sort(different)
    thresholds = np.unique(np.concatenate([same, different]))
    frr = np.searchsorted(same, thresholds, side="left") / len(same)
    far = 1.0 - np.searchsorted(different, thresholds, side="left") / len(different)
    k = int(np.argmin(np.abs(frr - far)))
    return float((frr[k] + far[k]) / 2), float(thresholds[k])


def detection_figures(
    found: Sequence[Sequence[Sequence[float]]], truth: Sequence[Sequence[Sequence[float]]], iou: float = 0.5
) -> dict[str, Any]:
    """Recall and precision of found boxes against true boxes, greedy matching at ``iou``."""
    hits = predicted = actual = 0
    for boxes, true in zip(found, truth):
        predicted += len(boxes)
        actual += len(true)
        free = list(true)
        for box in boxes:
            scores = [box_iou(box, t) for t in free]
            if scores and max(scores) >= iou:
                free.pop(int(np.argmax(scores)))
                hits += 1
    return {
        "recall": hits / max(actual, 1),
        "precision": hits / max(predicted, 1),
        "faces": actual,
        "found": predicted,
        "iou": iou,
    }


def at_detector_size(samples: Sequence[Any]) -> tuple[np.ndarray, list[list[list[float]]]]:
    """Images at the detector's side and their face boxes scaled to it."""
    images, boxes = [], []
    for s in samples:
        scale = DETECTOR_SIZE / s.image.shape[1]
        image = s.image
        if scale != 1:
            image = np.asarray(Image.fromarray(image).resize((DETECTOR_SIZE, DETECTOR_SIZE), Image.Resampling.BICUBIC))
        images.append(image)
        boxes.append([[v * scale for v in p["face_box"]] for p in s.data["attributes"]["people"]])
    return np.stack(images), boxes
