"""Finding faces in a photo: dlib's HOG frontal face detector, shared by generation and evaluation.

``generate`` and the demo use it to refuse a reference photo in which no face can be found; the dlib identity backend
of the evaluation (:mod:`facediffuser.evaluation.dlib_backend`) builds its descriptors on the faces it finds. The
detector is built into dlib itself, so it needs no model files. dlib is optional (``pip install
"facediffuser[eval]"``): :func:`optional_face_detector` returns ``None`` without it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import PIL.Image

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install dlib-bin face_recognition_models  (or: pip install "facediffuser[eval]")'


class FaceCounter(Protocol):
    """What the reference check asks of a detector: dlib's :class:`FaceDetector`, a pipeline's own
    (:class:`facediffuser.models.FaceDetector`) or the world's
    (:class:`facediffuser.lab.world.face_backend.MiniFaceBackend`)."""

    def count_faces(self, image: PIL.Image.Image) -> int: ...


# model name -> "module:function" giving ``(face_check, detector)`` for that model's reference photos, for models
# whose references dlib cannot read (the lab's mini model: renders of its world). Reached by name, never by import, so
# that this layer knows nothing of the lab.
REFERENCE_FACE_CHECKS: dict[str, str] = {"mini": "facediffuser.lab.world.face_backend:reference_face_check"}


def model_face_check(model: str, face_check: bool) -> tuple[bool, FaceCounter | None] | None:
    """``(face_check, detector)`` from the check registered for ``model`` (:data:`REFERENCE_FACE_CHECKS`), or
    ``None`` when none is."""
    target = REFERENCE_FACE_CHECKS.get(model)
    if target is None:
        return None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)(model, face_check)


def import_dlib():
    """The ``dlib`` module; ``ValueError`` with the install command when it is missing."""
    try:
        import dlib
    except ImportError as err:
        raise ValueError(
            f"Face detection needs the dlib package, which is not installed ({err}). Install it with: {INSTALL_HINT}"
        ) from err
    return dlib


def to_dlib_array(image: PIL.Image.Image) -> np.ndarray:
    """``(H, W, 3)`` contiguous uint8 RGB, the layout dlib takes."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


class FaceDetector:
    """dlib's HOG frontal face detector.

    Args:
        upsample: how many times the detector upsamples the image first. 1 finds faces down to about 40 px; 0 is
            about ten times faster and finds faces from about 80 px.
        min_confidence: faces whose detector score is below this are dropped (dlib's own threshold is 0).
    """

    def __init__(self, *, upsample: int = 1, min_confidence: float = 0.0):
        if upsample < 0:
            raise ValueError(f"`upsample` must be 0 or more, got {upsample}.")
        self.upsample = upsample
        self.min_confidence = min_confidence
        self._detector = import_dlib().get_frontal_face_detector()

    def detect(self, array: np.ndarray) -> list[tuple[Any, float]]:
        """``(dlib rectangle, confidence)`` of each face in an ``(H, W, 3)`` uint8 array, the largest first."""
        rects, confidences, _ = self._detector.run(array, self.upsample, self.min_confidence)
        return sorted(zip(rects, (float(c) for c in confidences)), key=lambda rc: rc[0].area(), reverse=True)

    def count_faces(self, image: PIL.Image.Image) -> int:
        """How many faces the detector finds in ``image``."""
        return len(self.detect(to_dlib_array(image)))


def optional_face_detector(**kwargs: Any) -> FaceDetector | None:
    """A :class:`FaceDetector`, or ``None`` (logged) when dlib is not installed."""
    try:
        return FaceDetector(**kwargs)
    except ValueError as err:
        logger.info("Reference photos are not checked for faces (%s).", err)
        return None


def check_faces(
    people: Sequence[Sequence[PIL.Image.Image]],
    names: Sequence[str],
    detector: FaceCounter | None,
    *,
    skip_hint: str = "",
) -> None:
    """Raises ``ValueError`` naming the first photo in which ``detector`` finds no face; nothing when it is ``None``.

    ``people[i]`` holds the photos of the person called ``names[i]`` in the message (a file name, "--ref x.jpg",
    "reference 2"); ``skip_hint`` ends the message (e.g. how to skip the check).
    """
    if detector is None:
        return
    for name, photos in zip(names, people):
        for k, photo in enumerate(photos):
            if detector.count_faces(photo) == 0:
                which = f"photo {k + 1} of " if len(photos) > 1 else ""
                raise ValueError(
                    f"No face was found in {which}{name}. Give a photo in which the face is clearly visible "
                    f"(a frontal face crop works best){skip_hint}."
                )
