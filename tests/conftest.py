from pathlib import Path

import pytest
import torch

from facediffuser.io.tiny import build_tiny_pipeline


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models are all per-op overhead: one thread is faster, and far faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_pipe():
    """A fresh tiny random pipeline (seeded, offline, a second to build)."""
    torch.manual_seed(0)
    return build_tiny_pipeline(seed=0)


@pytest.fixture
def face_image():
    """A small RGB image standing in for a reference photo (tiny encoders need no real face)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def save_tiny_world_clip():
    """``save(folder, vision_layers=1)``: writes a tiny random world CLIP and the package's CLIP tokenizer into
    ``folder``, as ``facediffuser world build`` writes its ``clip/`` (the weights draw from torch's global RNG)."""

    def save(folder, vision_layers: int = 1) -> None:
        from facediffuser.io.tokenizer import load_clip_tokenizer
        from facediffuser.lab.world.clip import ClipSettings, build_clip

        settings = ClipSettings(
            embed_dim=16, text_layers=1, text_heads=2, vision_hidden=16, vision_layers=vision_layers,
            vision_heads=2, image_size=64, patch_size=16,
        )  # fmt: skip
        build_clip(settings).save_pretrained(folder)
        load_clip_tokenizer().save_pretrained(folder)

    return save


class _OpensMarker:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def pickled_call():
    """``pickled_call(marker)``: an object that pickles as a call of ``open(marker, "w")``, so that unpickling it
    would create the marker file (what a checkpoint with pickled code does, harmlessly)."""
    return _OpensMarker


def reset_accelerate() -> None:
    """Each trainer builds its own Accelerator; accelerate keeps process-wide singletons between them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's singletons reset before and after the test (``pytestmark = usefixtures(...)`` in trainer tests)."""
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIP saved like a hub checkpoint, so the evaluation loads it through its real code path."""
    from transformers import CLIPConfig, CLIPModel

    from facediffuser.io.tokenizer import load_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    text = {"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    text.update({"num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407})
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision.update({"image_size": 32, "patch_size": 8})
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    load_clip_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A synthetic FFHQ-wild data set (8 training images, 2 test, 72 px) for the trainer tests, one per module."""
    from facediffuser.training.synthetic import write_synthetic_ffhq_wild

    return write_synthetic_ffhq_wild(tmp_path_factory.mktemp("ffhq") / "data", num_images=8, size=72, test_images=2)
