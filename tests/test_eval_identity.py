"""IP backends on real photos that ship with packages, and the errors of backends that cannot be had.

Real faces: scikit-image's ``astronaut`` (Eileen Collins) and matplotlib's ``grace_hopper.jpg`` sample; no face:
scikit-image's ``chelsea`` (a cat) and a flat gray image.
"""

import io
import json
import os
import subprocess
import sys
import types
import urllib.error
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facediffuser.evaluation.identity import IP_BACKENDS, Face, IdentityBackend, build_ip_backend

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")
cbook = pytest.importorskip("matplotlib.cbook")


@pytest.fixture(scope="module")
def dlib_backend():
    return build_ip_backend("dlib")


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(skimage_data.astronaut())


@pytest.fixture(scope="module")
def grace_hopper():
    return Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")


def test_dlib_finds_the_astronauts_face(dlib_backend, astronaut):
    faces = dlib_backend.faces(astronaut)
    assert faces, "no face found in skimage's astronaut photo"
    x1, y1, x2, y2 = faces[0].box  # the largest face first
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert 180 < cx < 260 and 80 < cy < 160, faces[0].box  # her face, not the patch on her suit
    assert faces[0].embedding.shape == (128,)


def test_dlib_scores_the_mirror_image_high_and_another_person_low(dlib_backend, astronaut, grace_hopper):
    reference = dlib_backend.embed_reference([astronaut])[None]
    mirror = astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    same, faces_same = dlib_backend.score(mirror, reference)
    other, faces_other = dlib_backend.score(grace_hopper, reference)
    assert faces_same >= 1 and faces_other == 1
    assert same > 0.9  # measured 0.948
    assert other < 0.5  # measured 0.350 (unrelated people: median 0.02, 95th percentile 0.44)
    assert same - other > 0.5


def test_dlib_scores_images_without_a_face_zero(dlib_backend, astronaut):
    reference = dlib_backend.embed_reference([astronaut])[None]
    cat = Image.fromarray(skimage_data.chelsea())
    gray = Image.new("RGB", (128, 128), (128, 128, 128))
    assert dlib_backend.score(cat, reference) == (0.0, 0)
    assert dlib_backend.score(gray, reference) == (0.0, 0)
    assert dlib_backend.embed_reference([gray]) is None


@pytest.mark.slow
def test_dlib_multi_subject_matches_each_person_to_their_face(astronaut, grace_hopper):
    dlib_backend = build_ip_backend("dlib", options={"dlib_upsample": 0})  # both faces are large; 3x faster
    canvas = Image.new("RGB", (1024, 600), (255, 255, 255))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(grace_hopper, (512, 0))
    ref_astronaut = dlib_backend.embed_reference([astronaut])
    ref_grace = dlib_backend.embed_reference([grace_hopper])
    both, faces = dlib_backend.score(canvas, torch.stack([ref_grace, ref_astronaut]))
    assert faces >= 2
    assert both > 0.9  # each person matched to their own face
    # Two references of the astronaut: the second one can only take Grace Hopper's face, a poor match.
    twice, _ = dlib_backend.score(canvas, torch.stack([ref_astronaut, ref_astronaut]))
    assert twice < 0.5
    # Only the astronaut in the image, both people asked for: the best the second can get is a non-face.
    alone, _ = dlib_backend.score(astronaut, torch.stack([ref_astronaut, ref_grace]))
    assert alone < 0.5


def test_shipped_mean_descriptor_is_the_colour_calibration():
    from facediffuser.evaluation.dlib_backend import MEAN_DESCRIPTOR_FILE, load_mean_descriptor, mean_descriptor_id

    record = json.loads((resources.files("facediffuser") / "data" / MEAN_DESCRIPTOR_FILE).read_text())
    mean = load_mean_descriptor()
    assert mean.shape == (128,) and record["people"] >= 20
    measured = record["measured"]
    # Held out of the mean, unrelated people centre near 0 and the same person scores far above them.
    assert abs(measured["unrelated_held_out"]["p50"]) < 0.1
    assert measured["same_person_held_out"]["p50"] - measured["unrelated_held_out"]["p50"] > 0.5
    assert len(mean_descriptor_id()) == 12
    assert build_ip_backend("dlib").settings()["mean_descriptor"] == mean_descriptor_id()  # part of the cache key


