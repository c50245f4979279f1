"""Every JSON file a command reads names itself when it is broken: empty, cut short, not UTF-8, or a list where an
object belongs is one sentence that starts with the file's path (``facediffuser.io.files``), never a bare
``Expecting value: line 1 column 1 (char 0)``, a codec error or an ``AttributeError``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facediffuser.cli.main import main
from facediffuser.evaluation.work import check_run_settings
from facediffuser.io.convert import _read_config
from facediffuser.io.weight_files import check_weights_folder
from facediffuser.lab.mini import ship
from facediffuser.lab.mini.build import attach_face_detector
from facediffuser.lab.world import package as world_package
from facediffuser.lab.world.benchmark import load_identities
from facediffuser.lab.world.data import read_samples
from facediffuser.lab.world.report import write_report
from facediffuser.training.checkpoints import STATE_FILE, read_state

# (the file's bytes, the words that follow its path)
BROKEN = {
    "empty": (b"", "is empty: it should hold JSON"),
    "cut-short": (b"{", "is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
    "latin-1": (b'{"caf\xe9": 1}', "is not UTF-8 text (byte 0xe9 at offset 5): save it as UTF-8"),
    "list": (b"[1, 2]", "a JSON object ({...}): it holds a list"),
}
ALL = pytest.mark.parametrize("kind", sorted(BROKEN))


def broken(path: Path, kind: str) -> str:
    """Writes the broken ``kind`` of file at ``path``; returns the words that must follow the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content, words = BROKEN[kind]
    path.write_bytes(content)
    return words


def assert_names(message: str, path: Path, words: str) -> None:
    assert f"{path} " in message and words in message and "\n" not in message.strip(), message


def raised(call, *args) -> str:
    with pytest.raises(ValueError) as info:
        call(*args)
    return str(info.value)


@ALL
def test_an_evaluation_run_record_names_itself(tmp_path, kind):
    words = broken(tmp_path / "run.json", kind)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(b"png")  # run.json binds only beside images
    message = raised(check_run_settings, tmp_path, {"seed": 0, "models": {}})
    assert_names(message, tmp_path / "run.json", words)
    assert message.endswith("; delete it to reuse the images there.")


