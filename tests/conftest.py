import pytest
import torch

from facediffuser.tiny import build_tiny_pipeline


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
