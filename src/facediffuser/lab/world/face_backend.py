"""``--ip-backend mini``: the world's face detector and identity embedder as an identity-preservation backend.

It follows the protocol of :mod:`facediffuser.evaluation.identity` (the harness does the greedy matching and scores
a missing face as zero). The weights are a folder with ``detector/`` and ``embedder/`` (written by
``facediffuser world faces``), found in this order: the ``mini_weights`` option, the ``FACEDIFFUSER_MINI_FACES``
environment variable, the copy shipped in the package (``facediffuser/data/world/faces``) when there is one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ...evaluation.identity import Face, IdentityBackend
from ...images import to_rgb
from ...io.package_data import WORLD_FACES, packaged
from .faces import FaceDetector, FaceEmbedder, crop_face, to_input

ENV_VAR = "FACEDIFFUSER_MINI_FACES"


def check_faces_folder(folder: str | Path) -> Path:
    """``folder`` as a Path when it holds ``detector/`` and ``embedder/`` model folders, else a clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The mini face-recognizer folder {folder} does not exist. Build it with `facediffuser world build --out "
            "DIR` (it is DIR/faces) or `facediffuser world faces --out DIR`."
        )
    missing = [p for p in ("detector/config.json", "embedder/config.json") if not (folder / p).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a mini face-recognizer folder: it lacks {', '.join(missing)}. Pass the faces/ folder "
            "written by `facediffuser world faces`."
        )
    return folder


def default_faces_folder() -> Path | None:
    shipped = packaged(WORLD_FACES)
    return shipped if shipped.is_dir() else None


def reference_face_check(model: str, face_check: bool) -> tuple[bool, MiniFaceBackend | None]:
    """``(face_check, detector)`` for checking the reference photos of a request to ``model``.

    The mini model's references are renders of the world, in which dlib finds no face: for ``model == "mini"`` the
    world's own detector checks them when the package ships it, and nothing does when it does not. Any other model
    keeps the default check (dlib, ``detector`` ``None``)."""
    from ...io.loading import MINI_MODEL

    if model != MINI_MODEL or not face_check:
        return face_check, None
    folder = default_faces_folder()
    return (True, MiniFaceBackend(folder)) if folder is not None else (False, None)


class MiniFaceBackend(IdentityBackend):
    """The world's detector finds faces on a 64 px copy of the image; the embedder embeds a square crop around each
    box, taken from the image at its own size.

    Args:
        folder: the faces folder (``detector/``, ``embedder/``).
        device: where the two networks run.
        threshold: the detector's centre-score threshold (default: the one saved with the detector).
    """

    name = "mini"

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", threshold: float | None = None):
        self.folder = check_faces_folder(folder)
        self.device = torch.device(device)
        self.detector = FaceDetector.from_pretrained(self.folder / "detector").to(self.device).eval()
        self.embedder = FaceEmbedder.from_pretrained(self.folder / "embedder").to(self.device).eval()
        self.threshold = float(self.detector.config.threshold if threshold is None else threshold)

    @classmethod
    def from_options(cls, device: torch.device, options: Mapping[str, Any]) -> MiniFaceBackend:
        """The harness's constructor: the folder from ``options["mini_weights"]``, ``$FACEDIFFUSER_MINI_FACES`` or
        the package."""
        folder = options.get("mini_weights") or os.environ.get(ENV_VAR) or default_faces_folder()
        if folder is None:
            raise ValueError(
                "The mini IP backend needs the world's face recognizer: run `facediffuser world build --out DIR` (or "
                f"`facediffuser world faces --out DIR`), then set {ENV_VAR}=DIR/faces."
            )
        return cls(folder, device=device)

    def settings(self) -> dict[str, Any]:
        return {"weights": str(self.folder.resolve()), "threshold": self.threshold}

    def count_faces(self, image: PIL.Image.Image) -> int:
        """How many faces the detector finds (the reference check of ``generate`` and the demo)."""
        return len(self.faces(image))

    @torch.no_grad()
    def faces(self, image: PIL.Image.Image) -> list[Face]:
        image = to_rgb(image)
        found = self.detector.find_faces(image, self.threshold)
        if not found:
            return []
        boxes = [tuple(b) for b, _ in found]
        crops = np.stack([crop_face(image, box) for box in boxes])
        embeddings = self.embedder(to_input(torch.from_numpy(crops)).to(self.device)).cpu()
        faces = [Face(e, box, score) for e, box, (_, score) in zip(embeddings, boxes, found)]
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
