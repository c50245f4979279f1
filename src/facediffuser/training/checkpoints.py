"""Resumable checkpoints: written atomically, rotated, and checked against the run that resumes them.

A checkpoint is a folder ``checkpoint-<step>`` holding accelerate's state (models, optimizer, LR scheduler, RNG,
registered objects such as the EMA) and ``training_state.json`` (the step and the settings a resume must match).
It is first written under a temporary name, then renamed, so a crash never leaves a half-written
``checkpoint-*`` behind.

Why not accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=K)``: it removes the oldest
checkpoint before writing the new one into its final folder, and names checkpoints by save count, not by step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..io.files import read_json
from ..io.weight_files import first_line

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
PREFIX = "checkpoint-"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def temporary_path(folder: Path, step: int) -> Path:
    return folder / f".{checkpoint_name(step)}.tmp"


def list_checkpoints(folder: Path) -> list[Path]:
    """Finished checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def finalize(tmp: Path, state: dict[str, Any], keep: int) -> Path:
    """Writes ``training_state.json`` into ``tmp``, renames it to its final name, and removes the oldest
    checkpoints beyond ``keep``. Main process only."""
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    final = tmp.parent / checkpoint_name(state["step"])
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(tmp.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("Removed old checkpoint %s", old)
    return final


def resolve_resume(resume: str, folder: Path) -> Path:
    """The checkpoint folder ``resume`` names: a path, or ``latest`` in ``folder``."""
    if resume == "latest":
        found = list_checkpoints(folder)
        if not found:
            raise FileNotFoundError(f"--resume latest: there is no checkpoint in {folder}.")
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"The checkpoint to resume from does not exist: {path}")
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"{path} is not a training checkpoint: it has no {STATE_FILE}.")
    return path


def read_state(path: Path) -> dict[str, Any]:
    try:
        return read_json(path / STATE_FILE, dict, "a training state")
    except OSError as err:
        raise ValueError(f"{path / STATE_FILE} cannot be read ({err}); the checkpoint is damaged.") from err
    except ValueError as err:
        raise ValueError(f"{str(err).rstrip('.')}; the checkpoint is damaged.") from None


def check_pickles(path: Path) -> None:
    """Refuses a checkpoint whose registered objects' states (``custom_checkpoint_*.pkl``: the EMA) hold anything but
    tensors and plain containers. accelerate unpickles those files with ``weights_only=False``, so a checkpoint from
    someone else could run code on resume; its other files it reads with ``weights_only=True``. Nothing is unpickled
    here: the archive's pickle is only scanned for the classes and functions it would call."""
    for pickled in sorted(path.glob("custom_checkpoint_*.pkl")):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(pickled)
        except (ValueError, RuntimeError) as err:  # not a torch.save archive (ValueError), or a damaged one
            raise ValueError(
                f"{pickled} is damaged or not a torch.save file ({first_line(err)}), so the checkpoint was not resumed."
            ) from err
        if unsafe:
            raise ValueError(
                f"{pickled} holds pickled objects other than tensors ({', '.join(unsafe)}), so the checkpoint was not "
                "resumed: unpickling it could run code. Resume only from checkpoints this trainer wrote."
            )


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raises ``ValueError`` listing every setting of ``current`` that differs from the checkpoint's."""
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r}, now {value!r}"
        for key, value in current.items()
        if saved.get(key) != value
    ]
    if diffs:
        raise ValueError(
            f"The checkpoint {path} does not match this run: {'; '.join(diffs)}. Resume with the settings it was "
            "saved with, or start a new run in another output folder."
        )
