"""Person regions at sampling time: the pure functions, the side capture, the pipeline options, and the world."""

import logging

import numpy as np
import pytest
import torch

from facediffuser.attention import AttentionStore, install_attention_capture
from facediffuser.fusion import (
    NO_PERSON,
    assign_regions,
    normalize_saliency,
    normalize_saliency_by_region,
    person_regions,
    region_key_bias,
    region_masks,
)
from facediffuser.io.tiny import tiny_unet
from facediffuser.regions import RegionSampler, layer_size

STEPS = 4
PROMPT = "a man <|image|> and a woman <|image|> on a boat"


def run(pipe, refs, seed=0, prompt=PROMPT, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, reference_images=refs, generator=torch.Generator().manual_seed(seed), **kwargs)


# ------------------------------------------------------------------ pure functions
def test_person_regions_sum_to_one_and_absent_people_are_empty():
    attention = torch.rand(2, 3, 4, 5)
    present = torch.tensor([[True, True, False], [True, True, True]])
    maps = person_regions(attention, present)
    assert maps.shape == (2, 3, 4, 5)
    sums = maps.sum((-1, -2))
    assert torch.allclose(sums, present.float(), atol=1e-6)  # float rounding of one division per map


def test_assign_regions_picks_the_strongest_person_and_no_one_below_the_threshold():
    maps = torch.zeros(1, 2, 1, 4)
    maps[0, 0, 0] = torch.tensor([1.0, 0.5, 0.0, 0.0])
    maps[0, 1, 0] = torch.tensor([0.0, 0.2, 1.0, 0.1])
    hard = assign_regions(maps, threshold=0.3)
    assert hard.tolist() == [[[0, 0, 1, NO_PERSON]]]
    assert assign_regions(torch.zeros(1, 0, 2, 2)).eq(NO_PERSON).all()


def test_saliency_by_region_normalises_each_region_apart_and_keeps_the_background_rule():
    omega = torch.tensor([[[10.0, 0.0, 1.0, 2.0, 5.0, 3.0]]])  # person 0 strong, person 1 weak
    who = torch.tensor([[[0, 0, 1, 1, NO_PERSON, NO_PERSON]]])
    out = normalize_saliency_by_region(omega, who)
    assert torch.allclose(out[0, 0, :2], torch.softmax(torch.tensor([10.0, 0.0]), 0))
    assert torch.allclose(out[0, 0, 2:4], torch.softmax(torch.tensor([1.0, 2.0]), 0))
    # person 1's positions no longer lose their mass to person 0's strong response
    assert out[0, 0, 3] > 0.7 and normalize_saliency(omega)[0, 0, 3] < 1e-3
    assert torch.equal(out[0, 0, 4:], normalize_saliency(omega)[0, 0, 4:])
    # one region over everything is the paper's rule exactly
    assert torch.equal(normalize_saliency_by_region(omega, torch.zeros_like(who)), normalize_saliency(omega))


def test_region_key_bias_blocks_only_each_persons_column_outside_their_region():
    who = torch.tensor([[[0, 0], [1, NO_PERSON]]])
    inside = region_masks(who, 2)
    bias = region_key_bias(inside, torch.tensor([[2, 5]]), num_keys=7)
    assert bias.shape == (1, 4, 7)
    blocked = torch.isinf(bias[0])
    assert blocked[:, 2].tolist() == [False, False, True, True]
    assert blocked[:, 5].tolist() == [True, True, False, True]
    assert blocked.sum() == 5  # no other column touched
    empty = region_key_bias(region_masks(torch.full((1, 2, 2), NO_PERSON), 2), torch.tensor([[2, 5]]), 7)
    assert torch.equal(empty, torch.zeros_like(empty))  # an empty region restricts nothing
    assert region_masks(who, 2, (1, 1)).tolist() == [[[[True]], [[True]]]]


def test_layer_size_follows_the_unets_halving():
    assert layer_size((13, 16), 13 * 16) == (13, 16)
    assert layer_size((13, 16), 7 * 8) == (7, 8)
    assert layer_size((13, 16), 4 * 4) == (4, 4)


