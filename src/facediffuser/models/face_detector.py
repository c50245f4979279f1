"""The world's face detector as a pipeline component: it finds the faces (head and hair) in a reference photo.

:class:`FaceDetector` is a CenterNet-style fully convolutional network: on a ``64 x 64`` input it predicts, per
``4 x 4`` cell, a face-centre heat map, the sub-cell offset and the box size. :mod:`facediffuser.lab.world.faces` trains
it on the renderer's face boxes and scores faces with it (``--ip-backend mini``); a pipeline whose SDM was trained
on head references carries it as its ``face_detector`` (``FaceDiffuserPipeline``), which is why it lives here, with
the other model components, rather than in ``world/``: diffusers loads a component only from a module already
imported, and the pipeline imports this package.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn

DETECTOR_SIZE = 64  # detector input side
STRIDE = 4  # detector output cell


def conv_block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3 x 3 convolution, batch norm, ReLU (the world's face embedder is built of them too)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, H, W)`` in [-1, 1]."""
    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).float() / 255.0
    return images * 2.0 - 1.0


class FaceDetector(ModelMixin, ConfigMixin):
    """Face centres and boxes on a ``64 x 64`` image: ``(N, 3, 64, 64)`` in [-1, 1] -> ``(N, 5, 16, 16)``
    (centre logit, x and y offset within the cell, log width and log height in cells)."""

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (16, 32, 48), threshold: float = 0.4):
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            conv_block(3, c1, stride=2),  # 32
            conv_block(c1, c2, stride=2),  # 16
            conv_block(c2, c3),
            conv_block(c3, c3, dilation=2),
            conv_block(c3, c3, dilation=4),
        )
        self.head = nn.Conv2d(c3, 5, 1)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[0] = -4.0  # start with few centres (focal-loss practice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def detect(self, x: torch.Tensor, threshold: float | None = None) -> list[list[tuple[list[float], float]]]:
        """Per image of ``(N, 3, 64, 64)``, the ``([x1, y1, x2, y2], score)`` of each found face in input pixels,
        most confident first."""
        return decode(self(x), self.config.threshold if threshold is None else threshold)

    @torch.no_grad()
    def find_faces(self, image: Image.Image, threshold: float | None = None) -> list[tuple[list[float], float]]:
        """The ``([x1, y1, x2, y2], score)`` of each face (head and hair) in an RGB image of any size, in its own
        pixels, most confident first: the detector reads a bicubic ``64 x 64`` copy of it."""
        width, height = image.size
        small = np.asarray(image.convert("RGB").resize((DETECTOR_SIZE, DETECTOR_SIZE), Image.Resampling.BICUBIC))
        # Offloaded layer by layer (accelerate's hooks, `--offload sequential`), the weights wait on the meta device
        # and each layer's hook moves its input to where it runs: the input stays on the CPU then.
        device = self.device if self.device.type != "meta" else torch.device("cpu")
        x = to_input(torch.from_numpy(small[None].copy())).to(device=device, dtype=self.dtype)
        sx, sy = width / DETECTOR_SIZE, height / DETECTOR_SIZE
        return [([b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy], s) for b, s in self.detect(x, threshold)[0]]

    def count_faces(self, image: Image.Image) -> int:
        """How many faces :meth:`find_faces` finds at the saved threshold: the reference check of ``generate`` and
        the demo (:func:`facediffuser.io.faces.check_faces`) for a pipeline that cuts its references with it."""
        return len(self.find_faces(image))


def decode(out: torch.Tensor, threshold: float) -> list[list[tuple[list[float], float]]]:
    """Boxes from a ``(N, 5, G, G)`` detector output: the local maxima (3 x 3) of the centre map above
    ``threshold``, each with its offset and size; per image, most confident first."""
    heat = torch.sigmoid(out[:, 0])  # (N, G, G)
    peaks = (heat == F.max_pool2d(heat[:, None], 3, stride=1, padding=1)[:, 0]) & (heat > threshold)
    found = []
    for n in range(out.shape[0]):
        faces = []
        for gy, gx in peaks[n].nonzero().tolist():
            ox, oy, lw, lh = out[n, 1:, gy, gx].tolist()
            cx, cy = (gx + ox) * STRIDE, (gy + oy) * STRIDE
            bw, bh = math.exp(lw) * STRIDE, math.exp(lh) * STRIDE
            faces.append(([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], float(heat[n, gy, gx])))
        found.append(sorted(faces, key=lambda f: -f[1]))
    return found
