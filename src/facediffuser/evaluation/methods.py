"""The methods an evaluation compares: the TDM alone, the SDM alone, and Face-diffuser at some ``(alpha, beta)``.

All three are the same :class:`~facediffuser.FaceDiffuserPipeline` with different stage fractions (REFERENCE
section 3): ``alpha = beta = 1`` leaves only stage I (the TDM, plain Stable Diffusion), ``alpha = beta = 0`` only
stage III (the SDM).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fusion import check_stage_fractions

FIXED_METHODS = {"tdm": (1.0, 1.0), "sdm": (0.0, 0.0)}
FACE_DIFFUSER = "face-diffuser"
METHOD_NAMES = (*FIXED_METHODS, FACE_DIFFUSER)


@dataclass(frozen=True)
class Method:
    """A method and its stage fractions."""

    name: str
    alpha: float
    beta: float

    @property
    def label(self) -> str:
        """Unique and file-name safe: ``tdm``, ``sdm``, ``face-diffuser_a0.3_b0.6``."""
        if self.name in FIXED_METHODS:
            return self.name
        return f"{self.name}_a{self.alpha:g}_b{self.beta:g}"

    @property
    def display_name(self) -> str:
        """The row title of a table: ``TDM (alpha=beta=1)``, ``Face-diffuser (alpha=0.3, beta=0.6)``."""
        if self.name == "tdm":
            return "TDM alone (alpha=beta=1)"
        if self.name == "sdm":
            return "SDM alone (alpha=beta=0)"
        return f"Face-diffuser (alpha={self.alpha:g}, beta={self.beta:g})"


def parse_method(spec: str, alpha: float = 0.3, beta: float = 0.6) -> Method:
    """``tdm``, ``sdm``, ``face-diffuser`` (with the given ``alpha``/``beta``) or ``face-diffuser:ALPHA:BETA``.

    Example: ``parse_method("face-diffuser:0.1:0.6")`` is Face-diffuser with stage II from 10% to 60% of the steps.
    """
    name, *fractions = spec.strip().lower().split(":")
    if name in FIXED_METHODS:
        if fractions:
            raise ValueError(f"Method {spec!r}: {name} has fixed stage fractions; write just {name!r}.")
        return Method(name, *FIXED_METHODS[name])
    if name != FACE_DIFFUSER:
        raise ValueError(
            f"Unknown method {spec!r}; choose from {', '.join(METHOD_NAMES)}, or face-diffuser:ALPHA:BETA "
            "(e.g. face-diffuser:0.3:0.6)."
        )
    if fractions:
        if len(fractions) != 2:
            raise ValueError(f"Method {spec!r}: write face-diffuser:ALPHA:BETA, e.g. face-diffuser:0.3:0.6.")
        try:
            alpha, beta = (float(f) for f in fractions)
        except ValueError as err:
            raise ValueError(f"Method {spec!r}: ALPHA and BETA must be numbers ({err}).") from err
    check_stage_fractions(alpha, beta)
    return Method(FACE_DIFFUSER, float(alpha), float(beta))


def parse_methods(specs: list[str], alpha: float = 0.3, beta: float = 0.6) -> list[Method]:
    """Parses each spec; the same method named twice is kept once, in first-seen order."""
    methods: list[Method] = []
    for spec in specs:
        method = parse_method(spec, alpha, beta)
        if method.label not in {m.label for m in methods}:
            methods.append(method)
    if not methods:
        raise ValueError("Give at least one method: tdm, sdm, face-diffuser or face-diffuser:ALPHA:BETA.")
    return methods
