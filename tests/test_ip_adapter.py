"""An IP-Adapter as the subject model: tiny adapters saved as real weight files and loaded the diffusers way, against
diffusers' own StableDiffusionPipeline with the same adapter."""

import os
import re

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from facediffuser import Stage
from facediffuser.fusion import region_masks
from facediffuser.images import prepare_reference_pixels
from facediffuser.io.tiny import build_tiny_pipeline
from facediffuser.subject_models import SubjectModelKind, _cross_attention_widths

STEPS = 4
CLIP_DIM = 12  # the adapter's image-embedding width, unlike the UNet's 16: a swapped width cannot pass unseen
# Both sides compute the same UNet rows in float32; 1e-5 allows for a reordered sum, not for a wrong condition
# (those differ by 1e-2 and more in these tiny models).
ATOL = 1e-5


def adapter_state(unet, kind="plain", seed=1, cross=None):
    """A random IP-Adapter for ``unet`` in the flat layout of the .safetensors files: ``plain`` (CLIP image embeds,
    4 tokens) or ``faceid`` (face-recognition embeds, 4 tokens)."""
    g = torch.Generator().manual_seed(seed)
    cross = cross or unet.config.cross_attention_dim

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    if kind == "plain":
        state = {"image_proj.proj.weight": r(4 * cross, CLIP_DIM), "image_proj.proj.bias": r(4 * cross, s=0.1)}
    else:
        state = {
            "image_proj.proj.0.weight": r(2 * CLIP_DIM, CLIP_DIM),
            "image_proj.proj.0.bias": r(2 * CLIP_DIM, s=0.1),
            "image_proj.proj.2.weight": r(4 * cross, 2 * CLIP_DIM),
            "image_proj.proj.2.bias": r(4 * cross, s=0.1),
        }
    state["image_proj.norm.weight"] = 1 + r(cross, s=0.1)
    state["image_proj.norm.bias"] = r(cross, s=0.1)
    for i, width in enumerate(_cross_attention_widths(unet)):
        for name in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * i + 1}.{name}.weight"] = r(width, cross, s=0.5)
    return state


PLUS_WIDTH = 20  # the resampler's own width, unlike CLIP's hidden 16 and the UNets' 16 / 24
PLUS_TOKENS = 4


def plus_adapter_state(unet, seed=2, cross=None):
    """A random IP-Adapter Plus (Plus-Face has the same layout) for ``unet`` in the flat key layout of the original
    .safetensors files: the resampler that reads CLIP's penultimate hidden states (``latents``, ``proj_in``, four
    blocks of a perceiver attention ``layers.i.0.{norm1,norm2,to_q,to_kv,to_out}`` and a feed-forward
    ``layers.i.1.{0,1,3}``, ``proj_out``, ``norm_out``) and one ``to_k_ip`` / ``to_v_ip`` pair per cross-attention
    layer, numbered 1, 3, 5, ... as the original attention processors are."""
    g = torch.Generator().manual_seed(seed)
    cross = cross or unet.config.cross_attention_dim
    hidden = tiny_image_encoder().config.hidden_size
    width, inner = PLUS_WIDTH, 64  # one head of 64 (diffusers reads the heads as to_q's rows / 64)

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    proj = {
        "latents": r(1, PLUS_TOKENS, width, s=1.0),
        "proj_in.weight": r(width, hidden),
        "proj_in.bias": r(width, s=0.1),
        "proj_out.weight": r(cross, width),
        "proj_out.bias": r(cross, s=0.1),
        "norm_out.weight": 1 + r(cross, s=0.1),
        "norm_out.bias": r(cross, s=0.1),
    }
    for i in range(4):
        for norm in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{norm}.weight"] = 1 + r(width, s=0.1)
            proj[f"layers.{i}.0.{norm}.bias"] = r(width, s=0.1)
        proj[f"layers.{i}.0.to_q.weight"] = r(inner, width)
        proj[f"layers.{i}.0.to_kv.weight"] = r(2 * inner, width)
        proj[f"layers.{i}.0.to_out.weight"] = r(width, inner, s=0.1)
        proj[f"layers.{i}.1.0.weight"] = 1 + r(width, s=0.1)
        proj[f"layers.{i}.1.0.bias"] = r(width, s=0.1)
        proj[f"layers.{i}.1.1.weight"] = r(4 * width, width)
        proj[f"layers.{i}.1.3.weight"] = r(width, 4 * width, s=0.1)
    state = {f"image_proj.{k}": v for k, v in proj.items()}
    for i, layer_width in enumerate(_cross_attention_widths(unet)):
        for name in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * i + 1}.{name}.weight"] = r(layer_width, cross, s=0.5)
    return state


