"""One rule for output folders (facediffuser.io.output_folders): a command writes only into a folder it created, an
empty one or one with its own marker; it never writes over, moves or deletes a file it did not write; an input is
never an output. The last tests run every writing command into a folder of user files, beside it and over its
inputs, and check that every user file survives byte for byte."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from facediffuser.cli.main import main
from facediffuser.evaluation.work import check_run_settings
from facediffuser.io import output_folders as F

# What a user may have in a folder they give to a command: the names the commands write, and others.
USER_FILES = {
    "world.json": b'{"mine": true}',
    "scores.csv": b"name,score\nme,1\n",
    "summary.json": b'{"my": "summary"}',
    "table.md": b"| my | table |\n",
    "table1.md": b"| my | table 1 |\n",
    "grid.png": b"\x89PNG not really",
    "run.json": b'{"my": "run"}',
    "examples/mini/my-photo.png": b"photo bytes",
    "mini/pipeline/my-config.json": b'{"mine": 1}',
    "world/clip/keep.txt": b"keep me",
    "world/references/mum/photo.jpg": b"\xff\xd8 mum",
    "stages/notes.txt": b"my notes",
}


def make_user_folder(folder: Path) -> Path:
    for relative, data in USER_FILES.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders too), with the sha256 of each file's bytes."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


# ------------------------------------------------------------------------------------------------ the module
def test_claim_takes_a_new_or_empty_folder_and_writes_its_marker(tmp_path):
    new = F.claim(tmp_path / "a" / "b", command="world")
    assert F.read_marker(new) == {"command": "world", "files": []}
    (tmp_path / "empty").mkdir()
    F.claim(tmp_path / "empty", command="evaluate")
    assert F.read_marker(tmp_path / "empty")["command"] == "evaluate"
    F.claim(tmp_path / "empty", command="evaluate")  # its own folder again


def test_claim_refuses_a_users_folder_another_commands_and_the_current_one(tmp_path, monkeypatch):
    user = make_user_folder(tmp_path / "user")
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"user holds files facediffuser did not write \(examples, grid.png, "):
        F.claim(user, command="world")
    F.claim(tmp_path / "w", command="world")
    with pytest.raises(ValueError, match="made by `facediffuser world`, not `facediffuser evaluate`"):
        F.claim(tmp_path / "w", command="evaluate")
    monkeypatch.chdir(tmp_path / "w")
    with pytest.raises(ValueError, match="--out . is the current folder"):
        F.claim(".", command="world")
    with pytest.raises(ValueError, match="a folder above the current one"):
        F.claim(tmp_path, command="world")
    with pytest.raises(ValueError, match="--out is empty"):
        F.claim("", command="world")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        F.claim(user / "world.json", command="world")
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("w")} == before


def test_an_input_is_never_the_output_nor_inside_it_nor_holding_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ValueError, match="is the input"):
        F.check(data, command="evaluate", inputs=[data])
    with pytest.raises(ValueError, match="lies inside the input"):
        F.check(data / "results", command="evaluate", inputs=[data])
    with pytest.raises(ValueError, match="holds the input"):
        F.check(tmp_path, command="evaluate", inputs=[data])
    F.check(tmp_path / "results", command="evaluate", inputs=[data])  # beside it


def test_a_folder_of_an_older_version_is_taken_over_with_what_the_command_writes(tmp_path):
    old = tmp_path / "build"
    (old / "stages").mkdir(parents=True)
    (old / "stages" / "vae.json").write_text("{}")
    (old / "vae").mkdir()
    F.claim(old, command="mini build", legacy=("stages/vae.json",), entries=("vae/", "tdm/", "stages/"))
    assert F.read_marker(old) == {"command": "mini build", "files": ["stages/", "vae/"]}


def test_own_records_what_it_writes_and_refuses_a_file_it_did_not_write(tmp_path):
    out = F.claim(tmp_path / "run", command="evaluate")
    (path,) = F.own(out, "table.md", command="evaluate")
    path.write_text("ours")
    F.own(out, "table.md", "images/", command="evaluate")  # ours: written again
    (out / "images" / "a").mkdir(parents=True)
    F.own(out, "images/a/0.png", command="evaluate")  # inside a sub-folder of ours
    (out / "grid.png").write_bytes(b"the user's")
    with pytest.raises(ValueError, match="grid.png was not written by facediffuser evaluate, so it was not replaced"):
        F.own(out, "scores.csv", "grid.png", command="evaluate")
    assert (out / "grid.png").read_bytes() == b"the user's"
    assert F.read_marker(out)["files"] == ["images/", "table.md"]  # nothing recorded by the refused call


@pytest.mark.parametrize("fail_at", ["write", "recheck"])
def test_several_folders_are_swapped_in_all_or_nothing(tmp_path, fail_at):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "old.txt").write_text("old " + folder.name)
    before = tree(tmp_path)

    def write(new: Path) -> None:
        (new / "new.txt").write_text("new")
        if fail_at == "write" and new.name.startswith(".b."):
            raise KeyboardInterrupt  # Ctrl-C while the second folder is written

    def recheck() -> None:
        if fail_at == "recheck":
            raise ValueError("refused just before the swap")

    try:  # (not pytest.raises: pytest treats a KeyboardInterrupt as the user's own)
        F.write_folders_atomically({a: write, b: write}, recheck=recheck)
    except (KeyboardInterrupt, ValueError) as err:
        stopped = err
    assert type(stopped) is (KeyboardInterrupt if fail_at == "write" else ValueError)
    assert tree(tmp_path) == before  # the old folders whole, no half folder beside them
    fail_at = None
    F.write_folders_atomically({a: write, b: write})
    assert sorted(tree(tmp_path)) == ["a", "a/new.txt", "b", "b/new.txt"]


def test_a_swap_that_fails_half_way_puts_every_old_folder_back(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "old.txt").write_text("old " + folder.name)
    before = tree(tmp_path)
    rename = Path.rename

    def failing(self, target):
        if Path(self).name.startswith(".b.new"):
            raise OSError("the disk went away")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError):
        F.write_folders_atomically({a: lambda n: (n / "x").write_text("x"), b: lambda n: (n / "x").write_text("x")})
    assert tree(tmp_path) == before


def test_a_run_record_beside_no_image_does_not_block_the_corrected_rerun(tmp_path):
    """A run refused for a bad flag after writing run.json (say --scheduler bogus) left a record of settings that
    made no image: the corrected rerun into the same folder must not be told it 'holds images generated with other
    settings'."""
    settings = {"scheduler": "ddim", "models": {"tiny": "tiny"}, "seed": 1}
    (tmp_path / "run.json").write_text(json.dumps({**settings, "scheduler": "bogus"}))
    assert check_run_settings(tmp_path, settings) == settings
    image = tmp_path / "images" / "tiny" / "tdm" / "case" / "0.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"png")
    with pytest.raises(ValueError, match="holds images generated with other settings.*scheduler"):
        check_run_settings(tmp_path, settings)


