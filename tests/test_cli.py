"""The command line end to end on the tiny pipeline."""

import json
import os
import shutil
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facediffuser
from facediffuser.cli.main import build_parser, main
from facediffuser.io import loading
from facediffuser.io.loading import check_pipeline_folder

ASTRONAUT = str(resources.files("facediffuser") / "data" / "examples" / "astronaut.jpg")


def test_generate_writes_png_with_parameters_and_masks(tmp_path):
    out = tmp_path / "result.png"
    code = main(
        [
            "generate",
            "--model",
            "tiny",
            "-p",
            "a woman <|image|> on the moon",
            "--ref",
            ASTRONAUT,
            "--steps",
            "5",
            "--alpha",
            "0.2",
            "--beta",
            "0.8",
            "--height",
            "64",
            "--width",
            "48",
            "--seed",
            "7",
            "--save-masks",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    image = Image.open(out)
    assert image.size == (48, 64)
    params = json.loads(image.text["parameters"])
    assert params["prompt"] == "a woman <|image|> on the moon" and params["seed"] == 7
    assert params["alpha"] == 0.2 and params["num_inference_steps"] == 5
    # What was used, in the form the flags take back: not "DDIMScheduler", "auto" or null.
    assert params["scheduler"] == "ddim" and params["device"] == "cpu" and params["dtype"] == "float32"
    assert params["height"] == 64 and params["width"] == 48
    # The reference by file name and pixel hash only: a shared image must not tell where its author keeps photos.
    assert params["ref"] == ["astronaut.jpg"] and len(params["ref_sha256"][0]) == 16
    assert str(Path(ASTRONAUT).parent) not in image.text["parameters"]
    masks = Image.open(tmp_path / "result-masks.png")
    assert masks.width > masks.height  # one column per step
    assert json.loads(masks.text["parameters"]) == params and "5 steps" in masks.text["Description"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result-masks.png", "result.png"]


TWO = ["--model", "tiny", "-p", "a man <|image|> and a woman <|image|>", "--ref", ASTRONAUT, "--ref", ASTRONAUT]


def test_save_masks_draws_the_person_regions_of_two_people(tmp_path):
    out = tmp_path / "two.png"
    assert (
        main(["generate", *TWO, "--steps", "4", "--height", "32", "--width", "32", "--save-masks", "-o", str(out)]) == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two-masks.png", "two-regions.png", "two.png"]
    regions = Image.open(tmp_path / "two-regions.png")
    params = json.loads(Image.open(out).text["parameters"])
    assert json.loads(regions.text["parameters"]) == params
    description = regions.text["Description"]
    assert description.startswith("Person regions of two.png") and "person 2 (woman) in blue" in description
    assert regions.width > 4 * regions.height  # a row of tiles: image, 2 people, assignment, on the image


def test_one_person_with_a_region_option_gets_the_regions_picture_too(tmp_path):
    out = tmp_path / "one.png"
    argv = ["generate", *ONE, "--steps", "4", "--height", "32", "--width", "32", "--save-masks", "-o", str(out)]
    assert main([*argv, "--region-saliency"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-masks.png", "one-regions.png", "one.png"]
    assert "person 1 (man) in red" in Image.open(tmp_path / "one-regions.png").text["Description"]


def test_an_existing_regions_picture_is_refused_before_any_model_loads(tmp_path, capsys, no_model_load):
    (tmp_path / "two-regions.png").write_bytes(b"the user's own file")
    assert main(["generate", *TWO, "--save-masks", "-o", str(tmp_path / "two.png")]) == 2
    err = capsys.readouterr().err
    assert "two-regions.png already exists: choose another output name, or pass --overwrite" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two-regions.png"]
    assert (tmp_path / "two-regions.png").read_bytes() == b"the user's own file"


@pytest.mark.slow
def test_generate_is_reproducible_and_seeded(tmp_path):
    argv = ["generate", "--model", "tiny", "-p", "a man <|image|>", "--ref", ASTRONAUT, "--steps", "2"]
    main([*argv, "-o", str(tmp_path / "a.png")])
    main([*argv, "-o", str(tmp_path / "b.png")])
    main([*argv, "--seed", "1", "-o", str(tmp_path / "c.png")])
    a, b, c = (Image.open(tmp_path / f"{n}.png").tobytes() for n in "abc")
    assert a == b and a != c


def test_a_folder_ref_and_several_images(tmp_path):
    person = tmp_path / "person"
    person.mkdir()
    shutil.copy(ASTRONAUT, person / "1.jpg")
    Image.open(ASTRONAUT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(person / "2.png")
    out = tmp_path / "img.png"
    assert (
        main(
            [
                "generate",
                "--model",
                "tiny",
                "-p",
                "a woman <|image|>",
                "--ref",
                str(person),
                "--steps",
                "2",
                "--num-images",
                "2",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert (tmp_path / "img-0.png").is_file() and (tmp_path / "img-1.png").is_file()


@pytest.fixture
def no_model_load(monkeypatch):
    """Makes loading a model fail loudly: a check that must come before the model load cannot pass by loading it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


ONE = ["--model", "tiny", "-p", "a man <|image|>", "--ref", ASTRONAUT]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-p", "a man <|image|> and a woman <|image|>", "--ref", ASTRONAUT], "2 placeholder"),
        (["-p", "a man <|image|><|image|>", "--ref", ASTRONAUT, "--ref", ASTRONAUT], "no word between them"),
        (["-p", "a man <|image|> <|image|>", "--ref", ASTRONAUT, "--ref", ASTRONAUT], "no word between them"),
        (["-p", "a man <|image|>", "--ref", "/no/such/photo.jpg"], "not found"),
        ([*ONE, "--alpha", "0.9"], "--alpha (0.9) must not exceed --beta"),
        ([*ONE, "--steps", "0"], "positive integer"),
        ([*ONE, "--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
        ([*ONE, "--guidance-scale", "inf"], "--guidance-scale must be a finite number"),
        ([*ONE, "--subject-guidance-scale", "-1"], "--subject-guidance-scale must be a finite number"),
        ([*ONE, "--height", "100"], "--height must be a positive multiple of 8"),
        ([*ONE, "--model", "/no/such/folder/x"], "Model folder not found"),
        ([*ONE, "--device", "cpu", "--offload", "model"], "needs --device"),
        ([*ONE, "--device", "gpu"], "Unknown device 'gpu': use auto, cpu, cuda"),
        ([*ONE, "--dtype", "float64"], "Unknown dtype"),
    ],
)
def test_generate_bad_input_is_a_clear_error_before_any_model_loads(tmp_path, capsys, no_model_load, extra, message):
    code = main(["generate", "--model", "tiny", *extra, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("facediffuser generate: error:")
    assert not list(tmp_path.iterdir())


def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, no_model_load):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["generate", *ONE, "--device", "cuda", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "needs CUDA" in err and "Use the device cpu" in err and "Traceback" not in err


def test_a_cuda_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"There is no device 'cuda:3': this machine has 1 CUDA device\(s\)"):
        loading.resolve_device("cuda:3")
    assert loading.resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("case", ["folder named x.png", "below a regular file", "unwritable place", "exists"])
def test_bad_out_is_refused_before_any_model_loads(tmp_path, capsys, no_model_load, case):
    if case == "folder named x.png":
        (tmp_path / "x.png").mkdir()
        out, message = tmp_path / "x.png", "is a folder"
    elif case == "below a regular file":
        (tmp_path / "notes.txt").write_text("mine")
        out, message = tmp_path / "notes.txt" / "x.png", "is a file, not a folder"
    elif case == "unwritable place":
        out, message = Path("/proc/facediffuser-test/x.png"), "does not accept new files"
    else:
        (tmp_path / "x.png").write_bytes(b"the user's own file")
        out, message = tmp_path / "x.png", "already exists: choose another output name, or pass --overwrite"
    assert main(["generate", *ONE, "--steps", "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if case == "exists":
        assert (tmp_path / "x.png").read_bytes() == b"the user's own file"


def test_an_unwritable_folder_is_refused(tmp_path, capsys, no_model_load):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere; /proc stands for an unwritable place in the test above")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["generate", *ONE, "-o", str(locked / "x.png")]) == 2
    assert "does not accept new files" in capsys.readouterr().err


def test_a_missing_relative_model_path_says_what_was_tried(tmp_path, capsys, monkeypatch):
    # The README's own example, run where the folder does not exist: it looks like a hub id, and may be one.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", *ONE, "--steps", "1", "--model", "models/face-diffuser", "-o", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "'models/face-diffuser' is not a folder here" in err and "tried as a model-hub id" in err
    assert str(tmp_path / "models" / "face-diffuser") in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_overwrite_and_the_umask(tmp_path, capsys):
    out = tmp_path / "x.png"
    argv = ["generate", *ONE, "--steps", "1", "--height", "32", "--width", "32", "-o", str(out)]
    old = os.umask(0o022)
    try:
        assert main(argv) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644  # was 0o600 whatever the umask
        first = out.read_bytes()
        assert main([*argv, "--seed", "1"]) == 2 and out.read_bytes() == first  # no silent overwrite
        os.umask(0o077)
        assert main([*argv, "--seed", "1", "--overwrite"]) == 0 and out.read_bytes() != first
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temporary file left behind


@pytest.mark.slow
def test_an_image_reruns_from_its_recorded_parameters(tmp_path):
    first = tmp_path / "first.png"
    argv = [
        "generate",
        "--model",
        "tiny",
        "-p",
        "a woman <|image|> on the moon",
        "--ref",
        ASTRONAUT,
        "--steps",
        "3",
        "--alpha",
        "0.34",
        "--guidance-scale",
        "3.5",
        "--subject-guidance-base",
        "null",
        "--scheduler",
        "ddim",
        "--height",
        "40",
        "--width",
        "56",
        "--seed",
        "11",
    ]
    assert main([*argv, "-o", str(first)]) == 0
    again = tmp_path / "again.png"
    assert main(["generate", "--parameters-from", str(first), "--ref", ASTRONAUT, "-o", str(again)]) == 0
    a, b = Image.open(first), Image.open(again)
    assert json.loads(a.text["parameters"]) == json.loads(b.text["parameters"])
    # Same settings, same process and machine: the same pixels (1 grey level allowed for a different kernel choice).
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    assert a.size == (56, 40) and diff.max() <= 1
    # Flags given win over the recorded ones.
    other = tmp_path / "other.png"
    rerun = ["generate", "--parameters-from", str(first), "--ref", ASTRONAUT]
    assert main([*rerun, "--seed", "12", "-o", str(other)]) == 0
    assert json.loads(Image.open(other).text["parameters"])["seed"] == 12


def test_a_rerun_without_references_says_to_give_them(tmp_path, capsys):
    first = tmp_path / "first.png"
    assert main(["generate", *ONE, "--steps", "1", "--height", "32", "--width", "32", "-o", str(first)]) == 0
    assert main(["generate", "--parameters-from", str(first), "-o", str(tmp_path / "b.png")]) == 2
    assert "give them again with --ref" in capsys.readouterr().err


def test_float16_on_the_cpu_is_said_once(tmp_path, capfd, caplog):
    argv = ["generate", *ONE, "--steps", "1", "--height", "32", "--width", "32", "--dtype", "float16"]
    assert main([*argv, "-o", str(tmp_path / "x.png")]) == 0
    err = capfd.readouterr().err
    assert "cannot run with `cpu` device" not in err and "should be kept in float32: []" not in err
    assert (err + caplog.text).count("float16 on the CPU") == 1


@pytest.mark.slow
def test_importing_the_package_prints_no_torchvision_notice():
    done = subprocess.run(
        [sys.executable, "-c", "import facediffuser.pipeline"], capture_output=True, text=True, env=_env(), check=True
    )
    assert "torchvision" not in done.stderr


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(facediffuser.__file__).parents[1])}


@pytest.mark.slow
def test_generate_help_imports_no_training_or_evaluation_module():
    # Importing every sub-command would import the trainer and the evaluation harness for a --help.
    script = (
        "import sys\n"
        "from facediffuser.cli.main import main\n"
        "try:\n    main(['generate', '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('facediffuser')))\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('diffusers.pipelines.stable_diffusion_xl')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), check=True)
    modules = done.stdout.split()
    assert "facediffuser.cli.generate" in modules
    heavy = [m for m in modules if m.startswith(("facediffuser.training", "facediffuser.evaluation"))]
    assert heavy == [] and "facediffuser.cli.train" not in modules and "facediffuser.cli.evaluate" not in modules
    # nor any SDXL module: the SDXL pipeline is imported when a model folder names it
    assert [m for m in modules if "_xl" in m] == [] and "facediffuser.pipeline" in modules


@pytest.mark.parametrize("command", ["generate", "convert", "train", "evaluate"])
def test_every_sub_command_still_has_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0 and f"usage: facediffuser {command}" in capsys.readouterr().out


def test_a_reference_without_a_face_is_refused(tmp_path, capsys):
    pytest.importorskip("dlib")
    Image.new("RGB", (128, 128), (120, 130, 140)).save(tmp_path / "wall.png")
    argv = ["generate", "--model", "tiny", "-p", "a man <|image|>", "--ref", str(tmp_path / "wall.png"), "--steps", "1"]
    assert main([*argv, "-o", str(tmp_path / "x.png")]) == 2
    assert "No face was found in --ref" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main([*argv, "--no-face-check", "-o", str(tmp_path / "y.png")]) == 0


def test_model_folder_with_missing_parts(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "subject_unet")
    with pytest.raises(ValueError, match="missing: subject_unet/"):
        check_pipeline_folder(tmp_path / "model")
    with pytest.raises(ValueError, match="no model_index.json"):
        check_pipeline_folder(tmp_path)


def test_flags_come_from_the_config_dataclass():
    args = build_parser().parse_args(
        ["generate", "--model", "tiny", "-p", "x", "--guidance-scale", "3", "--subject-guidance-base", "null"]
    )
    assert args.guidance_scale == 3.0 and args.subject_guidance_base == "null"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--model", "tiny", "-p", "x", "--subject-guidance-base", "bogus"])


def test_sampling_flags_come_from_sampling_settings():
    from facediffuser.cli.generate import GenerateConfig
    from facediffuser.io.configuration import build_config, config_to_dict
    from facediffuser.settings import SamplingSettings

    parser = build_parser("generate")
    config = build_config(GenerateConfig, parser.parse_args(["generate", "-p", "x"]))
    assert config.sampling == SamplingSettings()  # the defaults are SamplingSettings' own, not restated
    config = build_config(GenerateConfig, parser.parse_args(["generate", "-p", "x", "--steps", "7", "--beta", "0.7"]))
    assert config.sampling == SamplingSettings(num_inference_steps=7, beta=0.7)
    flat = config_to_dict(config)
    assert flat["num_inference_steps"] == 7 and "sampling" not in flat  # flat, as the flags are
    rebuilt = build_config(GenerateConfig, base=flat)  # what a PNG records rebuilds the same config
    assert rebuilt.sampling == config.sampling and rebuilt.prompt == "x"


def _scene_models(root: Path) -> dict[str, tuple[Path, str]]:
    """Broken scene models, each with the words generate must answer with."""
    pickle_named_safetensors = root / "pickle.safetensors"
    torch.save({"w": torch.zeros(1)}, pickle_named_safetensors)
    empty = root / "empty.safetensors"
    empty.write_bytes(b"")
    no_config = root / "no-config"
    no_config.mkdir()
    no_weights = root / "no-weights" / "unet"
    no_weights.mkdir(parents=True)
    (no_weights / "config.json").write_text("{}")
    return {
        "missing": (root / "nope.safetensors", "Scene model not found"),
        "pickle named .safetensors": (pickle_named_safetensors, "named .safetensors. Rename it to .bin"),
        "empty file": (empty, "is empty (0 bytes)"),
        "a .ckpt": (root / "nope.ckpt", "Scene model not found"),
        "folder without a config": (no_config, "holds neither a unet/ folder nor a UNet config.json"),
        "unet/ without weights": (no_weights.parent, "holds no weights"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "pickle named .safetensors", "empty file", "folder without a config", "unet/ without weights"],
)
def test_a_broken_scene_model_is_refused_before_any_model_loads(tmp_path, capsys, no_model_load, case):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    path, words = _scene_models(inputs)[case]
    code = main(["generate", *ONE, "--scene-model", str(path), "-o", str(out / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_scene_model_of_another_shape_is_one_sentence(tmp_path, capsys):
    from safetensors.torch import save_file

    from facediffuser.io.tiny import TinyConfig, tiny_unet

    # A UNet whose blocks are twice as wide: every file check passes, and only loading it can tell.
    other = tiny_unet(TinyConfig(unet_channels=(16, 16, 32, 32)))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "wide.safetensors")
    code = main(["generate", *ONE, "--scene-model", str(tmp_path / "wide.safetensors"), "--steps", "1",
                 "-o", str(tmp_path / "x.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not fit an SD1.x UNet" in err and "size mismatch" in err and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()


def test_a_system_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    import errno

    from facediffuser.io import outputs

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.png"))

    monkeypatch.setattr(outputs, "atomic_write", disk_full)
    code = main(["generate", *ONE, "--steps", "1", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()


def _recorded_png(path: Path, **parameters) -> Path:
    """A PNG whose ``parameters`` chunk records ``parameters`` over a valid tiny-model record."""
    from PIL.PngImagePlugin import PngInfo

    record = {"prompt": "a man <|image|>", "model": "tiny", "num_inference_steps": 1, "height": 32, "width": 32}
    info = PngInfo()
    info.add_text("parameters", json.dumps({**record, **parameters}))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a_png_is_obeyed_only_in_what_generate_records(tmp_path, monkeypatch, caplog):
    from facediffuser.cli import generate as generate_module

    taken = []
    monkeypatch.setattr(generate_module, "generate", lambda config, recorded: taken.append(config) or [])
    png = _recorded_png(tmp_path / "a.png", face_check=False, compile=True, offload="model", seed=7, shiny=1)
    assert main(["generate", "--parameters-from", str(png), "--ref", ASTRONAUT]) == 0
    (config,) = taken
    assert config.seed == 7 and config.model == "tiny"  # what generate records is taken
    assert config.face_check is True and config.compile is False and config.offload.value == "none"
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and all(f"`{k}`" in warning[0] for k in ("compile", "face_check", "offload", "shiny"))


@pytest.mark.parametrize(
    "recorded,words",
    [
        ({"height": 1000000}, "--height must be at most 4096 pixels, got 1000000 (read from a.png; give --height"),
        ({"height": 1000000, "width": 32}, "--height must be at most 4096 pixels"),
        ({"num_images": 1000000}, "--num-images must be a whole number from 1 to 64, got 1000000 (read from a.png"),
        ({"guidance_scale": 1e308}, "--guidance-scale must be at most 3.403e+38, the largest float32 number"),
        ({"seed": 2**70}, "--seed must be a whole number from 0 to 2**64 - 1 (18446744073709551615), got 1180591"),
        ({"num_inference_steps": 10**8, "scheduler": "euler"}, "--steps (the number of denoising steps) must be at"),
        ({"height": "32"}, "In the parameters recorded in "),
        ({"seed": True}, "`seed` must be an integer, got True."),
        ({"subject_guidance_base": "eq2"}, "`subject_guidance_base` must be one of 'text', 'null', got 'eq2'."),
        (
            {"region_attention": "yes"},
            "In the parameters recorded in a.png, `region_attention` must be true or false, got 'yes'.",
        ),
        ({"region_saliency": 1}, "`region_saliency` must be true or false, got 1."),
    ],
)
def test_png_values_are_checked_as_their_flags_before_any_model_loads(
    tmp_path, monkeypatch, capsys, no_model_load, recorded, words
):
    monkeypatch.chdir(tmp_path)
    _recorded_png(tmp_path / "a.png", **recorded)
    code = main(["generate", "--parameters-from", "a.png", "--ref", ASTRONAUT, "-o", "out.png"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--height", "1000000"], "--height must be at most 4096 pixels, got 1000000."),
        (["--num-images", "1000000"], "--num-images must be a whole number from 1 to 64, got 1000000."),
        (["--num-images", "0"], "--num-images must be a whole number from 1 to 64, got 0."),
        (["--seed", str(2**70)], "--seed must be a whole number from 0 to 2**64 - 1"),
        (["--seed", "-1"], "--seed must be a whole number from 0 to 2**64 - 1"),
        (["--guidance-scale", "1e39"], "--guidance-scale must be at most 3.403e+38, the largest float32 number"),
        (["--subject-guidance-scale", "1e39"], "--subject-guidance-scale must be at most 3.403e+38"),
        (["--steps", "100000000", "--scheduler", "euler"], "--steps (the number of denoising steps) must be at most"),
        (["--smoothing-kernel-size", "1000000000"], "--smoothing-kernel-size must be at most 4096, the largest image"),
    ],
)
def test_flags_have_upper_limits_before_any_model_loads(tmp_path, capsys, no_model_load, flags, words):
    code = main(["generate", *ONE, *flags, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_the_largest_seed_is_taken(tmp_path):
    out = tmp_path / "x.png"
    assert main(["generate", *ONE, "--steps", "1", "--height", "32", "--width", "32", "--seed", str(2**64 - 1),
                 "-o", str(out)]) == 0  # fmt: skip
    assert json.loads(Image.open(out).text["parameters"])["seed"] == 2**64 - 1


def test_a_guidance_scale_that_overflows_is_refused_not_drawn_black(tmp_path, capsys):
    # 1e30 fits float32, so it cannot be refused up front; the latents overflow during sampling.
    code = main(["generate", *ONE, "--steps", "2", "--height", "32", "--width", "32", "--guidance-scale", "1e30",
                 "-o", str(tmp_path / "x.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "of 2 produced non-finite latents (NaN or inf)" in err and "lower the guidance scale" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "content,words",
    [
        (b"", "model_index.json is empty: it should hold JSON."),
        (b"[1]", "model_index.json is not a model index, a JSON object ({...}): it holds a list."),
        (b'{"placeholder": "\xe9"}', "model_index.json is not UTF-8 text (byte 0xe9 at offset 17): save it as UTF-8."),
        (b"\xef\xbb\xbf{}", "model_index.json starts with a byte-order mark, which diffusers cannot read"),
    ],
)
def test_a_broken_model_index_is_one_sentence_naming_it(tmp_path, capsys, no_model_load, content, words):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_bytes(content)
    code = main(["generate", *ONE, "--model", str(tmp_path / "model"), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
