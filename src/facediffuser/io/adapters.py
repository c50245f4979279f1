"""An IP-Adapter for ``generate --ip-adapter``: found, read and checked as ``convert`` checks checkpoints.

A weight file is read by what its first bytes say it is: a ``.safetensors`` file as such, a ``.bin`` only with
``torch.load(weights_only=True)`` (no pickled code runs). An empty, truncated, renamed or foreign file, a pickle that
holds code, and a file that is not an IP-Adapter are each one sentence, before any model loads; nothing is written,
moved or deleted. Whether the adapter fits the model's UNet is known once the UNet is loaded
(:func:`facediffuser.subject_models.check_ip_adapter_state`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..subject_models import split_ip_adapter_state
from .weight_files import check_safetensors_file, read_weight_file

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# ``--ip-adapter mini``: the mini model's adapter, shipped in the package (``mini ship``).
MINI = "mini"


def find_ip_adapter_file(spec: str, weight_name: str | None = None, subfolder: str | None = None) -> Path | None:
    """The local weight file that ``--ip-adapter`` names: the file itself, or ``weight_name`` in the folder (under
    ``subfolder``); the only weight file of the folder when ``weight_name`` is not given. ``None`` for a hub id (a
    name of the form ``owner/name`` that is not a local path). ``mini`` (when no such file or folder exists here) is
    the mini model's adapter shipped in the package, beside its image encoder.

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder without the named file.
        ValueError: a folder with none or several weight files and no ``weight_name``.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if spec == MINI and not path.exists():
        from .package_data import MINI_IP_ADAPTER, packaged

        path = packaged(MINI_IP_ADAPTER)
        if not path.is_dir():
            raise FileNotFoundError(
                f"--ip-adapter mini: this installation ships no mini IP-Adapter ({path}). Build it with `facediffuser "
                "mini build --to ip-adapter` and ship it with `facediffuser mini ship`, or give an adapter's path."
            )
    if not path.exists():
        if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and path.suffix not in WEIGHT_SUFFIXES:
            return None  # a hub id
        raise FileNotFoundError(f"IP-Adapter not found: {spec}")
    folder = path / subfolder if subfolder else path
    if weight_name:
        if not (folder / weight_name).is_file():
            raise FileNotFoundError(f"IP-Adapter weight file not found: {folder / weight_name}")
        return folder / weight_name
    held = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    if len(held) != 1:
        found = f"holds {', '.join(held)}" if held else "holds no .safetensors or .bin file"
        raise ValueError(f"{folder} {found}: name the adapter's weight file with --ip-adapter-weight.")
    return folder / held[0]


def read_ip_adapter_file(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter's ``{"image_proj": ..., "ip_adapter": ...}`` from a ``.safetensors`` or a weights-only ``.bin``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, damaged, pickled code, not a weight file, or not an IP-Adapter; the message says which.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IP-Adapter weight file not found: {path}")
    state = read_weight_file(path, "Use the adapter's .safetensors file.")
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors).")
    nested = split_ip_adapter_state(state)
    parts = [nested.get("image_proj"), nested.get("ip_adapter")]
    if not all(isinstance(p, dict) and p and all(isinstance(v, torch.Tensor) for v in p.values()) for p in parts):
        raise ValueError(
            f"{path} is not an IP-Adapter: it lacks the `image_proj` and `ip_adapter` weights that IP-Adapter files "
            "hold. Give an IP-Adapter weight file (such as ip-adapter_sd15.safetensors)."
        )
    return nested


def read_ip_adapter_embeds(path: str | Path) -> torch.Tensor:
    """``--ip-adapter-embeds``: a ``.safetensors`` file with one tensor ``image_embeds`` of shape ``(people, dim)``
    (FaceID's face-recognition embeddings, one row per placeholder) -> diffusers' ``(2, people, dim)`` with the "no
    image" (zero) half first."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IP-Adapter embeddings not found: {path}")
    check_safetensors_file(path)
    embeds = load_file(path).get("image_embeds")
    if embeds is None or embeds.ndim != 2 or not torch.isfinite(embeds).all():
        raise ValueError(
            f"{path} must hold one finite tensor `image_embeds` of shape (people, dim), one row per placeholder."
        )
    return torch.stack([torch.zeros_like(embeds), embeds]).float()