# ------------------------------------------------------------------------------------------------ every command
def commands_into(user: Path, inputs: Path) -> dict[str, list[str]]:
    """Every command that writes a folder, told to write into the user's folder ``user``."""
    world, build = str(inputs / "world"), str(inputs / "build")
    tiny = ["--identities", "20", "--heldout", "4", "--references-per-person", "1", "--scenes-train", "3"]
    tiny += ["--portraits-train", "3", "--clip-steps", "1", "--detector-steps", "1", "--embedder-steps", "1"]
    evaluate = ["evaluate", "--data", str(inputs / "subjects"), "--model", "tiny", "--limit", "1", "--steps", "1"]
    convert = ["convert", "--sd15", str(inputs / "sd15"), "--sdm", str(inputs / "sdm.bin")]
    return {
        **{f"world {part}": ["world", part, "--out", str(user), *tiny] for part in ("build", "render", "clip")},
        "world render --size 0": ["world", "render", "--out", str(user), *tiny, "--size", "0"],
        "mini build": ["mini", "build", "--out", str(user), "--world", world],
        "mini ship": ["mini", "ship", "--build", build, "--world", world, "--package-dir", str(user)],
        "evaluate": [*evaluate, "--out", str(user)],
        "evaluate --combine": ["evaluate", "--combine", str(inputs / "run"), "--out", str(user)],
        "convert": [*convert, "--out", str(user)],
        "convert --overwrite": [*convert, "--out", str(user), "--overwrite"],
        "train": ["train", "sdm", "--data-root", str(inputs / "subjects"), "--output-dir", str(user)],
    }


