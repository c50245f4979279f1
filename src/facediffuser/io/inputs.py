"""Checking a generation request before any model loads: the prompt's placeholders, the reference photos, the faces.

The command line and the web demo take the same request (a prompt with one placeholder per person, and one
reference per person) and must refuse the same bad input with the same sentences, before spending a minute on
loading the models. Every function here takes plain values and raises ``ValueError`` (or ``FileNotFoundError`` for a
missing file) with a sentence that reads well on a terminal and on a web page. Where a message names how the user
gives a reference, the caller passes its own words (``reference_term="--ref"`` on the command line).

Example::

    people = check_request("a man <|image|> riding a horse", ["photos/me.jpg"])
    images = pipe("a man <|image|> riding a horse", reference_images=people).images
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..images import ImageInput, load_person
from ..prompting import DEFAULT_PLACEHOLDER, check_placeholders
from .faces import FaceCounter, check_faces, model_face_check, optional_face_detector

# One person's reference: a photo (path or PIL image), a folder of photos, or a list of photos.
Reference = ImageInput | Sequence[ImageInput]


def check_prompt(
    prompt: str,
    num_references: int,
    *,
    placeholder: str = DEFAULT_PLACEHOLDER,
    reference_term: str = "reference photo",
) -> None:
    """Raises ``ValueError`` unless ``prompt`` has exactly one well-placed placeholder per reference.

    ``reference_term`` is how the user gives one person's reference, e.g. ``"--ref"`` or ``"reference photo"``.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("The prompt is empty: describe the picture, with a placeholder after each person's noun.")
    count = check_placeholders(prompt, placeholder)
    if count != num_references:
        raise ValueError(
            f"The prompt has {count} placeholder(s) {placeholder!r} but {num_references} {reference_term} were "
            f"given: give one {reference_term} per person, in order (e.g. 'a man {placeholder} ...' with one "
            f"{reference_term})."
        )


def reference_name(reference: Reference, index: int) -> str:
    """A short name of one person's reference for messages and metadata: the file or folder name, never a full path
    (an image shared with its metadata must not tell where its author keeps photos)."""
    if isinstance(reference, (str, os.PathLike)):
        return Path(reference).name or str(reference)
    return f"reference {index + 1}"


def load_references(references: Sequence[Reference]) -> list[list[Image.Image]]:
    """Each person's photos as RGB images: ``[person][photo]`` (see :func:`facediffuser.images.load_person`).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for an unreadable or too large one.
    """
    return [load_person(r) for r in references]


def reference_detector(model: str, face_check: bool, own: FaceCounter | None = None) -> tuple[bool, FaceCounter | None]:
    """``(face_check, detector)`` for :func:`check_request` on a request to ``model`` (``generate``'s and the demo's).

    The pipeline's own face detector (``own``: its optional ``face_detector`` component) when it has one, since the
    pipeline cuts its references with it; else the check registered for the model (:data:`facediffuser.io.faces.
    REFERENCE_FACE_CHECKS`: for the mini model, the world's detector, since dlib finds no face in a render); else the
    default check (dlib, ``detector`` ``None``)."""
    if not face_check:
        return False, None
    if own is not None:
        return True, own
    registered = model_face_check(model, face_check)
    return registered if registered is not None else (True, None)


def check_request(
    prompt: str,
    references: Sequence[Reference],
    *,
    placeholder: str = DEFAULT_PLACEHOLDER,
    face_check: bool = True,
    detector: FaceCounter | None = None,
    reference_term: str = "reference photo",
    names: Sequence[str] | None = None,
    skip_hint: str = "",
) -> list[list[Image.Image]]:
    """Checks a whole request and returns the loaded photos, ``[person][photo]``, ready for the pipeline.

    Args:
        prompt: the prompt, one ``placeholder`` after each person's class noun.
        references: one entry per person: a path, a folder, a PIL image or a list of them.
        face_check: refuse a photo in which no face is found (needs dlib; skipped, and logged, without it).
        detector: the face detector to use (built when ``None`` and ``face_check`` is on).
        reference_term: how the user gives one reference, for messages (``"--ref"`` on the command line).
        names: how each reference is named in messages (default: its file name, see :func:`reference_name`).
        skip_hint: appended to the no-face message, e.g. how to turn the check off.
    """
    check_prompt(prompt, len(references), placeholder=placeholder, reference_term=reference_term)
    people = load_references(references)
    if face_check:
        detector = detector if detector is not None else optional_face_detector()
        if names is None:
            names = [reference_name(r, i) for i, r in enumerate(references)]
        check_faces(people, names, detector, skip_hint=skip_hint)
    return people
