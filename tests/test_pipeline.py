"""FaceDiffuserPipeline against diffusers' own pipeline, a hand-written reference loop, and call counts."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from facediffuser import FaceDiffuserPipeline, Stage
from facediffuser.fusion import stage_schedule, unet_evaluations, unet_evaluations_per_image
from facediffuser.images import prepare_reference_pixels
from facediffuser.prompting import tokenize_prompts

STEPS = 4


def run(pipe, prompt, refs=None, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, reference_images=refs, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_tdm_only_equals_stable_diffusion(tiny_pipe, scheduler):
    if scheduler == "dpm":
        tiny_pipe.scheduler = DPMSolverMultistepScheduler.from_config(tiny_pipe.scheduler.config)
    prompts = ["a photo of a man at the beach", "a woman reading a book"]
    ours = run(tiny_pipe, prompts, alpha=1.0, beta=1.0, guidance_scale=6.0, num_images_per_prompt=2).images
    sd = tiny_pipe.text_model_pipeline()
    theirs = sd(
        prompts,
        num_inference_steps=STEPS,
        guidance_scale=6.0,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert ours.shape == theirs.shape == (4, 64, 64, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_tdm_only_with_placeholder_equals_stable_diffusion_on_stripped_prompt(tiny_pipe, face_image):
    # The TDM reads the prompt with its placeholder removed.
    ours = run(tiny_pipe, "a man <|image|> riding a horse", [face_image], alpha=1.0, beta=1.0).images
    sd = tiny_pipe.text_model_pipeline()
    theirs = sd(
        "a man riding a horse",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def reference_sdm_loop(pipe, prompt, ref, w, seed, height=64, width=64):
    """An independent CFG loop over the SDM with paper eq. 2: eps = eps(0) + w (eps(c_aug) - eps(c))."""
    tok = pipe.tokenizer
    ids, marks = tokenize_prompts(tok, [prompt])
    null_ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    c = pipe.text_encoder(ids)[0]
    null = pipe.text_encoder(null_ids)[0]
    o = pipe.image_encoder(pixel_values=prepare_reference_pixels([ref], pipe.image_encoder.config.image_size))
    o = o.image_embeds[0]
    c_aug = c.clone()
    c_aug[0, marks[0][0]] = pipe.subject_fuser.fuse(c[0, marks[0][0]][None], o[None])[0]
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, 4, height // 8, width // 8), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        e0 = pipe.subject_unet(x, t, encoder_hidden_states=null).sample
        ec = pipe.subject_unet(x, t, encoder_hidden_states=c).sample
        ea = pipe.subject_unet(x, t, encoder_hidden_states=c_aug).sample
        latents = scheduler.step(e0 + w * (ea - ec), t, latents, eta=0.0).prev_sample
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def test_sdm_only_null_base_equals_reference_loop(tiny_pipe, face_image):
    prompt = "a woman <|image|> in a garden"
    ours = run(tiny_pipe, prompt, [face_image], alpha=0.0, beta=0.0, subject_guidance_base="null", guidance_scale=4.0)
    expected = reference_sdm_loop(tiny_pipe, prompt, face_image, w=4.0, seed=0)
    np.testing.assert_allclose(ours.images, expected, atol=1e-5)


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and counts evaluations (batch rows) per step."""

    def __init__(self, unet):
        super().__init__()
        self.inner = unet
        self.calls = []

    def forward(self, sample, timestep, *args, **kwargs):
        self.calls.append((int(timestep), sample.shape[0]))
        return self.inner(sample, timestep, *args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


# docs/method.md, Cost per image: (TDM, SDM) UNet evaluations per image and step of each stage.
@pytest.mark.parametrize(
    "base,per_step", [("text", {1: (2, 0), 2: (2, 2), 3: (0, 2)}), ("null", {1: (2, 0), 2: (2, 3), 3: (0, 3)})]
)
def test_unet_evaluations_per_stage(tiny_pipe, face_image, base, per_step):
    # The one table the pipeline, the benchmark and the docs read holds the paper's counts...
    assert {stage: unet_evaluations(stage, base) for stage in Stage} == per_step
    steps, alpha, beta = 10, 0.3, 0.6  # 3 / 3 / 4 steps
    tdm, sdm = CountingUNet(tiny_pipe.unet), CountingUNet(tiny_pipe.subject_unet)
    tiny_pipe.unet, tiny_pipe.subject_unet = tdm, sdm
    out = run(
        tiny_pipe,
        "a man <|image|> on a boat",
        [face_image],
        num_inference_steps=steps,
        alpha=alpha,
        beta=beta,
        subject_guidance_base=base,
        return_masks=True,
    )
    stages = out.fusion_trace.stages
    assert [stages.count(s) for s in Stage] == [3, 3, 4]
    # One batched call per model per step, each call evaluating all its conditions.
    assert len(tdm.calls) == sum(1 for s in stages if per_step[s][0])
    assert len(sdm.calls) == sum(1 for s in stages if per_step[s][1])
    assert sum(rows for _, rows in tdm.calls) == sum(per_step[s][0] for s in stages)
    assert sum(rows for _, rows in sdm.calls) == sum(per_step[s][1] for s in stages)
    # docs/method.md, Cost per image at T = 50: 130 (text) or 165 (null) evaluations.
    total_50 = sum(sum(per_step[s]) for s in [Stage.TEXT] * 15 + [Stage.FUSION] * 15 + [Stage.SUBJECT] * 20)
    assert total_50 == {"text": 130, "null": 165}[base]
    # ... and the pipeline calls its UNets as often as that table says.
    assert sum(rows for _, rows in tdm.calls + sdm.calls) == unet_evaluations_per_image(
        stage_schedule(steps, alpha, beta), base
    )


def test_fusion_trace_shows_who_drew_what(tiny_pipe, face_image):
    out = run(
        tiny_pipe,
        "a man <|image|> on a boat",
        [face_image],
        num_inference_steps=10,
        return_masks=True,
        height=64,
        width=80,
    )
    trace = out.fusion_trace
    assert trace.masks.shape == (10, 1, 8, 10)
    assert torch.all(trace.masks[:3] == 0) and torch.all(trace.masks[6:] == 1)
    assert set(trace.masks[3:6].unique().tolist()) <= {0.0, 1.0}
    assert torch.isnan(trace.saliency_subject[:3]).all() and torch.isnan(trace.saliency_text[6:]).all()
    fusion_steps = trace.saliency_text[3:6]
    assert torch.allclose(fusion_steps.sum((-1, -2)), torch.ones(3, 1))
    stage_mask = trace.stage_mean(Stage.FUSION)
    assert stage_mask.shape == (1, 8, 10) and 0 <= stage_mask.min() <= stage_mask.max() <= 1


def test_references_change_only_the_subject_model(tiny_pipe, face_image):
    other = face_image.transpose(0)  # a mirrored photo is a different reference
    a = run(tiny_pipe, "a man <|image|> on a boat", [face_image], alpha=0.0, beta=0.0).images
    b = run(tiny_pipe, "a man <|image|> on a boat", [other], alpha=0.0, beta=0.0).images
    assert not np.allclose(a, b)
    a = run(tiny_pipe, "a man <|image|> on a boat", [face_image], alpha=1.0, beta=1.0).images
    b = run(tiny_pipe, "a man <|image|> on a boat", [other], alpha=1.0, beta=1.0).images
    np.testing.assert_array_equal(a, b)  # exact by construction: the same weights and inputs reach the same kernels


def test_several_photos_of_one_person_are_averaged(tiny_pipe, face_image):
    other = face_image.rotate(90)
    both = tiny_pipe.encode_subjects([[[face_image, other]]], torch.device("cpu"))
    one = tiny_pipe.encode_subjects([[[face_image], [other]]], torch.device("cpu"))
    assert both.shape == (1, 16) and one.shape == (2, 16)
    torch.testing.assert_close(both[0], one.mean(0))


def test_batch_of_prompts_with_references(tiny_pipe, face_image):
    prompts = ["a man <|image|> and a woman <|image|> at a cafe", "a woman <|image|> skiing"]
    refs = [[face_image, face_image.rotate(90)], [[face_image, face_image.rotate(180)]]]
    out = run(tiny_pipe, prompts, refs, num_images_per_prompt=2, height=48, width=72)
    assert out.images.shape == (4, 48, 72, 3)
    single = run(tiny_pipe, prompts[1], refs[1], num_images_per_prompt=1, height=48, width=72)
    assert np.isfinite(single.images).all()


@pytest.mark.slow
def test_save_and_load_round_trip(tiny_pipe, face_image, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    assert (tmp_path / "subject_fuser" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = FaceDiffuserPipeline.from_pretrained(tmp_path, use_safetensors=True)
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "subject_unet", "subject_fuser", "image_encoder", "text_encoder", "vae"):
        a, b = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = run(tiny_pipe, "a man <|image|> on a boat", [face_image]).images
    b = run(loaded, "a man <|image|> on a boat", [face_image]).images
    # The weights are equal (above), but safetensors storages sit at other memory alignments, and some CPUs then run
    # another matmul kernel: 6e-7 apart on an AMD EPYC, and one ulp on every weight moves these pixels by 1e-6. What
    # the images protect is everything else the folder must carry: a lost scheduler setting, VAE scaling factor or
    # a swapped model moves them by 1e-2 or more.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_the_pipeline_config_sets_the_subject_guidance_scale_a_call_leaves_out(tiny_pipe, face_image, tmp_path):
    """A pipeline whose config names a subject guidance scale draws with it when a call gives none; a call's own
    scale wins; the value travels through save_pretrained / from_pretrained; a bad one is refused on construction."""
    prompt, refs = "a man <|image|> on a boat", [face_image]
    assert tiny_pipe.subject_guidance_scale is None
    explicit = run(tiny_pipe, prompt, refs, subject_guidance_scale=2.0).images
    same_as_text = run(tiny_pipe, prompt, refs).images  # None: the call's guidance_scale (5)
    # Same weights, same process, same calls: exact by construction.
    np.testing.assert_array_equal(same_as_text, run(tiny_pipe, prompt, refs, subject_guidance_scale=5.0).images)
    assert not np.array_equal(explicit, same_as_text)  # the scale moves the image, so the checks below can fail

    tiny_pipe.register_to_config(subject_guidance_scale=2.0)
    np.testing.assert_array_equal(run(tiny_pipe, prompt, refs).images, explicit)
    np.testing.assert_array_equal(run(tiny_pipe, prompt, refs, subject_guidance_scale=5.0).images, same_as_text)

    tiny_pipe.save_pretrained(tmp_path)
    loaded = FaceDiffuserPipeline.from_pretrained(tmp_path, use_safetensors=True)
    assert loaded.subject_guidance_scale == 2.0
    for bad, match in ((-1.0, "non-negative"), (float("nan"), "finite")):
        with pytest.raises(ValueError, match=match):  # components holds the config's values too: replace the scale
            FaceDiffuserPipeline(**{**tiny_pipe.components, "subject_guidance_scale": bad})


def tiny_face_detector(threshold: float = 0.0):
    """The world's face detector, tiny and random: with threshold 0 every local maximum is a face."""
    from facediffuser.models import FaceDetector

    torch.manual_seed(0)
    return FaceDetector(channels=(8, 8, 8), threshold=threshold).eval()


@pytest.mark.slow
def test_a_face_detector_cuts_every_reference_to_its_face(tiny_pipe, face_image, tmp_path):
    """With a face_detector, the pipeline draws what it draws from the photo's most confident face, cut square; the
    detector travels through save_pretrained / from_pretrained; without one, photos are encoded as given."""
    from facediffuser.images import crop_to_square

    prompt = "a man <|image|> on a boat"
    assert tiny_pipe.face_detector is None
    whole = run(tiny_pipe, prompt, [face_image]).images
    detector = tiny_face_detector()
    (box, _), *_ = detector.find_faces(face_image)
    cut = crop_to_square(face_image, box)
    assert cut.size != face_image.size
    from_the_cut = run(tiny_pipe, prompt, [cut]).images
    assert not np.array_equal(from_the_cut, whole)  # the cut moves the image, so the check below can fail

    tiny_pipe.register_modules(face_detector=detector)
    # Same weights, same process, same calls: exact by construction.
    np.testing.assert_array_equal(run(tiny_pipe, prompt, [face_image]).images, from_the_cut)

    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["face_detector"] == ["facediffuser.models.face_detector", "FaceDetector"]
    loaded = FaceDiffuserPipeline.from_pretrained(tmp_path, use_safetensors=True)
    assert loaded.face_detector.find_faces(face_image)[0][0] == box
    # diffusers loads a component only from a module already imported: a fresh process that imports the pipeline
    # and nothing else must load the folder too.
    code = (
        "import sys; from facediffuser import FaceDiffuserPipeline as P; "
        "print(type(P.from_pretrained(sys.argv[1]).face_detector).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-1] == "FaceDetector", done.stderr[-2000:]


def test_the_face_detector_finds_the_same_faces_when_offloaded_layer_by_layer(face_image):
    """`--offload sequential` keeps the detector's weights on the meta device until each layer runs (accelerate's
    hooks, here with the CPU as the execution device): its input must not follow them there."""
    from accelerate import cpu_offload

    detector = tiny_face_detector()
    found = detector.find_faces(face_image)
    cpu_offload(detector, execution_device=torch.device("cpu"))
    assert detector.device.type == "meta"
    assert detector.find_faces(face_image) == found  # the same weights, brought back as they were: exact


def test_a_reference_without_a_face_is_refused_before_the_unets_run(tiny_pipe, face_image):
    calls = []
    tiny_pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    tiny_pipe.register_modules(face_detector=tiny_face_detector(threshold=1.0))  # no score exceeds 1
    with pytest.raises(ValueError, match=r"finds no face in photo 1 of person 1 \(36x40\)"):
        run(tiny_pipe, "a man <|image|> on a boat", [face_image])
    assert tiny_pipe.face_detector.find_faces(face_image) == [] and calls == []


def test_callback_can_replace_latents(tiny_pipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = run(tiny_pipe, "a cat", callback_on_step_end=callback, output_type="latent")
    assert seen == list(range(STEPS))
    assert out.images.abs().max() < 1.0  # the last step started from zeros


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"height": 60}, "multiple of 8"),
        ({"width": 0}, "multiple of 8"),
        ({"num_inference_steps": 0}, "positive integer"),
        ({"alpha": 0.8, "beta": 0.5}, "must not exceed"),
        ({"beta": 1.2}, r"\[0, 1\]"),
        ({"guidance_scale": -1.0}, "non-negative"),
        ({"guidance_scale": float("nan")}, "finite"),
        ({"subject_guidance_scale": float("inf")}, "finite"),
        ({"subject_guidance_base": "paper"}, "paper"),
        ({"smoothing_kernel_size": 0}, "smoothing_kernel_size"),
        ({"output_type": "jpeg"}, "output_type"),
    ],
)
def test_bad_arguments(tiny_pipe, face_image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(tiny_pipe, "a man <|image|>", [face_image], **kwargs)


def test_placeholder_count_must_match_references(tiny_pipe, face_image):
    with pytest.raises(ValueError, match="2 placeholder.*1 reference"):
        run(tiny_pipe, "a man <|image|> and a woman <|image|>", [face_image])
    with pytest.raises(ValueError, match="no `reference_images`"):
        run(tiny_pipe, "a man <|image|>")
    with pytest.raises(ValueError, match="0 placeholder.*1 reference"):
        run(tiny_pipe, "a man", [face_image])
    with pytest.raises(ValueError, match="one list of references per prompt"):
        run(tiny_pipe, ["a man <|image|>", "a woman <|image|>"], [face_image])


def test_missing_and_corrupt_reference_files(tiny_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        run(tiny_pipe, "a man <|image|>", [tmp_path / "nope.jpg"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ValueError, match="cannot be read as an image"):
        run(tiny_pipe, "a man <|image|>", [bad])
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        run(tiny_pipe, "a man <|image|>", [empty])


def test_a_folder_is_several_photos_of_one_person(tiny_pipe, face_image, tmp_path):
    folder = tmp_path / "person"
    folder.mkdir()
    face_image.save(folder / "a.png")
    face_image.rotate(90).save(folder / "b.jpg")
    from_folder = run(tiny_pipe, "a man <|image|>", [folder]).images
    from_list = run(tiny_pipe, "a man <|image|>", [[folder / "a.png", folder / "b.jpg"]]).images
    np.testing.assert_array_equal(from_folder, from_list)  # exact by construction: the same files, pipeline, kernels


def test_a_step_that_makes_the_latents_non_finite_is_named_and_nothing_is_decoded(tiny_pipe, monkeypatch):
    from facediffuser.pipeline import NonFiniteLatentsError

    decoded = []
    monkeypatch.setattr(tiny_pipe, "vae_decode", lambda *a, **k: decoded.append(1))

    def overflow_at_step_3(pipe, i, t, tensors):
        return {"latents": tensors["latents"] * float("inf")} if i == 2 else {}

    with pytest.raises(NonFiniteLatentsError, match=r"^Step 3 of 4 produced non-finite latents \(NaN or inf\)"):
        run(tiny_pipe, "a cat", callback_on_step_end=overflow_at_step_3)
    assert decoded == []


def test_a_guidance_scale_that_overflows_during_sampling_is_an_error_not_a_black_image(tiny_pipe, face_image):
    from facediffuser.pipeline import NonFiniteLatentsError

    # 1e30 is a float32 number, so it passes the up-front check; w * (eps(c) - eps(0)) overflows on the way.
    with pytest.raises(NonFiniteLatentsError, match=r"of 4 produced non-finite.*lower the guidance scale \(now 1e\+30"):
        run(tiny_pipe, "a man <|image|>", [face_image], guidance_scale=1e30)


@pytest.mark.parametrize("name", ["guidance_scale", "subject_guidance_scale"])
def test_a_guidance_scale_beyond_float32_is_refused_before_any_model_runs(tiny_pipe, face_image, monkeypatch, name):
    monkeypatch.setattr(tiny_pipe, "encode_prompt", lambda *a, **k: pytest.fail("a model ran"))
    with pytest.raises(ValueError, match=rf"`{name}` must be at most 3.403e\+38, the largest float32 number"):
        run(tiny_pipe, "a man <|image|>", [face_image], **{name: 1e39})
