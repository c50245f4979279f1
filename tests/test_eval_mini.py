"""The mini benchmark (`facediffuser evaluate --benchmark mini`): its cases and the attributes they carry, the
per-attribute scorer on renders of known scenes (read by stubs whose answers the test sets), per-method SDM guidance
bases, and a one-case run through the harness that writes the new columns."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from facediffuser.evaluation.benchmarks import Person, Photo, load_benchmark
from facediffuser.evaluation.identity import Face, IdentityBackend
from facediffuser.evaluation.methods import parse_method, parse_variants
from facediffuser.evaluation.reports import (
    ATTRIBUTE_METRICS,
    TWO_PERSON_METRICS,
    ScoreRow,
    markdown_table,
    read_scores,
    summarize,
    write_scores,
)
from facediffuser.fusion import SubjectGuidanceBase
from facediffuser.io import package_data
from facediffuser.lab.world import attributes as A
from facediffuser.lab.world import benchmark as MB
from facediffuser.lab.world.data import write_references
from facediffuser.settings import SamplingSettings

HELD_OUT = 6
ONE_PERSON = [m for m in ATTRIBUTE_METRICS if m not in TWO_PERSON_METRICS]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Held-out people of a small world and their reference folder (the layout `world build` writes)."""
    root = tmp_path_factory.mktemp("mini-world")
    people = A.make_identities(30, 0)
    split = A.split_identities(30, HELD_OUT, 0)
    heldout = [people[i] for i in split["heldout"]]
    write_references(root / "references", heldout, seed=3, size=64, per_person=2, progress=False)
    return {"references": root / "references", "identities": {p.name: p for p in heldout}}


# ------------------------------------------------------------------------------------------------------- cases
def test_cases_ask_for_rare_scenes_in_the_world_grammar_and_carry_their_attributes(world):
    benchmark = load_benchmark("mini", world["references"])
    assert benchmark.kind == "mixed" and benchmark.images_per_prompt == MB.IMAGES_PER_PROMPT
    names = sorted(world["identities"])
    assert [p.name for p in benchmark.gallery] == names  # 6 people: all of them, sorted
    singles = [c for c in benchmark.cases if c.group == "single"]
    multis = [c for c in benchmark.cases if c.group == "multi"]
    assert len(singles) == MB.SINGLE_PER_PERSON * HELD_OUT and len(multis) == HELD_OUT
    for case in benchmark.cases:
        asked = case.attributes
        assert asked["place"] in MB.MINI_PLACES and asked["time"] in MB.MINI_TIMES
        assert [p["name"] for p in asked["people"]] == [p.name for p in case.people]
        colours = [p["clothing"] for p in asked["people"]]
        assert set(colours) <= set(MB.MINI_COLOURS) and len(set(colours)) == len(colours)
        # the world's caption with a placeholder after each class noun, people left to right
        phrases = [
            f"a {p['class_noun']} <|image|> in {A.article(p['clothing'])} {p['clothing']} {p['garment']}"
            for p in asked["people"]
        ]
        assert case.prompt == " and ".join(phrases) + f" {A.PLACES[asked['place']]} {A.TIMES[asked['time']]}"
    # each person is the left one of one pair and the right one of another
    assert sorted(c.people[0].name for c in multis) == sorted(c.people[1].name for c in multis) == names
    # deterministic: the same folder gives the same cases
    again = load_benchmark("mini", world["references"])
    assert [(c.case_id, c.prompt) for c in again.cases] == [(c.case_id, c.prompt) for c in benchmark.cases]


def test_twenty_people_half_women_drawn_with_a_fixed_seed(tmp_path):
    photo = Photo(tmp_path / "unused.png")
    people = [Person(f"id{k:04d}", "woman" if k % 4 == 0 else "man", (photo,)) for k in range(60)]
    chosen = MB.benchmark_people(people)
    assert len(chosen) == MB.MINI_PEOPLE and sum(p.class_noun == "woman" for p in chosen) == MB.MINI_PEOPLE // 2
    assert chosen == MB.benchmark_people(list(reversed(people)))  # the order of the folder listing does not matter
    assert MB.benchmark_people(people[:20]) == people[:20]  # a folder of 20 (the shipped one) is taken whole
    few_women = [Person(f"id{k:04d}", "woman" if k < 3 else "man", (photo,)) for k in range(40)]
    assert sum(p.class_noun == "woman" for p in MB.benchmark_people(few_women)) == 3