def commands_over_inputs(user: Path, inputs: Path) -> dict[str, list[str]]:
    """Every command told to write over (or into, or around) its own input, the user's folder."""
    return {
        "mini build --out WORLD": ["mini", "build", "--out", str(user), "--world", str(user)],
        "mini build inside WORLD": ["mini", "build", "--out", str(user / "build"), "--world", str(user)],
        "mini ship beside the world": [
            "mini",
            "ship",
            "--build",
            str(inputs / "build"),
            "--world",
            str(user / "world"),
            "--package-dir",
            str(user),
        ],  # fmt: skip
        "evaluate --out DATA": ["evaluate", "--data", str(user), "--model", "tiny", "--out", str(user)],
        "evaluate inside DATA": ["evaluate", "--data", str(user), "--model", "tiny", "--out", str(user / "r")],
        "evaluate --combine RUN --out RUN": ["evaluate", "--combine", str(user), "--out", str(user)],
        "convert --out SD15": [
            "convert",
            "--sd15",
            str(user),
            "--sdm",
            str(inputs / "sdm.bin"),
            "--out",
            str(user),
            "--overwrite",
        ],  # fmt: skip
        "train --output-dir DATA": ["train", "tdm", "--data-root", str(user), "--output-dir", str(user)],
        "train inside DATA": ["train", "tdm", "--data-root", str(user), "--output-dir", str(user / "run")],
        "train --output-dir BASE": [
            "train",
            "sdm",
            "--data-root",
            str(inputs / "subjects"),
            "--pretrained",
            str(user),
            "--output-dir",
            str(user),
        ],  # fmt: skip
    }


@pytest.fixture
def user_and_inputs(tmp_path):
    user = make_user_folder(tmp_path / "user")
    inputs = tmp_path / "inputs"
    for folder in ("world", "build", "subjects", "sd15", "run"):
        (inputs / folder).mkdir(parents=True)
    (inputs / "sdm.bin").write_bytes(b"not read")
    (inputs / "subjects" / "ada").mkdir()
    Image.new("RGB", (8, 8)).save(inputs / "subjects" / "ada" / "1.png")
    return user, inputs


def _refused_quickly(argv, capsys, root: Path, expected: str) -> None:
    before = tree(root)
    start = time.perf_counter()
    assert main(argv) == 2, argv
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert expected in err, err
    assert tree(root) == before, argv  # every user file byte for byte, nothing added
    assert seconds < 3, f"{argv} took {seconds:.1f} s to refuse"  # refused before any model loads


INTO = {
    "world build": "holds files facediffuser did not write",
    "world render": "holds files facediffuser did not write",
    "world clip": "holds files facediffuser did not write",
    "world render --size 0": "--size must be a multiple of 8 and at least 16, got 0",
    "mini build": "holds files facediffuser did not write",
    "mini ship": "holds files facediffuser did not write where `mini ship` replaces whole folders",
    "evaluate": "holds files facediffuser did not write",
    "evaluate --combine": "holds files facediffuser did not write",
    "convert": "already exists; choose another output folder or pass --overwrite",
    "convert --overwrite": "is not a pipeline folder (it has no model_index.json)",
    "train": "holds files facediffuser did not write",
}


@pytest.mark.parametrize("name", INTO)
def test_every_writing_command_refuses_a_folder_of_user_files_and_leaves_it_whole(user_and_inputs, capsys, name):
    user, inputs = user_and_inputs
    _refused_quickly(commands_into(user, inputs)[name], capsys, user.parent, INTO[name])


OVER = {
    "mini build --out WORLD": "is the input",
    "mini build inside WORLD": "lies inside the input",
    "mini ship beside the world": "lies inside the input",
    "evaluate --out DATA": "is the input",
    "evaluate inside DATA": "lies inside the input",
    "evaluate --combine RUN --out RUN": "is the input",
    "convert --out SD15": "which is the input",
    "train --output-dir DATA": "is the input",
    "train inside DATA": "lies inside the input",
    "train --output-dir BASE": "is the input",
}


