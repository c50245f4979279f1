"""The ``facenet`` IP backend, as in the paper: MTCNN finds the faces, InceptionResnetV1 (VGGFace2) embeds them.

It runs through the ``facenet-pytorch`` package, imported only when this backend is built. That package imports
``torchvision`` and pins old ``torch``/``numpy`` versions, so install it without its dependencies, next to the
``torchvision`` build that matches your ``torch``::

    pip install facenet-pytorch --no-deps
    pip install torchvision==<the release paired with your torch>

The MTCNN weights ship inside the package. The VGGFace2 weights (``20180402-114759-vggface2.pt``) download on first
use into ``$TORCH_HOME/checkpoints``; without a network, copy that file over and pass its path as ``weights``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from .identity import Face, IdentityBackend

logger = logging.getLogger(__name__)

# The identity score of paper Sec. 4.1 (FastComposer's protocol; docs/method.md, Evaluation).
MTCNN_SETTINGS = {
    "image_size": 160,
    "margin": 0,
    "min_face_size": 20,
    "thresholds": [0.6, 0.7, 0.7],
    "factor": 0.709,
    "post_process": True,
    "keep_all": True,
    "select_largest": True,
}
VGGFACE2_WEIGHTS = "20180402-114759-vggface2.pt"
OFFLINE_HINT = "Or use `--ip-backend dlib`, which works offline (pip install dlib-bin face_recognition_models)."


def _import_facenet():
    try:
        from facenet_pytorch import MTCNN, InceptionResnetV1
    except ImportError as err:
        missing = getattr(err, "name", None) or str(err)
        raise ValueError(
            f"The facenet IP backend cannot import facenet-pytorch (missing: {missing}). It needs facenet-pytorch "
            "and a torchvision that matches your torch. facenet-pytorch pins old torch/numpy versions, so install "
            "it without them: `pip install facenet-pytorch --no-deps`, then `pip install torchvision==<the release "
            f"paired with torch {torch.__version__.split('+')[0]}>`. {OFFLINE_HINT}"
        ) from err
    return MTCNN, InceptionResnetV1


def _load_embedder(inception_cls, weights: str | Path | None, device: torch.device) -> torch.nn.Module:
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"FaceNet weights not found: {path}. It should be {VGGFACE2_WEIGHTS}, which facenet-pytorch "
                f"downloads into $TORCH_HOME/checkpoints on a machine with a network. {OFFLINE_HINT}"
            )
        model = inception_cls(pretrained=None, classify=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # the VGGFace2 classifier head
        model.load_state_dict(state)
    else:
        try:
            model = inception_cls(pretrained="vggface2", classify=False)
        except Exception as err:  # a download failure surfaces as URLError, OSError, RuntimeError...
            raise ValueError(
                f"Could not get the FaceNet VGGFace2 weights ({type(err).__name__}: {err}). On a machine with a "
                'network, run `python -c "from facenet_pytorch import InceptionResnetV1; '
                "InceptionResnetV1(pretrained='vggface2')\"`; it saves "
                f"{VGGFACE2_WEIGHTS} under $TORCH_HOME/checkpoints (~/.cache/torch/checkpoints). Copy that file "
                f"here and pass it with `--facenet-weights PATH`. {OFFLINE_HINT}"
            ) from err
    return model.eval().to(device)


class FacenetBackend(IdentityBackend):
    """MTCNN (160 px crops, thresholds 0.6/0.7/0.7, min face 20) + InceptionResnetV1-VGGFace2, 512-d embeddings.

    Args:
        device: where both networks run.
        weights: a local copy of ``20180402-114759-vggface2.pt``; ``None`` downloads it (or uses the cached copy).
    """

    name = "facenet"

    def __init__(self, *, device: torch.device | str = "cpu", weights: str | Path | None = None):
        mtcnn_cls, inception_cls = _import_facenet()
        self.device = torch.device(device)
        self.weights = weights
        self._mtcnn = mtcnn_cls(device=self.device, **MTCNN_SETTINGS)
        self._embedder = _load_embedder(inception_cls, weights, self.device)

    @classmethod
    def from_options(cls, device: torch.device, options: Mapping[str, Any]) -> FacenetBackend:
        return cls(device=device, weights=options.get("facenet_weights"))

    def settings(self) -> dict[str, Any]:
        return {
            "detector": "MTCNN",
            "embedder": "InceptionResnetV1 vggface2 (512-d)",
            **{k: MTCNN_SETTINGS[k] for k in ("image_size", "min_face_size", "thresholds")},
        }

    @torch.no_grad()
    def faces(self, image: PIL.Image.Image) -> list[Face]:
        crops, probs = self._mtcnn(image.convert("RGB"), return_prob=True)  # (F, 3, 160, 160), largest first
        if crops is None:
            return []
        embeddings = self._embedder(crops.to(self.device)).double().cpu()  # (F, 512)
        return [Face(embedding=e, confidence=float(p)) for e, p in zip(embeddings, probs)]