def test_a_folder_of_more_than_twenty_people_gives_twenty_of_them(tmp_path, caplog):
    """`--data VAL` with many validation people: the benchmark draws 10 women and 10 men and runs on them."""
    nouns = {f"id{k:04d}": "woman" if k % 2 else "man" for k in range(27)}
    for name in nouns:
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "1.png")
    (tmp_path / "subjects.json").write_text(json.dumps(nouns))
    benchmark = load_benchmark("mini", tmp_path)
    people = [p.name for p in benchmark.gallery]
    assert len(people) == MB.MINI_PEOPLE and sum(nouns[p] == "woman" for p in people) == MB.MINI_PEOPLE // 2
    multis = [c for c in benchmark.cases if c.group == "multi"]
    assert len(benchmark.cases) == (MB.SINGLE_PER_PERSON + 1) * MB.MINI_PEOPLE
    assert {p.name for c in benchmark.cases for p in c.people} == set(people)  # only the drawn people
    assert sorted(c.people[0].name for c in multis) == sorted(c.people[1].name for c in multis) == people
    assert "found" not in caplog.text  # no warning about fewer people


def test_data_and_clip_defaults_say_which_flag_to_give(monkeypatch):
    from facediffuser.evaluation.harness import EvaluationConfig

    monkeypatch.setattr(MB, "default_references", lambda: None)
    with pytest.raises(ValueError, match="needs --data: the world's reference folder"):
        EvaluationConfig(model=["tiny"], benchmark="mini").resolved()
    with pytest.raises(ValueError, match="needs --data: a subject folder"):
        EvaluationConfig(model=["tiny"]).resolved()
    monkeypatch.setattr(MB, "default_references", lambda: "refs")
    monkeypatch.setattr(package_data, "data_dir", lambda: MB.Path("/nonexistent"))
    with pytest.raises(ValueError, match="--clip-model WORLD/clip"):
        EvaluationConfig(model=["tiny"], benchmark="mini").resolved()
    config = EvaluationConfig(model=["tiny"], benchmark="mini", clip_model="clip").resolved()
    assert (config.ip_backend, str(config.data)) == ("mini", "refs")
    assert config.methods == ["tdm", "sdm", "face-diffuser:0.3:0.6:text", "face-diffuser:0.3:0.6:null"]
    for base in ("text", "null"):  # both bases are rows whatever the run's base
        run = SamplingSettings(subject_guidance_base=base)
        labels = [v.method.label for v in parse_variants(config.methods, [_model()], run)]
        assert len(labels) == 4 and {
            "face-diffuser_a0.3_b0.6",
            "face-diffuser_a0.3_b0.6_" + {"text": "null", "null": "text"}[base],
        } <= set(labels)
    plain = EvaluationConfig(model=["tiny"], data=MB.Path("subjects")).resolved()  # other benchmarks keep theirs
    assert (plain.ip_backend, plain.clip_model, plain.methods) == (
        "dlib",
        "openai/clip-vit-large-patch14",
        ["tdm", "sdm", "face-diffuser"],
    )


# -------------------------------------------------------------------------------------------- guidance bases
def test_a_method_may_set_its_own_sdm_guidance_base():
    null = parse_method("face-diffuser:0.3:0.6:null")
    assert null.label == "face-diffuser_a0.3_b0.6_null" and "SDM guidance base null" in null.display_name
    run = SamplingSettings(alpha=0.1, beta=0.2, guidance_scale=3.0)
    sampling = null.sampling(run)
    assert (sampling.alpha, sampling.beta, sampling.subject_guidance_base) == (0.3, 0.6, SubjectGuidanceBase.NULL)
    assert sampling.guidance_scale == 3.0  # the rest is the run's
    assert parse_method("face-diffuser:0.3:0.6:text") == parse_method("face-diffuser")  # the run's base: one row
    assert parse_method("sdm:null").label == "sdm_null"
    assert parse_method("face-diffuser:null") == parse_method("face-diffuser:0.3:0.6:null")
    with pytest.raises(ValueError, match="no guidance base"):
        parse_method("tdm:null")
    # with the run's base set to null, :text is the row that differs
    assert parse_method("face-diffuser:0.3:0.6:text", SamplingSettings(subject_guidance_base="null")).label.endswith(
        "_text"
    )
    variants = parse_variants(["face-diffuser", "face-diffuser:0.3:0.6:null", "face-diffuser:0.3:0.6:text"], [_model()])
    assert [v.method.label for v in variants] == ["face-diffuser_a0.3_b0.6", "face-diffuser_a0.3_b0.6_null"]


