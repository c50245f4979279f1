"""The FFHQ-wild reader and the augmentations, on a tiny data set written here, checked field by field."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facediffuser.images import CLIP_MEAN, CLIP_STD
from facediffuser.io.ffhq_wild import insert_placeholders, parse_annotation
from facediffuser.io.tokenizer import load_clip_tokenizer
from facediffuser.prompting import tokenize_prompt
from facediffuser.training import data as data_module
from facediffuser.training.augment import (
    ReferenceAugmentation,
    center_crop_or_pad,
    grayscale,
    map_geometry,
    rotate,
    target_geometry,
)
from facediffuser.training.data import FFHQWild, collate

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
CAPTION = "a man and a woman at the beach"


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def write_sample(root: Path, image_id: str, pixels: np.ndarray, segmap: np.ndarray, caption: str, segments) -> None:
    folder = root / image_id[:5]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{image_id}.jpg", quality=100, subsampling=0)
    np.save(folder / f"{image_id}.npy", segmap)
    (folder / f"{image_id}.json").write_text(json.dumps({"caption": caption, "segments": segments}))


def two_people(root: Path, image_id: str = "00000_a") -> None:
    """A 40x32 blue image: a red man (id 1) at x 4-11, y 8-19 and a green woman (id 2) at x 24-31, y 8-23.

    The man's box reaches y 24, four rows below his mask: those rows of his reference are noise.
    """
    pixels = np.zeros((32, 40, 3), np.uint8)
    pixels[:] = BLUE
    segmap = np.zeros((32, 40), np.int64)
    pixels[8:20, 4:12], segmap[8:20, 4:12] = RED, 1
    pixels[8:24, 24:32], segmap[8:24, 24:32] = GREEN, 2
    segments = [
        {"id": 2, "bbox": [24, 8, 32, 24], "coco_label": "person", "end": 17},
        {"id": 1, "bbox": [4, 8, 12, 24], "coco_label": "person", "end": 5},
        {"id": 3, "bbox": [0, 0, 2, 2], "coco_label": "dog", "end": len(CAPTION)},
    ]
    write_sample(root, image_id, pixels, segmap, CAPTION, segments)


def write_split(root: Path, ids: list[str], split: str = "train") -> None:
    (root / f"image_ids_{split}.txt").write_text("\n".join(ids) + "\n")


def plain_dataset(root: Path, tokenizer, **kwargs) -> FFHQWild:
    options = dict(resolution=32, reference_size=16, subject_keep_prob=1.0, uncondition_prob=0.0, augment=False, seed=0)
    options.update(kwargs)
    return FFHQWild(root=root, split="train", tokenizer=tokenizer, **options)


def test_insert_placeholders_at_end_offsets():
    assert insert_placeholders(CAPTION, [17, 5]) == "a man <|image|> and a woman <|image|> at the beach"
    assert insert_placeholders("a man", [5], "<x>") == "a man <x>"
    assert insert_placeholders(CAPTION, []) == CAPTION


def test_reader_fields_one_by_one(tmp_path, tokenizer):
    two_people(tmp_path)
    write_split(tmp_path, ["00000_a"])
    sample = plain_dataset(tmp_path, tokenizer)[0]

    assert sample["image_id"] == "00000_a"
    assert sample["skipped"] == []
    # Placeholders after "man" and "woman", sorted by `end`; the dog is not a subject.
    assert sample["caption"] == "a man <|image|> and a woman <|image|> at the beach"
    expected = tokenize_prompt(tokenizer, sample["caption"])
    assert sample["input_ids"].tolist() == expected.input_ids
    marked = [tokenizer.decode([sample["input_ids"][i]]) for i in sample["subject_token_indices"]]
    assert marked == ["man", "woman"]
    assert tokenizer.decode([t for t in expected.input_ids[1:] if t != tokenizer.eos_token_id]) == (
        "a man and a woman at the beach"
    )

    # Target: 40x32 -> short side 32 (unchanged) -> centre crop x 4..35, in [-1, 1].
    target = sample["pixel_values"]
    assert target.shape == (3, 32, 32)
    assert target.min() >= -1 and target.max() <= 1
    assert torch.allclose(target[:, 12, 3], torch.tensor([1.0, -1.0, -1.0]), atol=0.1)  # the man, at x 7
    assert torch.allclose(target[:, 12, 25], torch.tensor([-1.0, 1.0, -1.0]), atol=0.1)  # the woman, at x 29
    assert torch.allclose(target[:, 2, 16], torch.tensor([-1.0, -1.0, 1.0]), atol=0.1)  # background

    # Masks in the target geometry.
    masks = sample["subject_masks"]
    assert masks.shape == (2, 32, 32)
    assert masks[0].sum() == 8 * 12 and masks[0][8:20, 0:8].all()
    assert masks[1].sum() == 8 * 16 and masks[1][8:24, 20:28].all()

    # References: 8x16 boxes padded to 16x16 (black), no resize at 16 px, CLIP-normalized.
    refs = sample["subject_pixels"]
    assert refs.shape == (2, 3, 16, 16)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    raw = refs * std + mean
    man, woman = raw[0], raw[1]
    assert torch.allclose(man[:, 2:12, 4:12].mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(woman[:, :, 4:12].mean((1, 2)), torch.tensor([0.0, 1.0, 0.0]), atol=0.05)
    assert man[:, :, :4].abs().max() < 1e-5 and man[:, :, 12:].abs().max() < 1e-5  # square padding
    noise = man[:, 12:16, 4:12]  # below the man's mask, inside his box: noise, not the blue background
    assert noise.std() > 0.15 and (noise[2] - 1.0).abs().mean() > 0.2


def test_subject_options_and_tdm_samples(tmp_path, tokenizer):
    two_people(tmp_path)
    write_split(tmp_path, ["00000_a"])
    one_each = {plain_dataset(tmp_path, tokenizer, max_subjects=1, seed=seed)[0]["caption"] for seed in range(8)}
    assert one_each == {"a man <|image|> and a woman at the beach", "a man and a woman <|image|> at the beach"}
    one = plain_dataset(tmp_path, tokenizer, max_subjects=1)[0]
    assert one["subject_pixels"].shape[0] == one["subject_masks"].shape[0] == 1

    dropped = plain_dataset(tmp_path, tokenizer, subject_keep_prob=0.0)[0]
    assert dropped["caption"] == CAPTION and dropped["subject_token_indices"].numel() == 0

    uncond = plain_dataset(tmp_path, tokenizer, uncondition_prob=1.0)[0]
    assert uncond["caption"] == ""
    assert uncond["subject_pixels"].shape == (0, 3, 16, 16)
    assert uncond["input_ids"].tolist() == tokenize_prompt(tokenizer, "").input_ids

    tdm = plain_dataset(tmp_path, tokenizer, with_subjects=False)[0]
    assert tdm["caption"] == CAPTION and tdm["subject_masks"].shape == (0, 32, 32)


def test_a_person_with_an_empty_box_is_left_out(tmp_path, tokenizer):
    two_people(tmp_path)
    path = tmp_path / "00000" / "00000_a.json"
    data = json.loads(path.read_text())
    data["segments"][0]["bbox"] = [60, 8, 70, 24]  # the woman's box lies outside the 40 px wide image
    path.write_text(json.dumps(data))
    write_split(tmp_path, ["00000_a"])
    sample = plain_dataset(tmp_path, tokenizer)[0]
    assert sample["caption"] == "a man <|image|> and a woman at the beach"
    assert sample["subject_pixels"].shape[0] == 1


def test_samples_are_a_function_of_seed_epoch_and_index(tmp_path, tokenizer):
    two_people(tmp_path)
    write_split(tmp_path, ["00000_a"])
    data = plain_dataset(tmp_path, tokenizer, augment=True, subject_keep_prob=0.5, uncondition_prob=0.1)
    a, b = data[(3, 0)], data[(3, 0)]
    assert a["caption"] == b["caption"] and torch.equal(a["subject_pixels"], b["subject_pixels"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    others = [data[(epoch, 0)] for epoch in range(8)]
    assert len({s["caption"] for s in others}) > 1  # keep/drop decisions change with the epoch


def test_collate_positions(tmp_path, tokenizer):
    two_people(tmp_path)
    write_split(tmp_path, ["00000_a"])
    data = plain_dataset(tmp_path, tokenizer)
    full, one = data[0], plain_dataset(tmp_path, tokenizer, max_subjects=1)[0]
    batch = collate([one, full])
    idx, first = full["subject_token_indices"].tolist(), one["subject_token_indices"].tolist()
    assert batch["subject_positions"].tolist() == [[0, first[0]], [1, idx[0]], [1, idx[1]]]
    assert batch["subject_pixels"].shape == (3, 3, 16, 16) and batch["subject_masks"].shape == (3, 32, 32)
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["input_ids"].shape == (2, 77)


def test_missing_and_corrupt_files_are_skipped_and_reported(tmp_path, tokenizer, caplog):
    two_people(tmp_path, "00000_a")
    two_people(tmp_path, "00001_c")
    two_people(tmp_path, "00002_m")
    (tmp_path / "00001" / "00001_c.jpg").write_bytes(b"not a jpeg")  # corrupt
    (tmp_path / "00002" / "00002_m.npy").unlink()  # missing
    write_split(tmp_path, ["00001_c", "00002_m", "00000_a"])
    data = plain_dataset(tmp_path, tokenizer)
    with caplog.at_level(logging.WARNING):
        sample = data[0]
    assert sample["image_id"] == "00000_a"
    assert sample["skipped"] == ["00001_c", "00002_m"]
    assert "00001_c" in caplog.text and "00002_m" in caplog.text


def test_people_that_cannot_be_placed_are_reported_and_counted(tmp_path, tokenizer, caplog, monkeypatch):
    """A json without `segments`, or a person whose `end` lies beyond the caption, trains without those people: the
    SDM reader says so once per image and marks the sample so the trainer counts it."""
    two_people(tmp_path, "00000_a")  # sound
    two_people(tmp_path, "00001_n")
    two_people(tmp_path, "00002_e")
    no_segments = tmp_path / "00001" / "00001_n.json"
    no_segments.write_text(json.dumps({"caption": CAPTION}))
    beyond = tmp_path / "00002" / "00002_e.json"
    data = json.loads(beyond.read_text())
    data["segments"][0]["end"] = len(CAPTION) + 5  # the woman
    beyond.write_text(json.dumps(data))
    write_split(tmp_path, ["00000_a", "00001_n", "00002_e"])
    dataset = plain_dataset(tmp_path, tokenizer)
    with caplog.at_level(logging.WARNING):
        samples = [dataset[i] for i in range(3)]
        again = dataset[(1, 1)]  # the next epoch reads the file again: counted, not warned again
    assert [s["flawed"] for s in samples] == [[], ["00001_n"], ["00002_e"]]
    assert again["flawed"] == ["00001_n"]
    assert samples[1]["caption"] == CAPTION  # no placeholder: nobody to place
    assert samples[2]["caption"] == "a man <|image|> and a woman at the beach"  # the man is still a subject
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "00001_n" in warnings[0] and "no 'segments'" in warnings[0]
    assert "00002_e" in warnings[1] and f"'end' {len(CAPTION) + 5}" in warnings[1]
    assert collate(samples)["flawed"] == ["00001_n", "00002_e"]
    # Past the first few ids, flaws are counted without a warning each; the last warning says so.
    caplog.clear()
    monkeypatch.setattr(data_module, "FLAW_WARNINGS", 1)
    capped = plain_dataset(tmp_path, tokenizer)
    with caplog.at_level(logging.WARNING):
        flawed = [capped[i]["flawed"] for i in range(3)]
    assert flawed == [[], ["00001_n"], ["00002_e"]]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "00001_n" in warning and "not warned about one by one" in warning
    # The TDM reads only the caption: nothing is left out, nothing is reported.
    assert all(s["flawed"] == [] for s in (plain_dataset(tmp_path, tokenizer, with_subjects=False)[i] for i in (1, 2)))


def test_segments_that_are_not_a_list_make_the_sample_unreadable(tmp_path, tokenizer, caplog):
    two_people(tmp_path, "00000_a")
    two_people(tmp_path, "00001_n")
    (tmp_path / "00001" / "00001_n.json").write_text(json.dumps({"caption": CAPTION, "segments": None}))
    write_split(tmp_path, ["00001_n", "00000_a"])
    with caplog.at_level(logging.WARNING):
        sample = plain_dataset(tmp_path, tokenizer)[0]
    assert sample["image_id"] == "00000_a" and sample["skipped"] == ["00001_n"]
    assert "'segments' of type NoneType" in caplog.text


def test_root_not_in_format_says_what_is_missing(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plain_dataset(tmp_path / "nowhere", tokenizer)
    with pytest.raises(ValueError, match="image_ids_train.txt"):
        plain_dataset(tmp_path, tokenizer)
    write_split(tmp_path, ["00000_a", "00001_b"])
    with pytest.raises(ValueError, match=r"00000/00000_a\.jpg is missing"):
        plain_dataset(tmp_path, tokenizer)


def test_no_person_segments_is_an_error_for_the_sdm_only(tmp_path, tokenizer):
    pixels = np.zeros((32, 32, 3), np.uint8)
    segmap = np.ones((32, 32), np.int64)
    write_sample(
        tmp_path,
        "00000_d",
        pixels,
        segmap,
        "a dog on grass",
        [{"id": 1, "bbox": [0, 0, 32, 32], "coco_label": "dog", "end": 5}],
    )
    write_split(tmp_path, ["00000_d"])
    with pytest.raises(ValueError, match="'person' segment"):
        plain_dataset(tmp_path, tokenizer)
    assert plain_dataset(tmp_path, tokenizer, with_subjects=False)[0]["caption"] == "a dog on grass"


# ----------------------------------------------------------------------------- augmentations
def test_reference_augmentation_shapes_and_range():
    g = torch.Generator().manual_seed(0)
    crop = torch.rand(3, 30, 17, generator=g)
    always = ReferenceAugmentation(
        zoom_prob=1, rotate_prob=1, jitter_prob=1, blur_prob=1, grayscale_prob=1, flip_prob=1, elastic_prob=1
    )
    out = always(crop, 24, g)
    assert out.shape == (3, 24, 24) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[0], out[1])  # grayscale happened
    never = ReferenceAugmentation(
        zoom_prob=0, rotate_prob=0, jitter_prob=0, blur_prob=0, grayscale_prob=0, flip_prob=0, elastic_prob=0
    )
    square = torch.rand(3, 24, 24, generator=g)
    assert torch.allclose(never(square, 24, g), square, atol=1e-6)


def test_geometry_helpers():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)
    assert torch.equal(center_crop_or_pad(x, 4), x[:, :, 1:5])
    padded = center_crop_or_pad(x, 8, fill=-1)
    assert padded.shape == (2, 8, 8) and torch.equal(padded[:, 2:6, 1:7], x) and padded[0, 0, 0] == -1
    img = torch.rand(3, 9, 9)
    assert torch.allclose(rotate(img, 0.0), img, atol=1e-5)
    assert torch.allclose(rotate(rotate(img, 90.0), -90.0)[:, 2:7, 2:7], img[:, 2:7, 2:7], atol=1e-4)
    gray = grayscale(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1))
    assert torch.allclose(gray.flatten(), torch.full((3,), 0.299))


def test_target_flip_moves_image_and_map_together():
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:, 4:8] = 255
    segmap = np.zeros((16, 24), np.int64)
    segmap[:, 4:8] = 7
    image = Image.fromarray(pixels)
    for flip in (False, True):
        target, seg = target_geometry(image, segmap, 16, flip)
        white = (target[0] > 0).float()
        assert torch.equal(white, (seg == 7).float())
    assert seg[:, 16 - 4 :].eq(7).any()  # flipped: the stripe is now on the right


def test_map_geometry_is_the_targets_geometry():
    """Another map of the same image (the head map) goes through exactly the target's resize, flip and crop, on wide
    and tall images and when padded."""
    g = np.random.default_rng(0)
    for height, width, size in ((16, 24, 16), (30, 20, 12), (10, 12, 16)):
        segmap = g.integers(-1, 5, (height, width))
        image = Image.fromarray(g.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for flip in (False, True):
            assert torch.equal(map_geometry(segmap, size, flip), target_geometry(image, segmap, size, flip)[1])


def test_head_masks_are_the_person_inside_the_head_box(tmp_path, tokenizer):
    """With ``head_masks`` a sample holds each person's head (their segment inside their ``head_box``) in the target
    geometry, flipped with it; a person without a head box gets an empty mask; collate keeps them beside the person
    masks; a data set without head boxes is refused."""
    two_people(tmp_path)  # the man: x 4-11, y 8-19; the woman: x 24-31, y 8-23 (40x32, cropped to 32: 4 px a side)
    annotation_file = tmp_path / "00000" / "00000_a.json"
    annotation = json.loads(annotation_file.read_text())
    annotation["segments"][1]["head_box"] = [2, 6, 12, 12]  # the man's: reaches outside his mask, to the left and up
    annotation_file.write_text(json.dumps(annotation))
    write_split(tmp_path, ["00000_a"])
    sample = plain_dataset(tmp_path, tokenizer, head_masks=True)[0]
    heads, people = sample["head_masks"], sample["subject_masks"]
    assert heads.shape == people.shape == (2, 32, 32)
    man = torch.zeros(32, 32)
    man[8:12, 0:8] = 1  # his mask (x 4-11 -> 0-7 after the crop) inside rows 6-11 of his head box
    assert torch.equal(heads[0], man)  # people in caption order: the man first
    assert bool((heads[0] <= people[0]).all())
    assert heads[1].sum() == 0  # the woman has no head box
    assert "head_masks" not in plain_dataset(tmp_path, tokenizer)[0]  # off by default: the recipe's samples
    batch = collate([sample, sample])
    assert torch.equal(batch["head_masks"], torch.cat([heads, heads]))
    assert "head_masks" not in collate([plain_dataset(tmp_path, tokenizer)[0]])

    flipped = plain_dataset(tmp_path, tokenizer, head_masks=True, augment=True)
    for epoch in range(8):  # the flip is a coin per sample; the head mask follows the person mask
        s = flipped[(epoch, 0)]
        assert bool((s["head_masks"][0] <= s["subject_masks"][0]).all()) and s["head_masks"][0].sum() == 32

    del annotation["segments"][1]["head_box"]
    annotation_file.write_text(json.dumps(annotation))
    with pytest.raises(ValueError, match="Head masks are asked for.*has a 'head_box'.*head_loss_weight"):
        plain_dataset(tmp_path, tokenizer, head_masks=True)


def one_person(root: Path, image_id: str, colour, identity) -> None:
    """A 32x32 blue image with one man (segment 1, x 8-23, y 4-27) painted ``colour``, named ``identity``."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:] = BLUE
    segmap = np.zeros((32, 32), np.int64)
    pixels[4:28, 8:24], segmap[4:28, 8:24] = colour, 1
    segment = {"id": 1, "bbox": [8, 4, 24, 28], "coco_label": "person", "end": 5}
    if identity is not None:
        segment["identity"] = identity
    write_sample(root, image_id, pixels, segmap, "a man at the beach", [segment])


