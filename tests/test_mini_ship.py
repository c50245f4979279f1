"""``facediffuser mini ship`` and ``--model mini``: a stand-in build (tiny random components) and a stand-in world
(a tiny CLIP, untrained face networks, references of held-out people rendered here) shipped into a temporary package
data folder. Nothing here needs the real shipped weights: the package's data folder is pointed at the temporary one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from facediffuser.cli.main import main
from facediffuser.io import package_data
from facediffuser.lab.mini import ship as S
from facediffuser.lab.world import attributes as A
from facediffuser.pipeline import FaceDiffuserPipeline

HELDOUT = 8


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory, save_tiny_world_clip) -> tuple[Path, Path]:
    """``(build, world)``: a finished build whose ``sdm/train`` is the tiny pipeline (with a face detector, as a
    head-reference SDM's has), and a world with every part ``mini ship`` reads."""
    from facediffuser.io.tiny import build_tiny_pipeline
    from facediffuser.lab.world.data import write_references
    from facediffuser.lab.world.faces import FaceDetector, FaceEmbedder

    root = tmp_path_factory.mktemp("ship")
    build, world = root / "build", root / "world"
    build_tiny_pipeline(seed=0).save_pretrained(build / "sdm" / "train", safe_serialization=True)
    (build / "stages").mkdir()
    (build / "stages" / "sdm.json").write_text(json.dumps({"settings": {}, "seconds": 1.0}))
    people = A.make_identities(30, 0)
    split = A.split_identities(30, HELDOUT, 0)
    world.mkdir()
    record = {"seed": 0, "split": split, "people": [p.to_dict() for p in people]}
    (world / "world.json").write_text(json.dumps(record))
    write_references(world / "references", [people[i] for i in split["heldout"]], size=64, progress=False)
    save_tiny_world_clip(world / "clip")
    torch.manual_seed(0)
    FaceDetector(channels=(4, 4, 4)).save_pretrained(world / "faces" / "detector")
    FaceEmbedder(channels=(4, 4, 4), embed_dim=8).save_pretrained(world / "faces" / "embedder")
    # The pipeline's own detector finds a face in every photo (threshold 0), so the stand-in draws; the world's
    # (threshold 0.4, untrained) finds none, so the reference check has something to refuse.
    from facediffuser.lab.mini.build import attach_face_detector

    FaceDetector(channels=(4, 4, 4), threshold=0.0).save_pretrained(root / "detector")
    attach_face_detector(build / "sdm" / "train", root / "detector")
    return build, world


@pytest.fixture(scope="module")
def shipped(stand_in, tmp_path_factory) -> tuple[Path, S.ShipReport]:
    build, world = stand_in
    package = tmp_path_factory.mktemp("package")
    (package / "keep.txt").write_text("not the ship's")
    report = S.ship(S.ShipConfig(build=build, world=world, package_dir=package, people=6))
    return package, report


@pytest.fixture
def packaged_here(shipped, monkeypatch) -> Path:
    """The package's data folder is the temporary one for ``--model mini`` and ``--clip-model mini``."""
    package, _ = shipped
    monkeypatch.setattr(package_data, "data_dir", lambda: package)
    return package


def test_ship_stores_float16_and_reports_every_component(shipped, stand_in):
    package, report = shipped
    pipeline = package / "mini" / "pipeline"
    assert report.folders["pipeline"] == pipeline and (pipeline / "model_index.json").is_file()
    assert (package / "keep.txt").read_text() == "not the ship's"  # nothing else in the data folder is touched
    assert S.non_float16_tensors(pipeline) == [] and S.non_float16_tensors(package / "world" / "clip") == []
    # The size report is the folder's: every component, each the bytes of its files, and their total.
    parts = {"vae", "text_encoder", "tokenizer", "unet", "subject_unet", "image_encoder", "subject_fuser"}
    parts.add("face_detector")
    assert parts | {"scheduler", "model_index.json"} == set(report.pipeline_sizes)
    files = [p for p in pipeline.rglob("*") if p.is_file()]
    assert report.pipeline_total == sum(p.stat().st_size for p in files)
    assert report.pipeline_sizes["unet"] == sum(p.stat().st_size for p in (pipeline / "unet").iterdir())
    table = report.size_table()
    assert all(name in table for name in parts) and f"{report.pipeline_total:,d} B" in table
    # The tensors take 2 bytes per number on disk, against the build's 4 (exact: the payload after the header).
    source = stand_in[0] / "sdm" / "train" / "unet" / "diffusion_pytorch_model.safetensors"
    stored = pipeline / "unet" / "diffusion_pytorch_model.safetensors"
    assert payload(stored) * 2 == payload(source) > 0
    # No config names the build's folder (diffusers records where each part was loaded from, the ship's source).
    named = [p.relative_to(pipeline) for p in pipeline.rglob("*.json") if str(stand_in[0]) in p.read_text()]
    assert named == []


def payload(path: Path) -> int:
    """Bytes of a safetensors file after its header (8 bytes of length, then the JSON header)."""
    with path.open("rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - header


def test_the_tokenizer_is_stored_as_vocab_and_merges_pruned_to_the_worlds_tokens(shipped):
    from transformers import CLIPTokenizer

    from facediffuser.io.tokenizer import load_clip_tokenizer

    package, report = shipped
    folder = package / "mini" / "pipeline" / "tokenizer"
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    loaded, full = CLIPTokenizer.from_pretrained(folder), load_clip_tokenizer()
    assert len(loaded) == report.vocabulary["kept"] < 1000 and report.vocabulary["of"] == len(full) == 49408
    # The world's texts give the same tokens (new ids); any other text is still spelled, byte by byte at worst.
    world = ["a woman on a beach at night", "A man with short black hair, pale skin and an oval face, in the fog"]
    assert [loaded.convert_ids_to_tokens(ids) for ids in loaded(world).input_ids] == [
        full.convert_ids_to_tokens(ids) for ids in full(world).input_ids
    ]
    other = "Two astronauts, 3 kites!"
    assert loaded.decode(loaded(other).input_ids, skip_special_tokens=True) == "two astronauts , 3 kites !"
    assert loaded.model_max_length == 77 and loaded.pad_token == "<|endoftext|>"
    assert loaded.convert_ids_to_tokens([len(loaded) - 2, len(loaded) - 1]) == ["<|startoftext|>", "<|endoftext|>"]
    assert f"vocabulary: {len(loaded):,d} of 49,408 tokens kept" in report.size_table()


@pytest.mark.slow
def test_mini_loads_the_shipped_folder_in_float32_equal_to_the_build_within_float16_rounding(packaged_here, stand_in):
    from facediffuser.io.loading import ModelSource, check_model_source, load_pipeline, model_folder
    from facediffuser.pipeline import FaceDiffuserPipeline

    assert check_model_source("mini") is ModelSource.MINI
    assert model_folder("mini") == packaged_here / "mini" / "pipeline"
    pipe = load_pipeline("mini", device="cpu")
    original = FaceDiffuserPipeline.from_pretrained(stand_in[0] / "sdm" / "train", dtype=torch.float32)
    # The text encoder's token table keeps the rows of the pruned vocabulary's tokens (mini/vocab.py), re-indexed.
    kept = [original.tokenizer.get_vocab()[t] for t in pipe.tokenizer.convert_ids_to_tokens(range(len(pipe.tokenizer)))]
    table = original.text_encoder.get_input_embeddings().weight
    original.text_encoder.get_input_embeddings().weight = torch.nn.Parameter(table[kept])
    for name in ("vae", "text_encoder", "unet", "subject_unet", "image_encoder", "subject_fuser", "face_detector"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(original, name).state_dict()
        assert set(ours) == set(theirs), name
        for key, value in theirs.items():
            assert ours[key].dtype == torch.float32 or not value.is_floating_point(), (name, key)
            if value.is_floating_point():
                # float16 keeps 11 significant bits: a relative error of at most 2**-11 for normal numbers, and
                # an absolute one of 2**-25 below float16's smallest normal (6.1e-5), where it has fewer bits.
                torch.testing.assert_close(ours[key], value, rtol=2**-11, atol=2**-25, msg=f"{name}.{key}")
    assert any(not torch.equal(pipe.unet.state_dict()[k], v) for k, v in original.unet.state_dict().items())


def test_generate_defaults_to_mini_and_draws_the_models_own_size(packaged_here, tmp_path):
    person = packaged_here / "examples" / "mini"
    ref = next(p for p in sorted(person.iterdir()) if p.is_dir())
    out = tmp_path / "x.png"
    argv = ["generate", "-p", "a woman <|image|> on a beach", "--ref", str(ref), "--steps", "2", "-o", str(out)]
    # The references are checked by the pipeline's own face detector (threshold 0: it finds a face in every photo),
    # not by the world's (untrained, threshold 0.4: it finds none) nor dlib's.
    assert main(argv) == 0
    image = Image.open(out)
    params = json.loads(image.text["parameters"])
    assert params["model"] == "mini"
    from facediffuser.io.loading import load_pipeline

    pipe = load_pipeline("mini", device="cpu")
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert image.size == (side, side) == (params["width"], params["height"])


def test_a_models_own_face_detector_refuses_a_faceless_reference_before_the_models_load(
    packaged_here, tmp_path, monkeypatch, capsys
):
    import shutil

    from facediffuser.io import loading
    from facediffuser.models import FaceDetector

    folder = tmp_path / "model"
    shutil.copytree(packaged_here / "mini" / "pipeline", folder)
    config_file = folder / "face_detector" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "threshold": 1e9}))  # no score reaches it: no face anywhere
    ref = next(p for p in sorted((packaged_here / "examples" / "mini").iterdir()) if p.is_dir())

    def no_load(*args, **kwargs):
        raise AssertionError("the models were loaded before the references were checked")

    monkeypatch.setattr(loading, "load_pipeline", no_load)
    asked = []
    count_faces = FaceDetector.count_faces
    monkeypatch.setattr(
        FaceDetector, "count_faces", lambda self, image: asked.append(image.size) or count_faces(self, image)
    )
    out = tmp_path / "y.png"
    argv = ["generate", "--model", str(folder), "-p", "a man <|image|>", "--ref", str(ref), "-o", str(out)]
    assert main(argv) == 2 and not out.exists()
    assert "No face was found in photo 1 of --ref" in capsys.readouterr().err
    assert asked  # the verdict is the model's own detector's (dlib, where installed, would refuse a render too)
    assert loading.read_face_detector(folder).config.threshold == 1e9
    assert loading.read_face_detector(packaged_here / "mini" / "pipeline").count_faces(Image.open(next(ref.iterdir())))