# ------------------------------------------------------------------ the side capture
def test_side_capture_leaves_the_output_bit_identical_and_matches_plain_attention():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    sample, t = torch.randn(2, 4, 8, 8), torch.tensor(500)
    context = torch.randn(2, 77, 16)
    before = dict(unet.attn_processors)
    with torch.no_grad():
        reference = unet(sample, t, encoder_hidden_states=context).sample
        sampler = RegionSampler(_settings(), [[3, 6]], 1, (8, 8), 77, torch.device("cpu"))
        with sampler.installed(unet):
            control = sampler.controls[id(unet)]
            control.capture = (slice(1, 2), sampler.columns, sampler._record)
            seen = {}
            record = sampler._record
            control.capture = (slice(1, 2), sampler.columns, lambda n, p: (seen.__setitem__(n, p), record(n, p)))
            out = unet(sample, t, encoder_hidden_states=context).sample
        assert torch.equal(out, reference)
        assert all(unet.attn_processors[k] is v for k, v in before.items())  # nothing left behind
        store = AttentionStore()
        install_attention_capture(unet, store)
        unet(sample, t, encoder_hidden_states=context)
    for name, probs in seen.items():
        plain = store.probs[name][1:2].mean(1)[..., [3, 6]]  # (1, HW, 2)
        assert torch.allclose(probs, plain, atol=1e-6), name  # float32 softmax of the same q, k
    assert sampler.sums.shape == (1, 2, 8, 8)


