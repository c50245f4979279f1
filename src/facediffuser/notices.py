"""Two notices of the libraries below that say nothing a facediffuser user can act on, silenced at import.

- transformers announces, on every import of diffusers, that its CLIP and SigLIP image processors fall back to PIL
  because torchvision is missing. facediffuser does not use those processors (it prepares CLIP pixels itself, in
  :mod:`facediffuser.images`) and deliberately does not depend on torchvision.
- diffusers warns on every dtype cast of a model that "modules that should be kept in float32" exist, even when its
  list of such modules is empty (``[]``). Casts of models with a non-empty list still warn.

Each filter drops only those exact messages; everything else the libraries log passes.
"""

from __future__ import annotations

import logging

_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
_EMPTY_FLOAT32_LIST = "that should be kept in float32: []."


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_irrelevant_notices() -> None:
    """Adds the filters (once) to the loggers that emit those notices."""
    for name, fragment in (
        ("transformers.utils.import_utils", _TORCHVISION_FALLBACK),
        ("diffusers.models.modeling_utils", _EMPTY_FLOAT32_LIST),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragment))
