"""FaceDiffuserXLPipeline against diffusers' StableDiffusionXLPipeline, a hand-written SDXL loop, and call counts."""

import json

import numpy as np
import pytest
import torch

from facediffuser import FaceDiffuserXLPipeline, Stage
from facediffuser.fusion import stage_schedule, unet_evaluations, unet_evaluations_per_image
from facediffuser.images import prepare_reference_pixels
from facediffuser.io.tiny import TinyXLConfig, build_tiny_xl_pipeline
from facediffuser.models import SubjectFuser
from facediffuser.prompting import tokenize_prompts
from test_pipeline import CountingUNet

STEPS = 4
# Both sides compute the same UNet rows in float32: 1e-5 allows for a reordered sum, not for a wrong condition, a
# missing pooled embedding or wrong size ids (those move these tiny images by 1e-3 and more).
ATOL = 1e-5


@pytest.fixture
def xl_pipe():
    return build_tiny_xl_pipeline(seed=0)


def run(pipe, prompt, refs=None, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, reference_images=refs, generator=torch.Generator().manual_seed(seed), **kwargs)


def sdxl_run(pipe, prompt, seed=0, **kwargs):
    kwargs.setdefault("guidance_scale", 5.0)
    return pipe.text_model_pipeline()(
        prompt, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(seed), **kwargs
    ).images


@pytest.mark.parametrize("negative", [None, "blurry, dark"])
def test_tdm_only_equals_stable_diffusion_xl(xl_pipe, negative):
    # None: SDXL's force_zeros_for_empty_prompt makes 0 zeros; a negative prompt is encoded by both towers.
    prompts = ["a photo of a man at the beach", "a woman reading a book"]
    ours = run(xl_pipe, prompts, alpha=1.0, beta=1.0, guidance_scale=6.0, num_images_per_prompt=2,
               negative_prompt=negative).images  # fmt: skip
    theirs = sdxl_run(xl_pipe, prompts, guidance_scale=6.0, num_images_per_prompt=2, negative_prompt=negative)
    assert ours.shape == theirs.shape == (4, 64, 64, 3)
    np.testing.assert_allclose(ours, theirs, atol=ATOL)


def test_tdm_only_with_placeholders_and_size_conditions_equals_stable_diffusion_xl(xl_pipe, face_image):
    sizes = {"original_size": (128, 96), "crops_coords_top_left": (8, 0), "target_size": (64, 64)}
    ours = run(xl_pipe, "a man <|image|> riding a horse", [face_image], alpha=1.0, beta=1.0, **sizes).images
    theirs = sdxl_run(xl_pipe, "a man riding a horse", **sizes)
    np.testing.assert_allclose(ours, theirs, atol=ATOL)
    default_sizes = run(xl_pipe, "a man <|image|> riding a horse", [face_image], alpha=1.0, beta=1.0).images
    assert np.abs(default_sizes - ours).max() > 1e-3  # the size ids reach the UNet


def reference_sdxl_sdm_loop(pipe, prompt, ref, w, seed):
    """An independent loop over the SDM with paper eq. 2 (eps(0) + w (eps(c_aug) - eps(c))), encoding as SDXL does:
    both towers' penultimate hidden states, the second tower's pooled projection, zeros for the empty prompt."""
    ids, marks = tokenize_prompts(pipe.tokenizer, [prompt])
    ids_2, _ = tokenize_prompts(pipe.tokenizer_2, [prompt])
    first = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    second = pipe.text_encoder_2(ids_2, output_hidden_states=True)
    c = torch.cat([first, second.hidden_states[-2]], dim=-1)
    pooled = second.text_embeds
    o = pipe.image_encoder(pixel_values=prepare_reference_pixels([ref], pipe.image_encoder.config.image_size))
    c_aug = c.clone()
    c_aug[0, marks[0][0]] = pipe.subject_fuser.fuse(c[0, marks[0][0]][None], o.image_embeds)[0]
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]], dtype=torch.float32)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS)
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)

        def eps(tokens, pooled_embeds, x=x, t=t):
            added = {"text_embeds": pooled_embeds, "time_ids": time_ids}
            return pipe.subject_unet(x, t, encoder_hidden_states=tokens, added_cond_kwargs=added).sample

        e0 = eps(torch.zeros_like(c), torch.zeros_like(pooled))
        latents = scheduler.step(e0 + w * (eps(c_aug, pooled) - eps(c, pooled)), t, latents, eta=0.0).prev_sample
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def test_sdm_only_null_base_equals_a_hand_written_sdxl_loop(xl_pipe, face_image):
    # c_aug: the class noun's whole 2048-wide (here 24-wide) token fused, c's pooled embedding and size ids.
    prompt = "a woman <|image|> in a garden"
    ours = run(xl_pipe, prompt, [face_image], alpha=0.0, beta=0.0, subject_guidance_base="null", guidance_scale=4.0)
    expected = reference_sdxl_sdm_loop(xl_pipe, prompt, face_image, w=4.0, seed=0)
    np.testing.assert_allclose(ours.images, expected, atol=ATOL)


