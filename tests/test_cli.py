"""The command line end to end on the tiny pipeline."""

import json
import shutil
from importlib import resources

import pytest
from PIL import Image

from facediffuser.cli.main import build_parser, main
from facediffuser.loading import check_pipeline_folder

ASTRONAUT = str(resources.files("facediffuser") / "data" / "examples" / "astronaut.jpg")


def test_generate_writes_png_with_parameters_and_masks(tmp_path):
    out = tmp_path / "result.png"
    code = main(
        [
            "generate",
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
    assert params["alpha"] == 0.2 and params["ref"] == [ASTRONAUT] and params["scheduler"] == "DDIMScheduler"
    masks = Image.open(tmp_path / "result-masks.png")
    assert masks.width > masks.height  # one column per step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result-masks.png", "result.png"]


def test_generate_is_reproducible_and_seeded(tmp_path):
    argv = ["generate", "-p", "a man <|image|>", "--ref", ASTRONAUT, "--steps", "2"]
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


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-p", "a man <|image|> and a woman <|image|>", "--ref", ASTRONAUT], "2 placeholder"),
        (["-p", "a man <|image|>", "--ref", "/no/such/photo.jpg"], "not found"),
        (["-p", "a man <|image|>", "--ref", ASTRONAUT, "--alpha", "0.9"], "must not exceed"),
        (["-p", "a man <|image|>", "--ref", ASTRONAUT, "--steps", "0"], "at least 1"),
        (["-p", "a man <|image|>", "--ref", ASTRONAUT, "--height", "100"], "multiple of 8"),
        (["-p", "a man <|image|>", "--ref", ASTRONAUT, "--model", "/no/such/folder/x"], "Model folder not found"),
        (["-p", "a man <|image|>", "--ref", ASTRONAUT, "--device", "cpu", "--offload", "model"], "needs --device"),
    ],
)
def test_generate_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, extra, message):
    code = main(["generate", *extra, "-o", str(tmp_path / "x.png")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_reference_without_a_face_is_refused(tmp_path, capsys):
    pytest.importorskip("dlib")
    Image.new("RGB", (128, 128), (120, 130, 140)).save(tmp_path / "wall.png")
    argv = ["generate", "-p", "a man <|image|>", "--ref", str(tmp_path / "wall.png"), "--steps", "1"]
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
        ["generate", "-p", "x", "--guidance-scale", "3", "--subject-guidance-base", "null"]
    )
    assert args.guidance_scale == 3.0 and args.subject_guidance_base == "null"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "-p", "x", "--subject-guidance-base", "bogus"])
