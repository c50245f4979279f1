"""Benchmark data files, subject folders, the FFHQ-wild loader and method specs."""

import json

import numpy as np
import pytest
from PIL import Image

from facediffuser.evaluation.benchmarks import (
    BENCHMARKS,
    load_benchmark,
    load_prompt_file,
    load_subjects,
    read_benchmark_file,
)
from facediffuser.evaluation.methods import Method, ModelSpec, parse_method, parse_methods, parse_models, parse_variants
from facediffuser.prompting import count_placeholders, strip_placeholders
from facediffuser.settings import SamplingSettings


def make_subjects(root, people, nouns=None):
    for name, count in people.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (32, 32), (k * 40, 80, 120)).save(root / name / f"{k}.jpg")
    if nouns is not None:
        (root / "subjects.json").write_text(json.dumps(nouns))
    return root


def test_single_subject_prompt_file_has_four_groups_of_ten():
    spec = read_benchmark_file("single_subject.json")
    assert list(spec["groups"]) == ["accessory", "style", "action", "context"]
    prompts = [p for group in spec["groups"].values() for p in group]
    assert all(len(group) == 10 for group in spec["groups"].values())
    assert len(set(prompts)) == 40
    assert all(p.count("{subject}") == 1 for p in prompts)
    assert spec["images_per_prompt"] == 4


def test_multi_subject_prompt_file():
    spec = read_benchmark_file("multi_subject.json")
    assert len(spec["prompts"]) == len(set(spec["prompts"])) == 10
    assert all(p.count("{subject1}") == 1 and p.count("{subject2}") == 1 for p in spec["prompts"])


def test_load_subjects_reads_folders_and_class_nouns(tmp_path):
    make_subjects(tmp_path, {"ada": 2, "alan": 1, "grace": 1}, {"ada": "woman", "alan": "man"})
    people = load_subjects(tmp_path)
    assert [(p.name, p.class_noun, len(p.photos)) for p in people] == [
        ("ada", "woman", 2),
        ("alan", "man", 1),
        ("grace", "person", 1),
    ]


def test_subject_folder_without_images_is_a_clear_error(tmp_path):
    make_subjects(tmp_path, {"ada": 1})
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "notes.txt").write_text("no photos here")
    with pytest.raises(ValueError, match="Subject 'bob' has no photos.*holds no images"):
        load_subjects(tmp_path)


