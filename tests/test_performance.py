"""The fast paths, checked for what they do rather than how fast they are (timings belong to the benchmark).

* one batched UNet call per model per step, and the encoders run once per call, whatever the number of steps or
  images;
* no host synchronisation in the noise fusion, and none in the loop beyond what plain Stable Diffusion has;
* SDPA attention in both UNets;
* a float16 VAE decodes in float32 when ``force_upcast`` is set;
* VAE slicing and tiling work through the pipeline;
* ``compile_unets`` leaves the outputs unchanged;
* the text encoder and VAE are single components shared by both models.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.utils._python_dispatch import TorchDispatchMode

from facediffuser.fusion import (
    SUBJECT_MODEL_GUIDANCE,
    TEXT_MODEL_GUIDANCE,
    Stage,
    SubjectGuidanceBase,
    saliency_adaptive_noise_fusion,
    stage_schedule,
)
from facediffuser.io.tiny import build_tiny_pipeline

PROMPT = "a photo of a man <|image|> at the beach"


class HostSyncCounter(TorchDispatchMode):
    """Counts the aten ops that make the host wait for the device: reading a value (``.item()``, ``bool(t)``) or
    an output whose size depends on the data (``nonzero``, boolean indexing)."""

    SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNC_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _count_calls(modules: dict[str, torch.nn.Module]):
    calls: dict[str, list[int]] = {name: [] for name in modules}

    def record(name):
        def hook(module, args, kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            calls[name].append(first.shape[0])

        return hook

    handles = [m.register_forward_pre_hook(record(name), with_kwargs=True) for name, m in modules.items()]
    return calls, handles


@pytest.mark.parametrize("base", list(SubjectGuidanceBase))
def test_one_batched_call_per_model_per_step_and_encoders_once(tiny_pipe, face_image, base):
    names = ("unet", "subject_unet", "text_encoder", "image_encoder", "subject_fuser")
    calls, handles = _count_calls({name: getattr(tiny_pipe, name) for name in names})
    images, steps, alpha, beta = 2, 10, 0.3, 0.6
    tiny_pipe(
        PROMPT,
        reference_images=[face_image],
        num_inference_steps=steps,
        alpha=alpha,
        beta=beta,
        subject_guidance_base=base,
        num_images_per_prompt=images,
        output_type="latent",
    )
    for handle in handles:
        handle.remove()
    stages = stage_schedule(steps, alpha, beta)
    assert [stages.count(s) for s in Stage] == [3, 3, 4]
    # Each model's conditions for all images in one call per step: stages I + II for the TDM, II + III for the SDM.
    assert calls["unet"] == [TEXT_MODEL_GUIDANCE.evaluations * images] * 6
    assert calls["subject_unet"] == [SUBJECT_MODEL_GUIDANCE[base].evaluations * images] * 7
    assert len(calls["text_encoder"]) == 2  # the prompt and the negative prompt, once per call
    assert len(calls["image_encoder"]) == 1 and len(calls["subject_fuser"]) == 1


def test_noise_fusion_never_syncs_with_the_host():
    g = torch.Generator().manual_seed(0)
    eps_t, eps_s, r_t, r_s = (torch.randn(2, 4, 16, 16, generator=g) for _ in range(4))
    for smoothing in ("box", "gaussian"):
        counter = HostSyncCounter()
        with counter:
            saliency_adaptive_noise_fusion(eps_t, eps_s, r_t, r_s, smoothing=smoothing)
        assert not counter.counts, dict(counter.counts)


def test_loop_syncs_no_more_than_plain_stable_diffusion(tiny_pipe, face_image):
    # Per step, Face-diffuser's loop waits for the device no more often than StableDiffusionPipeline's; per call it
    # waits once more, when it reads the steps' finiteness flags (kept on the device during the loop) in one go.
    sd = tiny_pipe.text_model_pipeline()
    counts = {}
    latent = {"output_type": "latent"}
    runs = {
        "fd": lambda steps: tiny_pipe(PROMPT, reference_images=[face_image], num_inference_steps=steps, **latent),
        "sd": lambda steps: sd("a photo of a man at the beach", num_inference_steps=steps, **latent),
    }
    for steps in (4, 8):
        for name, run in runs.items():
            counter = HostSyncCounter()
            with counter:
                run(steps)
            counts[name, steps] = sum(counter.counts.values())
    per_step = {name: (counts[name, 8] - counts[name, 4]) / 4 for name in ("fd", "sd")}
    assert per_step["fd"] <= per_step["sd"], counts
    assert counts["fd", 4] <= counts["sd", 4] + 1, counts


def test_both_unets_use_sdpa_attention(tiny_pipe):
    for unet in (tiny_pipe.unet, tiny_pipe.subject_unet):
        processors = set(type(p) for p in unet.attn_processors.values())
        assert processors == {AttnProcessor2_0}


def test_fp16_vae_decodes_in_float32_when_force_upcast(tiny_pipe):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    # Scale the decoder's input conv so that its float16 activations pass 65504 while float32 ones stay finite (the
    # GroupNorm after it brings the scale back).
    with torch.no_grad():
        tiny_pipe.vae.decoder.conv_in.weight.mul_(3e4)
        tiny_pipe.vae.decoder.conv_in.bias.mul_(3e4)
        reference = tiny_pipe.vae_decode(latents)  # float32 VAE
    tiny_pipe.vae.to(torch.float16)
    assert tiny_pipe.vae.config.force_upcast

    image = tiny_pipe.vae_decode(latents.half())
    assert tiny_pipe.vae.dtype == torch.float16  # back to float16 after the decode
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    torch.testing.assert_close(image, reference, rtol=1e-2, atol=1e-2)

    tiny_pipe.vae.register_to_config(force_upcast=False)
    unsafe = tiny_pipe.vae_decode(latents.half())
    assert unsafe.dtype == torch.float16 and not torch.isfinite(unsafe).all()


def test_bf16_vae_is_not_upcast(tiny_pipe):
    tiny_pipe.vae.to(torch.bfloat16)
    dtypes = []
    handle = tiny_pipe.vae.decoder.register_forward_pre_hook(lambda m, a: dtypes.append(a[0].dtype))
    tiny_pipe.vae_decode(torch.randn(1, 4, 8, 8).bfloat16())
    handle.remove()
    assert dtypes == [torch.bfloat16]


def test_vae_slicing_matches_and_tiling_runs(tiny_pipe, face_image):
    def run(**kwargs):
        return tiny_pipe(
            PROMPT,
            reference_images=[face_image],
            num_inference_steps=2,
            num_images_per_prompt=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **kwargs,
        ).images

    plain = run()
    decoder_batches = []
    handle = tiny_pipe.vae.decoder.register_forward_pre_hook(lambda m, a: decoder_batches.append(a[0].shape))
    tiny_pipe.vae.enable_slicing()
    sliced = run()
    assert [s[0] for s in decoder_batches] == [1, 1]  # one image at a time
    np.testing.assert_allclose(sliced, plain, atol=1e-5)

    tiny_pipe.vae.disable_slicing()
    tiny_pipe.vae.enable_tiling()
    decoder_batches.clear()
    tiled = run(height=128, width=128)  # the tiny VAE's tiles are 64 px: 128 px needs several
    handle.remove()
    assert len(decoder_batches) > 1 and all(s[-1] < 128 // 8 for s in decoder_batches)
    assert tiled.shape == (2, 128, 128, 3) and np.isfinite(tiled).all()


@pytest.mark.slow
def test_compile_unets_keeps_outputs(face_image):
    def run(pipe):
        generator = torch.Generator().manual_seed(0)
        kwargs = {"num_inference_steps": 3, "generator": generator, "output_type": "np"}
        return pipe(PROMPT, reference_images=[face_image], **kwargs).images

    pipe = build_tiny_pipeline(seed=0)
    expected = run(pipe)
    pipe.compile_unets(backend="eager")  # graph capture only: no C++ compiler needed
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"  # still saveable
    got = run(pipe)
    # A captured graph may decompose or reorder ops, so float32 rounding may differ (~1e-6 on these pixels); a graph
    # that computed something else would move them by 1e-2 or more. (Compared before the 8-bit PNG rounding, which
    # turns any tiny difference into a whole step of 1/255.)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_text_encoder_and_vae_are_one_copy(tiny_pipe):
    sd = tiny_pipe.text_model_pipeline()

    def storages(*modules):
        return {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}

    def pipeline_storages(pipe):
        return storages(*(m for m in pipe.components.values() if isinstance(m, torch.nn.Module)))

    # The Face-diffuser pipeline adds only its own models to what Stable Diffusion on the same components holds.
    extra = pipeline_storages(tiny_pipe) - pipeline_storages(sd)
    assert extra == storages(tiny_pipe.subject_unet, tiny_pipe.image_encoder, tiny_pipe.subject_fuser)
    assert pipeline_storages(sd) <= pipeline_storages(tiny_pipe)