def test_processors_are_restored_after_an_error(tiny_pipe, face_image):
    before = {u: dict(getattr(tiny_pipe, u).attn_processors) for u in ("unet", "subject_unet")}

    def fail(*args, **kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run(tiny_pipe, [face_image, face_image], return_masks=True, callback_on_step_end=fail)
    for u, procs in before.items():
        assert all(getattr(tiny_pipe, u).attn_processors[k] is v for k, v in procs.items())


def _settings(**kw):
    from facediffuser.settings import SamplingSettings

    return SamplingSettings(**kw)


# ------------------------------------------------------------------ the pipeline
def test_return_masks_gives_the_same_images_and_the_regions(tiny_pipe, face_image):
    plain = run(tiny_pipe, [face_image, face_image]).images
    traced = run(tiny_pipe, [face_image, face_image], return_masks=True, num_images_per_prompt=2)
    again = run(tiny_pipe, [face_image, face_image], num_images_per_prompt=2).images
    assert np.array_equal(traced.images, again)
    assert np.array_equal(run(tiny_pipe, [face_image, face_image], return_masks=True).images, plain)
    trace = traced.fusion_trace
    assert trace.regions.shape == (2, 2, 8, 8)
    assert torch.allclose(trace.regions.sum((-1, -2)), torch.ones(2, 2), atol=1e-5)
    assert trace.region_assignment.shape == (2, 8, 8)
    assert set(trace.region_assignment.unique().tolist()) <= {NO_PERSON, 0, 1}


def test_region_options_change_nothing_before_stage_two(tiny_pipe, face_image):
    def latents_after_stage_one(**kw):
        seen = []
        run(
            tiny_pipe,
            [face_image, face_image],
            num_inference_steps=10,
            callback_on_step_end=lambda p, i, t, d: seen.append(d["latents"].clone()) or {},
            **kw,
        )
        return seen

    base = latents_after_stage_one()
    on = latents_after_stage_one(region_attention=True, region_attention_text=True, region_saliency=True)
    assert all(torch.equal(a, b) for a, b in zip(base[:3], on[:3]))  # stage I: steps 1-3
    assert not torch.equal(base[-1], on[-1])


def test_region_attention_with_one_region_over_everything_is_no_option(tiny_pipe, face_image, monkeypatch):
    import facediffuser.regions as regions

    monkeypatch.setattr(regions, "assign_regions", lambda maps: torch.zeros(maps.shape[0], *maps.shape[2:]).long())
    prompt = "a man <|image|> on a boat"
    plain = run(tiny_pipe, [face_image], prompt=prompt).images
    ra = run(tiny_pipe, [face_image], prompt=prompt, region_attention=True, region_saliency=True).images
    # a zero bias takes SDPA's masked path: same numbers up to float32 rounding of the attention
    assert np.abs(ra - plain).max() < 1e-4


def test_without_stage_one_the_options_do_nothing_and_say_so_once(tiny_pipe, face_image, caplog):
    plain = run(tiny_pipe, [face_image, face_image], alpha=0.0).images
    with caplog.at_level(logging.WARNING, logger="facediffuser.regions"):
        out = run(tiny_pipe, [face_image, face_image], alpha=0.0, region_attention=True, return_masks=True)
    assert np.array_equal(out.images, plain)
    assert out.fusion_trace.regions is None
    assert sum("no stage I" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------ the world: each person's true segment is known
def world_regions(pipe, scene, reverse=False, steps=(2, 5, 8, 11, 14)):
    """The regions the pipeline's own code reads from the TDM for a rendered two-person scene, noised to stage-I
    timesteps of a 50-step DDIM schedule; with ``reverse`` the prompt names the people right to left."""
    import torch.nn.functional as F

    from facediffuser.fusion import TEXT_MODEL_GUIDANCE, Stage
    from facediffuser.lab.world import attributes as A
    from facediffuser.lab.world.render import render
    from facediffuser.prompting import tokenize_prompts

    rendered = render(scene)
    named = A.SceneSpec(**{**scene.__dict__, "people": scene.people[::-1]}) if reverse else scene
    text, ends = A.caption(named)
    for end in reversed(ends):
        text = text[:end] + " <|image|>" + text[end:]
    pixels = torch.from_numpy(np.array(rendered.image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    ids, marks = tokenize_prompts(pipe.tokenizer, [text], pipe.placeholder)
    embeds = torch.cat(
        [pipe.encode_text(tokenize_prompts(pipe.tokenizer, [""])[0], "cpu"), pipe.encode_text(ids, "cpu")]
    )
    pipe.scheduler.set_timesteps(50)
    sampler = RegionSampler(_settings(), marks, 1, latents.shape[-2:], embeds.shape[1], torch.device("cpu"))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    with sampler.installed(pipe.unet):
        for i in steps:
            t = pipe.scheduler.timesteps[i]
            x = pipe.scheduler.add_noise(latents, noise, t[None])
            sampler.before_text_model(pipe.unet, Stage.TEXT, TEXT_MODEL_GUIDANCE)
            pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds)
    sampler.after_step(Stage.TEXT, None)
    segmap = torch.from_numpy(rendered.segmap.astype(np.int64))
    segments = torch.stack([(segmap == k + 1).float() for k in range(2)])[None]
    segments = F.interpolate(segments, size=latents.shape[-2:], mode="area")[0] > 0.5
    regions = sampler.regions[0]
    if reverse:
        regions = regions.flip(0)  # back to left-to-right order
    # share of each person's region (rows) inside each person's true segment (columns)
    return torch.stack([torch.stack([(regions[k] * segments[j]).sum() for j in range(2)]) for k in range(2)])


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured on the shipped mini model: its TDM's attention to a class noun does not single out that person "
    "(both people's regions put most of their mass on the same person; the own-segment share is 0.16-0.29 against "
    "0.17-0.35 on the other's), so the regions are not yet where the people are; this test passes, and must lose its "
    "xfail, once a model's regions are",
)
@torch.no_grad()
def test_world_regions_overlap_their_own_person_and_swap_with_the_prompt():
    from facediffuser import FaceDiffuserPipeline
    from facediffuser.io.package_data import data_dir
    from facediffuser.lab.world import attributes as A

    pipe = FaceDiffuserPipeline.from_pretrained(
        data_dir() / "mini" / "pipeline", use_safetensors=True, dtype=torch.float32
    )
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    people = A.make_identities(20, 0)
    for seed in range(4):
        scene = A.sample_scene(A.SCENES, people[2 * seed : 2 * seed + 2], np.random.default_rng(seed), size)
        share = world_regions(pipe, scene)
        swapped = world_regions(pipe, scene, reverse=True)
        for k in range(2):
            assert share[k, k] > share[k, 1 - k], (seed, share)
            assert swapped[k, k] > swapped[k, 1 - k], (seed, swapped)
