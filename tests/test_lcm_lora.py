"""An LCM-LoRA (trained for SD1.x by diffusers' consistency-distillation script, such as
latent-consistency/lcm-lora-sdv1-5) on both UNets of a Face-diffuser pipeline with LCMScheduler, as docs/training.md
(LCM) shows it: each UNet takes the LoRA under an adapter name of its own, and the pipeline samples with it in a few
steps. A random tiny LoRA made with peft stands in for the real one."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from diffusers import LCMScheduler, StableDiffusionPipeline  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

from facediffuser.io.tiny import build_tiny_pipeline  # noqa: E402


def write_random_lcm_lora(folder, seed: int = 3) -> dict[str, torch.Tensor]:
    """A LoRA on the tiny UNet's attention projections, saved as diffusers' LCM-LoRA script saves one
    (``pytorch_lora_weights.safetensors``, keys under ``unet.``); returns its tensors (without the prefix)."""
    unet = build_tiny_pipeline(seed=0).unet
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))  # fmt: skip
    layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    return {k: v.clone() for k, v in layers.items()}


def load_lcm_lora(pipe, folder) -> None:
    """What docs/training.md (LCM) tells a user to do with a real LCM-LoRA."""
    state, alphas = StableDiffusionPipeline.lora_state_dict(folder)
    pipe.unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name="lcm-tdm")
    pipe.subject_unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name="lcm-sdm")
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)


def test_an_lcm_lora_loads_onto_both_unets_with_its_own_adapter_names(tmp_path):
    written = write_random_lcm_lora(tmp_path)
    pipe = build_tiny_pipeline(seed=0)
    load_lcm_lora(pipe, tmp_path)
    assert set(pipe.unet.peft_config) == {"lcm-tdm"}
    assert set(pipe.subject_unet.peft_config) == {"lcm-sdm"}
    assert isinstance(pipe.scheduler, LCMScheduler)
    # Every tensor of the file sits in both UNets, unchanged (peft names its layers by the adapter).
    for unet, name in ((pipe.unet, "lcm-tdm"), (pipe.subject_unet, "lcm-sdm")):
        params = dict(unet.named_parameters())
        for key, tensor in written.items():
            loaded = params[key.replace(".weight", f".{name}.weight")]
            assert torch.equal(loaded, tensor), key


def test_the_pipeline_samples_with_an_lcm_lora_in_few_steps(tmp_path, face_image):
    write_random_lcm_lora(tmp_path)
    kwargs = dict(
        prompt="a photo of a woman <|image|> on a beach",
        reference_images=[face_image],
        num_inference_steps=4,
        guidance_scale=1.5,
        output_type="latent",
        return_masks=True,
    )
    plain = build_tiny_pipeline(seed=0)
    plain.scheduler = LCMScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    before = plain(**kwargs, generator=torch.Generator().manual_seed(0))
    pipe = build_tiny_pipeline(seed=0)
    load_lcm_lora(pipe, tmp_path)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.images).all()
    # The LoRA changed what both models predict: the latents move (by far more than float noise, 1e-4).
    assert (out.images - before.images).abs().max() > 1e-4
    assert out.fusion_trace is not None  # stage II ran, SNF read both models' guidance responses
    # Turning the adapters off gives back the plain pipeline's latents: the LoRA is all that changed.
    pipe.unet.disable_adapters()
    pipe.subject_unet.disable_adapters()
    off = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(off.images, before.images, rtol=0, atol=1e-6)  # float32 round-off only
