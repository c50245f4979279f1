"""Identity-preservation (IP) backends: find the faces in an image and embed each one.

A backend turns a PIL image into :class:`Face` records; :func:`facediffuser.evaluation.metrics.identity_score` turns
their embeddings into the IP score. Backends are registered by name in :data:`IP_BACKENDS` as lazy
``"module:Class"`` paths and built with :func:`build_ip_backend`; a new one is a class with
:meth:`IdentityBackend.faces` (and :meth:`IdentityBackend.from_options` if it takes settings) plus one line there.

Scores of different backends live on different scales (FaceNet is the paper's; dlib is an offline stand-in): the
harness records the backend with every score and never puts two backends in one table.
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch

from .metrics import identity_score

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
        embedding: ``(D,)`` identity embedding, compared by cosine similarity.
        box: ``(x1, y1, x2, y2)`` in pixels, when the detector reports it.
        confidence: the detector's score for this face.
    """

    embedding: torch.Tensor
    box: tuple[float, float, float, float] | None = None
    confidence: float | None = None


class IdentityBackend(abc.ABC):
    """A face detector plus an identity embedder."""

    #: The name under which the backend is registered and recorded in every output.
    name: str = ""

    @abc.abstractmethod
    def faces(self, image: PIL.Image.Image) -> list[Face]:
        """Every face found in ``image`` (RGB), the largest first; an empty list when there is none."""

    @classmethod
    def from_options(cls, device: torch.device, options: Mapping[str, Any]) -> IdentityBackend:
        """The backend for the harness's ``options`` (its ``backend_options()``: each backend reads the keys it
        knows). The default takes none."""
        return cls()

    def settings(self) -> dict[str, Any]:
        """What, besides the name, decides this backend's numbers: written to the summary and part of the score
        cache's key, so a change here rescores every image."""
        return {}

    def embed_generated(self, image: PIL.Image.Image) -> torch.Tensor:
        """``(F, D)`` embeddings of all faces in a generated image (``F`` may be 0)."""
        found = self.faces(image)
        if not found:
            return torch.zeros(0, 0)
        return torch.stack([f.embedding.double() for f in found])

    def embed_reference(self, photos: Sequence[PIL.Image.Image]) -> torch.Tensor | None:
        """``(D,)`` identity of one person from their photos: the largest face of each photo, unit-normalized and
        averaged. ``None`` when no photo shows a face the detector finds."""
        embeddings = []
        for photo in photos:
            found = self.faces(photo)
            if found:
                e = found[0].embedding.double()
                embeddings.append(e / e.norm().clamp_min(1e-12))
        if not embeddings:
            return None
        return torch.stack(embeddings).mean(dim=0)

    def score(self, image: PIL.Image.Image, references: torch.Tensor) -> tuple[float, int]:
        """``(IP, number of faces found)`` of a generated image against ``(P, D)`` reference identities."""
        generated = self.embed_generated(image)
        return identity_score(generated, references), int(generated.shape[0])


# name -> "module:Class" of an IdentityBackend subclass, imported only when that backend is built, so that this base
# module knows no implementation (imports flow one way: the backends import this module, never the reverse). A new
# backend is one more line here, or a register_ip_backend call from its own package.
IP_BACKENDS: dict[str, str] = {
    "dlib": "facediffuser.evaluation.dlib_backend:DlibBackend",
    "facenet": "facediffuser.evaluation.facenet_backend:FacenetBackend",
    "mini": "facediffuser.lab.world.face_backend:MiniFaceBackend",
}


def register_ip_backend(name: str, target: str) -> None:
    """Registers the backend class at ``target`` (``"package.module:Class"``) under ``name``."""
    if ":" not in target:
        raise ValueError(f"Register a backend as 'package.module:Class', got {target!r}.")
    IP_BACKENDS[name] = target


def build_ip_backend(
    name: str, device: torch.device | str = "cpu", options: Mapping[str, Any] | None = None
) -> IdentityBackend:
    """The backend registered as ``name``, built by its :meth:`IdentityBackend.from_options`.

    Raises:
        ValueError: an unknown name, or a backend whose package or weights cannot be had (the message says how to
            get them, or which offline backend to use instead).
    """
    if name not in IP_BACKENDS:
        raise ValueError(
            f"Unknown IP backend {name!r}; choose from {', '.join(sorted(IP_BACKENDS))} (dlib works offline)."
        )
    module_name, class_name = IP_BACKENDS[name].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class.from_options(torch.device(device), dict(options or {}))