def test_the_mini_models_references_are_checked_by_the_worlds_detector(packaged_here, tmp_path, monkeypatch):
    from facediffuser.lab.world.face_backend import MiniFaceBackend, reference_face_check

    check, detector = reference_face_check("mini", True)
    assert check and isinstance(detector, MiniFaceBackend) and detector.folder == packaged_here / "world" / "faces"
    assert reference_face_check("mini", False) == (False, None)
    assert reference_face_check("tiny", True) == (True, None)  # the default check (dlib)
    monkeypatch.setattr(package_data, "data_dir", lambda: tmp_path)
    assert reference_face_check("mini", True) == (False, None)  # no shipped detector: no check rather than dlib's


def test_a_pipelines_own_detector_comes_before_the_worlds_and_dlibs(packaged_here):
    from facediffuser.io.inputs import reference_detector
    from facediffuser.lab.world.face_backend import MiniFaceBackend

    own = object()  # any detector the pipeline holds
    assert reference_detector("mini", True, own) == (True, own)
    assert reference_detector("my/model", True, own) == (True, own)
    assert reference_detector("mini", False, own) == (False, None)  # --no-face-check: no check at all
    check, detector = reference_detector("mini", True)
    assert check and isinstance(detector, MiniFaceBackend)
    assert reference_detector("tiny", True) == (True, None)  # the default check (dlib)


