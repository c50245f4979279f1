"""The work of an evaluation: units (one variant on one case), where their files go, how processes share them, and
the ``run.json`` that keeps a resumed run from mixing images made with other settings.

Sharing uses accelerate's :meth:`~accelerate.PartialState.split_between_processes` (contiguous, balanced slices).
Resuming stays balanced because the list that is split is the list of units still *missing* on disk, made by every
process before any of them writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..io.files import read_json
from .cases import Case
from .methods import Variant

T = TypeVar("T")


@dataclass(frozen=True)
class WorkUnit:
    """One variant (a method with a model) on one case: ``images_per_prompt`` images from one pipeline call."""

    variant: Variant
    case: Case

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant.label, self.case.case_id)

    def image_paths(self, out: Path, count: int) -> list[Path]:
        folder = out / "images" / self.variant.label / self.case.case_id
        return [folder / f"{k}.png" for k in range(count)]

    def mask_path(self, out: Path) -> Path:
        return out / "masks" / self.variant.label / f"{self.case.case_id}.npz"


def distributed_state(device: str = "auto"):
    """accelerate's :class:`~accelerate.PartialState` for this process.

    Without CUDA, the processes of ``accelerate launch --multi_gpu --num_processes N`` (torchrun underneath) only see
    each other when the state is made in CPU mode, so CPU mode is chosen whenever there is no CUDA device. A launch
    whose processes still cannot see each other is refused: each would evaluate everything.
    """
    from accelerate import PartialState

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    cpu = device == "cpu" or use_cpu or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise ValueError(
            f"{launched} processes were launched but accelerate sees {state.num_processes}: every process would "
            "evaluate everything. Launch with `accelerate launch --multi_gpu --num_processes N` (on CPUs too) or "
            "torchrun."
        )
    return state


def process_share(state, items: list[T]) -> list[T]:
    """This process's contiguous slice of ``items`` (disjoint across processes, together complete)."""
    with state.split_between_processes(items) as mine:
        return list(mine)


def check_run_settings(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings to record in ``out/run.json``; refuses to resume into ``out`` with other generation settings.

    Every key must match the recorded one, except ``models``: a run may add models, but a name must keep its source;
    and ``ip_adapter``: a run may add one (only the adapter's rows read it), but not change it.
    Returns ``settings`` with the models of the earlier runs added. A ``run.json`` beside no image binds nothing (a
    run refused before it generated anything leaves one): the new settings replace it.
    """
    path = out / "run.json"
    if not path.is_file() or not any(p.is_file() for p in (out / "images").rglob("*.png")):
        return settings
    try:
        previous = read_json(path, dict, "a record of the run's settings")
    except ValueError as err:
        raise ValueError(f"{str(err).rstrip('.')}; delete it to reuse the images there.") from None
    changed = [
        f"{k}: {previous.get(k)!r} -> {v!r}"
        for k, v in settings.items()
        if k != "models" and previous.get(k) != v and not (k == "ip_adapter" and previous.get(k) is None)
    ]
    if previous.get("ip_adapter") is not None and settings.get("ip_adapter") is None:
        settings = {**settings, "ip_adapter": previous["ip_adapter"]}
    old_models = previous.get("models") or {}
    changed += [
        f"model {name!r}: {old_models[name]!r} -> {source!r}"
        for name, source in settings["models"].items()
        if name in old_models and old_models[name] != source
    ]
    if changed:
        raise ValueError(
            f"{out} holds images generated with other settings ({'; '.join(changed)}). Use another --out, name the "
            "model differently (--model NAME=FOLDER), or delete the folder to start over."
        )
    return {**settings, "models": {**old_models, **settings["models"]}}
