"""A procedural world of people in scenes, with its own CLIP and its own face recognizer (docs/world.md).

- :mod:`.attributes`: identity features, scene attributes, the people and their split, the two distributions,
  captions;
- :mod:`.render`: :func:`render` draws one :class:`SceneSpec` (numpy + PIL);
- :mod:`.data`: the ``scenes`` and ``portraits`` data sets in the FFHQ-wild layout, and reference folders;
- :mod:`.clip`: the world's CLIP (a transformers ``CLIPModel`` with the project's tokenizer);
- :mod:`.faces` and :mod:`.face_backend`: the face detector, the identity embedder, ``--ip-backend mini``;
- :mod:`.build` and :mod:`.report`: ``facediffuser world build``, its stages and held-out figures.

Only the renderer's names are imported here; the networks load torch, transformers and diffusers on first use.
"""

from .attributes import Identity, PersonSpec, SceneSpec, caption, make_identities, sample_scene, split_identities
from .render import Rendered, render

__all__ = [
    "Identity",
    "PersonSpec",
    "Rendered",
    "SceneSpec",
    "caption",
    "make_identities",
    "render",
    "sample_scene",
    "split_identities",
]