@ALL
def test_evaluate_combine_names_a_broken_summary_and_exits_2(tmp_path, kind, capsys):
    words = broken(tmp_path / "run" / "summary.json", kind)
    code = main(["evaluate", "--combine", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"facediffuser evaluate: error: {tmp_path / 'run' / 'summary.json'} "), err
    assert_names(err, tmp_path / "run" / "summary.json", words)
    assert not (tmp_path / "out").exists()  # refused before anything was written


@ALL
def test_a_training_state_names_itself(tmp_path, kind):
    words = broken(tmp_path / STATE_FILE, kind)
    message = raised(read_state, tmp_path)
    assert_names(message, tmp_path / STATE_FILE, words)
    assert message.endswith("; the checkpoint is damaged.")


@ALL
def test_a_model_config_to_convert_names_itself(tmp_path, kind):
    words = broken(tmp_path / "unet" / "config.json", kind)
    message = raised(_read_config, tmp_path / "unet")
    assert_names(message, tmp_path / "unet" / "config.json", words)
    assert message.endswith("; copy it again.")


@ALL
def test_a_safetensors_index_names_itself(tmp_path, kind):
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    words = broken(index, kind)
    message = raised(check_weights_folder, tmp_path, "diffusion_pytorch_model")
    assert_names(message, index, words)
    assert message.endswith("; download it again.")


def test_a_byte_order_mark_in_a_file_diffusers_reads_again_is_refused(tmp_path):
    # facediffuser reads it, but diffusers and transformers read it again and cannot: refused up front, as before.
    config, index = (
        tmp_path / "unet" / "config.json",
        tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json",
    )
    config.parent.mkdir()
    config.write_bytes(b"\xef\xbb\xbf{}")
    index.write_bytes(b'\xef\xbb\xbf{"weight_map": {}}')
    words = "starts with a byte-order mark, which diffusers cannot read: save it as UTF-8 without one."
    assert raised(_read_config, tmp_path / "unet") == f"{config} {words}"
    assert raised(check_weights_folder, tmp_path / "unet", "diffusion_pytorch_model") == f"{index} {words}"


def test_a_safetensors_index_whose_weight_map_is_not_an_object_is_named(tmp_path):
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": ["a.safetensors"]}))
    message = raised(check_weights_folder, tmp_path, "diffusion_pytorch_model")
    assert message == f"{index} is not a safetensors index (its `weight_map` is not an object): download it again."


@ALL
def test_the_model_index_that_gets_a_face_detector_names_itself(tmp_path, kind):
    words = broken(tmp_path / "pipeline" / "model_index.json", kind)
    message = raised(attach_face_detector, tmp_path / "pipeline", tmp_path / "detector")
    assert_names(message, tmp_path / "pipeline" / "model_index.json", words)


# -------------------------------------------------------------------------------------------- a world's files
@ALL
def test_mini_ship_names_a_broken_world_json(tmp_path, kind):
    words = broken(tmp_path / "world.json", kind)
    message = raised(world_package.choose_people, tmp_path, 1)
    assert_names(message, tmp_path / "world.json", words.replace("a JSON object", "a world's people, a JSON object"))


@ALL
def test_mini_ship_names_the_worlds_broken_class_nouns(tmp_path, kind, monkeypatch):
    nouns = tmp_path / "world" / "references" / "subjects.json"
    words = broken(nouns, kind)
    monkeypatch.setattr(world_package, "choose_people", lambda world, count: [])
    message = raised(world_package.write_examples, tmp_path / "world", tmp_path / "examples", 1)
    assert_names(message, nouns, words)


@ALL
def test_mini_ship_names_a_broken_stage_marker(tmp_path, kind):
    words = broken(tmp_path / "build" / "stages" / "vae.json", kind)
    (tmp_path / "new").mkdir()
    message = raised(ship.write_stages, tmp_path / "build", tmp_path / "new")
    assert_names(message, tmp_path / "build" / "stages" / "vae.json", words)
    assert message.endswith("rebuild the stage with `facediffuser mini build`.")
    words = broken(tmp_path / "world" / "stages" / "references.json", kind)
    message = raised(world_package._references_settings, tmp_path / "world")
    assert_names(message, tmp_path / "world" / "stages" / "references.json", words)


@ALL
def test_the_world_report_names_a_broken_world_json_before_measuring(tmp_path, kind):
    words = broken(tmp_path / "world.json", kind)  # no scenes: the world.json is read first
    message = raised(write_report, tmp_path)
    assert_names(message, tmp_path / "world.json", words)
    assert not (tmp_path / "report").exists()


@ALL
def test_the_world_benchmark_names_a_broken_world_json(tmp_path, kind):
    words = broken(tmp_path / "world.json", kind)
    assert_names(raised(load_identities, tmp_path / "world.json"), tmp_path / "world.json", words)


def write_sample(root: Path, image_id: str, annotation: bytes) -> Path:
    """An FFHQ-wild sample (as the world writes its renders too): an 8x8 image, its map and its json."""
    folder = root / image_id[:5]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{image_id}.jpg")
    np.save(folder / f"{image_id}.npy", np.zeros((8, 8), np.int64))
    (folder / f"{image_id}.json").write_bytes(annotation)
    return folder / f"{image_id}.json"


@ALL
def test_a_world_samples_broken_json_names_itself(tmp_path, kind):
    js = write_sample(tmp_path, "00000_a", b"")
    words = broken(js, kind)
    (tmp_path / "image_ids_test.txt").write_text("00000_a\n")
    assert_names(raised(read_samples, tmp_path, "test"), js, words)


@pytest.mark.parametrize("kind", ["cut-short", "empty", "latin-1"])
def test_an_ffhq_wild_sample_with_a_broken_json_is_skipped_with_a_warning_naming_it(tmp_path, kind, caplog):
    from facediffuser.io.tokenizer import load_clip_tokenizer
    from facediffuser.training.data import FFHQWild

    good = json.dumps({"caption": "a beach", "segments": []}).encode()
    write_sample(tmp_path, "00000_a", good)
    js = write_sample(tmp_path, "00001_b", good)
    words = broken(js, kind)
    (tmp_path / "image_ids_train.txt").write_text("00001_b\n00000_a\n")
    data = FFHQWild(
        root=tmp_path,
        split="train",
        tokenizer=load_clip_tokenizer(),
        resolution=8,
        reference_size=8,
        augment=False,
        with_subjects=False,
    )
    with caplog.at_level(logging.WARNING):
        sample = data[0]
    assert sample["image_id"] == "00000_a" and sample["skipped"] == ["00001_b"]  # skipped, as before
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"Skipping FFHQ-wild sample 00001_b: corrupt file ({js} "), warning
    assert_names(warning, js, words)
