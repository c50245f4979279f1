"""The world's CLIP: a small transformers :class:`~transformers.CLIPModel` with the project's CLIP tokenizer, trained
contrastively on the world's training images and captions, and its held-out figures.

Its text tower (hidden size = projection size, so it can be the mini models' text encoder and the fuser's width) is
what conditions the mini models; its vision tower is the SDM's starting image encoder; the whole model scores prompt
consistency through ``facediffuser evaluate --clip-model DIR``. For this model only, captions sometimes describe the
person's looks (as web captions do), so the vision tower learns identity features, and scene phrases are sometimes
left out, so that a prompt naming one attribute is in distribution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel

from ...images import CLIP_MEAN, CLIP_STD
from ...io.tokenizer import load_clip_tokenizer
from .attributes import (
    CLOTHING_COLOURS,
    GARMENTS,
    OBJECTS,
    PLACES,
    TIMES,
    WEATHERS,
    Identity,
    PersonSpec,
    SceneSpec,
    caption,
)

logger = logging.getLogger(__name__)

DROPPABLE = ("clothing", "object", "place", "time", "weather")


@dataclass(frozen=True)
class ClipSettings:
    """Widths and the training recipe of the world's CLIP."""

    embed_dim: int = 128  # text hidden size = projection size (the mini models' cross-attention width)
    text_layers: int = 3
    text_heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    image_size: int = 64
    patch_size: int = 16
    steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    looks_prob: float = 0.4  # captions that also describe the person's looks
    # Contrastive learning only learns what tells the captions of a batch apart. With full captions, clothing, time
    # and looks already do, and the place went unlearned (38% zero-shot after 1,000 steps, with each scene phrase
    # dropped with probability 0.2 or 0.5 alike). Scene-only captions (no clothing, no looks) can only be told apart
    # by place, time, weather and object.
    drop_prob: float = 0.3  # each scene phrase is left out with this probability
    scene_only_prob: float = 0.35  # the caption names the class nouns and the scene only
    seed: int = 0


def clip_config(settings: ClipSettings) -> CLIPConfig:
    d = settings.embed_dim
    text = {
        "vocab_size": 49408,
        "hidden_size": d,
        "intermediate_size": 4 * d,
        "num_hidden_layers": settings.text_layers,
        "num_attention_heads": settings.text_heads,
        "max_position_embeddings": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
        "projection_dim": d,
    }
    vision = {
        "hidden_size": settings.vision_hidden,
        "intermediate_size": 4 * settings.vision_hidden,
        "num_hidden_layers": settings.vision_layers,
        "num_attention_heads": settings.vision_heads,
        "image_size": settings.image_size,
        "patch_size": settings.patch_size,
        "projection_dim": d,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=d)


def build_clip(settings: ClipSettings = ClipSettings()) -> CLIPModel:
    torch.manual_seed(settings.seed)
    return CLIPModel(clip_config(settings))


# ------------------------------------------------------------------------------------------------- captions
def scene_from_attributes(attributes: dict[str, Any]) -> SceneSpec:
    """A :class:`SceneSpec` carrying what a json ``attributes`` record says (enough to write its captions)."""
    people = []
    for p in attributes["people"]:
        features = {
            k: p[k] for k in ("gender", "skin", "hair_colour", "hair_style", "glasses", "facial_hair", "face_shape")
        }
        identity = Identity(id=int(p["identity"]), **features)
        people.append(
            PersonSpec(identity=identity, clothing=p["clothing"], garment=p["garment"], x=0.5, y=0.5, head=0.3)
        )
    return SceneSpec(
        place=attributes["place"],
        time=attributes["time"],
        weather=attributes["weather"],
        object=attributes["object"],
        people=tuple(people),
    )


def training_caption(attributes: dict[str, Any], rng: np.random.Generator, settings: ClipSettings) -> str:
    """A web-style caption: sometimes with the person's looks, sometimes without some scene phrases, sometimes only
    the class nouns and the scene (always with its place)."""
    drop = {k for k in DROPPABLE if rng.uniform() < settings.drop_prob}
    looks = bool(rng.uniform() < settings.looks_prob)
    if rng.uniform() < settings.scene_only_prob:
        drop = (drop - {"place"}) | {"clothing"}
        if rng.uniform() < 0.5:  # the place alone: only the place tells such captions apart
            drop |= {"time", "weather", "object"}
        looks = False
    drop = frozenset(drop)
    return caption(scene_from_attributes(attributes), looks=looks, drop=drop)[0]


def zero_shot_prompts(attribute: str, people: str) -> dict[str, list[str]]:
    """Per value of a scene attribute, the prompts whose mean text feature stands for it. ``people`` is the
    caption's people as written without their clothing ("a man", "a woman and a man"): the prompt names who is in
    the picture, as a generation prompt does, and asks only for the attribute. Clothing prompts (one person) are an
    ensemble over the garments."""
    if attribute == "clothing":
        return {
            c: [f"{people} in {'an' if c[0] in 'aeiou' else 'a'} {c} {g}" for g in GARMENTS] for c in CLOTHING_COLOURS
        }
    phrases = {"place": PLACES, "time": TIMES, "weather": WEATHERS, "object": OBJECTS}[attribute]
    return {v: [f"{people} {p}".strip()] for v, p in phrases.items()}


def people_phrase(attributes: dict[str, Any]) -> str:
    """``"a man"``, ``"a woman and a man"``: the caption's people, left to right, without their clothing."""
    return " and ".join(f"a {p['gender']}" for p in attributes["people"])


