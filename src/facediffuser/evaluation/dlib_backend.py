"""The ``dlib`` IP backend: dlib's HOG face detector, 5-point landmarks and 128-d ResNet face descriptor.

It works offline (the model files ship in the ``face_recognition_models`` package) and the models' licences allow
commercial use. The files are located without importing ``face_recognition_models`` (whose ``__init__`` needs
``pkg_resources``).

**Centring.** dlib's descriptors are built for Euclidean distance, not cosine: they all lean the same way, and two
unrelated people typically have a cosine near 0.86, which would make ``max(0, cos)`` useless. The backend therefore
subtracts a fixed mean descriptor before the cosine (``center=True``, the default). The mean is estimated from the
faces of scikit-image's ``lfw_subset`` (see :func:`lfw_subset_mean_descriptor`) and ships as
``data/dlib_mean_descriptor.json``. After centring, unrelated faces score about 0 and the same face about 0.95
(``docs/evaluation.md`` has the measured numbers). These scores are on their own scale: never compare them with
FaceNet's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from ..faces import INSTALL_HINT, FaceDetector, import_dlib, to_dlib_array
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


def load_mean_descriptor() -> np.ndarray:
    """The shipped ``(128,)`` mean descriptor used for centring."""
    text = (resources.files("facediffuser") / "data" / MEAN_DESCRIPTOR_FILE).read_text(encoding="utf-8")
    return np.asarray(json.loads(text)["mean"], dtype=np.float64)


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

    def settings(self) -> dict[str, Any]:
        return {
            "detector": "dlib HOG frontal",
            "embedder": "dlib_face_recognition_resnet_model_v1 (128-d)",
            "upsample": self.upsample,
            "centered": self.center,
            "min_confidence": self.min_confidence,
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


def lfw_subset_images(side: int = 150) -> list[PIL.Image.Image]:
    """The 100 face crops of scikit-image's ``lfw_subset`` (25x25 gray), upscaled bicubically to ``side`` px RGB."""
    from skimage.data import lfw_subset

    crops = lfw_subset()[:100]  # the first 100 are faces, the rest are not
    images = []
    for crop in crops:
        gray = PIL.Image.fromarray(np.round(crop * 255).astype(np.uint8))
        images.append(gray.resize((side, side), PIL.Image.Resampling.BICUBIC).convert("RGB"))
    return images


def lfw_subset_mean_descriptor(backend: DlibBackend | None = None) -> tuple[np.ndarray, int]:
    """Recomputes the shipped mean: the mean raw descriptor of the largest face found in each ``lfw_subset`` crop.

    Returns the ``(128,)`` mean and the number of faces it averages.
    """
    backend = backend or DlibBackend(upsample=1, center=False)
    descriptors = []
    for image in lfw_subset_images():
        found = backend.raw_descriptors(image)
        if found:
            descriptors.append(found[0][0])
    return np.mean(descriptors, axis=0), len(descriptors)


def main() -> None:
    """Prints the mean-descriptor JSON (``python -m facediffuser.evaluation.dlib_backend > ...json``)."""
    mean, count = lfw_subset_mean_descriptor()
    record = {
        "source": "skimage.data.lfw_subset(), first 100 crops, upscaled to 150 px bicubic, dlib upsample 1",
        "faces": count,
        "mean": [round(float(v), 8) for v in mean],
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
