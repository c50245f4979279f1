"""Evaluation methods with an IP-Adapter as the subject model: ``ip-adapter``, ``face-diffuser+ip:A:B`` and
``:shared``, on the tiny pipeline with a tiny adapter saved as ``train ip-adapter`` writes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from facediffuser.evaluation.cases import Case, Person, Photo
from facediffuser.evaluation.generation import GenerationSettings, generate_units
from facediffuser.evaluation.harness import EvaluationConfig
from facediffuser.evaluation.methods import ModelSpec, Variant, parse_method
from facediffuser.evaluation.work import WorkUnit
from facediffuser.io.tiny import build_tiny_pipeline
from facediffuser.lab.world.benchmark import default_references
from facediffuser.settings import SamplingSettings
from facediffuser.training.adapter import fresh_ip_adapter_state


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    """A tiny adapter for the tiny pipeline's UNet, its projection and image layers moved off their start so that
    it draws visibly, with its image encoder beside it."""
    folder = tmp_path_factory.mktemp("adapter")
    unet = build_tiny_pipeline(seed=0).unet
    torch.manual_seed(3)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=12,
        )  # fmt: skip
    ).eval()
    state = fresh_ip_adapter_state(unet, 12, seed=1)
    g = torch.Generator().manual_seed(2)
    flat = {
        f"{part}.{k}": v + 0.3 * torch.randn(v.shape, generator=g) for part in state for k, v in state[part].items()
    }
    save_file(flat, folder / "ip-adapter.safetensors")
    encoder.save_pretrained(folder / "image_encoder")
    return folder


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    rng = np.random.default_rng(0)
    found = []
    for name, noun in (("ada", "woman"), ("alan", "man")):
        path = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path)
        found.append(Person(name, noun, (Photo(path),)))
    return found


def test_adapter_methods_parse_and_name_their_rows():
    assert parse_method("ip-adapter").label == "ip-adapter" and parse_method("ip-adapter").adapter
    m = parse_method("face-diffuser+ip:0.3:0.6:shared")
    assert (m.alpha, m.beta, m.shared, m.adapter) == (0.3, 0.6, True, True)
    assert m.label == "face-diffuser+ip_a0.3_b0.6_shared"
    assert m.display_name == "Face-diffuser + IP-Adapter (alpha=0.3, beta=0.6, one shared embedding)"
    assert not parse_method("face-diffuser:0.3:0.6").adapter
    with pytest.raises(ValueError, match="shared is for the IP-Adapter's methods"):
        parse_method("sdm:shared")
    with pytest.raises(ValueError, match="ip-adapter.*changes nothing"):
        parse_method("ip-adapter:rs")


def test_an_adapter_method_without_an_adapter_is_refused_before_anything_loads(tmp_path, people):
    config = EvaluationConfig(model=["tiny"], data=tmp_path, out=tmp_path / "o", methods=["tdm", "ip-adapter"],
                              benchmark="single-subject", metrics=["pc"], clip_model="x")  # fmt: skip
    with pytest.raises(ValueError, match="ip-adapter draws the people with an IP-Adapter: give it with --ip-adapter"):
        config.check()


def load_benchmark_masks() -> str:
    """The mini benchmark's ``person_masks`` (what the harness hands the generation for the :gt methods)."""
    from facediffuser.lab.world.benchmark import mini_cases

    return mini_cases(default_references()).person_masks


def run(units, out, adapter_folder, steps=3):
    settings = GenerationSettings(
        SamplingSettings(num_inference_steps=steps), seed=0, images_per_prompt=1,
        person_masks=load_benchmark_masks(),
    )  # fmt: skip
    generate_units(
        units, settings, out, lambda source: build_tiny_pipeline(seed=0), None, ip_adapter=str(adapter_folder)
    )
    return {u.variant.method.label: np.asarray(Image.open(u.image_paths(out, 1)[0])).astype(float) for u in units}