def tiny_image_encoder():
    torch.manual_seed(3)
    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=CLIP_DIM,
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


@pytest.fixture
def faces():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.fixture
def adapter_pipe(tmp_path):
    """``(pipe, plain_sd)``: a tiny pipeline with a plain IP-Adapter on its scene UNet (loaded from a .safetensors
    folder), and the plain Stable Diffusion images it drew before, for the text-model check."""
    pipe = build_tiny_pipeline()
    save_file(adapter_state(pipe.unet), tmp_path / "ip-adapter.safetensors")
    pipe.load_ip_adapter(tmp_path, weight_name="ip-adapter.safetensors", image_encoder=tiny_image_encoder())
    return pipe


def run(pipe, prompt, refs=None, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, reference_images=refs, output_type="np", generator=torch.Generator().manual_seed(0), **kwargs)


def sd_run(sd, prompt, **kwargs):
    kwargs.setdefault("guidance_scale", 5.0)
    return sd(
        prompt, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0), **kwargs
    ).images


def image_embeds(pipe, photos):
    """The people's embeddings as the pipeline encodes them, in diffusers' form with the "no image" half first."""
    size = pipe.image_encoder.config.image_size
    embeds = pipe.image_encoder(prepare_reference_pixels(photos, size)).image_embeds[None]  # (1, K, D)
    return torch.cat([torch.zeros_like(embeds), embeds])


def hidden_state_embeds(pipe, photos):
    """For the adapters that read CLIP's penultimate hidden states (Plus, Plus-Face), what diffusers' ``encode_image``
    gives, in its form ``(2, K, tokens, width)``: the hidden states of a zero image ("no image") first, then the
    people's."""
    pixels = prepare_reference_pixels(photos, pipe.image_encoder.config.image_size)

    def hidden(x):
        return pipe.image_encoder(x, output_hidden_states=True).hidden_states[-2][None]

    return torch.cat([hidden(torch.zeros_like(pixels)), hidden(pixels)])