def _model():
    from facediffuser.evaluation.methods import ModelSpec

    return ModelSpec("m", "tiny")


# ------------------------------------------------------------------------------------------------------ scorer
def _digest(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


VALUES = [*A.PLACES, *A.TIMES, *A.CLOTHING_COLOURS]


class SeeingClip:
    """A CLIP stub: a text is the one-hot sum of the attribute values it names; an image is what the test says it
    shows (by pixel digest). Zero-shot then picks what the test chose, and nothing else."""

    name = "seeing-clip"
    image_size = 64

    def __init__(self):
        self.seen: dict[str, set[str]] = {}

    def see(self, image: Image.Image, values: set[str]) -> None:
        self.seen[_digest(image)] = values

    def _vector(self, values) -> torch.Tensor:
        return torch.tensor([1.0 if v in values else 0.0 for v in VALUES]) + 1e-3  # no all-zero rows

    def text_features(self, texts):
        named = []
        for text in texts:
            words = f" {text} "
            named.append(
                {v for v, p in A.PLACES.items() if p in text}
                | {v for v, p in A.TIMES.items() if p in text}
                | {c for c in A.CLOTHING_COLOURS if f" {c} " in words}
            )
        return torch.stack([self._vector(n) for n in named])

    def image_features(self, images):
        return torch.stack([self._vector(self.seen[_digest(i)]) for i in images])


class SeeingFaces(IdentityBackend):
    """A face-recognizer stub: the faces of an image are the embeddings (and boxes, by default shrinking squares in
    the top left corner) the test gave it (by pixel digest), in the given order as the largest first."""

    name = "seeing-faces"

    def __init__(self):
        self.faces_of: dict[str, list[Face]] = {}

    def show(self, image: Image.Image, embeddings: list[torch.Tensor], boxes=None) -> None:
        boxes = boxes or [(0, 0, 10 - k, 10 - k) for k in range(len(embeddings))]
        self.faces_of[_digest(image)] = [Face(e, b) for e, b in zip(embeddings, boxes)]

    def faces(self, image):
        return list(self.faces_of.get(_digest(image), []))


def test_the_attribute_scorer_reads_what_the_stubs_see_on_real_renders(world):
    benchmark = load_benchmark("mini", world["references"])
    names = [p.name for p in benchmark.gallery]
    clip, faces = SeeingClip(), SeeingFaces()
    identity = {name: torch.eye(len(names), dtype=torch.float64)[k] for k, name in enumerate(names)}
    for person in benchmark.gallery:
        for photo in person.photos:
            faces.show(photo.load(), [identity[person.name]])
    scorer = MB.MiniAttributeScorer.from_scorers(clip, faces, benchmark.gallery)

    single = next(c for c in benchmark.cases if c.group == "single")
    asked = single.attributes
    right = MB.render_case(single, world["identities"], size=32)
    clip.see(right, {asked["place"], asked["time"], asked["people"][0]["clothing"]})
    faces.show(right, [identity[single.people[0].name] + 0.1])  # near the asked person
    other_place = next(p for p in MB.MINI_PLACES if p != asked["place"])
    other_colour = next(c for c in MB.MINI_COLOURS if c != asked["people"][0]["clothing"])
    other_person = next(n for n in names if n != single.people[0].name)
    wrong = MB.render_case(single, world["identities"], size=32, seed=1)
    clip.see(wrong, {other_place, asked["time"], other_colour})
    faces.show(wrong, [identity[other_person]])
    good, bad = scorer.score([right, wrong], single)
    assert {m: good[m] for m in ONE_PERSON} == dict.fromkeys(ONE_PERSON, 1.0)
    assert {m: bad[m] for m in ONE_PERSON} == {
        "place": 0.0, "time": 1.0, "clothing": 0.0, "scene": 0.0, "identity": 0.0,
    }  # fmt: skip
    assert all(math.isnan(r[m]) for r in (good, bad) for m in TWO_PERSON_METRICS)  # not applicable to one person
    assert bad["predicted"] == {"place": other_place, "time": asked["time"], "clothing": [other_colour],
                                "identity": [other_person]}  # fmt: skip

    # Two people: each colour is read on its own half (left: the first-named person), identities in any order.
    pair = next(c for c in benchmark.cases if c.group == "multi")
    first, second = (p["clothing"] for p in pair.attributes["people"])
    image = MB.render_case(pair, world["identities"], size=32)
    # the halves the scorer should read, cut here by hand: the left half for the first-named person
    left, right_half = (
        image.crop(box).resize(image.size, Image.Resampling.BICUBIC) for box in ((0, 0, 16, 32), (16, 0, 32, 32))
    )
    clip.see(image, {pair.attributes["place"], pair.attributes["time"]})
    clip.see(left, {first})
    clip.see(right_half, {next(c for c in MB.MINI_COLOURS if c not in (first, second))})
    faces.show(image, [identity[pair.people[1].name], identity[pair.people[0].name]])
    (result,) = scorer.score([image], pair)
    assert (result["place"], result["time"], result["clothing"], result["scene"]) == (1.0, 1.0, 0.5, 0.0)
    assert result["identity"] == 1.0
    clip.see(left, {second})  # the colours swapped between the people: both wrong
    clip.see(right_half, {first})
    faces.show(image, [identity[pair.people[0].name], identity[names[-1] if names[-1] not in
                       (pair.people[0].name, pair.people[1].name) else names[0]]])  # fmt: skip
    (swapped,) = scorer.score([image], pair)
    assert swapped["clothing"] == 0.0 and swapped["identity"] == 0.5
    faces.show(image, [])
    (faceless,) = scorer.score([image], pair)
    assert faceless["identity"] == 0.0 and faceless["predicted"]["identity"] == []


def test_two_person_images_say_who_is_drawn_where_leaks_swaps_and_swapped_colours(world):
    """Each of the two largest faces is placed by its box's centre; the left half is the first-named person's."""
    benchmark = load_benchmark("mini", world["references"])
    names = [p.name for p in benchmark.gallery]
    clip, faces = SeeingClip(), SeeingFaces()
    identity = {name: torch.eye(len(names), dtype=torch.float64)[k] for k, name in enumerate(names)}
    for person in benchmark.gallery:
        for photo in person.photos:
            faces.show(photo.load(), [identity[person.name]])
    scorer = MB.MiniAttributeScorer.from_scorers(clip, faces, benchmark.gallery)
    assert scorer.metrics == ATTRIBUTE_METRICS  # the scorer's and the reports' lists agree

    pair = next(c for c in benchmark.cases if c.group == "multi")
    one, two = (p.name for p in pair.people)
    third = next(n for n in names if n not in (one, two))
    first, second = (p["clothing"] for p in pair.attributes["people"])
    image = MB.render_case(pair, world["identities"], size=32)
    left, right = MB.person_halves(image)
    clip.see(image, {pair.attributes["place"], pair.attributes["time"]})
    L, R, MIDDLE = (4, 8, 12, 16), (20, 8, 28, 16), (12, 8, 20, 16)  # centres x = 8, 24, 16 of a 32 px image

    def read(shown, colours=(first, second)):
        faces.show(image, [identity[n] for n, _ in shown], [box for _, box in shown])
        clip.see(left, {colours[0]})
        clip.see(right, {colours[1]})
        (result,) = scorer.score([image], pair)
        return [result[m] for m in ("identity", *TWO_PERSON_METRICS)], result["predicted"]["placed"]

    #        identity, identity_placed, leak, swap, clothing_swap, identity_dressed
    assert read([(one, L), (two, R)]) == ([1.0, 1.0, 0.0, 0.0, 0.0, 1.0], [one, two])
    assert read([(two, R), (one, L)]) == ([1.0, 1.0, 0.0, 0.0, 0.0, 1.0], [one, two])  # the right one the larger
    assert read([(one, L), (two, MIDDLE)]) == ([1.0, 1.0, 0.0, 0.0, 0.0, 1.0], [one, two])  # the middle line is right
    # a swap: both drawn, so `identity` is 1, but each in the other's place, on the other's clothes
    assert read([(two, L), (one, R)]) == ([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], [two, one])
    # ... unless the clothes are swapped too: then each face is on its own person, the layout mirrored
    assert read([(two, L), (one, R)], (second, first)) == ([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [two, one])
    # a leak: the first person drawn twice, the second not at all
    assert read([(one, L), (one, R)]) == ([0.5, 0.5, 1.0, 0.0, 0.0, 0.5], [one, one])
    assert read([(two, L), (two, R)]) == ([0.5, 0.5, 1.0, 0.0, 0.0, 0.5], [two, two])
    assert read([(third, L), (third, R)]) == ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [third, third])  # not an asked person
    # only the two largest faces count: a third, smaller one is no leak
    assert read([(one, L), (two, R), (one, (0, 0, 2, 2))]) == ([1.0, 1.0, 0.0, 0.0, 0.0, 1.0], [one, two])
    # missing faces: no leak, no swap, 0 for the person whose half holds no face
    assert read([(two, R)]) == ([0.5, 0.5, 0.0, 0.0, 0.0, 0.5], [None, two])
    assert read([(two, L)]) == ([0.5, 0.0, 0.0, 0.0, 0.0, 0.0], [two, None])
    assert read([]) == ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [None, None])
    # both faces in the left half: the larger is read there, the right half has none
    assert read([(one, L), (two, (2, 2, 6, 6))]) == ([1.0, 1.0 / 2, 0.0, 0.0, 0.0, 0.5], [one, None])
    # colours: each half in the other person's colour is a swap; one wrong colour is not
    other = next(c for c in MB.MINI_COLOURS if c not in (first, second))
    assert read([(one, L), (two, R)], (second, first))[0][4:] == [1.0, 0.0]
    assert read([(one, L), (two, R)], (second, other))[0][4:] == [0.0, 0.0]
    (result,) = scorer.score([image], pair)
    assert result["clothing"] == 0.0 and result["predicted"]["clothing"] == [second, other]


