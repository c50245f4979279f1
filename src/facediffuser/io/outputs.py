"""Writing results: output paths checked before work starts, atomic PNG writes, and the ``parameters`` chunk.

Used by ``facediffuser generate`` and the web demo, so that both write the same files in the same way:

- :func:`check_output_file` refuses, before any model loads, an output path that cannot be written (a folder of
  that name, a path below a regular file, a read-only place) or that exists and may not be replaced.
- :func:`atomic_write` writes beside the target and renames: an interrupted run leaves no partial file. The new file
  gets the permissions of any file the user creates (``0o666`` less the umask), and an existing file is replaced
  only when asked.
- :func:`generation_parameters` is what a PNG records of how it was made, in the form the command line takes back
  (scheduler ``"ddim"``, device ``"cpu"``, dtype ``"float32"``, the real height and width). The reference photos are
  recorded by file name and a hash of their pixels only, never by their full paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PARAMETERS_KEY = "parameters"


class OutputExistsError(FileExistsError, ValueError):
    """The output file exists and replacing it was not allowed (a ``ValueError`` too, like every input error)."""


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_file(
    path: str | os.PathLike,
    *,
    suffix: str | None = ".png",
    overwrite: bool = False,
    overwrite_hint: str = "allow replacing it",
) -> Path:
    """Raises ``ValueError`` unless ``path`` can be written as a new file (or replaced, with ``overwrite``).

    Checks the suffix, that ``path`` is not a folder, that no part of its folder is a regular file, that the nearest
    existing folder accepts new files (by creating and removing an empty probe file), and that ``path`` does not
    exist yet (unless ``overwrite``). ``overwrite_hint`` says how to allow replacing it, e.g. ``"pass --overwrite to
    replace it"`` on the command line.
    """
    path = Path(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise ValueError(f"The output must name a {suffix} file, got {path}.")
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder: name a {suffix or ''} file to write, e.g. {path / ('image' + (suffix or ''))}."
        )
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise ValueError(f"Cannot write {path}: {folder} is a file, not a folder. Choose another output path.")
    try:
        probe = folder / f".facediffuser-write-test-{secrets.token_hex(4)}"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"Cannot write {path}: the folder {folder} does not accept new files ({err.strerror})."
        ) from err
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists: choose another output name, or {overwrite_hint}.")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, overwrite: bool = False) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path``, then moves it to ``path`` in one step.

    The file is created with mode ``0o666`` so that the user's umask decides its permissions, as for any file they
    create. Raises :class:`OutputExistsError` when ``path`` exists and ``overwrite`` is false (checked when the file is
    moved in, so a file that appeared meanwhile is not replaced either). Missing folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_without_replacing(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _move_without_replacing(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if path exists: no window in which another file could be replaced
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists: it was not replaced.") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise OutputExistsError(f"{path} already exists: it was not replaced.") from None
        os.replace(tmp, path)


def write_png(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    text: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``image`` as a PNG with ``text`` chunks, atomically (see :func:`atomic_write`)."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info), overwrite=overwrite)


def photos_fingerprint(photos: Sequence[Image.Image]) -> str:
    """A short SHA-256 of one person's decoded photos (size and RGB pixels): tells whether a rerun used the same
    photos without recording where they are."""
    digest = hashlib.sha256()
    for photo in photos:
        rgb = photo.convert("RGB")
        digest.update(f"{rgb.width}x{rgb.height};".encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()[:16]


def generation_parameters(
    *,
    prompt: str,
    reference_names: Sequence[str],
    people: Sequence[Sequence[Image.Image]],
    settings: Any,
    seed: int,
    height: int,
    width: int,
    **used: Any,
) -> dict[str, Any]:
    """What a generated image records of how it was made, as plain JSON values.

    ``settings`` is the :class:`~facediffuser.settings.SamplingSettings` used (stored by its field names, enums as
    their values). ``used`` adds whatever else the caller ran with, in the form its users give it back (for the
    command line: ``model``, ``scheduler="ddim"``, ``device="cpu"``, ``dtype="float32"``, ...). References are
    stored as file names (``ref``) and pixel hashes (``ref_sha256``), never as full paths.
    """
    from .. import __version__

    return {
        "prompt": prompt,
        **used,
        "seed": seed,
        "height": height,
        "width": width,
        **settings.to_dict(),
        "ref": list(reference_names),
        "ref_sha256": [photos_fingerprint(p) for p in people],
        "facediffuser_version": __version__,
    }


def parameters_text(parameters: Mapping[str, Any]) -> str:
    return json.dumps(dict(parameters), ensure_ascii=False)


def read_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The ``parameters`` chunk of a PNG written by :func:`write_png` (read from the header, pixels not decoded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such image: {path}")
    try:
        with Image.open(path) as image:
            text = image.info.get(PARAMETERS_KEY)
    except OSError as err:
        raise ValueError(f"{path} cannot be read as an image ({err}).") from err
    if text is None:
        raise ValueError(f"{path} records no generation parameters (it was not written by facediffuser).")
    try:
        parameters = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"The parameters recorded in {path} are not valid JSON ({err}).") from err
    if not isinstance(parameters, dict):
        raise ValueError(f"The parameters recorded in {path} are not a JSON object.")
    return parameters