def halves(people, size=64):
    """Left / right masks in diffusers' form ``(1, K, H, W)``."""
    masks = torch.zeros(1, people, size, size)
    for k in range(people):
        masks[0, k, :, k * size // people : (k + 1) * size // people] = 1
    return masks


# ------------------------------------------------------------------ the role
def test_the_adapter_on_the_scene_unet_makes_one_unet_in_memory(adapter_pipe):
    two = build_tiny_pipeline()
    assert two.subject_model_kind is SubjectModelKind.FUSED and not two.shares_unet
    assert adapter_pipe.subject_model_kind is SubjectModelKind.IP_ADAPTER and adapter_pipe.shares_unet
    assert adapter_pipe.subject_fuser is None

    def held(pipe):  # parameters of every component, each tensor counted once
        params = {id(p): p for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()}
        return sum(p.numel() for p in params.values())

    def unets(pipe):
        return len({id(m) for m in pipe.components.values() if type(m).__name__ == "UNet2DConditionModel"})

    unet = sum(p.numel() for p in adapter_pipe.unet.parameters())  # with the adapter's layers
    others = sum(sum(p.numel() for p in adapter_pipe.components[n].parameters()) for n in ("vae", "text_encoder"))
    assert unets(two) == 2 and unets(adapter_pipe) == 1
    assert held(adapter_pipe) == unet + others + sum(p.numel() for p in adapter_pipe.image_encoder.parameters())


def test_the_text_model_on_a_shared_unet_is_plain_stable_diffusion(tmp_path, faces):
    pipe = build_tiny_pipeline()
    plain = sd_run(pipe.text_model_pipeline(), "a man at the beach")
    save_file(adapter_state(pipe.unet), tmp_path / "ip.safetensors")
    pipe.load_ip_adapter(tmp_path, weight_name="ip.safetensors", image_encoder=tiny_image_encoder())
    ours = run(pipe, "a man <|image|> at the beach", [faces[0]], alpha=1.0, beta=1.0).images
    np.testing.assert_allclose(ours, plain, atol=ATOL)


def test_at_adapter_scale_zero_the_subject_model_adds_nothing(adapter_pipe, faces):
    # R_S = eps(c, image) - eps(c, no image) is exactly 0, so the release's base gives eps(c) whatever the scale w:
    # Stable Diffusion without guidance.
    adapter_pipe.set_ip_adapter_scale(0.0)
    prompt = "a man <|image|> at the beach"
    ours = run(adapter_pipe, prompt, [faces[0]], alpha=0.0, beta=0.0).images
    other_w = run(adapter_pipe, prompt, [faces[0]], alpha=0.0, beta=0.0, guidance_scale=3.0).images
    np.testing.assert_array_equal(other_w, ours)
    scales = [s for p in adapter_pipe.unet.attn_processors.values() if hasattr(p, "scale") for s in p.scale]
    assert scales and all(s == 0.0 for s in scales)  # the user's scales are back after each call
    embeds = image_embeds(adapter_pipe, faces[:1])[1:]
    theirs = sd_run(adapter_pipe.text_model_pipeline(), "a man at the beach", guidance_scale=1.0,
                    ip_adapter_image_embeds=[embeds])  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=ATOL)


@pytest.mark.parametrize("people,masks", [(1, False), (2, True)])
def test_subject_model_alone_equals_stable_diffusion_with_the_same_adapter(adapter_pipe, faces, people, masks):
    # The release's base: eps(c, no image) + w (eps(c, image) - eps(c, no image)), which is diffusers' IP-Adapter
    # guidance with the prompt as its negative prompt.
    prompt = "a man <|image|> and a woman <|image|> at a cafe" if people == 2 else "a man <|image|> at a cafe"
    extra = {"ip_adapter_masks": [halves(people)]} if masks else {}
    ours = run(adapter_pipe, prompt, faces[:people], alpha=0.0, beta=0.0, guidance_scale=4.0, **extra).images
    sd = adapter_pipe.text_model_pipeline()
    stripped = prompt.replace(" <|image|>", "")
    theirs = sd_run(
        sd,
        stripped,
        negative_prompt=stripped,
        guidance_scale=4.0,
        ip_adapter_image_embeds=[image_embeds(adapter_pipe, faces[:people])],
        cross_attention_kwargs=extra or None,
    )
    np.testing.assert_allclose(ours, theirs, atol=ATOL)
    if masks:  # the masks matter: without them the image differs
        unmasked = run(adapter_pipe, prompt, faces[:people], alpha=0.0, beta=0.0, guidance_scale=4.0).images
        assert np.abs(unmasked - ours).max() > 1e-3


@pytest.mark.parametrize("people", [1, 2])
def test_plus_adapter_alone_equals_stable_diffusion_with_the_same_adapter(tmp_path, faces, people):
    # Plus / Plus-Face: the resampler reads the people's hidden states in c_aug and a zero image's in the other rows.
    pipe = build_tiny_pipeline()
    save_file(plus_adapter_state(pipe.unet), tmp_path / "ip-adapter-plus-face_sd15.safetensors")
    pipe.load_ip_adapter(
        tmp_path, weight_name="ip-adapter-plus-face_sd15.safetensors", image_encoder=tiny_image_encoder()
    )
    assert isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], IPAdapterPlusImageProjection)
    prompt = "a man <|image|> and a woman <|image|> at a cafe" if people == 2 else "a man <|image|> at a cafe"
    extra = {"ip_adapter_masks": [halves(people)]} if people == 2 else {}
    ours = run(pipe, prompt, faces[:people], alpha=0.0, beta=0.0, guidance_scale=4.0, **extra).images
    stripped = prompt.replace(" <|image|>", "")
    embeds = hidden_state_embeds(pipe, faces[:people])
    theirs = sd_run(pipe.text_model_pipeline(), stripped, negative_prompt=stripped, guidance_scale=4.0,
                    ip_adapter_image_embeds=[embeds], cross_attention_kwargs=extra or None)  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=ATOL)
    # "no image" is the zero image's hidden states: zero hidden states would draw another image
    image = embeds.chunk(2)[1]
    zeros = sd_run(pipe.text_model_pipeline(), stripped, negative_prompt=stripped, guidance_scale=4.0,
                   ip_adapter_image_embeds=[torch.cat([torch.zeros_like(image), image])],
                   cross_attention_kwargs=extra or None)  # fmt: skip
    assert np.abs(zeros - ours).max() > 1e-3


