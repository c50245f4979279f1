"""Reading reference photos of every kind, and refusing the unreadable."""

import struct
import zlib

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
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(ValueError, match="too large"):
        load_image(tmp_path / "big.png")


def png_header_only(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, followed by a few bytes of image data: what a small,
    highly compressed file looks like to a reader that has not decoded it yet."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    "width,height,bit_depth,colour_type",
    [(10000, 10000, 16, 0), (12000, 12000, 8, 0), (6000, 6000, 8, 2)],  # 16-bit gray, 8-bit gray, RGB
)
def test_a_small_file_of_huge_dimensions_is_refused_from_its_header(tmp_path, width, height, bit_depth, colour_type):
    # A 190 KB 16-bit 10000x10000 PNG would take 3.2 GB. The header alone must decide: this file's pixel data is
    # a stub, so an attempt to decode it would fail as "truncated" instead of "too large".
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(width, height, bit_depth, colour_type))
    with pytest.raises(ValueError, match="too large") as caught:
        load_image(path)
    assert "corrupt" not in str(caught.value) and f"{width}x{height}" in str(caught.value)


def test_decoded_memory_counts_bytes_per_pixel():
    limit = 1000 * 1000 * 2  # exactly a 1000x1000 16-bit image
    images.check_decoded_size("a", (1000, 1000), "I;16", limit=limit)
    images.check_decoded_size("a", (1000, 1000), "L", limit=limit)
    with pytest.raises(ValueError, match="too large"):
        images.check_decoded_size("a", (1000, 1000), "RGB", limit=limit)  # PIL keeps RGB at 4 bytes per pixel


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    # 4096x3072 RGB is 48 MB decoded at full scale; JPEG's draft mode decodes it at 1/2 (12 MB), within this limit.
    Image.new("RGB", (4096, 3072), (200, 100, 50)).save(tmp_path / "camera.jpg", quality=80)
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 16 * 2**20)
    img = load_image(tmp_path / "camera.jpg")
    assert img.size == (2048, 1536)
    with pytest.raises(ValueError, match="too large"):
        load_image(tmp_path / "camera.jpg", max_side=None)  # no downscaling asked: the full 48 MB would be needed


def test_a_given_pil_image_is_not_modified(face_image):
    big = face_image.resize((4000, 100))
    out = load_image(big)
    assert big.size == (4000, 100) and out.size == (images.MAX_REFERENCE_SIDE, 51)


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


def test_crop_to_square_is_the_training_form_of_a_head_reference():
    """The pipeline's head crop equals the trainer's validation reference (box cut, padded to a square with black),
    pixel for pixel, and clips a box that leaves the image."""
    from facediffuser.images import crop_to_square
    from facediffuser.training.augment import noise_background_crop, pad_to_square

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    box = (5.4, 3.2, 17.9, 24.1)  # 13 x 22 pixels once rounded out: padded on the left and right
    crop = crop_to_square(image, box)
    assert crop.size == (22, 22)
    # The trainer's form: pixels outside the person become noise (an all-true mask keeps them all), then padding.
    everywhere = torch.ones(30, 40, dtype=torch.bool)
    trained = pad_to_square(noise_background_crop(pil_to_tensor(image), everywhere, box, torch.Generator()))
    np.testing.assert_array_equal(np.asarray(crop), (trained.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))

    assert crop_to_square(image, (-10, 20, 50, 40)).size == (40, 40)  # clipped to (0, 20, 40, 30), then padded
    with pytest.raises(ValueError, match="empty"):
        crop_to_square(image, (45, 0, 60, 10))