def reference_colour(sample) -> np.ndarray:
    """The centre pixel of a sample's only reference, un-normalized to 0-255."""
    pixel = sample["subject_pixels"][0, :, 8, 8] * torch.tensor(CLIP_STD) + torch.tensor(CLIP_MEAN)
    return (pixel * 255).numpy()


def test_references_from_other_images_of_the_same_person(tmp_path, tokenizer):
    """With ``other_image_reference_prob`` 1 a person's reference is cut from another image that names the same
    identity (never from the image itself while there is another); a person seen once keeps the recipe's reference."""
    from facediffuser.training.augment import ReferenceAugmentation

    one_person(tmp_path, "00000_a", RED, "ann")
    one_person(tmp_path, "00000_b", GREEN, "ann")
    one_person(tmp_path, "00000_c", (255, 255, 0), 7)  # an integer identity is read as "7"
    write_split(tmp_path, ["00000_a", "00000_b", "00000_c"])
    geometry_only = ReferenceAugmentation(
        zoom_prob=0, rotate_prob=0, jitter_prob=0, blur_prob=0, grayscale_prob=0, flip_prob=0, elastic_prob=0
    )
    options = dict(augment=True, augmentation=geometry_only)
    other = plain_dataset(tmp_path, tokenizer, other_image_reference_prob=1.0, **options)
    assert other.appearances == {"ann": [("00000_a", 1), ("00000_b", 1)], "7": [("00000_c", 1)]}
    jpeg = 3.0  # quality-100 JPEG of flat colours: a few levels at most
    for epoch in range(3):
        a, b, c = (other[(epoch, i)] for i in range(3))
        np.testing.assert_allclose(reference_colour(a), GREEN, atol=jpeg)  # ann's reference from image b
        np.testing.assert_allclose(reference_colour(b), RED, atol=jpeg)  # and the other way round
        np.testing.assert_allclose(reference_colour(c), (255, 255, 0), atol=jpeg)  # no other image of 7
        # the target stays this image's own: only the reference moved
        assert torch.equal(a["pixel_values"], plain_dataset(tmp_path, tokenizer, **options)[(epoch, 0)]["pixel_values"])
    assert torch.equal(other[(1, 0)]["subject_pixels"], other[(1, 0)]["subject_pixels"])  # seeded like the rest

    recipe = plain_dataset(tmp_path, tokenizer, **options)  # 0: from the image itself, the index is never read
    assert recipe.appearances == {}
    np.testing.assert_allclose(reference_colour(recipe[(0, 0)]), RED, atol=jpeg)
    # validation samples (no augmentation) keep the recipe's reference too
    assert plain_dataset(tmp_path, tokenizer, other_image_reference_prob=1.0).appearances == {}

    # an unreadable other image: warned, and the reference is cut from the image itself
    (tmp_path / "00000" / "00000_b.npy").write_bytes(b"not a map")
    np.testing.assert_allclose(reference_colour(other[(0, 0)]), RED, atol=jpeg)