def test_the_table_gives_the_two_person_metrics_with_intervals_and_not_applicable_on_one_person_rows(tmp_path):
    (variant,) = parse_variants(["face-diffuser"], [_model()])

    def row(case, group, subjects, **scores):
        return ScoreRow(
            model="m", method=variant.label, alpha=0.3, beta=0.6, case_id=case, group=group, subjects=subjects,
            prompt="p", text="p", image_index=0, image="x.png", ip=0.5, faces=2, pc=0.3, ip_backend="mini",
            clip_model="clip", rank=0, generated=True, **scores,
        )  # fmt: skip

    right = {"place_acc": 1.0, "time_acc": 1.0, "clothing_acc": 1.0, "scene_acc": 1.0, "identity_acc": 1.0}
    rows = [
        row("a/single-0", "single", "a", **right),
        row("b/single-0", "single", "b", **right),
        row("a+b/multi", "multi", "a;b", **right, identity_placed_acc=1.0, leak_rate=0.0, swap_rate=0.0,
            clothing_swap_rate=0.0, identity_dressed_acc=1.0),
        row("b+a/multi", "multi", "b;a", **{**right, "clothing_acc": 0.0, "scene_acc": 0.0, "identity_acc": 0.5},
            identity_placed_acc=0.5, leak_rate=1.0, swap_rate=0.0, clothing_swap_rate=1.0, identity_dressed_acc=0.0),
    ]  # fmt: skip
    write_scores(tmp_path / "scores.csv", rows)
    back = read_scores(tmp_path / "scores.csv")  # the new columns go to scores.csv and come back
    assert [(r.identity_placed_acc, r.leak_rate, r.clothing_swap_rate, r.identity_dressed_acc) for r in back[2:]] == [
        (1, 0, 0, 1),
        (0.5, 1, 1, 0),
    ]
    assert math.isnan(back[0].leak_rate)
    header = {"benchmark": "mini", "kind": "mixed", "ip_backend": "mini", "clip_model": "clip", "gallery": 2}
    summary = summarize(rows, [variant], header)
    result = summary["methods"][variant.label]
    assert result["accuracy"]["leak"] == {"mean": 0.5, "low": 0.0, "high": 1.0, "images": 2}  # two cases: 0 and 1
    assert result["groups"]["single"]["two_person_images"] == 0
    assert result["groups"]["single"]["accuracy"]["leak"]["images"] == 0
    assert result["groups"]["multi"]["accuracy"]["identity_placed"]["mean"] == 0.75

    lines = markdown_table(summary).splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("| model | method | group | place"))
    assert lines[start].endswith(
        "| identity in place | leak | swap | clothing swapped | face on own clothes | images |"
    )
    table = lines[start + 2 : start + 5]  # the accuracy rows: all, multi, single
    by_group = {line.split("|")[3].strip(): line for line in table}
    assert by_group["single"].endswith("| 1.000 [1.000, 1.000] | n/a | n/a | n/a | n/a | n/a | 2 |")
    assert by_group["multi"].endswith(
        "| 0.750 [0.500, 1.000] | 0.500 [0.000, 1.000] | 0.000 [0.000, 0.000] | 0.500 [0.000, 1.000] "
        "| 0.500 [0.000, 1.000] | 2 |"
    )
    # over all four images, the two-person metrics count the two two-person images
    assert "| 0.500 [0.000, 1.000] (n=2) | 0.000 [0.000, 0.000] (n=2) |" in by_group["all"]


