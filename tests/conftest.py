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