def test_without_a_shipped_model_mini_is_a_clear_error_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(package_data, "data_dir", lambda: tmp_path / "empty")
    argv = ["generate", "-p", "a man <|image|>", "--ref", "x.png", "-o", str(tmp_path / "x.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no shipped mini model" in err and "--model tiny" in err and "Traceback" not in err
    from facediffuser.evaluation.clip_score import ClipScorer

    with pytest.raises(ValueError, match="no shipped world CLIP"):
        ClipScorer.from_pretrained("mini")


def test_clip_model_mini_loads_the_shipped_world_clip_in_float32_with_the_projects_tokenizer(packaged_here, stand_in):
    from transformers import CLIPModel

    from facediffuser.evaluation.clip_score import ClipScorer

    folder = packaged_here / "world" / "clip"
    assert not (folder / "tokenizer.json").exists()  # the world's tokenizer is the project's: not stored twice
    scorer = ClipScorer.from_pretrained("mini")
    assert scorer.name == "mini" and next(scorer.model.parameters()).dtype == torch.float32
    original = CLIPModel.from_pretrained(stand_in[1] / "clip", dtype=torch.float32)
    texts = ["a man on a beach", "a woman in a desert at night"]
    # The same text features as the world's float32 CLIP, up to float16 storage of the weights (1e-2 would also
    # pass a model that rounds more; a wrong tokenizer or a missing layer moves them by order 1).
    expected = ClipScorer(original, scorer.tokenizer).text_features(texts)
    torch.testing.assert_close(scorer.text_features(texts), expected, rtol=0, atol=1e-2)


def test_examples_are_heldout_people_in_a_subject_folder(shipped, stand_in):
    from facediffuser.evaluation.benchmarks import load_subjects

    package, report = shipped
    world = stand_in[1]
    folder = package / "examples" / "mini"
    people = load_subjects(folder)
    record = json.loads((world / "world.json").read_text())
    heldout = {f"id{i:04d}" for i in record["split"]["heldout"]}
    assert [p.name for p in people] == sorted(report.people) and len(people) == 6
    assert {p.name for p in people} <= heldout
    assert {p.class_noun for p in people} == {"man", "woman"}
    for person in people:
        assert len(person.photos) == 3
        for photo in person.photos:
            source = world / "references" / person.name / photo.path.name
            assert photo.path.read_bytes() == source.read_bytes()
    readme = (folder / "README.md").read_text()
    assert "held-out" in readme and all(f"`{name}`" in readme for name in report.people)
    # Deterministic: the same world gives the same people.
    assert [S.person_name(p) for p in S.choose_people(world, 6)] == report.people


def test_an_unfinished_build_is_refused_and_nothing_is_written(stand_in, tmp_path):
    build, world = stand_in
    unfinished = tmp_path / "build"
    (unfinished / "sdm").mkdir(parents=True)
    (unfinished / "sdm" / "train").symlink_to(build / "sdm" / "train")  # the pipeline, but no stage marker
    package = tmp_path / "package"
    with pytest.raises(ValueError, match="not a finished mini build.*stages/sdm.json"):
        S.ship(S.ShipConfig(build=unfinished, world=world, package_dir=package))
    with pytest.raises(ValueError, match="not a finished mini build"):
        S.ship(S.ShipConfig(build=tmp_path / "nothing", world=world, package_dir=package))
    assert not package.exists()


@pytest.mark.slow
def test_a_pipeline_over_budget_is_refused_naming_the_biggest_parts_and_the_old_one_stays(stand_in, shipped, capsys):
    build, world = stand_in
    package, report = shipped
    before = {p: p.stat().st_mtime_ns for p in package.rglob("*") if p.is_file()}
    limit = report.pipeline_total / S.MIB / 2
    argv = ["mini", "ship", "--build", str(build), "--world", str(world), "--package-dir", str(package)]
    assert main([*argv, "--max-mib", f"{limit:.4f}"]) == 2
    err = capsys.readouterr().err
    biggest = max(report.pipeline_sizes, key=report.pipeline_sizes.get)
    assert "over the" in err and "nothing was shipped" in err and f"Biggest: {biggest}" in err
    assert {p: p.stat().st_mtime_ns for p in package.rglob("*") if p.is_file()} == before
    assert not [p for p in package.rglob(".*") if p.name.startswith(".pipeline.")]  # no half folder left behind


@pytest.mark.slow
def test_shipping_again_replaces_the_folders_as_a_whole(stand_in, tmp_path):
    build, world = stand_in
    package = tmp_path / "package"
    first = S.ship(S.ShipConfig(build=build, world=world, package_dir=package, people=3))
    gone = package / "examples" / "mini" / first.people[2]  # written by the first ship, not by the second
    assert gone.is_dir()
    assert FaceDiffuserPipeline.load_config(package / "mini" / "pipeline")["subject_guidance_scale"] is None
    assert FaceDiffuserPipeline.load_config(package / "mini" / "pipeline")["num_inference_steps"] is None
    report = S.ship(
        S.ShipConfig(
            build=build,
            world=world,
            package_dir=package,
            people=2,
            subject_guidance_scale=2,
            scheduler="unipc",
            steps=9,
        )
    )
    assert not gone.exists() and (package / "mini" / "pipeline" / "model_index.json").is_file()
    # the shipped pipeline draws with the given SDM guidance scale, scheduler and steps when a call gives none
    shipped = FaceDiffuserPipeline.load_config(package / "mini" / "pipeline")
    assert shipped["subject_guidance_scale"] == 2 and shipped["num_inference_steps"] == 9
    scheduler = json.loads((package / "mini" / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "UniPCMultistepScheduler" and scheduler["timestep_spacing"] == "leading"
    assert sorted(p.name for p in package.iterdir()) == [".facediffuser.json", "examples", "mini", "world"]
    assert sorted(p.name for p in (package / "mini").iterdir()) == ["pipeline", "stages"]  # no .new / .old left
    assert [p.name for p in (package / "mini" / "stages").iterdir()] == ["sdm.json"]  # the build's stage markers
    assert len(report.people) == 2
    listed = json.loads((package / ".facediffuser.json").read_text())
    on_disk = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())
    assert listed["command"] == "mini ship" and sorted(listed["files"]) == [f for f in on_disk if f[0] != "."]


def test_a_bad_subject_guidance_scale_is_refused_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match="subject_guidance_scale.*non-negative"):
        S.ShipConfig(build=tmp_path / "none", world=tmp_path / "none", subject_guidance_scale=-1.0)


def test_the_benchmarks_people_ship_with_their_references(shipped, stand_in):
    """`evaluate --benchmark mini` runs offline on the people it would choose from the world's references."""
    from facediffuser.evaluation.benchmarks import load_subjects
    from facediffuser.lab.world.benchmark import benchmark_people

    _, report = shipped
    package = report.folders["references"]
    _, world = stand_in
    chosen = benchmark_people(load_subjects(world / "references"))
    assert sorted(p.name for p in load_subjects(package)) == [p.name for p in chosen]
    for person in chosen:
        for photo in person.photos:
            assert (package / person.name / photo.path.name).read_bytes() == photo.path.read_bytes()


@pytest.mark.slow
def test_a_pruning_that_changes_a_world_text_is_refused_and_the_old_pipeline_stays(stand_in, shipped, monkeypatch):
    """The exactness check of the pruned text tower (mini/vocab.py) runs inside the ship, on what was written."""
    from facediffuser.io import vocab_pruning as V

    build, world = stand_in
    package, _ = shipped
    before = {p: p.stat().st_mtime_ns for p in package.rglob("*") if p.is_file()}
    kept_vocabulary = V.kept_vocabulary

    def without_a_merge(tokenizer, texts):  # drops the last merge of "sweater"'s path: it splits differently
        tokens, merges = kept_vocabulary(tokenizer, texts)
        return [t for t in tokens if t != "sweater</w>"], [m for m in merges if "".join(m) != "sweater</w>"]

    monkeypatch.setattr(V, "kept_vocabulary", without_a_merge)
    with pytest.raises(V.PruningError, match="sweater"):
        S.ship(S.ShipConfig(build=build, world=world, package_dir=package, people=6))
    assert {p: p.stat().st_mtime_ns for p in package.rglob("*") if p.is_file()} == before


def test_stage_markers_of_stages_taken_from_the_package_are_kept(tmp_path):
    """A build continued ``--from sdm`` has only the SDM's marker; the shipped VAE and TDM markers it was built on
    stay in the package (``--from sdm`` reads them), and shipping into a package without them is refused."""
    build, shipped, new = tmp_path / "build", tmp_path / "shipped", tmp_path / "new"
    for folder in (build / "stages", shipped, new):
        folder.mkdir(parents=True)
    record = {"settings": {"from_package": {"stages": ["vae", "tdm"], "sha256": {}}}, "seconds": 3.0}
    (build / "stages" / "sdm.json").write_text(json.dumps(record))
    for stage in ("vae", "tdm", "sdm"):
        (shipped / f"{stage}.json").write_text(json.dumps({"settings": {"stage": stage}, "seconds": 1.0}))
    S.write_stages(build, new, shipped)
    assert sorted(p.name for p in new.iterdir()) == ["sdm.json", "tdm.json", "vae.json"]
    assert json.loads((new / "sdm.json").read_text()) == record  # the build's own, not the old shipped one
    assert json.loads((new / "tdm.json").read_text())["settings"] == {"stage": "tdm"}
    (shipped / "tdm.json").unlink()
    with pytest.raises(ValueError, match="'tdm' stage shipped in the package"):
        S.write_stages(build, new, shipped)


def _package_state(package: Path) -> dict[str, bytes]:
    return {p.relative_to(package).as_posix(): p.read_bytes() for p in sorted(package.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_late_refusal_or_a_ctrl_c_leaves_the_old_package_whole(stand_in, tmp_path, monkeypatch):
    """Every folder is built beside its place and swapped in only once all are complete: asking for more example
    people than the world has, or a Ctrl-C while the examples are written (after the pipeline, CLIP and faces), leaves
    every old folder as it was and nothing half-written beside them."""
    build, world = stand_in
    package = tmp_path / "package"
    S.ship(S.ShipConfig(build=build, world=world, package_dir=package, people=2))
    before = _package_state(package)
    entries = sorted(p.relative_to(package).as_posix() for p in package.rglob("*"))
    with pytest.raises(ValueError, match="8 held-out people with references; 1000 were asked for"):
        S.ship(S.ShipConfig(build=build, world=world, package_dir=package, people=1000, subject_guidance_scale=2))
    assert _package_state(package) == before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from facediffuser.lab.world import package as world_package

    monkeypatch.setattr(world_package, "write_examples", interrupted)
    try:  # (not pytest.raises: pytest takes a KeyboardInterrupt for the user's own)
        S.ship(S.ShipConfig(build=build, world=world, package_dir=package, people=3, subject_guidance_scale=2))
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was swallowed")
    assert _package_state(package) == before
    assert sorted(p.relative_to(package).as_posix() for p in package.rglob("*")) == entries  # no .new/.old left


@pytest.mark.slow
def test_user_files_in_the_shipped_folders_are_refused_and_kept(stand_in, tmp_path):
    build, world = stand_in
    package = tmp_path / "package"
    mine = ["examples/mini/my-photo.png", "mini/pipeline/my-config.json", "world/clip/keep.txt"]
    mine += ["world/references/mum/photo.jpg", "mini/stages/notes.txt"]
    for relative in mine:
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_bytes(relative.encode())
    before = _package_state(package)
    with pytest.raises(ValueError, match=r"did not write .*\(examples/mini/my-photo.png, mini/.*, and 2 more\)"):
        S.ship(S.ShipConfig(build=build, world=world, package_dir=package, people=2))
    assert _package_state(package) == before
    S.ship(S.ShipConfig(build=build, world=world, package_dir=tmp_path / "new", people=2))
    (tmp_path / "new" / "world" / "clip" / "keep.txt").write_text("put there after the ship")
    with pytest.raises(ValueError, match=r"world/clip/keep.txt"):  # a user's file added to a shipped folder
        S.ship(S.ShipConfig(build=build, world=world, package_dir=tmp_path / "new", people=2))
    assert (tmp_path / "new" / "world" / "clip" / "keep.txt").read_text() == "put there after the ship"


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_max_mib_must_be_a_positive_finite_size(tmp_path, capsys, value):
    argv = ["mini", "ship", "--build", str(tmp_path), "--world", str(tmp_path), "--max-mib", value]
    assert main(argv) == 2
    assert f"--max-mib must be a positive number of MiB, got {float(value)}" in capsys.readouterr().err
