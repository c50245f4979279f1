"""The procedural world: renderer determinism, the identity code and split, the FFHQ-wild data it writes (read by
the real reader and trained on by the real trainer), its CLIP and face networks loaded the way users' weights are."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

from facediffuser.evaluation.identity import build_ip_backend
from facediffuser.io.ffhq_wild import parse_annotation, person_segments, read_split
from facediffuser.lab.world import attributes as A
from facediffuser.lab.world.data import read_samples, write_dataset, write_references
from facediffuser.lab.world.faces import (
    STRIDE,
    FaceDetector,
    FaceSettings,
    detection_figures,
    detector_targets,
    equal_error_rate,
    roc_auc,
    train_detector,
    train_embedder,
)
from facediffuser.lab.world.render import render
from facediffuser.models.face_detector import decode

SIZE = 64


def people_split(num: int = 40, heldout: int = 10, seed: int = 0) -> tuple[dict, dict]:
    people = A.make_identities(num, seed)
    split = A.split_identities(num, heldout, seed)
    return {"train": [people[i] for i in split["train"]], "test": [people[i] for i in split["heldout"]]}, split


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A small world: 40 people (10 held out), both distributions, references."""
    root = tmp_path_factory.mktemp("world")
    people, split = people_split()
    for name in ("scenes", "portraits"):
        write_dataset(root / name, name, people, {"train": 12, "test": 4}, seed=3, size=SIZE, progress=False)
    write_references(root / "references", people["test"], seed=3, size=SIZE, per_person=2, progress=False)
    return {"root": root, "split": split, "people": people}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    people, _ = people_split()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_dataset(tmp_path / name, "scenes", people, {"train": 4, "test": 2}, seed=seed, size=SIZE, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    spec = A.sample_scene(A.SCENES, people["train"][:2], np.random.default_rng(1), SIZE)
    first, second = render(spec), render(spec)
    assert first.image.tobytes() == second.image.tobytes()
    assert np.array_equal(first.segmap, second.segmap)


def test_identity_code_people_differ_in_two_bold_features():
    code = A.identity_code()
    assert len(code) >= 1000
    keys = list(code[0])
    table = np.array([[c[k] for k in keys] for c in code])
    for k in range(len(code)):  # Hamming distance to every other person
        distance = (table[k + 1 :] != table[k]).sum(axis=1)
        assert distance.size == 0 or distance.min() >= 2
    people = A.make_identities(1200, seed=0)
    assert len({tuple(p.features().values()) for p in people}) == 1200
    assert all(p.noun == p.gender for p in people)
    assert all(p.facial_hair == "none" for p in people if p.gender == "woman")


def test_heldout_people_never_appear_in_training_data(world):
    heldout = set(world["split"]["heldout"])
    train = set(world["split"]["train"])
    assert heldout and not heldout & train
    for name in ("scenes", "portraits"):
        for split, allowed in (("train", train), ("test", heldout)):
            for s in read_samples(world["root"] / name, split):
                ids = {p["identity"] for p in s.data["attributes"]["people"]}
                assert ids <= allowed, (name, split, s.image_id)
    names = {p.name for p in (world["root"] / "references").iterdir() if p.is_dir()}
    assert names == {f"id{i:04d}" for i in heldout}


def test_written_data_follows_the_ffhq_wild_layout_and_its_captions(world):
    feature_words = ("hair", "skin", "glasses", "beard", "moustache", "face")
    for name in ("scenes", "portraits"):
        root = world["root"] / name
        for image_id in read_split(root, "train"):
            folder = root / image_id[:5]
            data = json.loads((folder / f"{image_id}.json").read_text())
            caption, segments = parse_annotation(data, image_id)
            segmap = np.load(folder / f"{image_id}.npy")
            assert segmap.shape == (SIZE, SIZE) and segmap.dtype == np.uint8
            people = person_segments(caption, segments)
            assert len(people) == len(data["attributes"]["people"])
            for segment, person in zip(people, data["attributes"]["people"]):
                assert caption[: segment.end].endswith(person["gender"])
                assert segment.identity == str(person["identity"])  # who it is, for other-image references
                assert list(segment.head_box) == person["face_box"]  # the head, for head references
                assert (segmap == segment.id).any()
            if len(people) == 2:  # left to right follows the caption
                cols = [np.nonzero(segmap == s.id)[1].mean() for s in people]
                assert cols[0] < cols[1]
            assert not any(word in caption.split() for word in feature_words), caption


@pytest.mark.slow
def test_written_data_trains_through_the_trainer(world, tmp_path):
    from facediffuser.training.config import ModelKind, TrainConfig
    from facediffuser.training.trainer import Trainer

    for kind, name in ((ModelKind.TDM, "scenes"), (ModelKind.SDM, "portraits")):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        config = TrainConfig(
            data_root=world["root"] / name,
            output_dir=tmp_path / kind.value,
            resolution=SIZE,
            train_batch_size=2,
            max_train_steps=2,
            checkpointing_steps=0,
            validation_steps=0,
            logging_steps=1,
            log_with="csv",
            learning_rate=1e-3,
        )
        out = Trainer(kind, config).train()
        assert (Path(out) / "model_index.json").is_file()
        rows = (tmp_path / kind.value / "logs" / "metrics.csv").read_text()
        assert "loss" in rows


@pytest.mark.slow
def test_clip_trains_saves_and_loads_as_a_transformers_folder(world, tmp_path):
    from transformers import CLIPModel, CLIPTextModel, CLIPVisionModelWithProjection

    from facediffuser.evaluation.clip_score import ClipScorer
    from facediffuser.lab.world.clip import ClipSettings, evaluate_clip, images_to_pixels, train_clip

    samples = read_samples(world["root"] / "scenes", "train")
    settings = ClipSettings(
        embed_dim=16, text_layers=1, text_heads=2, vision_hidden=16, vision_layers=1, vision_heads=2,
        image_size=64, patch_size=16, steps=2, batch_size=4, warmup_steps=1,
    )  # fmt: skip
    out = train_clip(
        np.stack([s.image for s in samples]), [s.data["attributes"] for s in samples], tmp_path / "clip", settings,
        progress=False,
    )  # fmt: skip
    model = CLIPModel.from_pretrained(out)
    assert model.config.text_config.hidden_size == model.config.projection_dim == 16
    scorer = ClipScorer.from_pretrained(out)
    image = Image.fromarray(samples[0].image)
    feats = scorer.image_features([image])
    with torch.no_grad():  # at the render size, the scorer's preprocessing is the training preprocessing
        direct = model.get_image_features(pixel_values=images_to_pixels(samples[0].image[None], 64))
    direct = getattr(direct, "pooler_output", direct)
    torch.testing.assert_close(feats, direct, atol=1e-5, rtol=1e-4)  # same pixels; float32 summation order only
    # the mini models take the towers from the same folder: the text encoder and the SDM's image encoder
    text = CLIPTextModel.from_pretrained(out)
    vision = CLIPVisionModelWithProjection.from_pretrained(out)
    pixels = images_to_pixels(samples[0].image[None], 64)
    ids = scorer.tokenizer(["a man on a beach"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(vision(pixel_values=pixels).image_embeds, direct, atol=1e-5, rtol=1e-4)
        whole = model.text_model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(
            text(input_ids=ids).last_hidden_state, whole, atol=0, rtol=0
        )  # same weights, same op
    results = evaluate_clip(out, read_samples(world["root"] / "scenes", "test"))
    assert set(results["zero_shot"]) == {"place", "time", "weather", "clothing", "object"}
    assert 0.0 <= results["recall_at_1"] <= 1.0


def test_detector_targets_decode_back_to_the_boxes():
    boxes = [[[10.0, 12.0, 30.0, 34.0], [40.0, 8.0, 58.0, 28.0]], [[20.5, 20.0, 44.0, 50.0]]]
    heat, reg, mask = detector_targets(boxes, 64 // STRIDE)
    logits = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    found = decode(torch.cat([logits[:, None], reg], dim=1), threshold=0.5)
    for got, want in zip(found, boxes):
        assert len(got) == len(want)
        for box in want:  # exact up to float rounding of log/exp
            assert any(np.allclose(b, box, atol=1e-4) for b, _ in got)
    figures = detection_figures([[b for b, _ in f] for f in found], boxes)
    assert figures["recall"] == figures["precision"] == 1.0


def test_roc_auc_and_equal_error_rate_on_known_scores():
    same, different = np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2, 0.3, 0.75])
    assert roc_auc(same, different) == pytest.approx(11 / 12)  # 0.7 loses to 0.75 once of 12 pairs
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    eer, threshold = equal_error_rate(np.array([0.9, 0.8]), np.array([0.1, 0.2]))
    assert eer == 0.0 and 0.2 < threshold <= 0.8


def test_face_networks_train_and_load_as_the_mini_backend(world, tmp_path):
    from facediffuser.lab.world.faces import at_detector_size

    samples = read_samples(world["root"] / "portraits", "train")
    settings = FaceSettings(detector_steps=2, embedder_steps=2, detector_batch=4, embedder_batch=4)
    images, boxes = at_detector_size(samples)
    train_detector(images, boxes, tmp_path / "faces" / "detector", settings)
    faces = [(k, p["face_box"]) for k, s in enumerate(samples) for p in s.data["attributes"]["people"]]
    ids = [p["identity"] for s in samples for p in s.data["attributes"]["people"]]
    train_embedder([s.image for s in samples], faces, ids, tmp_path / "faces" / "embedder", settings)

    backend = build_ip_backend("mini", options={"mini_weights": tmp_path / "faces"})
    assert backend.name == "mini" and backend.settings()["threshold"] == pytest.approx(0.4)
    detector = FaceDetector.from_pretrained(tmp_path / "faces" / "detector")
    for a, b in zip(detector.state_dict().values(), backend.detector.state_dict().values()):
        assert torch.equal(a, b)
    backend.threshold = 0.0  # every local maximum: the untrained detector still yields faces to embed
    big = Image.fromarray(samples[0].image).resize((96, 96), Image.Resampling.BICUBIC)
    found = backend.faces(big)
    assert found and all(math.isclose(float(f.embedding.norm()), 1.0, rel_tol=1e-5) for f in found)
    small = torch.from_numpy(np.array(big.resize((64, 64), Image.Resampling.BICUBIC)))[None].permute(0, 3, 1, 2)
    direct = detector.detect(small.float() / 127.5 - 1.0, threshold=0.0)[0]
    want = np.array(sorted(tuple(v * 1.5 for v in b) for b, _ in direct))  # boxes come back in the 96 px frame
    np.testing.assert_allclose(np.array(sorted(f.box for f in found)), want, atol=1e-4)


def test_mini_backend_without_weights_says_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEDIFFUSER_MINI_FACES", raising=False)
    with pytest.raises(FileNotFoundError, match="world build"):
        build_ip_backend("mini", options={"mini_weights": tmp_path / "nothing"})
    (tmp_path / "half" / "detector").mkdir(parents=True)
    with pytest.raises(ValueError, match="embedder/config.json"):
        build_ip_backend("mini", options={"mini_weights": tmp_path / "half"})


def test_cli_renders_resumes_and_refuses_other_settings(tmp_path, capsys):
    from facediffuser.cli.main import main

    common = ["--identities", "20", "--heldout", "4", "--references-per-person", "1"]
    counts = ["--scenes-train", "3", "--scenes-test", "2", "--portraits-train", "3", "--portraits-test", "2"]
    assert main(["world", "render", "--out", str(tmp_path / "w"), *common, *counts]) == 0
    stamp = (tmp_path / "w" / "scenes" / "image_ids_train.txt").stat().st_mtime_ns
    assert main(["world", "render", "--out", str(tmp_path / "w"), *common, *counts]) == 0  # all stages skipped
    assert (tmp_path / "w" / "scenes" / "image_ids_train.txt").stat().st_mtime_ns == stamp
    other = [*counts[:-1], "3"]
    assert main(["world", "render", "--out", str(tmp_path / "w"), *common, *other]) == 2
    assert "--redo portraits" in capsys.readouterr().err
    before = digest(tmp_path / "w" / "scenes")
    assert main(["world", "render", "--out", str(tmp_path / "w"), *common, *counts, "--redo", "identities"]) == 0
    assert (tmp_path / "w" / "scenes" / "image_ids_train.txt").stat().st_mtime_ns != stamp  # its input was rebuilt
    assert digest(tmp_path / "w" / "scenes") == before  # and the same seed gave the same bytes
    assert sorted(p.name for p in (tmp_path / "w" / "references").iterdir() if p.is_dir()) == sorted(
        f"id{i:04d}" for i in A.split_identities(20, 4, 0)["heldout"]
    )


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"seconds": 1.0}', "is not a stage marker (it records no `settings`"),
        ('{"settings": [1]}', "is not a stage marker (it records no `settings`"),
        ("", "is empty: it should hold JSON"),
        ("{", "is not valid JSON (Expecting property name"),
        ("[]", "is not a stage marker, a JSON object"),
    ],
)
def test_a_broken_stage_marker_is_one_sentence_that_says_redo(tmp_path, capsys, text, words):
    from facediffuser.cli.main import main

    marker = tmp_path / "w" / "stages" / "identities.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(text, encoding="utf-8")
    code = main(["world", "render", "--out", str(tmp_path / "w"), "--identities", "20", "--heldout", "4"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and str(marker) in err and "--redo identities" in err, err
    assert "Traceback" not in err and marker.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in (tmp_path / "w").rglob("*")) == ["identities.json", "stages"]


def test_a_stage_marker_with_a_byte_order_mark_is_read(tmp_path):
    from facediffuser.lab.world.build import WorldConfig, stage_done, stage_settings

    config = WorldConfig(out=tmp_path, identities=20, heldout=4)
    marker = tmp_path / "stages" / "identities.json"
    marker.parent.mkdir()
    marker.write_text(json.dumps({"settings": stage_settings(config, "identities")}), encoding="utf-8-sig")
    assert stage_done(config, "identities")


@pytest.mark.parametrize(
    "content,words",
    [
        (b'{"seed": 0}', "is not a world's people (`people` and `split`"),
        (b"\xff\xfe{}", "is not UTF-8 text (byte 0xff at offset 0)"),
    ],
)
def test_a_broken_world_json_is_one_sentence(tmp_path, content, words):
    from facediffuser.lab.world.attributes import load_people

    (tmp_path / "world.json").write_bytes(content)
    with pytest.raises(ValueError, match="^" + str(tmp_path / "world.json")) as err:
        load_people(tmp_path)
    assert words in str(err.value)