def test_one_shared_embedding_is_the_adapter_itself_for_one_person_and_differs_for_two(
    tmp_path, people, adapter_folder
):
    model = ModelSpec("tiny", "tiny")
    methods = ["ip-adapter", "ip-adapter:shared", "sdm", "face-diffuser+ip:0.3:0.6", "face-diffuser+ip:0.3:0.6:shared"]
    one = Case("one", "a woman <|image|> at the beach", (people[0],), "single")
    images = run([WorkUnit(Variant(model, parse_method(m)), one) for m in methods], tmp_path / "one", adapter_folder)
    # One person: her photo averaged alone and drawn everywhere is what the adapter draws for her (PNG rounding aside).
    assert np.abs(images["ip-adapter"] - images["ip-adapter_shared"]).max() <= 1
    fused = "face-diffuser+ip_a0.3_b0.6"
    assert np.abs(images[fused] - images[fused + "_shared"]).max() <= 1
    assert np.abs(images["ip-adapter"] - images["sdm"]).max() > 10  # the adapter, not the fused SDM, drew it

    two = Case("two", "a woman <|image|> and a man <|image|> at the beach", tuple(people), "multi")
    units = [
        WorkUnit(Variant(model, parse_method(m)), two)
        for m in ("face-diffuser+ip:0.3:0.6", "face-diffuser+ip:0.3:0.6:shared")
    ]
    images = run(units, tmp_path / "two", adapter_folder, steps=6)
    # Two people: each their own image in their stage-I region, or one mean image everywhere (beyond PNG rounding).
    assert np.abs(images[fused] - images[fused + "_shared"]).max() > 1


def world_case(people):
    attributes = {"place": "beach", "time": "day", "weather": "clear", "object": "none",
                  "people": [{"name": p.name, "class_noun": p.class_noun, "clothing": c, "garment": "shirt"}
                             for p, c in zip(people, ("red", "blue"))]}  # fmt: skip
    prompt = "a woman <|image|> in a red shirt and a man <|image|> in a blue shirt on a beach during the day"
    return Case("ada+alan/multi", prompt, tuple(people), "multi", attributes)


def test_the_world_masks_are_each_persons_segment_left_to_right(people):
    from facediffuser.lab.world.benchmark import case_person_masks

    masks = case_person_masks(world_case(people), 64)
    assert masks.shape == (2, 64, 64) and masks[0].any() and masks[1].any()
    assert not (masks[0] & masks[1]).any()  # one segment per person
    columns = [np.nonzero(m.any(axis=0))[0].mean() for m in masks]
    assert columns[0] < 32 < columns[1]  # the first-named on the left, as the world and its scorer place them


def test_gt_masks_draw_each_person_in_their_segment_and_need_a_world_case(tmp_path, people, adapter_folder):
    model = ModelSpec("tiny", "tiny")
    case = world_case(people)
    specs = ("face-diffuser+ip:0.3:0.6", "face-diffuser+ip:0.3:0.6:gt")
    images = run([WorkUnit(Variant(model, parse_method(m)), case) for m in specs], tmp_path / "gt", adapter_folder, 6)
    assert np.abs(images["face-diffuser+ip_a0.3_b0.6"] - images["face-diffuser+ip_a0.3_b0.6_gt"]).max() > 1
    plain = Case("x", case.prompt, case.people, "multi")  # no attributes: not a case the world can render
    with pytest.raises(ValueError, match="only the mini benchmark's cases describe"):
        run([WorkUnit(Variant(model, parse_method(specs[1])), plain)], tmp_path / "plain", adapter_folder)
    with pytest.raises(ValueError, match=":shared .* or :gt .*not both"):
        parse_method("ip-adapter:shared:gt")


def test_a_run_may_add_an_adapter_to_its_images_but_not_change_it(tmp_path):
    import json

    from facediffuser.evaluation.work import check_run_settings

    (tmp_path / "images" / "mini" / "tdm").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "mini" / "tdm" / "0.png")
    earlier = {"seed": 7, "models": {"mini": "mini"}}
    (tmp_path / "run.json").write_text(json.dumps(earlier))
    added = check_run_settings(tmp_path, {**earlier, "ip_adapter": "mini"})
    assert added["ip_adapter"] == "mini"  # the adapter rows join the run's tdm images
    (tmp_path / "run.json").write_text(json.dumps(added))
    assert check_run_settings(tmp_path, earlier)["ip_adapter"] == "mini"  # a later run without adapter rows keeps it
    with pytest.raises(ValueError, match="ip_adapter: 'mini' -> 'other/'"):
        check_run_settings(tmp_path, {**earlier, "ip_adapter": "other/"})
