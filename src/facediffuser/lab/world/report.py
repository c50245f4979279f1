"""The world's held-out figures and pictures: ``report/metrics.json``, ``report/report.md`` and PNGs.

Everything is measured on the test splits, which show held-out people only:

- the CLIP: zero-shot accuracy per scene attribute and image-to-text recall@1 (:func:`~.clip.evaluate_clip`);
- the detector: recall and precision at IoU 0.5, on the images as rendered and softened (down to half size and
  back up, as a small generator's images look);
- the embedder: verification ROC AUC and equal-error rate over same-person pairs (different renders) and
  different-person pairs, with the score distributions; and identification through the ``mini`` backend: each
  test face against the reference folders of all held-out people.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .attributes import (
    CLOTHING_COLOURS,
    DISTRIBUTIONS,
    FACE_SHAPES,
    GARMENTS,
    GLASSES,
    HAIR_COLOURS,
    HAIR_STYLES,
    SCENE_ATTRIBUTES,
    SKIN_TONES,
    Identity,
    PersonSpec,
    SceneSpec,
)

logger = logging.getLogger(__name__)

SEED_PAIRS = 1234
DIFFERENT_PAIRS = 20000


def _faces_of(samples) -> tuple[list[tuple[int, list[float]]], list[int]]:
    faces, ids = [], []
    for k, s in enumerate(samples):
        for p in s.data["attributes"]["people"]:
            faces.append((k, p["face_box"]))
            ids.append(int(p["identity"]))
    return faces, ids


@torch.no_grad()
def face_figures(out: Path, samples) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Detection and verification figures on held-out test samples; also returns the same/different scores."""
    from .face_backend import MiniFaceBackend
    from .faces import (
        CROP_SIZE,
        FaceDetector,
        FaceEmbedder,
        at_detector_size,
        crop_face,
        detection_figures,
        equal_error_rate,
        roc_auc,
        to_input,
    )

    detector = FaceDetector.from_pretrained(out / "faces" / "detector").eval()
    embedder = FaceEmbedder.from_pretrained(out / "faces" / "embedder").eval()
    images, truth = at_detector_size(samples)
    x = to_input(torch.from_numpy(images))
    results: dict[str, Any] = {"detection": {}}
    half = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
    softened = torch.nn.functional.interpolate(half, size=x.shape[-2:], mode="bicubic", align_corners=False)
    for name, batch in (("as rendered", x), ("softened (32 px and back)", softened)):
        found = []
        for start in range(0, len(batch), 256):
            found += [[b for b, _ in faces] for faces in detector.detect(batch[start : start + 256])]
        results["detection"][name] = detection_figures(found, truth)

    faces, ids = _faces_of(samples)
    crops = np.stack([crop_face(Image.fromarray(samples[i].image), box, CROP_SIZE) for i, box in faces])
    emb = torch.cat([embedder(to_input(torch.from_numpy(crops[s : s + 512]))) for s in range(0, len(crops), 512)])
    sims = (emb @ emb.T).numpy()
    ids_arr = np.array(ids)
    image_of = np.array([i for i, _ in faces])
    iu = np.triu_indices(len(ids), k=1)
    same_mask = (ids_arr[iu[0]] == ids_arr[iu[1]]) & (image_of[iu[0]] != image_of[iu[1]])
    same = sims[iu][same_mask]
    rng = np.random.default_rng(SEED_PAIRS)
    a, b = rng.integers(len(ids), size=(2, DIFFERENT_PAIRS * 2))
    keep = ids_arr[a] != ids_arr[b]
    different = sims[a[keep], b[keep]][:DIFFERENT_PAIRS]
    eer, threshold = equal_error_rate(same, different)
    results["verification"] = {
        "faces": len(ids),
        "people": int(len(set(ids))),
        "same_pairs": int(len(same)),
        "different_pairs": int(len(different)),
        "roc_auc": roc_auc(same, different),
        "eer": eer,
        "eer_threshold": threshold,
        "same": {"mean": float(same.mean()), "std": float(same.std())},
        "different": {"mean": float(different.mean()), "std": float(different.std())},
    }

    # identification through the backend, as `facediffuser evaluate --ip-backend mini` uses it
    references = out / "references"
    backend = MiniFaceBackend(out / "faces")
    names = sorted(p.name for p in references.iterdir() if p.is_dir())
    refs = {}
    for name in names:
        photos = [Image.open(p).convert("RGB") for p in sorted((references / name).glob("*.png"))]
        e = backend.embed_reference(photos)
        if e is not None:
            refs[int(name[2:])] = e / e.norm()
    ref_ids = sorted(refs)
    hits = []
    if ref_ids:  # a face's identity is the nearest reference person
        nearest = (emb @ torch.stack([refs[i] for i in ref_ids]).float().T).argmax(dim=1).numpy()
        hits = [ref_ids[n] == i for n, i in zip(nearest, ids)]
    results["identification"] = {
        "references_found": len(ref_ids),
        "people": len(names),
        "top1": float(np.mean(hits)) if hits else 0.0,
        "chance": 1.0 / max(1, len(ref_ids)),
    }
    return results, same, different