@pytest.mark.parametrize(
    "base,per_step", [("text", {1: (2, 0), 2: (2, 2), 3: (0, 2)}), ("null", {1: (2, 0), 2: (2, 3), 3: (0, 3)})]
)
def test_unet_evaluations_per_stage_follow_the_sd1_rule(xl_pipe, face_image, base, per_step):
    assert {stage: unet_evaluations(stage, base) for stage in Stage} == per_step
    steps, alpha, beta = 10, 0.3, 0.6  # 3 / 3 / 4 steps
    tdm, sdm = CountingUNet(xl_pipe.unet), CountingUNet(xl_pipe.subject_unet)
    xl_pipe.unet, xl_pipe.subject_unet = tdm, sdm
    out = run(xl_pipe, "a man <|image|> on a boat", [face_image], num_inference_steps=steps, alpha=alpha, beta=beta,
              subject_guidance_base=base, return_masks=True)  # fmt: skip
    stages = out.fusion_trace.stages
    assert [stages.count(s) for s in Stage] == [3, 3, 4]
    assert len(tdm.calls) == sum(1 for s in stages if per_step[s][0])
    assert len(sdm.calls) == sum(1 for s in stages if per_step[s][1])
    assert sum(rows for _, rows in tdm.calls + sdm.calls) == unet_evaluations_per_image(
        stage_schedule(steps, alpha, beta), base
    )


def test_save_and_load_round_trip(xl_pipe, face_image, tmp_path):
    xl_pipe.save_pretrained(tmp_path / "xl")
    index = (tmp_path / "xl" / "model_index.json").read_text()
    assert '"_class_name": "FaceDiffuserXLPipeline"' in index and '"force_zeros_for_empty_prompt": true' in index
    loaded = FaceDiffuserXLPipeline.from_pretrained(tmp_path / "xl")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.tokenizer_2.pad_token == "!" and loaded.subject_fuser.config.image_embed_dim == 20
    a = run(xl_pipe, "a man <|image|> at sea", [face_image]).images
    b = run(loaded, "a man <|image|> at sea", [face_image]).images
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ the fuser's widths
def test_the_fuser_reads_a_token_and_an_image_embedding_of_their_own_widths():
    config = TinyXLConfig()
    fuser = SubjectFuser(embed_dim=config.token_width, image_embed_dim=config.vision_projection)
    assert fuser.mlp1.fc1.in_features == config.token_width + config.vision_projection
    out = fuser(torch.randn(1, 5, 24), torch.randn(1, 20), torch.tensor([[0, 2]]))
    assert out.shape == (1, 5, 24)
    with pytest.raises(ValueError, match="subject embeddings are 24 wide but this fuser reads 20"):
        fuser(torch.randn(1, 5, 24), torch.randn(1, 24), torch.tensor([[0, 2]]))