def test_bad_subject_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="Subject folder not found"):
        load_subjects(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no sub-folders: give one sub-folder of photos per person"):
        load_subjects(tmp_path / "flat")
    make_subjects(tmp_path / "named", {"ada": 1}, {"ada": "woman", "zed": "man"})
    with pytest.raises(ValueError, match=r"names \['zed'\]"):
        load_subjects(tmp_path / "named")


def test_single_subject_benchmark_cases(tmp_path):
    make_subjects(tmp_path, {"ada": 1, "alan": 1}, {"ada": "woman", "alan": "man"})
    benchmark = load_benchmark("single-subject", tmp_path)
    assert benchmark.kind == "single" and benchmark.images_per_prompt == 4
    assert len(benchmark.cases) == 80
    assert len({c.case_id for c in benchmark.cases}) == 80
    first = benchmark.cases[:8]  # prompt 0 of every group, every person: --limit takes a spread
    assert [c.group for c in first] == ["accessory"] * 2 + ["style"] * 2 + ["action"] * 2 + ["context"] * 2
    case = benchmark.cases[0]
    assert case.case_id == "ada/accessory-00"
    assert case.prompt == "a photo of a woman <|image|> wearing a red baseball cap"
    assert strip_placeholders(case.prompt) == "a photo of a woman wearing a red baseball cap"
    assert all(count_placeholders(c.prompt) == 1 for c in benchmark.cases)


def test_multi_subject_benchmark_pairs(tmp_path):
    make_subjects(tmp_path, {"ada": 1, "alan": 1, "grace": 1}, {"ada": "woman", "alan": "man"})
    benchmark = load_benchmark("multi-subject", tmp_path)
    assert benchmark.kind == "multi"
    assert len(benchmark.cases) == 10 * 3
    case = benchmark.cases[0]
    assert case.case_id == "ada+alan/00"
    assert case.prompt == "a photo of a woman <|image|> and a man <|image|> sitting on a park bench"
    assert [p.name for p in case.people] == ["ada", "alan"]
    (tmp_path / "pairs.json").write_text(json.dumps([["grace", "ada"]]))
    listed = load_benchmark("multi-subject", tmp_path)
    assert {c.case_id.split("/")[0] for c in listed.cases} == {"grace+ada"}
    (tmp_path / "pairs.json").write_text(json.dumps([["grace", "nobody"]]))
    with pytest.raises(ValueError, match="nobody"):
        load_benchmark("multi-subject", tmp_path)


def test_multi_subject_needs_two_people(tmp_path):
    make_subjects(tmp_path, {"ada": 1})
    with pytest.raises(ValueError, match="at least two people"):
        load_benchmark("multi-subject", tmp_path)


def write_ffhq_image(root, image_id, caption, segments):
    folder = root / image_id[:5]
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.arange(64 * 96 * 3, dtype=np.uint32).reshape(64, 96, 3) % 251
    Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{image_id}.jpg", quality=95)
    (folder / f"{image_id}.json").write_text(json.dumps({"caption": caption, "segments": segments}))


def test_ffhq_wild_test_split(tmp_path):
    caption = "a woman and her dog next to a man at the park"
    segments = [
        {"id": 3, "bbox": [50, 4, 90, 60], "coco_label": "person", "end": caption.index(" at")},
        {"id": 1, "bbox": [2, 2, 30, 40], "coco_label": "person", "end": len("a woman")},
        {"id": 2, "bbox": [30, 30, 50, 60], "coco_label": "dog", "end": len("a woman and her dog")},
    ]
    write_ffhq_image(tmp_path, "00012", caption, segments)
    write_ffhq_image(tmp_path, "00013", "a red car", [{"id": 1, "bbox": [0, 0, 9, 9], "coco_label": "car", "end": 9}])
    (tmp_path / "image_ids_test.txt").write_text("00012\n00013\n")
    benchmark = load_benchmark("ffhq-wild", tmp_path)
    assert benchmark.kind == "multi"
    (case,) = benchmark.cases  # the car image shows no person
    assert case.prompt == "a woman <|image|> and her dog next to a man <|image|> at the park"
    assert [p.class_noun for p in case.people] == ["woman", "man"]
    assert case.group == "2-person"
    crop = case.people[0].photos[0].load()
    assert crop.size == (28, 38)
    assert case.people[1].photos[0].load().size == (40, 56)


def test_ffhq_wild_needs_the_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="image_ids_test.txt"):
        load_benchmark("ffhq-wild", tmp_path)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="Unknown benchmark 'dreambench'"):
        load_benchmark("dreambench", ".")
    assert {"single-subject", "multi-subject", "ffhq-wild"} <= set(BENCHMARKS)