def test_faceid_embeddings_equal_stable_diffusion_with_the_same_adapter(tmp_path):
    pipe = build_tiny_pipeline()
    save_file(adapter_state(pipe.unet, "faceid"), tmp_path / "faceid.safetensors")
    pipe.load_ip_adapter(tmp_path, weight_name="faceid.safetensors", image_encoder_folder=None)
    assert pipe.image_encoder is None
    ids = torch.randn(1, 2, CLIP_DIM, generator=torch.Generator().manual_seed(5))
    embeds = [torch.cat([torch.zeros_like(ids), ids])]
    prompt = "a man <|image|> and a woman <|image|> at a cafe"
    ours = run(pipe, prompt, alpha=0.0, beta=0.0, ip_adapter_image_embeds=embeds).images
    stripped = prompt.replace(" <|image|>", "")
    theirs = sd_run(pipe.text_model_pipeline(), stripped, negative_prompt=stripped, ip_adapter_image_embeds=embeds)
    np.testing.assert_allclose(ours, theirs, atol=ATOL)
    with pytest.raises(ValueError, match="reads face-recognition embeddings"):
        run(pipe, prompt, [Image.new("RGB", (8, 8))] * 2)


def test_null_base_is_eq_2_with_the_adapters_response(adapter_pipe, faces):
    # eps = eps(0, no image) + w (eps(c, image) - eps(c, no image)), written out over the UNet.
    pipe, w = adapter_pipe, 3.0
    ours = run(pipe, "a man <|image|> at a cafe", [faces[0]], alpha=0.0, beta=0.0, guidance_scale=w,
               subject_guidance_base="null").images  # fmt: skip
    tok = pipe.tokenizer

    def text(s):
        return pipe.text_encoder(tok([s], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]

    empty, c = text(""), text("a man at a cafe")
    no_image, image = image_embeds(pipe, faces[:1]).chunk(2)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)

            def eps(cond, im, x=x, t=t):
                return pipe.unet(x, t, encoder_hidden_states=cond, added_cond_kwargs={"image_embeds": [im]}).sample

            e = eps(empty, no_image) + w * (eps(c, image) - eps(c, no_image))
            latents = scheduler.step(e, t, latents, eta=0.0).prev_sample
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    expected = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, expected, atol=ATOL)


