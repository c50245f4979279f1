"""``facediffuser mini people``: validation people are the world's held-out people the benchmark does not score (or
renders of training people), written under the output-folder rule."""

from __future__ import annotations

import json

from facediffuser.cli.main import main
from facediffuser.evaluation.cases import load_subjects
from facediffuser.io.package_data import WORLD_REFERENCES, packaged
from facediffuser.lab.world.attributes import load_people


def fake_world(root, extra=("id9001", "id9002")):
    """A world folder whose references hold the shipped benchmark people (a photo each) and ``extra`` people."""
    references = root / "references"
    nouns = {}
    for person in [*load_subjects(packaged(WORLD_REFERENCES)), *extra]:
        name = getattr(person, "name", person)
        (references / name).mkdir(parents=True)
        (references / name / "1.png").write_bytes(f"photo of {name}".encode())
        nouns[name] = "woman"
    (references / "subjects.json").write_text(json.dumps(nouns), encoding="utf-8")
    return root


def test_the_held_out_people_the_benchmark_does_not_score_are_copied(tmp_path, capsys):
    world = fake_world(tmp_path / "world")
    assert main(["mini", "people", "--world", str(world), "--out", str(tmp_path / "val")]) == 0
    val = tmp_path / "val"
    assert json.loads((val / "subjects.json").read_text()) == {"id9001": "woman", "id9002": "woman"}
    assert (val / "id9001" / "1.png").read_bytes() == b"photo of id9001"
    assert sorted(p.name for p in val.iterdir() if p.is_dir()) == ["id9001", "id9002"]  # no benchmark person
    assert "2 people" in capsys.readouterr().out


def test_a_world_without_the_benchmark_people_and_bad_folders_are_refused(tmp_path, capsys):
    world = fake_world(tmp_path / "world")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    cases = [
        (["--out", str(world / "val")], "lies inside the input"),
        (["--out", str(tmp_path / "mine")], "holds files facediffuser did not write"),
        (["--out", str(tmp_path / "v"), "--training", "0"], "--training must be a positive number of people"),
    ]
    for flags, words in cases:
        assert main(["mini", "people", "--world", str(world), *flags]) == 2
        assert words in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and not (world / "val").exists()
    other = tmp_path / "other"
    (other / "references").mkdir(parents=True)
    (other / "references" / "subjects.json").write_text('{"id9001": "man"}')
    assert main(["mini", "people", "--world", str(other), "--out", str(tmp_path / "v2")]) == 2
    assert "is not the world of the shipped benchmark" in capsys.readouterr().err
    assert not (tmp_path / "v2").exists()


def test_training_people_are_rendered_as_the_world_renders_references(tmp_path):
    world = tmp_path / "world"
    tiny = ["--identities", "20", "--heldout", "4", "--references-per-person", "2", "--scenes-train", "2"]
    tiny += ["--scenes-test", "1", "--portraits-train", "2", "--portraits-test", "1", "--size", "16"]
    assert main(["world", "render", "--out", str(world), *tiny]) == 0
    out = tmp_path / "train-people"
    assert main(["mini", "people", "--world", str(world), "--out", str(out), "--training", "3"]) == 0
    people = load_subjects(out)
    assert len(people) == 3 and all(len(p.photos) == 2 for p in people)
    identities, split = load_people(world)
    assert {p.name for p in people} <= {identities[i].name for i in split["train"]}  # training people only
    assert main(["mini", "people", "--world", str(world), "--out", str(tmp_path / "x"), "--training", "99"]) == 2
