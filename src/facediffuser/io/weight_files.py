"""Reading weight files safely: what a file is by its first bytes, and a sentence for a damaged one.

Shared by ``convert`` (the released checkpoints, the SD v1.5 folder) and ``loading`` (a scene model for ``generate``),
so that a renamed, empty or truncated file gets the same words wherever it is given, before any model loads.
"""

from __future__ import annotations

import codecs
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .files import read_json


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an error message, shortened: a one-line error stays one line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refused_global(err: BaseException) -> str | None:
    """What a weights-only ``torch.load`` refused to unpickle, as its message names it (``pickled global: os.system``,
    or ``a pickled global``): the file holds pickled code. ``None`` when it failed for another reason (a damaged or
    foreign file)."""
    if not re.search(r"\bGLOBAL\b", str(err)):
        return None
    m = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    return f"pickled global: {m.group(1)}" if m else "a pickled global"


def file_format(path: Path) -> str:
    """What the first bytes say a checkpoint file is: ``empty``, ``safetensors``, ``zip`` (torch.save), ``pickle``
    (older torch.save) or ``unknown``. The name does not decide: files get renamed."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(9)
    except PermissionError as err:
        raise ValueError(f"{path} cannot be read ({first_line(err)}): check its permissions.") from err
    if size == 0:
        return "empty"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x80"):  # pickle protocol 2 and later
        return "pickle"
    return "unknown"


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Reads only the header of a ``.safetensors`` file: a renamed ``.bin``, a truncated or a damaged file is a
    ``ValueError`` that says which, before any model loads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    kind = file_format(path)
    if kind == "empty":
        raise ValueError(f"{path} is empty (0 bytes): the download or copy did not finish. Download it again.")
    if kind in ("zip", "pickle"):
        raise ValueError(
            f"{path} is a PyTorch pickle file (a .bin) named .safetensors. Rename it to .bin: a .bin is read with "
            "torch.load(weights_only=True), which runs no code."
        )
    try:
        with safe_open(path, framework="pt"):
            pass
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({first_line(err)}): it is damaged or truncated. "
            "Download it again."
        ) from err


def check_weights_folder(folder: Path, stem: str, alternative: str = "") -> None:
    """``folder`` must hold ``{stem}.safetensors`` (or its shards), readable: checked before any model loads."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        check_safetensors_file(single)
        return
    if index.is_file():
        try:
            weight_map = read_json(index, dict, "a safetensors index").get("weight_map", {})
        except ValueError as err:
            raise ValueError(f"{str(err).rstrip('.')}; download it again.") from None
        if index.read_bytes().startswith(codecs.BOM_UTF8):  # read by diffusers and transformers too
            raise ValueError(
                f"{index} starts with a byte-order mark, which diffusers cannot read: save it as UTF-8 without one."
            )
        if not isinstance(weight_map, dict):
            raise ValueError(
                f"{index} is not a safetensors index (its `weight_map` is not an object): download it again."
            )
        for shard in sorted(set(weight_map.values())):
            check_safetensors_file(folder / shard)
        return
    held = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".safetensors", ".ckpt", ".pt"))
    if held:
        raise ValueError(
            f"{folder} holds {', '.join(held)} but no {single.name}: facediffuser reads only that file (no pickles, "
            f"no variants). Download {single.name} into {folder}."
        )
    raise ValueError(f"{folder} holds no weights: download {single.name} into it{alternative}.")


def read_weight_file(path: str | os.PathLike, instead: str) -> Any:
    """What a weight file holds, read without running code: a ``.safetensors`` file (header checked first) or a
    PyTorch pickle read with ``weights_only`` (tensors and plain containers only).

    ``instead`` ends the message of a pickle that holds code ("Use the adapter's .safetensors file."). The caller
    checks that the file exists and what the object must be.

    Raises:
        ValueError: the file is empty, truncated or damaged, not a weight file, or holds pickled objects other than
            tensors (unpickling them could run code); the message says which.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    kind = file_format(path)
    if kind == "empty":
        raise ValueError(f"{path} is empty (0 bytes): the download or copy did not finish. Download it again.")
    if kind == "safetensors" or path.suffix == ".safetensors":
        check_safetensors_file(path)
        return load_file(path)
    not_weights = (
        f"{path} is not a PyTorch or safetensors weight file (its first bytes are neither): is it the right file?"
    )
    damaged = (
        f"{path} is damaged or truncated, so it was not loaded: download or copy it again. "
        f"(The file is {path.stat().st_size} bytes"
    )
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise ValueError(damaged + "; its zip archive has no end.)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = refused_global(err)  # weights_only met a class or function: pickled code
        if refused:
            raise ValueError(
                f"{path} holds pickled objects other than tensors, so it was not loaded: unpickling it could "
                f"run code. {instead} ({refused})"
            ) from err
        if kind == "unknown":  # a protocol-0 pickle starts with text: only unpickling tells it apart
            raise ValueError(not_weights) from err
        raise ValueError(damaged + f"; {first_line(err, 100)})") from err
    except (EOFError, RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as err:
        if kind == "unknown":
            raise ValueError(not_weights) from err
        detail = f"{type(err).__name__}: {first_line(err, 100)}" if str(err).strip() else type(err).__name__
        raise ValueError(damaged + f"; {detail})") from err