def score_histogram(same: np.ndarray, different: np.ndarray, path: Path) -> None:
    """The same/different score histograms as a PNG (skipped, with a warning, without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'facediffuser[eval]'): %s is not drawn.", path)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    bins = np.linspace(-1, 1, 81)
    ax.hist(different, bins=bins, density=True, alpha=0.6, label=f"different people ({len(different)} pairs)")
    ax.hist(same, bins=bins, density=True, alpha=0.6, label=f"same person, other render ({len(same)} pairs)")
    ax.set_xlabel("cosine similarity of identity embeddings")
    ax.set_ylabel("density")
    ax.set_title("World face embedder on held-out people")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sample_grid(samples, path: Path, columns: int = 8, scale: int = 2) -> None:
    """The images of ``samples`` in a grid, each scaled up ``scale`` times (nearest neighbour)."""
    side = samples[0].image.shape[0] * scale
    rows = (len(samples) + columns - 1) // columns
    grid = Image.new("RGB", (columns * side, rows * side), (255, 255, 255))
    for k, s in enumerate(samples):
        image = Image.fromarray(s.image).resize((side, side), Image.Resampling.NEAREST)
        grid.paste(image, ((k % columns) * side, (k // columns) * side))
    grid.save(path)


def identity_sheet(identity: Identity, path: Path, size: int = 64, scale: int = 2) -> None:
    """One person rendered several ways: places, times, weather, clothing, pose and framing from explicit specs."""
    from .render import render

    looks = [
        ("beach", "day", "clear", "red", "shirt", 0.5, 0.36, 0.4, -0.8, -8),
        ("forest", "sunset", "clear", "green", "sweater", 0.45, 0.38, 0.3, 0.6, 5),
        ("city", "night", "rain", "yellow", "jacket", 0.55, 0.35, 0.34, 0.0, 10),
        ("desert", "day", "snow", "blue", "shirt", 0.4, 0.42, 0.26, 1.0, -3),
        ("meadow", "day", "clear", "white", "jacket", 0.5, 0.34, 0.44, -0.3, 0),
        ("mountains", "sunset", "fog", "purple", "sweater", 0.6, 0.4, 0.28, 0.3, -11),
    ]
    images = []
    for k, (place, time, weather, colour, garment, x, y, head, turn, tilt) in enumerate(looks):
        person = PersonSpec(identity, colour, garment, x=x, y=y, head=head, turn=turn, tilt=tilt, shade=0.5)
        scene = SceneSpec(place, time, weather, (person,), size=size, variant=k)
        images.append(render(scene).image.resize((size * scale, size * scale), Image.Resampling.NEAREST))
    sheet = Image.new("RGB", (len(images) * size * scale, size * scale))
    for k, image in enumerate(images):
        sheet.paste(image, (k * size * scale, 0))
    sheet.save(path)


def attribute_tables() -> str:
    """Markdown tables of the identity features and of each distribution's scene attribute probabilities."""
    lines = ["| identity feature | values |", "|---|---|"]
    features = {
        "class noun (gender)": ("man", "woman"),
        "skin tone": tuple(SKIN_TONES),
        "hair colour": tuple(HAIR_COLOURS),
        "hair style": HAIR_STYLES,
        "glasses": GLASSES,
        "facial hair (men)": ("none", "beard", "moustache"),
        "face shape": tuple(FACE_SHAPES),
    }
    for name, values in features.items():
        lines.append(f"| {name} | {', '.join(values)} |")
    lines += ["", "| scene attribute | value | `scenes` | `portraits` |", "|---|---|---|---|"]
    for attribute, values in SCENE_ATTRIBUTES.items():
        for v in values:
            p = [DISTRIBUTIONS[d].probabilities(attribute)[v] for d in ("scenes", "portraits")]
            lines.append(f"| {attribute} | {v} | {p[0]:.0%} | {p[1]:.0%} |")
    lines.append(f"| clothing kind | {', '.join(GARMENTS)} | uniform | uniform |")
    lines.append(f"| clothing colours | {len(CLOTHING_COLOURS)} | | |")
    return "\n".join(lines)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """The held-out figures as markdown tables (the docs paste them)."""
    clip = metrics["clip"]
    lines = ["| CLIP, held-out renders | `scenes` test | `portraits` test |", "|---|---|---|"]
    for attribute in ("place", "time", "clothing", "weather", "object"):
        cells = []
        for name in ("scenes", "portraits"):
            z = clip[name]["zero_shot"][attribute]
            cells.append(f"{z['accuracy']:.1%} (n={z['n']})")
        lines.append(f"| zero-shot {attribute} | {cells[0]} | {cells[1]} |")
        if attribute != "clothing":
            split = [clip[name]["zero_shot"][attribute]["by_people"] for name in ("scenes", "portraits")]
            cells = [" / ".join(f"{b[n]:.1%}" for n in ("one", "two") if n in b) for b in split]
            lines.append(f"| ... on one / two-person images | {cells[0]} | {cells[1]} |")
    lines.append(
        "| image-to-text recall@1 | "
        + " | ".join(f"{clip[n]['recall_at_1']:.1%} ({clip[n]['distinct_captions']} captions)" for n in clip)
        + " |"
    )
    faces = metrics["faces"]
    lines += ["", "| face networks, held-out people | value |", "|---|---|"]
    for name, d in faces["detection"].items():
        lines.append(f"| detection recall, {name} (IoU 0.5) | {d['recall']:.1%} of {d['faces']} faces |")
        lines.append(f"| detection precision, {name} | {d['precision']:.1%} of {d['found']} boxes |")
    v = faces["verification"]
    lines.append(f"| verification ROC AUC | {v['roc_auc']:.4f} |")
    lines.append(f"| equal-error rate (threshold) | {v['eer']:.2%} ({v['eer_threshold']:.2f}) |")
    lines.append(
        f"| same person, other render: cosine mean ± std | {v['same']['mean']:.2f} ± {v['same']['std']:.2f} "
        f"({v['same_pairs']} pairs) |"
    )
    lines.append(
        f"| different people: cosine mean ± std | {v['different']['mean']:.2f} ± {v['different']['std']:.2f} "
        f"({v['different_pairs']} pairs) |"
    )
    i = faces["identification"]
    lines.append(
        f"| identification via `--ip-backend mini` against {i['references_found']} reference folders | "
        f"{i['top1']:.1%} top-1 (chance {i['chance']:.1%}) |"
    )
    return "\n".join(lines)


