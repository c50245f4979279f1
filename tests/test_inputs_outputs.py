"""The request checks and output writing shared by generate and the demo, called with plain values."""

import json
import os
import stat

import pytest
from PIL import Image

from facediffuser.io.inputs import check_prompt, check_request, reference_name
from facediffuser.io.outputs import (
    OutputExistsError,
    atomic_write,
    check_output_file,
    generation_parameters,
    parameters_text,
    photos_fingerprint,
    read_parameters,
    write_png,
)
from facediffuser.settings import SamplingSettings


class NoFaces:
    """A face detector that never finds a face (stands in for dlib on a photo of a wall)."""

    def count_faces(self, image):
        return 0


def test_check_request_takes_pil_images_and_names_them_without_cli_words(face_image):
    people = check_request("a man <|image|>", [face_image], face_check=False)
    assert len(people) == 1 and people[0][0].mode == "RGB"
    with pytest.raises(ValueError, match="No face was found in reference 1") as caught:
        check_request("a man <|image|>", [face_image], detector=NoFaces())
    assert "--" not in str(caught.value)  # no command-line flag in a message a web page shows
    with pytest.raises(ValueError, match="1 reference photo were given") as caught:
        check_prompt("a man <|image|> and a woman <|image|>", 1)
    assert "--" not in str(caught.value)


def test_reference_names_never_hold_a_folder(tmp_path):
    assert reference_name(tmp_path / "private" / "me.jpg", 0) == "me.jpg"
    assert reference_name(Image.new("RGB", (2, 2)), 1) == "reference 2"


def test_write_png_refuses_to_replace_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "er" / "x.png"
    write_png(Image.new("RGB", (4, 4), (1, 2, 3)), path, text={"parameters": parameters_text({"seed": 1})})
    assert read_parameters(path) == {"seed": 1}
    with pytest.raises(OutputExistsError):  # also a ValueError, as every input error
        write_png(Image.new("RGB", (4, 4)), path)
    assert Image.open(path).getpixel((0, 0)) == (1, 2, 3)
    write_png(Image.new("RGB", (4, 4)), path, overwrite=True)
    assert Image.open(path).getpixel((0, 0)) == (0, 0, 0)
    assert os.listdir(path.parent) == ["x.png"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def broken(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.bin", broken)
    assert os.listdir(tmp_path) == []


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_png(Image.new("RGB", (2, 2)), tmp_path / "x.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o640


def test_check_output_file_writes_nothing_it_keeps(tmp_path):
    check_output_file(tmp_path / "new" / "x.png")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="must name a .png file"):
        check_output_file(tmp_path / "x.jpg")


def test_generation_parameters_are_json_and_hash_pixels_not_paths():
    photo = Image.new("RGB", (3, 3), (9, 9, 9))
    params = generation_parameters(
        prompt="a man <|image|>",
        reference_names=["me.jpg"],
        people=[[photo]],
        settings=SamplingSettings(alpha=0.25),
        seed=3,
        height=64,
        width=64,
        scheduler="ddim",
    )
    assert json.loads(parameters_text(params)) == params
    assert params["alpha"] == 0.25 and params["subject_guidance_base"] == "text" and params["scheduler"] == "ddim"
    assert params["ref_sha256"] == [photos_fingerprint([photo.copy()])]
    assert photos_fingerprint([photo]) != photos_fingerprint([Image.new("RGB", (3, 3), (9, 9, 8))])