def test_calibration_reads_archives_skips_grey_and_holds_people_out(tmp_path, astronaut, grace_hopper):
    from facediffuser.evaluation.dlib_backend import DlibBackend
    from facediffuser.evaluation.dlib_calibration import Calibration, collect_faces

    archive = tmp_path / "photos-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        for name, image in (("a/astronaut.png", astronaut), ("a/grey.png", astronaut.convert("L"))):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            z.writestr(name, buffer.getvalue())
    grace_hopper.save(tmp_path / "grace.png")
    raw = DlibBackend(upsample=0, center=False)
    faces = collect_faces([archive, tmp_path / "grace.png"], raw, min_confidence=0.3)
    assert {f.source for f in faces} == {"photos-1.0-py3-none-any.whl!a/astronaut.png", "grace.png"}  # grey skipped
    calibration = Calibration.from_faces(faces)
    assert calibration.people.shape == (2, 128)
    np.testing.assert_allclose(calibration.mean((0,)), calibration.people[1])  # leave-one-out by hand
    assert calibration.same_person().size == 0  # each shown once: no same-person pair


def test_dlib_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ValueError, match="pip install dlib-bin face_recognition_models"):
        build_ip_backend("dlib")


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown IP backend 'arcface'.*dlib"):
        build_ip_backend("arcface")
    assert {"dlib", "facenet"} <= set(IP_BACKENDS)


class ConstantBackend(IdentityBackend):
    """One face with a fixed embedding: enough to check the registry."""

    name = "constant"

    def __init__(self, width: int = 3):
        self.width = width

    @classmethod
    def from_options(cls, device, options):
        return cls(int(options.get("constant_width", 3)))

    def faces(self, image):
        return [Face(embedding=torch.ones(self.width))]


@pytest.mark.slow
def test_a_backend_registers_with_one_line_and_is_imported_only_when_built(monkeypatch):
    monkeypatch.setitem(IP_BACKENDS, "constant", f"{__name__}:ConstantBackend")
    backend = build_ip_backend("constant", options={"constant_width": 5})
    assert isinstance(backend, ConstantBackend) and backend.faces(None)[0].embedding.shape == (5,)
    # The base module and the package know no implementation: importing them loads no backend module.
    code = (
        "import sys, facediffuser.evaluation, facediffuser.evaluation.identity; "
        "print(sorted(m for m in sys.modules if m.endswith(('dlib_backend', 'facenet_backend'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


def _env():
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


# ---------------------------------------------------------------------------------------------------- facenet
def test_facenet_without_the_package_explains_the_install_and_the_offline_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(ValueError) as info:
        build_ip_backend("facenet")
    message = str(info.value)
    assert "pip install facenet-pytorch --no-deps" in message and "torchvision" in message
    assert "--ip-backend dlib" in message


class _FakeMTCNN:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, image, return_prob=False):
        if image.getpixel((0, 0)) == (0, 0, 0):
            return None, [None]
        return torch.ones(2, 3, 160, 160), np.array([0.99, 0.9])


class _FakeInception(torch.nn.Module):
    def __init__(self, pretrained=None, classify=False):
        super().__init__()
        if pretrained is not None:
            raise urllib.error.URLError("no network")
        self.proj = torch.nn.Linear(3, 4)

    def forward(self, x):  # (F, 3, 160, 160) -> (F, 4)
        return self.proj(x.mean(dim=(2, 3)))


@pytest.fixture
def fake_facenet(monkeypatch):
    module = types.ModuleType("facenet_pytorch")
    module.MTCNN = _FakeMTCNN
    module.InceptionResnetV1 = _FakeInception
    monkeypatch.setitem(sys.modules, "facenet_pytorch", module)
    return module


def test_facenet_weights_that_cannot_be_downloaded_say_how_to_get_them(fake_facenet):
    with pytest.raises(ValueError) as info:
        build_ip_backend("facenet")
    message = str(info.value)
    assert "20180402-114759-vggface2.pt" in message and "--facenet-weights" in message
    assert "--ip-backend dlib" in message


def test_facenet_missing_weights_file(fake_facenet, tmp_path):
    with pytest.raises(FileNotFoundError, match="vggface2"):
        build_ip_backend("facenet", options={"facenet_weights": tmp_path / "missing.pt"})


def test_facenet_backend_glue_with_local_weights(fake_facenet, tmp_path):
    torch.manual_seed(0)
    state = _FakeInception().state_dict()
    state["logits.weight"] = torch.zeros(8631, 512)  # the VGGFace2 classifier head is dropped on load
    torch.save(state, tmp_path / "vggface2.pt")
    backend = build_ip_backend("facenet", options={"facenet_weights": tmp_path / "vggface2.pt"})
    assert backend._mtcnn.kwargs["thresholds"] == [0.6, 0.7, 0.7]
    assert backend._mtcnn.kwargs["min_face_size"] == 20 and backend._mtcnn.kwargs["image_size"] == 160
    faces = backend.faces(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert len(faces) == 2 and isinstance(faces[0], Face) and faces[0].embedding.shape == (4,)
    assert backend.faces(Image.new("RGB", (64, 64))) == []
    reference = backend.embed_reference([Image.new("RGB", (64, 64), (255, 255, 255))])
    assert backend.score(Image.new("RGB", (64, 64), (255, 255, 255)), reference[None]) == (pytest.approx(1.0), 2)