def distinct_people(people: list[Identity], count: int) -> list[Identity]:
    """The first person, then each time the one whose features differ most from those already picked."""
    picked = [people[0]]
    while len(picked) < count:

        def distance(p: Identity) -> int:
            return min(sum(a != b for a, b in zip(p.features().values(), q.features().values())) for q in picked)

        picked.append(max((p for p in people if p not in picked), key=distance))
    return picked


def write_report(out: Path) -> Path:
    """Measures everything on the test splits and writes ``out/report``."""
    from .attributes import load_people
    from .clip import evaluate_clip
    from .data import read_samples

    people, split = load_people(out)  # first: a broken world.json names itself before anything is measured
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    scenes = read_samples(out / "scenes", "test")
    portraits = read_samples(out / "portraits", "test")
    metrics: dict[str, Any] = {
        "clip": {"scenes": evaluate_clip(out / "clip", scenes), "portraits": evaluate_clip(out / "clip", portraits)},
    }
    faces, same, different = face_figures(out, scenes + portraits)
    metrics["faces"] = faces
    score_histogram(same, different, report / "face_scores.png")
    (report / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")

    one = [s for s in scenes if len(s.data["attributes"]["people"]) == 1]
    two = [s for s in scenes if len(s.data["attributes"]["people"]) == 2]
    p_one = [s for s in portraits if len(s.data["attributes"]["people"]) == 1]
    p_two = [s for s in portraits if len(s.data["attributes"]["people"]) == 2]
    sample_grid(one[:8] + two[:8] + p_one[:8] + p_two[:8], report / "renders.png")
    heldout = [people[i] for i in split["heldout"]]
    for k, identity in enumerate(distinct_people(heldout, 3)):
        identity_sheet(identity, report / f"identity_{k}.png", size=s_size(scenes))
    (report / "tables.md").write_text(attribute_tables() + "\n", encoding="utf-8")
    (report / "report.md").write_text(metrics_markdown(metrics) + "\n", encoding="utf-8")
    logger.info("world report: %s", json.dumps(metrics)[:2000])
    return report


def s_size(samples) -> int:
    return int(samples[0].image.shape[0])
