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


# ------------------------------------------------------------------ the person regions picture (--save-masks)
def _region_trace(regions, assignment):
    import torch

    from facediffuser.fusion import Stage
    from facediffuser.step import FusionTrace

    b, _, h, w = regions.shape
    maps = torch.zeros(2, b, h, w)
    return FusionTrace([Stage.TEXT, Stage.FUSION], torch.tensor([1, 0]), maps, maps, maps, regions, assignment)


def test_the_regions_picture_colours_each_person_and_the_assignment_with_sharp_pixels():
    import numpy as np
    import torch

    from facediffuser.io.visualize import NO_ONE_COLOUR, PERSON_COLOURS, region_description, region_picture

    # a 4 x 4 latent: person 1 on the left half, person 2 on the right top, no one on the right bottom
    regions = torch.zeros(1, 2, 4, 4)
    regions[0, 0, :, :2] = 1.0
    regions[0, 1, :2, 2:] = 1.0
    regions = regions / regions.flatten(2).sum(-1)[..., None, None]
    assignment = torch.full((1, 4, 4), -1)
    assignment[0, :, :2], assignment[0, :2, 2:] = 0, 1
    image = Image.new("RGB", (8, 8), (10, 200, 10))
    trace = _region_trace(regions, assignment)
    picture = np.asarray(region_picture(trace, 0, image, ["man", "woman"], cell=32))
    # tiles of 32 px (+4 px gaps) under a 6 px band: image, person 1, person 2, assigned, on the image
    assert picture.shape[1] == 5 * 36 - 4
    y_top, y_bottom = 6 + 4, 6 + 28  # rows of latent row 0 and latent row 3
    tile = lambda k: 36 * k  # noqa: E731
    assert tuple(picture[y_top, tile(0) + 16]) == (10, 200, 10)  # the image, enlarged
    assert tuple(picture[y_top, tile(1) + 4]) == PERSON_COLOURS[0] and tuple(picture[y_top, tile(1) + 28]) == (255,) * 3
    assert tuple(picture[y_top, tile(2) + 28]) == PERSON_COLOURS[1] and tuple(picture[y_top, tile(2) + 4]) == (255,) * 3
    assert tuple(picture[y_top, tile(3) + 4]) == PERSON_COLOURS[0]
    assert tuple(picture[y_top, tile(3) + 28]) == PERSON_COLOURS[1]
    assert tuple(picture[y_bottom, tile(3) + 28]) == NO_ONE_COLOUR
    assert tuple(picture[y_bottom, tile(4) + 28]) == (10, 200, 10)  # no one: the image untouched
    # NEAREST: a latent position is an 8 x 8 square of one colour, no blend at its edges
    assert len({tuple(p) for p in picture[6 + 1 : 6 + 31, tile(3) + 1 : tile(3) + 31].reshape(-1, 3)}) == 3
    text = region_description(trace, 0, "x.png", ["man", "woman"])
    assert "person 1 (man) in red, 50% of the positions; person 2 (woman) in blue, 25%" in text
    assert text.endswith("no one 25%.")


def test_the_regions_picture_is_drawn_for_two_people_or_an_option_with_a_stage_one():
    from facediffuser.io.visualize import person_nouns, regions_shown

    plain = SamplingSettings()
    assert not regions_shown(1, plain)  # the README's command: no new file
    assert regions_shown(2, plain) and regions_shown(1, plain.replace(region_saliency=True))
    assert not regions_shown(2, plain.replace(alpha=0.0))  # no stage I, no regions
    assert not regions_shown(2, plain.replace(num_inference_steps=2))  # floor(0.3 * 2) = 0 stage-I steps
    assert not regions_shown(0, plain.replace(region_attention=True))
    assert person_nouns("a man <|image|> and a woman <|image|> at sea", "<|image|>") == ["man", "woman"]
