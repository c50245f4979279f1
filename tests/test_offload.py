"""CPU offloading: outputs equal to the non-offloaded pipeline, and never both UNets on the accelerator.

diffusers' offload modes move weights to an accelerator. On a machine without one, model offload with ``device="cpu"``
still installs accelerate's real hooks (they move nothing), so its outputs and its hook wiring are checked here. The
memory the hooks save is only visible on a GPU (the ``gpu`` tests below, and ``benchmarks/pipeline_speed.py``).
Sequential offload cannot run on the CPU at all: accelerate swaps each weight between ``meta`` and its execution
device, and with the CPU as that device the swap turns Parameters into plain tensors and fails (accelerate 1.15), so
it is tested on CUDA only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facediffuser.io.tiny import build_tiny_pipeline
from facediffuser.offload import OffloadOthers

PROMPT = "a photo of a man <|image|> at the beach"


# 4 steps with alpha 0.25, beta 0.75: one step of stage I, two of stage II, one of stage III.
CALL = {"num_inference_steps": 4, "alpha": 0.25, "beta": 0.75, "output_type": "np"}


def _run(pipe, face_image, **kwargs):
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe(PROMPT, reference_images=[face_image], generator=generator, **CALL, **kwargs).images


@pytest.fixture
def reference_output(face_image):
    return _run(build_tiny_pipeline(seed=0), face_image)


@pytest.mark.parametrize("one_model_at_a_time", [True, False])
def test_model_cpu_offload_matches_plain_pipeline(face_image, reference_output, one_model_at_a_time):
    pipe = build_tiny_pipeline(seed=0)
    pipe.enable_model_cpu_offload(device="cpu", one_model_at_a_time=one_model_at_a_time)
    assert pipe._all_hooks, "no offload hooks were installed"
    # The hooks move nothing on the CPU, but the two pipelines are separate builds whose tensors may reach other
    # kernels (float32 rounding, ~1e-6 on these pixels); a model run at the wrong step moves them by 1e-2 or more.
    np.testing.assert_allclose(_run(pipe, face_image), reference_output, rtol=0, atol=1e-5)


def _replay_residency(pipe, calls: list[str]) -> list[set[str]]:
    """Which models the offload hooks leave on the accelerator after each model call.

    Replays the hooks' wiring (``prev_module_hook`` of every model's hook) over the order in which the pipeline
    really called its models: before a model runs, the models of its ``prev_module_hook`` leave; then it is loaded.
    """
    names = {id(module): name for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    evicts: dict[str, list[str]] = {}
    for hook in pipe._all_hooks:
        prev = hook.hook.prev_module_hook
        if prev is None:
            models = []
        elif isinstance(prev, OffloadOthers):
            models = prev.models
        else:
            models = [prev.model]
        evicts[names[id(hook.model)]] = [names[id(m)] for m in models]
    resident: set[str] = set()
    states = []
    for name in calls:
        resident -= set(evicts[name])
        resident.add(name)
        states.append(set(resident))
    return states


def _call_order(pipe, face_image) -> list[str]:
    calls: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: calls.append(name))
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    ]
    try:
        _run(pipe, face_image)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@pytest.mark.parametrize("one_model_at_a_time", [True, False])
def test_model_offload_never_holds_both_unets(face_image, one_model_at_a_time):
    pipe = build_tiny_pipeline(seed=0)
    pipe.enable_model_cpu_offload(device="cpu", one_model_at_a_time=one_model_at_a_time)
    for _ in range(2):  # the second call runs on the hooks that `maybe_free_model_hooks` reinstalled
        calls = _call_order(pipe, face_image)
        assert calls.count("unet") == 3 and calls.count("subject_unet") == 3  # stages I+II and II+III
        states = _replay_residency(pipe, calls)
        both = [i for i, state in enumerate(states) if {"unet", "subject_unet"} <= state]
        if one_model_at_a_time:
            assert not both, f"both UNets resident after calls {both} of {calls}"
            assert max(len(state) for state in states) == 1
        else:
            # diffusers' plain chain: `subject_unet` stays while `unet` runs again in stage II.
            assert both


def test_offload_choice_survives_maybe_free_model_hooks():
    pipe = build_tiny_pipeline(seed=0)
    pipe.enable_model_cpu_offload(device="cpu", one_model_at_a_time=False)
    pipe.maybe_free_model_hooks()
    assert not any(isinstance(h.hook.prev_module_hook, OffloadOthers) for h in pipe._all_hooks)
    pipe.enable_model_cpu_offload(device="cpu")  # None keeps the previous choice
    assert not any(isinstance(h.hook.prev_module_hook, OffloadOthers) for h in pipe._all_hooks)
    pipe.enable_model_cpu_offload(device="cpu", one_model_at_a_time=True)
    pipe.maybe_free_model_hooks()
    assert all(isinstance(h.hook.prev_module_hook, OffloadOthers) for h in pipe._all_hooks)


def test_shared_unet_is_hooked_once_without_evicting_itself():
    components = build_tiny_pipeline(seed=0).components
    components["subject_unet"] = components["unet"]
    pipe = type(build_tiny_pipeline(seed=0))(**components)
    pipe.enable_model_cpu_offload(device="cpu")
    for hook in pipe._all_hooks:
        prev = hook.hook.prev_module_hook
        assert prev is None or all(model is not hook.model for model in prev.models)


# ---------------------------------------------------------------------------------------------------------- GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading to an accelerator needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("mode", ["model", "model_chain", "sequential"])
def test_offload_on_cuda_matches_plain_pipeline(face_image, mode):
    plain = build_tiny_pipeline(seed=0).to("cuda")
    expected = _run(plain, face_image)
    pipe = build_tiny_pipeline(seed=0)
    if mode == "sequential":
        pipe.enable_sequential_cpu_offload(device="cuda")
    else:
        pipe.enable_model_cpu_offload(device="cuda", one_model_at_a_time=mode == "model")
    np.testing.assert_allclose(_run(pipe, face_image), expected, atol=1e-5)
    assert pipe.unet.device.type != "cuda"  # offloaded again after the call (cpu, or meta when sequential)


@pytest.mark.gpu
@cuda
def test_one_model_at_a_time_lowers_the_cuda_peak(face_image):
    peaks = {}
    for one_at_a_time in (False, True):
        pipe = build_tiny_pipeline(seed=0)
        pipe.enable_model_cpu_offload(device="cuda", one_model_at_a_time=one_at_a_time)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        _run(pipe, face_image)
        peaks[one_at_a_time] = torch.cuda.max_memory_allocated()
    unet_bytes = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    assert peaks[True] <= peaks[False] - unet_bytes // 2