# -------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def scorers(tmp_path_factory, save_tiny_world_clip):
    """A tiny random world CLIP and tiny random face networks, saved as `world build` writes them."""
    from facediffuser.lab.world.faces import FaceDetector, FaceEmbedder

    root = tmp_path_factory.mktemp("mini-scorers")
    save_tiny_world_clip(root / "clip")
    torch.manual_seed(0)
    FaceDetector(channels=(8, 8, 8), threshold=0.0).save_pretrained(root / "faces" / "detector")
    FaceEmbedder(channels=(8, 8, 8), embed_dim=8).save_pretrained(root / "faces" / "embedder")
    return root


@pytest.mark.slow
def test_one_image_run_writes_the_attribute_columns_and_reruns_from_the_cache(world, scorers, tmp_path):
    from facediffuser.cli.evaluate import main as evaluate_main

    out = tmp_path / "run"
    argv = [
        "--benchmark", "mini", "--model", "tiny", "--data", str(world["references"]), "--out", str(out),
        "--clip-model", str(scorers / "clip"), "--mini-faces", str(scorers / "faces"), "--limit", "1",
        "--steps", "2", "--methods", "face-diffuser:0.3:0.6:null",
    ]  # fmt: skip
    assert evaluate_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "mixed" and summary["gallery"] == HELD_OUT and summary["ip_backend"] == "mini"
    assert list(summary["methods"]) == ["tiny/face-diffuser_a0.3_b0.6_null"]
    assert summary["methods"]["tiny/face-diffuser_a0.3_b0.6_null"]["guidance_base"] == "null"
    for result in summary["methods"].values():
        assert result["images"] == 1
        for metric in ONE_PERSON:
            estimate = result["accuracy"][metric]
            assert estimate["images"] == 1 and estimate["mean"] in (0.0, 1.0)  # one image: right or wrong
        for metric in TWO_PERSON_METRICS:  # the one case is a one-person case: not applicable
            assert result["accuracy"][metric] == {"mean": None, "low": None, "high": None, "images": 0}
    with (out / "scores.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    for row in rows:
        predicted = json.loads(row["predicted"])
        case = load_benchmark("mini", world["references"]).cases[0]
        assert row["place_acc"] == str(float(predicted["place"] == case.attributes["place"]))
        assert row["time_acc"] == str(float(predicted["time"] == case.attributes["time"]))
        assert not math.isnan(float(row["identity_acc"]))
        assert math.isnan(float(row["leak_rate"])) and "placed" not in predicted
    table = (out / "table.md").read_text()
    assert "| single IP [95% CI] | single PC [95% CI] | single images | multi IP" in table
    header = next(line for line in table.splitlines() if line.startswith("| model | method | group | place"))
    assert header.endswith(
        "| identity top-1 | identity in place | leak | swap | clothing swapped | face on own clothes | images |"
    )
    assert re.search(
        r"\| tiny \| Face-diffuser \(alpha=0.3, beta=0.6, SDM guidance base null\) \| all \| [01]\.000 \[.*"
        r"\| n/a \| n/a \| n/a \| n/a \| n/a \| 1 \|$",
        table,
        re.MULTILINE,
    )
    assert "chance 17% among 6 people" in table
    grid = Image.open(out / "grid.png")
    assert grid.width > 2 * 96 and grid.height > 96  # the reference and the image side by side
    assert (out / "fusion_masks" / "tiny" / "face-diffuser_a0.3_b0.6_null" / "masks_stage2.png").is_file()

    assert evaluate_main([*argv, "--no-save-masks"]) == 0  # the rerun scores nothing again (no Fig. 9: faster)
    again = json.loads((out / "summary.json").read_text())
    assert again["scores_from_cache"]["attributes"] == {"cached": 1, "computed": 0}
    assert again["methods"] == summary["methods"]
