"""Where the package keeps what it ships, under ``facediffuser/data``.

``facediffuser mini ship`` writes the trained parts there; ``--model mini``, ``--clip-model mini`` and
``--ip-backend mini`` read them, and ``facediffuser mini build --from`` starts from the shipped stages. Everything
goes through :func:`data_dir`, so that a test can point it elsewhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MINI_PIPELINE = ("mini", "pipeline")  # the mini Face-diffuser, a pipeline folder
MINI_STAGES = ("mini", "stages")  # the markers of the build's stages (their settings): `mini build --from` reads them
MINI_IP_ADAPTER = ("mini", "ip_adapter")  # the mini IP-Adapter (`generate --model mini --ip-adapter mini`)
MINI_VAE = ("mini", "vae")  # the VAE stage, shipped before the pipeline; `mini ship` removes it (pipeline/vae is it)
WORLD_CLIP = ("world", "clip")  # the world's CLIP (transformers CLIPModel folder)
WORLD_FACES = ("world", "faces")  # the world's face detector and embedder
MINI_EXAMPLES = ("examples", "mini")  # references of held-out people of the world
WORLD_REFERENCES = ("world", "references")  # the mini benchmark's 20 held-out people (`evaluate --benchmark mini`)


def data_dir() -> Path:
    """The package's data folder (in a checkout: ``src/facediffuser/data``)."""
    return Path(str(resources.files("facediffuser") / "data"))


def packaged(parts: tuple[str, ...]) -> Path:
    """The path of one of the shipped parts above (which may not exist in this installation)."""
    return data_dir().joinpath(*parts)
