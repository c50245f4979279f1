"""Model CPU offload that never holds both UNets on the accelerator.

diffusers' ``enable_model_cpu_offload`` chains the models in ``model_cpu_offload_seq`` order: a model's forward moves
the one before it off the accelerator. That suits a pipeline whose models run once each, in that order.
Face-diffuser's stage II calls ``unet`` and ``subject_unet`` in turn at every step, and in the chain nothing moves
``subject_unet`` off before ``unet`` runs again: both UNets would sit on the accelerator together, the very peak
offloading should cut.

:class:`OneModelAtATimeOffloadMixin` rewires accelerate's hooks after diffusers has installed them, so that every
model's hook moves every other model off first (:class:`OffloadOthers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate.hooks import UserCpuOffloadHook


class OffloadOthers(UserCpuOffloadHook):
    """The models to move off the accelerator before one model runs: every other model of the pipeline.

    accelerate calls ``offload()`` of a hook's ``prev_module_hook`` before the hooked model's forward when ``model``
    (the first of these models still on the accelerator) is not on the CPU.
    """

    def __init__(self, hooks: Sequence[UserCpuOffloadHook]):
        self.hooks = list(hooks)

    @property
    def models(self) -> list[torch.nn.Module]:
        return [hook.model for hook in self.hooks]

    @property
    def model(self) -> torch.nn.Module:
        for hook in self.hooks:
            if _on_accelerator(hook.model):
                return hook.model
        return self.hooks[0].model

    def offload(self) -> None:
        for hook in self.hooks:
            if _on_accelerator(hook.model):
                hook.offload()

    def remove(self) -> None:
        """Nothing to do: the pipeline removes the hooks this group holds."""


def _on_accelerator(model: torch.nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.device.type != "cpu"


class OneModelAtATimeOffloadMixin:
    """For a ``DiffusionPipeline`` whose models run in turn, more than once per call (placed before it in the bases)."""

    def enable_model_cpu_offload(
        self,
        gpu_id: int | None = None,
        device: torch.device | str | None = None,
        *,
        one_model_at_a_time: bool | None = None,
    ) -> None:
        r"""Keeps every model on the CPU and moves each one to the accelerator only while it is needed.

        Args:
            gpu_id, device: the accelerator, as in ``DiffusionPipeline.enable_model_cpu_offload``.
            one_model_at_a_time: ``True`` (the default): before any model runs, every other model is moved off, so
                the peak holds one model (at most one UNet) plus activations. Stage II then moves both UNets in and
                out at each of its steps (two host-to-device copies per step rather than one). ``False``: diffusers'
                chain, which keeps ``subject_unet`` on the accelerator through stage II, for a peak of both UNets and
                half the transfers. ``None`` keeps the previous choice (``True`` the first time), so the choice
                survives ``maybe_free_model_hooks``, which calls this again after every call.
        """
        if one_model_at_a_time is None:
            one_model_at_a_time = getattr(self, "_one_model_at_a_time", True)
        self._one_model_at_a_time = one_model_at_a_time
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        if not one_model_at_a_time:
            return
        for hook in self._all_hooks:
            others = [other for other in self._all_hooks if other.model is not hook.model]
            hook.hook.prev_module_hook = OffloadOthers(others) if others else None