def test_method_specs():
    assert parse_method("tdm") == Method("tdm", 1.0, 1.0)
    assert parse_method("sdm") == Method("sdm", 0.0, 0.0)
    assert parse_method("face-diffuser").label == "face-diffuser_a0.3_b0.6"  # SamplingSettings' defaults
    assert parse_method("face-diffuser", SamplingSettings(alpha=0.2, beta=0.5)) == Method("face-diffuser", 0.2, 0.5)
    assert parse_method("Face-Diffuser:0.1:0.5") == Method("face-diffuser", 0.1, 0.5)
    assert [m.label for m in parse_methods(["tdm", "face-diffuser", "face-diffuser:0.3:0.6", "tdm"])] == [
        "tdm",
        "face-diffuser_a0.3_b0.6",
    ]
    for bad, message in [
        ("elite", "Unknown method"),
        ("tdm:0.5:0.5", "fixed stage fractions"),
        ("face-diffuser:0.7:0.2", "must not exceed"),
        ("face-diffuser:0.2", "ALPHA:BETA"),
        ("face-diffuser:x:0.2", "numbers"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_method(bad)


def test_method_sampling_options_make_their_own_rows():
    ra = parse_method("face-diffuser:0.3:0.6:text:ra")
    assert ra.label == "face-diffuser_a0.3_b0.6_ra" and ra.display_name.endswith("region attention)")
    both = parse_method("face-diffuser:0.3:0.6:rs:ra")
    assert both == parse_method("face-diffuser:ra:rs") == parse_method("face-diffuser:region_saliency=true:ra")
    assert both.label == "face-diffuser_a0.3_b0.6_ra_rs"  # SamplingSettings' field order, whatever the spec's
    assert parse_method("face-diffuser:rat").label == "face-diffuser_a0.3_b0.6_rat"
    run = SamplingSettings(guidance_scale=3.0)
    sampling = both.sampling(run)
    assert (sampling.region_attention, sampling.region_attention_text, sampling.region_saliency) == (True, False, True)
    assert sampling.guidance_scale == 3.0 and not parse_method("face-diffuser").sampling(run).uses_regions
    # the generic KEY=VALUE form: any SamplingSettings field, the value checked and stored by SamplingSettings
    gaussian = parse_method("face-diffuser:0.3:0.6:null:smoothing=gaussian:ra")
    assert gaussian.label == "face-diffuser_a0.3_b0.6_null_smoothing-gaussian_ra"
    assert gaussian.sampling(run).smoothing.value == "gaussian" and "smoothing=gaussian" in gaussian.display_name
    assert parse_method("face-diffuser:region_attention=false") == parse_method("face-diffuser")  # the run's own
    # the fixed methods take the options that change what they draw
    assert parse_method("sdm:null:num_inference_steps=20").label == "sdm_null_num_inference_steps-20"
    assert parse_method("tdm:guidance_scale=7.5").sampling(run).guidance_scale == 7.5
    variants = parse_variants(
        ["face-diffuser", "face-diffuser:ra", "face-diffuser:0.3:0.6:ra:rs", "face-diffuser:rs:ra"],
        [ModelSpec("m", "t")],
    )
    assert [v.method.label for v in variants] == [
        "face-diffuser_a0.3_b0.6",
        "face-diffuser_a0.3_b0.6_ra",
        "face-diffuser_a0.3_b0.6_ra_rs",
    ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sdm:ra", "Method 'sdm:ra': the SDM alone runs only stage III (no stage I, no fusion), so region_attention "
                   "changes nothing in it; give it to face-diffuser (e.g. face-diffuser:0.3:0.6:ra)."),
        ("tdm:rs", "the TDM alone runs only stage I (no fusion, no SDM), so region_saliency changes nothing"),
        ("sdm:smoothing=gaussian", "so smoothing changes nothing in it"),
        ("face-diffuser:region_attention=yes",
         "Method 'face-diffuser:region_attention=yes': `region_attention` must be true or false, got 'yes'."),
        ("face-diffuser:region_saliency=1", "`region_saliency` must be true or false, got 1."),
        ("face-diffuser:smoothing=median", "`smoothing` must be one of ['box', 'gaussian'], got 'median'."),
        ("face-diffuser:steps=20", "'steps' is not a sampling setting; write ra, rat, rs or KEY=VALUE with KEY one of "
                                   "num_inference_steps,"),
        ("face-diffuser:alpha=0.2", "alpha is set by the method's ALPHA, not by alpha=..."),
        ("face-diffuser:ra:region_attention=true", "sets region_attention twice; give it once."),
        ("face-diffuser:smoothing=../x", "must be a number or a word of letters, digits"),
        ("face-diffuser:0.3:ra", "write face-diffuser:ALPHA:BETA"),
        ("face-diffuser:null:text", "give one SDM guidance base"),
    ],
)  # fmt: skip
def test_method_options_are_refused_in_one_sentence(spec, message):
    with pytest.raises(ValueError) as caught:
        parse_method(spec)
    assert message in str(caught.value)


