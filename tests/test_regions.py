"""Person regions at sampling time: the pure functions, the side capture, the pipeline options, and the world."""

import logging

import numpy as np
import pytest
import torch

from facediffuser.attention import LOCALIZATION_LAYERS, AttentionStore, cross_attention_names, install_attention_capture
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
from facediffuser.lab.world import attributes as A
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


def _count_calls(unet):
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    return calls, handle


def test_sdm_source_probes_the_subject_model_once_and_leaves_images_and_processors_alone(tiny_pipe, face_image):
    refs = [face_image, face_image]
    before = {u: dict(getattr(tiny_pipe, u).attn_processors) for u in ("unet", "subject_unet")}
    plain = run(tiny_pipe, refs, num_inference_steps=10).images
    calls, handle = _count_calls(tiny_pipe.subject_unet)
    try:
        out = run(tiny_pipe, refs, num_inference_steps=10, return_masks=True, region_source="sdm")
    finally:
        handle.remove()
    assert np.array_equal(out.images, plain)  # the probe's prediction is thrown away
    # 10 steps: 3 in stage I, 7 with the SDM on (c, c_aug); the probe is one more such call, at stage I's end
    assert calls == [2] * 8
    regions = out.fusion_trace.regions
    assert regions.shape == (1, 2, 8, 8)
    assert torch.allclose(regions.sum((-1, -2)), torch.ones(1, 2), atol=1e-5)  # one division's float rounding
    for u, procs in before.items():
        assert all(getattr(tiny_pipe, u).attn_processors[k] is v for k, v in procs.items())


def test_tdm_source_adds_no_model_call_and_reads_other_regions(tiny_pipe, face_image):
    refs = [face_image, face_image]
    calls, handle = _count_calls(tiny_pipe.subject_unet)
    try:
        tdm = run(tiny_pipe, refs, num_inference_steps=10, return_masks=True, region_source="tdm").fusion_trace
    finally:
        handle.remove()
    assert calls == [2] * 7
    sdm = run(tiny_pipe, refs, num_inference_steps=10, return_masks=True, region_source="sdm").fusion_trace
    assert not torch.allclose(tdm.regions, sdm.regions)


def test_sdm_source_is_what_reaches_the_region_options(tiny_pipe, face_image):
    refs = [face_image, face_image]
    kw = dict(num_inference_steps=10, region_attention=True, region_saliency=True)
    assert not np.array_equal(
        run(tiny_pipe, refs, region_source="sdm", **kw).images, run(tiny_pipe, refs, region_source="tdm", **kw).images
    )
    # without a region option or the trace, the source changes nothing, and nothing is probed
    calls, handle = _count_calls(tiny_pipe.subject_unet)
    try:
        assert np.array_equal(
            run(tiny_pipe, refs, region_source="sdm").images, run(tiny_pipe, refs, region_source="tdm").images
        )
    finally:
        handle.remove()
    assert len(calls) == 2 * (STEPS - 1)  # 4 steps: 1 in stage I, 3 with the SDM, per call


def test_region_source_is_checked_and_recorded_only_with_a_region_option():
    with pytest.raises(ValueError, match=r"`region_source` must be one of \['tdm', 'sdm'\], got 'both'"):
        _settings(region_source="both")
    assert "region_source" not in _settings(region_source="tdm").to_dict()
    assert _settings(region_source="tdm", region_saliency=True).to_dict()["region_source"] == "tdm"


# ------------------------------------------------------------------ the world: each person's true segment is known
def world_numbers(source):
    """The shipped mini model's regions on 4 rendered two-person scenes, each prompt in both orders
    (:mod:`facediffuser.lab.world.regions`)."""
    from facediffuser import FaceDiffuserPipeline
    from facediffuser.io.package_data import data_dir
    from facediffuser.lab.world.regions import world_numbers

    pipe = FaceDiffuserPipeline.from_pretrained(
        data_dir() / "mini" / "pipeline", use_safetensors=True, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    return world_numbers(pipe, source)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["sdm", "tdm"])
@pytest.mark.xfail(
    strict=True,
    reason="measured on the shipped mini model (docs/method.md, Person regions): neither model's attention singles "
    "out each of two people. TDM: share own 0.23 other 0.24, IoU own 0.16 other 0.17, own > other for 8/16 people; "
    "SDM: share own 0.36 other 0.27, IoU own 0.27 other 0.15, own > other for 7/16 (with references from other "
    "photos its tokens fall back on their place in the prompt, docs/mini-findings.md). This test passes, and must "
    "lose its xfail, once a model's regions are where its people are",
)
@torch.no_grad()
def test_world_regions_overlap_their_own_person_and_swap_with_the_prompt(source):
    from facediffuser.lab.world.regions import summary

    share, iou = world_numbers(source)
    print(source, summary(share, iou))
    own, other = share.diagonal(dim1=1, dim2=2), share.flip(2).diagonal(dim1=1, dim2=2)
    # Each person's region (in both prompt orders: swapping the people must swap the regions) lies more on their
    # own segment than on the other's.
    assert (own > other).all(), summary(share, iou)


@pytest.mark.slow
def test_the_world_probe_reads_every_order_and_side_and_the_training_images(tiny_pipe, tmp_path):
    """The probe of docs/method.md on a tiny model: each reading covers both people of every scene and prompt order,
    a region's mass on the two segments is at most its whole, and the training-image reading counts every layer of
    every two-person image for both people."""
    from facediffuser.lab.world.data import write_dataset
    from facediffuser.lab.world.regions import training_attention, world_numbers

    tiny_pipe.set_progress_bar_config(disable=True)
    for mirror in (False, True):
        share, iou = world_numbers(tiny_pipe, "sdm", seeds=range(2), mirror=mirror)
        assert share.shape == iou.shape == (4, 2, 2)
        assert (share >= 0).all() and (share.sum(-1) <= 1 + 1e-5).all()  # float sums of a map summing to 1
        assert ((iou >= 0) & (iou <= 1)).all()
    people = A.make_identities(12, 0)
    size = tiny_pipe.unet.config.sample_size * tiny_pipe.vae_scale_factor
    write_dataset(tmp_path / "portraits", "portraits", {"train": people, "test": people[:2]}, {"train": 16, "test": 1},
                  seed=3, size=size, progress=False)  # fmt: skip
    counts = training_attention(tiny_pipe, tmp_path / "portraits", images=3)
    layers = len(cross_attention_names(tiny_pipe.subject_unet, LOCALIZATION_LAYERS, strict=False))
    assert {key.split(", ")[1] for key in counts} == {"person 1", "person 2"}
    for person in ("person 1", "person 2"):
        totals = sum(total for key, (_, total) in counts.items() if key.endswith(person))
        assert totals == 3 * layers
    assert all(0 <= hits <= total for hits, total in counts.values())
