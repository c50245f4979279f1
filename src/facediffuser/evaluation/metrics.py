"""The paper's two scores as pure functions over embeddings (paper Sec. 4.1, FastComposer's protocol).

* **IP (identity preservation)**: the cosine similarity of face embeddings, clipped at 0. A generated image with no
  face scores 0. With several people, generated faces and references are paired by greedy matching and the image
  scores the *least* similar pair, so every person has to be drawn well.
* **PC (prompt consistency)**: the cosine similarity of CLIP image and text features (not multiplied by 100).

Nothing here knows about detectors, CLIP checkpoints or files: the backends produce embeddings, these functions score
them, and the tests feed them hand-made matrices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(N, D)`` and ``(M, D)`` -> ``(N, M)`` cosine similarities, computed in float64."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected (N, D) and (M, D) embeddings, got {tuple(a.shape)} and {tuple(b.shape)}.")
    a = a.double()
    b = b.double()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(eps)
    return a @ b.T


def identity_similarity_matrix(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """``(F, D)`` generated faces and ``(P, D)`` references -> ``(F, P)`` of ``max(0, cos)``."""
    return cosine_similarity_matrix(generated, references).clamp_min(0.0)


def greedy_match(similarity: torch.Tensor) -> list[tuple[int, int, float]]:
    """Pairs rows with columns by repeatedly taking the largest remaining entry.

    Each step takes the argmax of the matrix, records ``(row, column, value)``, then removes that row and column.
    It stops when rows or columns run out, so ``min(F, P)`` pairs come back, best first. Ties go to the smallest
    flat index (row-major), which makes the result deterministic.

    Example::

        >>> greedy_match(torch.tensor([[0.9, 0.8], [0.85, 0.1]], dtype=torch.float64))
        [(0, 0, 0.9), (1, 1, 0.1)]

    (The optimal assignment would pair (0, 1) and (1, 0) for a minimum of 0.8; the protocol is greedy on purpose.)
    """
    if similarity.ndim != 2:
        raise ValueError(f"Expected a (rows, columns) matrix, got shape {tuple(similarity.shape)}.")
    if similarity.isnan().any():
        raise ValueError("The similarity matrix holds NaN values.")
    remaining = similarity.double().clone()
    pairs: list[tuple[int, int, float]] = []
    for _ in range(min(remaining.shape)):
        flat = int(torch.argmax(remaining))
        row, col = divmod(flat, remaining.shape[1])
        pairs.append((row, col, float(similarity[row, col])))
        remaining[row, :] = -math.inf
        remaining[:, col] = -math.inf
    return pairs


def identity_score(generated: torch.Tensor, references: torch.Tensor) -> float:
    """IP of one generated image: ``(F, D)`` faces found in it against ``(P, D)`` reference identities.

    * No face in the image (``F = 0``): 0.
    * One reference: the best face's ``max(0, cos)``.
    * Several references: greedy matching (:func:`greedy_match`), then the minimum matched similarity. A reference
      left without a face (fewer faces than people) counts 0: a missing person is a failed image.
    """
    if references.ndim != 2 or references.shape[0] == 0:
        raise ValueError("At least one reference embedding is needed to score identity.")
    if generated.ndim != 2 or generated.shape[0] == 0:
        return 0.0
    pairs = greedy_match(identity_similarity_matrix(generated, references))
    if len(pairs) < references.shape[0]:
        return 0.0
    return min(value for _, _, value in pairs)


def prompt_consistency(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """PC: ``(N, D)`` CLIP image features and ``(N, D)`` text features, row by row -> ``(N,)`` cosines (no x100)."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"Expected matching (N, D) image and text features, got {tuple(image_features.shape)} and "
            f"{tuple(text_features.shape)}."
        )
    return torch.nn.functional.cosine_similarity(image_features.double(), text_features.double(), dim=1)


def mean_of(values: Iterable[float]) -> float:
    """The mean of the finite values (NaN marks an image that could not be scored); NaN when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
