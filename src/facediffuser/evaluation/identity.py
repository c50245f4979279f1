"""Identity-preservation (IP) backends: find the faces in an image and embed each one.

A backend turns a PIL image into :class:`Face` records; :func:`facediffuser.evaluation.metrics.identity_score` turns
their embeddings into the IP score. Backends are registered by name (``dlib``, ``facenet``) and built with
:func:`build_ip_backend`; a new one is a class with :meth:`IdentityBackend.faces` plus one
:func:`register_ip_backend` call.

Scores of different backends live on different scales (FaceNet is the paper's; dlib is an offline stand-in): the
harness records the backend with every score and never puts two backends in one table.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
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

    def settings(self) -> dict[str, Any]:
        """What, besides the name, decides this backend's numbers (written to the summary)."""
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


# name -> factory(device, options); options are the harness's settings, each factory reads the keys it knows.
BackendFactory = Callable[[torch.device, Mapping[str, Any]], IdentityBackend]
IP_BACKENDS: dict[str, BackendFactory] = {}


def register_ip_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator that registers ``factory(device, options) -> IdentityBackend`` under ``name``."""

    def decorate(factory: BackendFactory) -> BackendFactory:
        IP_BACKENDS[name] = factory
        return factory

    return decorate


def build_ip_backend(
    name: str, device: torch.device | str = "cpu", options: Mapping[str, Any] | None = None
) -> IdentityBackend:
    """The backend registered as ``name``.

    Raises:
        ValueError: an unknown name, or a backend whose package or weights cannot be had (the message says how to
            get them, or which offline backend to use instead).
    """
    if name not in IP_BACKENDS:
        raise ValueError(
            f"Unknown IP backend {name!r}; choose from {', '.join(sorted(IP_BACKENDS))} (dlib works offline)."
        )
    return IP_BACKENDS[name](torch.device(device), dict(options or {}))


@register_ip_backend("dlib")
def _build_dlib(device: torch.device, options: Mapping[str, Any]) -> IdentityBackend:
    from .dlib_backend import DlibBackend

    return DlibBackend(upsample=int(options.get("dlib_upsample", 1)), center=bool(options.get("dlib_center", True)))


@register_ip_backend("facenet")
def _build_facenet(device: torch.device, options: Mapping[str, Any]) -> IdentityBackend:
    from .facenet_backend import FacenetBackend

    return FacenetBackend(device=device, weights=options.get("facenet_weights"))


IP_BACKENDS["mini"] = lambda device, options: __import__("facediffuser.world.face_backend", fromlist=["build"]).build(
    device, options
)