# ------------------------------------------------------------------------------------------------- training
def images_to_pixels(images: np.ndarray, size: int) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, size, size)`` CLIP-normalized (bicubic resize when H differs)."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train_clip(
    images: np.ndarray,
    attributes: Sequence[dict[str, Any]],
    out_dir: str | Path,
    settings: ClipSettings = ClipSettings(),
    *,
    progress: bool = True,
) -> Path:
    """Trains the world's CLIP on ``images`` ``(N, H, W, 3)`` uint8 and their json ``attributes``; saves a
    transformers folder (model and tokenizer) at ``out_dir``."""
    if len(images) != len(attributes) or len(images) < 2:
        raise ValueError(f"Need at least two images with attributes, got {len(images)} and {len(attributes)}.")
    out_dir = Path(out_dir)
    model = build_clip(settings).train()
    # The world's captions use about a hundred of the 49,408 tokens: the token table stays at its seeded random
    # values (distinct, nearly orthogonal rows), which saves the optimizer 6.3M parameters per step.
    model.text_model.embeddings.token_embedding.weight.requires_grad_(False)
    tokenizer = load_clip_tokenizer()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in trained if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        t = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * t))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = np.random.default_rng([settings.seed, 30])
    generator = torch.Generator().manual_seed(settings.seed)
    batch = min(settings.batch_size, len(images))
    bar = tqdm(range(settings.steps), desc="world CLIP", disable=not progress, mininterval=5)
    losses = []
    for step in bar:
        index = rng.choice(len(images), size=batch, replace=False)
        pixels = images_to_pixels(images[index], settings.image_size)
        # a small random shift (never a flip: the caption's left-to-right order must stay true)
        shift = torch.randint(-3, 4, (2,), generator=generator).tolist()
        pixels = torch.roll(pixels, shifts=(shift[0], shift[1]), dims=(2, 3))
        texts = [training_caption(attributes[i], rng, settings) for i in index]
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels, return_loss=True
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(out.loss.detach()))
        if step % 50 == 0 or step == settings.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            logger.info("world CLIP step %d loss %.4f", step, np.mean(losses[-50:]))
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(
        __import__("json").dumps({"settings": asdict(settings), "losses": losses[:: max(1, len(losses) // 200)]}),
        encoding="utf-8",
    )
    return out_dir


# ------------------------------------------------------------------------------------------------- held-out figures
def evaluate_clip(clip_dir: str | Path, samples: Sequence[Any], *, batch_size: int = 64) -> dict[str, Any]:
    """Zero-shot accuracy per scene attribute and image-to-text recall@1 on held-out renders, through the same
    :class:`~facediffuser.evaluation.clip_score.ClipScorer` that scores prompt consistency.

    Each image's prompts name its people (:func:`zero_shot_prompts`). Clothing is scored on one-person images (two
    people may wear two colours). Recall@1: for each image, the best of the distinct plain captions of the set; a
    hit when it is the image's own caption.
    """
    from PIL import Image

    from ...evaluation.clip_score import ClipScorer

    scorer = ClipScorer.from_pretrained(clip_dir, batch_size=batch_size)
    images = [Image.fromarray(s.image) for s in samples]
    image_feats = F.normalize(scorer.image_features(images), dim=-1)  # (N, D)
    results: dict[str, Any] = {"images": len(samples), "zero_shot": {}}
    people = [people_phrase(s.data["attributes"]) for s in samples]
    one = [len(s.data["attributes"]["people"]) == 1 for s in samples]
    for attribute in ("place", "time", "weather", "clothing", "object"):
        keep = [k for k in range(len(samples)) if one[k] or attribute != "clothing"]
        if attribute == "clothing":
            truth = [samples[k].data["attributes"]["people"][0]["clothing"] for k in keep]
        else:
            truth = [samples[k].data["attributes"][attribute] for k in keep]
        class_feats = {}  # people phrase -> (V, D)
        for phrase in sorted({people[k] for k in keep}):
            prompts = zero_shot_prompts(attribute, phrase)
            class_feats[phrase] = torch.stack(
                [F.normalize(F.normalize(scorer.text_features(p), dim=-1).mean(0), dim=0) for p in prompts.values()]
            )
        values = list(zero_shot_prompts(attribute, "a man"))
        pred = [values[int((image_feats[k] @ class_feats[people[k]].T).argmax())] for k in keep]
        correct = [p == t for p, t in zip(pred, truth)]
        per_value = {
            v: float(np.mean([c for c, t in zip(correct, truth) if t == v])) for v in values if v in set(truth)
        }
        by_people = {
            n: float(np.mean([c for c, k in zip(correct, keep) if one[k] == (n == "one")]))
            for n in ("one", "two")
            if any(one[k] == (n == "one") for k in keep)
        }
        results["zero_shot"][attribute] = {
            "accuracy": float(np.mean(correct)),
            "n": len(keep),
            "per_value": per_value,
            "by_people": by_people,
        }
    captions = [s.data["caption"] for s in samples]
    distinct = sorted(set(captions))
    text_feats = F.normalize(scorer.text_features(distinct), dim=-1)
    best = (image_feats @ text_feats.T).argmax(dim=1).tolist()
    results["recall_at_1"] = float(np.mean([distinct[b] == c for b, c in zip(best, captions)]))
    results["distinct_captions"] = len(distinct)
    return results