def test_an_sd1_fuser_config_loads_as_before(tmp_path):
    from facediffuser.io.package_data import MINI_PIPELINE, packaged

    shipped = packaged(MINI_PIPELINE) / "subject_fuser"
    if not (shipped / "config.json").is_file():
        pytest.skip("this installation ships no mini model")
    mini = SubjectFuser.from_pretrained(shipped)  # its config names embed_dim only
    assert mini.image_width == mini.config.embed_dim == 128 and mini.mlp1.fc1.in_features == 256
    # A config of the old keys only loads to the same model with the same parameter names and shapes.
    torch.manual_seed(0)
    old = SubjectFuser(embed_dim=16)
    old.save_pretrained(tmp_path / "fuser")
    config = tmp_path / "fuser" / "config.json"
    saved = json.loads(config.read_text())
    assert saved.pop("image_embed_dim") is None
    config.write_text(json.dumps(saved))  # the keys an SD1.x fuser was saved with before
    again = SubjectFuser.from_pretrained(tmp_path / "fuser")
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in old.state_dict().items()}
    for key, value in old.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)


# ------------------------------------------------------------------ IP-Adapter on SDXL
def xl_adapter_pipe(tmp_path, kind="plain"):
    from safetensors.torch import save_file

    from test_ip_adapter import adapter_state, tiny_image_encoder

    pipe = build_tiny_xl_pipeline(seed=0)
    save_file(adapter_state(pipe.unet, kind), tmp_path / f"{kind}.safetensors")
    encoder = {"image_encoder": tiny_image_encoder()} if kind == "plain" else {"image_encoder_folder": None}
    pipe.load_ip_adapter(tmp_path, weight_name=f"{kind}.safetensors", **encoder)
    return pipe


def test_subject_model_alone_equals_stable_diffusion_xl_with_the_same_adapter(tmp_path, face_image):
    # The release's base, eps(c, no image) + w (eps(c, image) - eps(c, no image)), is diffusers' IP-Adapter guidance
    # with the prompt as its negative prompt: both towers, the pooled embedding and the size ids of c in every row.
    from test_ip_adapter import image_embeds

    pipe = xl_adapter_pipe(tmp_path)
    assert pipe.shares_unet and pipe.subject_fuser is None
    ours = run(pipe, "a man <|image|> at a cafe", [face_image], alpha=0.0, beta=0.0, guidance_scale=4.0).images
    embeds = image_embeds(pipe, [face_image])
    theirs = sdxl_run(pipe, "a man at a cafe", negative_prompt="a man at a cafe", guidance_scale=4.0,
                      ip_adapter_image_embeds=[embeds])  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=ATOL)
    # the adapter matters, and the text model of the shared UNet is plain SDXL (its scales at 0)
    plain = sdxl_run(pipe, "a man at a cafe", negative_prompt="a man at a cafe", guidance_scale=4.0,
                     ip_adapter_image_embeds=[torch.zeros_like(embeds)])  # fmt: skip
    assert np.abs(plain - ours).max() > 1e-3
    tdm = run(pipe, "a man <|image|> at a cafe", [face_image], alpha=1.0, beta=1.0).images
    np.testing.assert_allclose(tdm, sdxl_run(build_tiny_xl_pipeline(seed=0), "a man at a cafe"), atol=ATOL)