def test_models_and_method_at_model_specs():
    models = parse_models(["fd=pipes/fd", "converted/fastcomposer/", "tiny", "fd=pipes/fd"])
    assert models == [
        ModelSpec("fd", "pipes/fd"),
        ModelSpec("fastcomposer", "converted/fastcomposer/"),
        ModelSpec("tiny", "tiny"),
    ]
    variants = parse_variants(["face-diffuser", "sdm@fastcomposer", "tdm@fd"], models[:2])
    assert [v.label for v in variants] == [
        "fd/face-diffuser_a0.3_b0.6",
        "fd/tdm",
        "fastcomposer/face-diffuser_a0.3_b0.6",
        "fastcomposer/sdm",
    ]
    assert variants[-1].display_name == "SDM alone (alpha=beta=0) [fastcomposer]"
    with pytest.raises(ValueError, match="Two models are named 'fd'"):
        parse_models(["fd=a/", "fd=b/"])
    with pytest.raises(ValueError, match="letters, digits"):
        parse_models(["my model=a/"])
    with pytest.raises(ValueError, match="names the model 'elite', which is not one of the --model names"):
        parse_variants(["sdm@elite"], models)


def test_prompt_files_text_and_json(tmp_path):
    make_subjects(tmp_path / "people", {"ada": 1, "alan": 1}, {"ada": "woman", "alan": "man"})
    text = tmp_path / "mine.txt"
    text.write_text("# my prompts\na {subject} on a boat\n\n[indoor]\na {subject} cooking\na {subject} reading\n")
    prompts = load_prompt_file(text)
    assert prompts.groups == {
        "mine": ("a {subject} on a boat",),
        "indoor": ("a {subject} cooking", "a {subject} reading"),
    }
    benchmark = load_benchmark("single-subject", tmp_path / "people", prompts=prompts)
    assert len(benchmark.cases) == 3 * 2 and benchmark.images_per_prompt == 4
    assert benchmark.cases[0].prompt == "a woman <|image|> on a boat" and benchmark.cases[0].group == "mine"
    assert {c.case_id for c in benchmark.cases} >= {"ada/indoor-01", "alan/mine-00"}

    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(["a {subject1} and a {subject2} dancing"]))
    pairs = load_benchmark("multi-subject", tmp_path / "people", prompts=load_prompt_file(as_list))
    (case,) = pairs.cases
    assert case.prompt == "a woman <|image|> and a man <|image|> dancing" and case.group == "list"
    grouped = tmp_path / "grouped.json"
    grouped.write_text(json.dumps({"groups": {"g": ["a {subject} at sea"]}, "images_per_prompt": 2}))
    assert (
        load_benchmark("single-subject", tmp_path / "people", prompts=load_prompt_file(grouped)).images_per_prompt == 2
    )
    assert load_prompt_file(grouped).sha256() != load_prompt_file(text).sha256()


