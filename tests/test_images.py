"""Reading reference photos of every kind, and refusing the unreadable."""

import numpy as np
import pytest
import torch
from PIL import Image

from facediffuser import images
from facediffuser.images import clip_preprocess, load_image, pil_to_tensor


def test_rgba_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (0, 0, 255)


def test_grayscale_and_16_bit(tmp_path):
    Image.new("L", (3, 3), 128).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").getpixel((0, 0)) == (128, 128, 128)
    arr = np.full((3, 3), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    Image.fromarray(arr).save(tmp_path / "d.png")
    img = load_image(tmp_path / "d.png")
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (0, 0, 0)


def test_large_photos_are_shrunk_and_absurd_ones_refused(tmp_path, monkeypatch):
    Image.new("RGB", (3000, 1000)).save(tmp_path / "big.png")
    assert max(load_image(tmp_path / "big.png").size) == images.MAX_REFERENCE_SIDE
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match="refusing to decode"):
        load_image(tmp_path / "big.png")


def test_truncated_file_is_refused(tmp_path):
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(tmp_path / "t.jpg")


def test_clip_preprocess_matches_the_formula():
    x = torch.rand(2, 3, 50, 30)
    out = clip_preprocess(x, 16)
    assert out.shape == (2, 3, 16, 16)
    # A constant image stays constant through the resize; then (v - mean) / std per channel.
    const = torch.full((1, 3, 7, 9), 0.5)
    got = clip_preprocess(const, 4)[0, :, 0, 0]
    expected = (0.5 - torch.tensor(images.CLIP_MEAN)) / torch.tensor(images.CLIP_STD)
    torch.testing.assert_close(got, expected)


def test_pil_to_tensor_range():
    t = pil_to_tensor(Image.new("RGB", (2, 1), (255, 0, 51)))
    assert (
        t.shape == (3, 1, 2) and t[0].eq(1).all() and t[1].eq(0).all() and torch.isclose(t[2, 0, 0], torch.tensor(0.2))
    )