# ------------------------------------------------------------------ several people without masks
def test_two_people_get_their_stage_one_regions_as_adapter_masks(adapter_pipe, faces):
    prompt = "a man <|image|> and a woman <|image|> at a cafe"
    calls = []
    unet_forward = adapter_pipe.unet.forward

    def spy(*args, cross_attention_kwargs=None, **kwargs):
        masks = (cross_attention_kwargs or {}).get("ip_adapter_masks")
        calls.append(None if masks is None else masks[0].clone())
        return unet_forward(*args, cross_attention_kwargs=cross_attention_kwargs, **kwargs)

    adapter_pipe.unet.forward = spy
    out = run(adapter_pipe, prompt, faces, num_inference_steps=10, return_masks=True)
    del adapter_pipe.unet.forward
    trace = out.fusion_trace
    expected = region_masks(trace.region_assignment, 2).float()
    torch.testing.assert_close(trace.ip_adapter_masks, expected, rtol=0, atol=0)
    assert expected.flatten(2).any(-1).all(), "each person has a region on this seed"
    # stage I: the text model alone, no masks; stages II-III: the subject model's call holds them on every row
    stages = trace.stages
    assert stages.count(Stage.TEXT) == 3 and stages.count(Stage.FUSION) == 3
    assert calls[:3] == [None, None, None]
    subject_calls = [m for m in calls[3:] if m is not None]
    assert len(subject_calls) == 7  # 3 fusion steps + 4 subject steps
    for masks in subject_calls:
        torch.testing.assert_close(masks, torch.cat([expected] * (masks.shape[0] // expected.shape[0])))
    # the same masks given by hand draw the same image
    again = run(adapter_pipe, prompt, faces, num_inference_steps=10, ip_adapter_masks=[expected])
    np.testing.assert_allclose(again.images, out.images, atol=ATOL)


# ------------------------------------------------------------------ refusals
def test_adapter_options_the_fused_sdm_cannot_use_are_refused(adapter_pipe, faces):
    with pytest.raises(ValueError, match="region_attention"):
        run(adapter_pipe, "a man <|image|>", [faces[0]], region_attention=True)
    with pytest.raises(ValueError, match="region_source='sdm'"):
        run(adapter_pipe, "a man <|image|>", [faces[0]], region_source="sdm")
    with pytest.raises(ValueError, match=r"embeddings hold 1 image\(s\): give one image per placeholder"):
        run(
            adapter_pipe, "a man <|image|> and a woman <|image|>", ip_adapter_image_embeds=[torch.zeros(2, 1, CLIP_DIM)]
        )
    fused = build_tiny_pipeline()
    with pytest.raises(ValueError, match="fused SDM: load one with `load_ip_adapter`"):
        run(fused, "a man <|image|>", [faces[0]], ip_adapter_masks=[halves(1)])


def test_a_wrong_file_is_one_sentence_and_stays(tmp_path):
    pipe = build_tiny_pipeline()
    other = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(8, 4, 3, 3)}, other)
    with pytest.raises(ValueError, match=r"is not an IP-Adapter: it lacks the `image_proj` and `ip_adapter`"):
        pipe.load_ip_adapter(tmp_path, weight_name="unet.safetensors", image_encoder_folder=None)
    assert other.is_file() and not pipe.shares_unet  # nothing loaded, nothing deleted


def test_an_adapter_for_another_base_is_refused_before_it_touches_the_unet(tmp_path):
    pipe = build_tiny_pipeline()
    before = dict(pipe.unet.attn_processors)
    save_file(adapter_state(pipe.unet, cross=24), tmp_path / "sdxl.safetensors")
    with pytest.raises(ValueError, match=r"is 8x24 but the UNet's layer takes 8x16: it was made for another base"):
        pipe.load_ip_adapter(tmp_path, weight_name="sdxl.safetensors", image_encoder_folder=None)
    state = adapter_state(pipe.unet)
    del state["ip_adapter.1.to_k_ip.weight"], state["ip_adapter.1.to_v_ip.weight"]
    with pytest.raises(ValueError, match="for 9 cross-attention layers, but the UNet has 10"):
        pipe.load_ip_adapter(state, image_encoder_folder=None)
    assert dict(pipe.unet.attn_processors) == before and pipe.subject_model_kind is SubjectModelKind.FUSED


def test_a_pickle_with_code_is_refused_and_kept(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "ip-adapter.bin"
    torch.save({"image_proj": {}, "ip_adapter": {}, "x": Boom()}, path)
    pipe = build_tiny_pipeline()
    with pytest.raises(ValueError, match=r"cannot be read as IP-Adapter weights .*: give a \.safetensors file"):
        pipe.load_ip_adapter(tmp_path, weight_name="ip-adapter.bin", image_encoder_folder=None)
    assert path.is_file()


# ------------------------------------------------------------------ the command line
@pytest.fixture
def adapter_folder(tmp_path, faces):
    """The layout of the public adapters: ``models/<weights>`` with ``models/image_encoder/`` beside it, made for
    the tiny model; and two reference photos."""
    from facediffuser.io.tiny import tiny_unet

    models = tmp_path / "models"
    models.mkdir()
    save_file(adapter_state(tiny_unet()), models / "ip.safetensors")
    tiny_image_encoder().save_pretrained(models / "image_encoder")
    for name, face in zip("ab", faces):
        face.save(tmp_path / f"{name}.png")
    return tmp_path


@pytest.fixture
def no_model_load(monkeypatch):
    from facediffuser.io import loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


TWO = ["-p", "a man <|image|> and a woman <|image|> at a cafe", "--model", "tiny", "--no-face-check"]


def test_generate_with_an_adapter_writes_the_image_masks_and_regions(adapter_folder):
    from facediffuser.cli.main import main

    d = adapter_folder
    refs = ["--ref", str(d / "a.png"), "--ref", str(d / "b.png")]
    argv = ["generate", *TWO, *refs, "--ip-adapter", str(d / "models"), "--steps", "6", "--save-masks"]
    assert main([*argv, "-o", str(d / "two.png")]) == 0
    assert {"two.png", "two-masks.png", "two-regions.png"} <= {p.name for p in d.iterdir()}


def test_generate_with_a_plus_adapter_and_its_image_encoder_elsewhere(adapter_folder):
    # The public layout of Plus-Face: the weight file alone, the CLIP image encoder in another folder.
    from facediffuser.cli.main import main
    from facediffuser.io.tiny import tiny_unet

    d = adapter_folder
    save_file(plus_adapter_state(tiny_unet()), d / "ip-adapter-plus-face_sd15.safetensors")
    refs = ["--ref", str(d / "a.png"), "--ref", str(d / "b.png")]
    adapter = ["--ip-adapter", str(d / "ip-adapter-plus-face_sd15.safetensors")]
    encoder = ["--ip-adapter-image-encoder", str(d / "models" / "image_encoder")]
    argv = ["generate", *TWO, *refs, *adapter, *encoder, "--steps", "6", "--save-masks", "-o", str(d / "plus.png")]
    assert main(argv) == 0
    assert {"plus.png", "plus-masks.png", "plus-regions.png"} <= {p.name for p in d.iterdir()}


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: write(d / "x.safetensors", b""), r"x.safetensors is empty \(0 bytes\)"),
        (lambda d: write(d / "x.bin", b"hello"), r"x.bin is not a PyTorch or safetensors weight file"),
        (lambda d: d / "models" / "image_encoder" / "model.safetensors", r"model.safetensors is not an IP-Adapter"),
        (lambda d: d / "missing" / "x.safetensors", r"IP-Adapter not found: .*missing/x.safetensors"),
        (lambda d: write(d / "lone" / "x", b"") and d / "lone", r"lone holds no .safetensors or .bin file: name"),
    ],
)
def test_generate_refuses_a_wrong_adapter_file_before_any_model_loads(
    adapter_folder, capsys, no_model_load, make, message
):
    from facediffuser.cli.main import main

    d = adapter_folder
    (d / "lone").mkdir()
    spec = make(d)
    before = sorted(p.name for p in d.rglob("*"))
    argv = ["generate", *TWO, "--ref", str(d / "a.png"), "--ref", str(d / "b.png"), "--ip-adapter", str(spec)]
    assert main([*argv, "-o", str(d / "out.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("facediffuser generate: error: ")
    assert re.search(message, err), err
    assert sorted(p.name for p in d.rglob("*")) == before  # nothing written, nothing deleted


def test_generate_embeddings_must_match_the_placeholders(adapter_folder, capsys, no_model_load):
    from facediffuser.cli.main import main

    d = adapter_folder
    save_file({"image_embeds": torch.zeros(3, CLIP_DIM)}, d / "ids.safetensors")
    argv = ["generate", *TWO, "--ip-adapter", str(d / "models"), "--ip-adapter-embeds", str(d / "ids.safetensors")]
    assert main([*argv, "-o", str(d / "out.png")]) == 2
    assert "The prompt has 2 placeholder(s) but" in capsys.readouterr().err
    assert main(["generate", *TWO, "--ip-adapter-embeds", str(d / "ids.safetensors")]) == 2
    assert "--ip-adapter-embeds stands for --ref with an --ip-adapter" in capsys.readouterr().err