def test_bad_prompt_files_say_what_to_write(tmp_path):
    make_subjects(tmp_path / "people", {"ada": 1, "alan": 1})
    with pytest.raises(FileNotFoundError, match="Prompt file not found"):
        load_prompt_file(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompt_file(tmp_path / "empty.txt")
    (tmp_path / "bad.json").write_text('{"prompts": "a {subject}"}')
    with pytest.raises(ValueError, match="expected a list of prompt templates"):
        load_prompt_file(tmp_path / "bad.json")
    (tmp_path / "pairs.txt").write_text("a {subject1} and a {subject2}\n")
    with pytest.raises(ValueError, match=r"must use \{subject\} once each"):
        load_benchmark("single-subject", tmp_path / "people", prompts=load_prompt_file(tmp_path / "pairs.txt"))
    (tmp_path / "twice.txt").write_text("a {subject} and a {subject}\n")
    with pytest.raises(ValueError, match="once each"):
        load_benchmark("single-subject", tmp_path / "people", prompts=load_prompt_file(tmp_path / "twice.txt"))
    (tmp_path / "ok.txt").write_text("a {subject}\n")
    with pytest.raises(ValueError, match="takes its prompts from its data; drop --prompts"):
        load_benchmark("ffhq-wild", tmp_path, prompts=load_prompt_file(tmp_path / "ok.txt"))


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"images_per_prompt": 10**9}, "--images-per-prompt must be a whole number from 1 to 64, got 1000000000."),
        ({"seed": 2**70}, "--seed must be a whole number from 0 to 2**64 - 1 (18446744073709551615), got 1180591"),
        ({"seed": -1}, "--seed must be a whole number from 0 to 2**64 - 1"),
        ({"height": 10**6}, "--height must be at most 4096 pixels, got 1000000."),
        ({"width": 20}, "--width must be a positive multiple of 8, got 20."),
        ({"guidance_scale": 1e39}, "must be at most 3.403e+38, the largest float32 number"),
        (
            {"methods": ["face-diffuser:region_attention=yes"]},
            "Method 'face-diffuser:region_attention=yes': `region_attention` must be true or false, got 'yes'.",
        ),
        ({"methods": ["sdm:ra"]}, "Method 'sdm:ra': the SDM alone runs only stage III (no stage I, no fusion)"),
    ],
)
def test_evaluate_refuses_absurd_counts_and_seeds_before_anything_loads(tmp_path, changes, words):
    from facediffuser.evaluation.harness import EvaluationConfig

    people = make_subjects(tmp_path / "people", {"ada": 1})
    config = EvaluationConfig(model=["tiny"], data=people, metrics=["ip"], **{"methods": ["tdm"], **changes})
    with pytest.raises(ValueError) as err:
        config.check()
    assert words in str(err.value)


def test_a_prompt_file_count_is_held_to_the_same_limit(tmp_path):
    from facediffuser.evaluation.harness import EvaluationConfig

    people = make_subjects(tmp_path / "people", {"ada": 1})
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"prompts": ["a {subject}"], "images_per_prompt": 10**9}))
    words = f"In {path}, `images_per_prompt` must be a whole number from 1 to 64 (a case's images are one batch)"
    with pytest.raises(ValueError, match=f"^{words}, got 1000000000.$".replace("(", r"\(").replace(")", r"\)")):
        EvaluationConfig(model=["tiny"], data=people, metrics=["ip"], methods=["tdm"], prompts=path).check()
    path.write_text(json.dumps({"prompts": ["a {subject}"], "images_per_prompt": True}))
    with pytest.raises(ValueError, match="got True"):
        load_prompt_file(path)


def test_prompt_and_subject_files_name_themselves_when_broken(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfa {subject} at sea\n")
    assert load_prompt_file(tmp_path / "bom.txt").groups == {"bom": ("a {subject} at sea",)}
    (tmp_path / "latin.txt").write_bytes(b"a {subject} in a caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin.txt is not UTF-8 text \(byte 0xe9 at offset 20\): save it as UTF-8"):
        load_prompt_file(tmp_path / "latin.txt")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match=r"empty.json is empty: it should hold JSON"):
        load_prompt_file(tmp_path / "empty.json")
    people = make_subjects(tmp_path / "people", {"ada": 1, "alan": 1})
    (people / "subjects.json").write_bytes(b'\xef\xbb\xbf{"ada": "woman"}')
    assert [p.class_noun for p in load_subjects(people)] == ["woman", "person"]
    (people / "pairs.json").write_text('{"ada": "alan"}')
    with pytest.raises(
        ValueError, match=r"pairs.json is not a list of pairs, a JSON list \(\[...\]\): it holds a dict"
    ):
        load_benchmark("multi-subject", people)