@pytest.mark.parametrize("name", OVER)
def test_every_writing_command_refuses_to_write_over_its_inputs(user_and_inputs, capsys, name):
    user, inputs = user_and_inputs
    (user / "model_index.json").write_text("{}")  # a pipeline folder: convert --overwrite must still keep off it
    _refused_quickly(commands_over_inputs(user, inputs)[name], capsys, user.parent, OVER[name])


def test_writing_commands_refuse_the_current_folder(user_and_inputs, capsys, monkeypatch):
    """``--out .`` (and an unset variable, ``--out ""``) in the user's folder; ``mini ship --package-dir .`` beside
    the input world."""
    user, inputs = user_and_inputs
    monkeypatch.chdir(user)
    tiny = ["--identities", "20", "--heldout", "4", "--scenes-train", "3", "--portraits-train", "3"]
    for out in (".", ""):
        _refused_quickly(["world", "render", "--out", out, *tiny], capsys, user.parent, "is the current folder")
        _refused_quickly(["mini", "build", "--out", out, "--world", "x"], capsys, user.parent, "is the current folder")
    ship = ["mini", "ship", "--build", str(inputs / "build"), "--world", "world", "--package-dir", "."]
    _refused_quickly(ship, capsys, user.parent, "--package-dir . is the current folder")


@pytest.mark.slow
def test_a_training_run_owns_what_it_writes_and_resumes_in_its_folder(tmp_path, capsys):
    from facediffuser.training.synthetic import write_synthetic_ffhq_wild

    data = write_synthetic_ffhq_wild(tmp_path / "data", num_images=4, size=72, test_images=0)
    run = ["train", "tdm", "--data-root", str(data), "--output-dir", str(tmp_path / "run"), "--resolution", "64"]
    run += ["--train-batch-size", "2", "--validation-steps", "0", "--checkpointing-steps", "1", "--log-with", "csv"]
    assert main([*run, "--max-train-steps", "1"]) == 0
    files = F.read_marker(tmp_path / "run")["files"]
    assert {"train_config.json", "checkpoints/", "logs/", "model_index.json", "unet/", "vae/"} <= set(files)
    (tmp_path / "run" / "my-notes.txt").write_text("mine")  # a user's file beside the run: not a name it writes
    assert main([*run, "--max-train-steps", "2", "--resume", "latest"]) == 0
    assert (tmp_path / "run" / "my-notes.txt").read_text() == "mine"
    (tmp_path / "run" / "unet").rename(tmp_path / "unet-moved")
    (tmp_path / "run" / "unet").mkdir()  # the user's own folder where the export writes: refused, kept
    (tmp_path / "run" / "unet" / "mine.txt").write_text("mine")
    F.write_marker(tmp_path / "run", "train", [f for f in files if f != "unet/"])
    assert main([*run, "--max-train-steps", "3", "--resume", "latest"]) == 2
    assert "unet was not written by facediffuser train" in capsys.readouterr().err
    assert (tmp_path / "run" / "unet" / "mine.txt").read_text() == "mine"


def test_world_render_beside_user_files_keeps_them_and_an_older_world_folder_resumes(tmp_path, capsys):
    user = make_user_folder(tmp_path / "user")
    before = tree(user)
    tiny = ["--identities", "20", "--heldout", "4", "--references-per-person", "1", "--scenes-train", "2"]
    tiny += ["--scenes-test", "1", "--portraits-train", "2", "--portraits-test", "1", "--size", "16"]
    out = user / "my-world"  # a new folder among the user's files
    assert main(["world", "render", "--out", str(out), *tiny]) == 0
    assert {k: v for k, v in tree(user).items() if not k.startswith("my-world")} == before
    assert F.read_marker(out)["files"] == ["portraits/", "references/", "scenes/", "stages/", "world.json"]
    # A world folder written before the marker existed (stages/*.json, no marker) is still the command's own.
    (out / F.MARKER).unlink()
    stamp = (out / "world.json").stat().st_mtime_ns
    assert main(["world", "render", "--out", str(out), *tiny]) == 0
    assert (out / "world.json").stat().st_mtime_ns == stamp  # every stage skipped, nothing rewritten
    assert "world.json" in F.read_marker(out)["files"]