@pytest.mark.parametrize("people", [1, 2])
def test_plus_face_alone_equals_stable_diffusion_xl_with_the_same_adapter(tmp_path, face_image, people):
    # ip-adapter-plus-face_sdxl_vit-h's layout: the resampler reads CLIP's penultimate hidden states, the "no image"
    # rows a zero image's.
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from safetensors.torch import save_file

    from test_ip_adapter import halves, hidden_state_embeds, plus_adapter_state, tiny_image_encoder

    pipe = build_tiny_xl_pipeline(seed=0)
    name = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
    (tmp_path / "sdxl_models").mkdir()
    save_file(plus_adapter_state(pipe.unet), tmp_path / "sdxl_models" / name)
    tiny_image_encoder().save_pretrained(tmp_path / "models" / "image_encoder")
    # docs/sdxl.md's call: the ViT-H encoder of models/, not the one beside the SDXL files
    pipe.load_ip_adapter(
        tmp_path, subfolder="sdxl_models", weight_name=name, image_encoder_folder="models/image_encoder"
    )
    assert isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], IPAdapterPlusImageProjection)
    faces = [face_image, face_image.transpose(0)]  # a mirrored face: another embedding
    prompt = "a man <|image|> and a woman <|image|> at a cafe" if people == 2 else "a man <|image|> at a cafe"
    extra = {"ip_adapter_masks": [halves(people)]} if people == 2 else {}
    ours = run(pipe, prompt, faces[:people], alpha=0.0, beta=0.0, guidance_scale=4.0, **extra).images
    stripped = prompt.replace(" <|image|>", "")
    embeds = hidden_state_embeds(pipe, faces[:people])
    theirs = sdxl_run(pipe, stripped, negative_prompt=stripped, guidance_scale=4.0, ip_adapter_image_embeds=[embeds],
                      cross_attention_kwargs=extra or None)  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=ATOL)
    # "no image" is the zero image's hidden states: zero hidden states would draw another image
    image = embeds.chunk(2)[1]
    zeros = sdxl_run(pipe, stripped, negative_prompt=stripped, guidance_scale=4.0,
                     ip_adapter_image_embeds=[torch.cat([torch.zeros_like(image), image])],
                     cross_attention_kwargs=extra or None)  # fmt: skip
    assert np.abs(zeros - ours).max() > 1e-3


def test_faceid_embeddings_on_sdxl_equal_stable_diffusion_xl_with_the_same_adapter(tmp_path):
    from test_ip_adapter import CLIP_DIM

    pipe = xl_adapter_pipe(tmp_path, "faceid")
    ids = torch.randn(1, 2, CLIP_DIM, generator=torch.Generator().manual_seed(5))
    embeds = [torch.cat([torch.zeros_like(ids), ids])]
    prompt = "a man <|image|> and a woman <|image|> at a cafe"
    ours = run(pipe, prompt, alpha=0.0, beta=0.0, ip_adapter_image_embeds=embeds).images
    stripped = prompt.replace(" <|image|>", "")
    theirs = sdxl_run(pipe, stripped, negative_prompt=stripped, ip_adapter_image_embeds=embeds)
    np.testing.assert_allclose(ours, theirs, atol=ATOL)


def test_an_sd1_adapter_on_sdxl_is_refused_naming_the_sdxl_files(tmp_path):
    from facediffuser.io.tiny import build_tiny_pipeline
    from test_ip_adapter import adapter_state

    pipe = build_tiny_xl_pipeline(seed=0)
    sd1 = adapter_state(build_tiny_pipeline().unet)
    with pytest.raises(ValueError, match=r"made for another base model.*\(SDXL: the \*_sdxl files\)"):
        pipe.load_ip_adapter(sd1, image_encoder_folder=None)
    assert not pipe.shares_unet


# ------------------------------------------------------------------ low precision
def test_bfloat16_on_the_cpu_draws_finite_images_that_are_not_black(xl_pipe, face_image):
    xl_pipe.to(dtype=torch.bfloat16)
    images = run(xl_pipe, "a man <|image|> at sea", [face_image], num_inference_steps=3).images
    assert images.dtype == np.float32 and np.isfinite(images).all()
    assert images.max() > 0.1 and images.std() > 0.01  # not black, not one flat colour


def test_a_float16_sdxl_vae_decodes_in_float32_and_goes_back(xl_pipe, face_image):
    # SDXL's VAE overflows in float16 (black images): its config's force_upcast makes the decoder run in float32.
    assert xl_pipe.vae.config.force_upcast
    xl_pipe.vae.to(dtype=torch.float16)
    seen = []
    decode = xl_pipe.vae.decode

    def spy(latents, *args, **kwargs):
        seen.append((latents.dtype, xl_pipe.vae.dtype))
        return decode(latents, *args, **kwargs)

    xl_pipe.vae.decode = spy
    images = run(xl_pipe, "a man <|image|> at sea", [face_image], num_inference_steps=2).images
    assert seen == [(torch.float32, torch.float32)] and xl_pipe.vae.dtype == torch.float16
    assert np.isfinite(images).all() and images.max() > 0.1
