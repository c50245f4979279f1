"""PC with a tiny random CLIP, checked against transformers' own image processor and CLIPModel forward pass."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from facediffuser.evaluation.clip_score import ClipScorer, clip_pixels, resize_center_crop
from facediffuser.io.tokenizer import load_clip_tokenizer

try:  # transformers >= 5: the PIL processor by name (the default one needs torchvision)
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4.x: the default processor is the PIL one
    from transformers import CLIPImageProcessor

IMAGE_SIZE = 32


def tiny_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    return CLIPModel(config).eval()


def random_images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (50, 75, 3), dtype=np.uint8)),  # landscape
        Image.fromarray(rng.integers(0, 256, (81, 40, 3), dtype=np.uint8)),  # portrait, odd crop offset
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)),  # upscaled
    ]


def test_resize_center_crop_geometry():
    image = Image.new("RGB", (300, 200))
    assert resize_center_crop(image, 224).size == (224, 224)
    # A bright column exactly in the middle stays in the middle of the crop.
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, 148:152] = 255
    crop = np.asarray(resize_center_crop(Image.fromarray(array), 100))
    bright = np.nonzero(crop[50, :, 0] > 128)[0]
    assert 48 <= bright.mean() <= 51


def test_clip_pixels_match_transformers_image_processor():
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    images = random_images()
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(clip_pixels(images, IMAGE_SIZE), expected, atol=1e-5, rtol=0)


def test_pc_equals_clip_logits_divided_by_the_logit_scale():
    model = tiny_clip()
    tokenizer = load_clip_tokenizer()
    scorer = ClipScorer(model, tokenizer, name="tiny", batch_size=2)  # batches of 2 over 3 images
    images = random_images()
    texts = ["a photo of a man wearing a hat", "a watercolor painting of a woman", "a photo of a man wearing a hat"]
    scores = scorer.score(images, texts)

    # Independent path: transformers' processor and tokenizer, CLIPModel.forward's logits (cosine * exp(logit_scale)).
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    expected = (out.logits_per_image.diagonal() / model.logit_scale.exp()).double()
    torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64), expected, atol=1e-5, rtol=0)
    assert all(-1.0 <= s <= 1.0 for s in scores)  # a cosine, not x100


def test_pc_checks_lengths():
    scorer = ClipScorer(tiny_clip(), load_clip_tokenizer())
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorer.score(random_images()[:2], ["a"])
    assert scorer.score([], []) == []


def test_clip_folder_round_trip_and_bad_folder(tmp_path):
    model = tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    load_clip_tokenizer().save_pretrained(tmp_path / "clip")
    scorer = ClipScorer.from_pretrained(tmp_path / "clip")
    assert scorer.image_size == IMAGE_SIZE and scorer.name == str(tmp_path / "clip")
    torch.testing.assert_close(
        scorer.image_features(random_images()),
        ClipScorer(model, load_clip_tokenizer()).image_features(random_images()),
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        ClipScorer.from_pretrained(tmp_path / "empty")


def test_clip_weights_that_cannot_be_had_say_how_to_get_them(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to the hub to load this model")

    monkeypatch.setattr(CLIPModel, "from_pretrained", offline)
    with pytest.raises(ValueError) as info:
        ClipScorer.from_pretrained("openai/clip-vit-large-patch14")
    assert "--clip-model PATH" in str(info.value) and "--metrics ip" in str(info.value)