def test_other_image_references_need_identities(tmp_path, tokenizer):
    one_person(tmp_path, "00000_a", RED, None)
    one_person(tmp_path, "00000_b", GREEN, None)
    write_split(tmp_path, ["00000_a", "00000_b"])
    with pytest.raises(ValueError, match="has an 'identity'.*Set it to 0"):
        plain_dataset(tmp_path, tokenizer, augment=True, other_image_reference_prob=0.5)
    with pytest.raises(ValueError, match="other_image_reference_prob"):
        plain_dataset(tmp_path, tokenizer, other_image_reference_prob=1.5)
    one_person(tmp_path, "00000_a", RED, ["ann"])
    with pytest.raises(ValueError, match="'identity' of type list"):
        parse_annotation(json.loads((tmp_path / "00000" / "00000_a.json").read_text()), "00000_a")


def test_references_cut_to_the_head_box(tmp_path, tokenizer):
    """``reference_region = "head"`` cuts each reference to the person's ``head_box`` (noise still outside their
    segment); "person" (the recipe's) to their whole box; a data set without head boxes is refused for "head"."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:] = BLUE
    segmap = np.zeros((32, 32), np.int64)
    pixels[4:12, 8:24], segmap[4:12, 8:24] = GREEN, 1  # the head
    pixels[12:28, 8:24], segmap[12:28, 8:24] = RED, 1  # the body
    segment = {"id": 1, "bbox": [8, 4, 24, 28], "coco_label": "person", "end": 5, "head_box": [8, 4, 24, 12]}
    write_sample(tmp_path, "00000_a", pixels, segmap, "a man at the beach", [segment])
    write_split(tmp_path, ["00000_a"])
    jpeg = 3.0  # quality-100 JPEG of flat colours: a few levels at most
    head = plain_dataset(tmp_path, tokenizer, reference_region="head")[0]
    np.testing.assert_allclose(reference_colour(head), GREEN, atol=jpeg)
    person = plain_dataset(tmp_path, tokenizer)[0]  # 16 px wide, 24 tall: padded to 24, the centre is the body
    np.testing.assert_allclose(reference_colour(person), RED, atol=jpeg)
    assert torch.equal(head["subject_masks"], person["subject_masks"])  # the loss still sees the whole person

    with pytest.raises(ValueError, match="reference_region"):
        plain_dataset(tmp_path, tokenizer, reference_region="face")
    del segment["head_box"]
    write_sample(tmp_path, "00000_a", pixels, segmap, "a man at the beach", [segment])
    with pytest.raises(ValueError, match="has a 'head_box'"):
        plain_dataset(tmp_path, tokenizer, reference_region="head")
    segment["head_box"] = [8, 4, 24]
    with pytest.raises(ValueError, match="head_box of 3 numbers"):
        parse_annotation({"caption": "a man at the beach", "segments": [segment]}, "00000_a")
