"""What an evaluation compares: methods (the TDM alone, the SDM alone, Face-diffuser at some ``(alpha, beta)``), each
run with one of the models of the evaluation.

All three methods are the same :class:`~facediffuser.FaceDiffuserPipeline` with different stage fractions
(paper Sec. 3.3 and its appendix algorithm): ``alpha = beta = 1`` leaves only stage I (the TDM, plain Stable
Diffusion), ``alpha = beta = 0`` only stage III (the SDM). A model is a pipeline folder (or hub id, ``mini``,
``tiny``) with a short name; a FastComposer checkpoint converted to a pipeline and run as ``sdm`` is FastComposer's
row of Table 1.

Method specs: ``tdm``, ``sdm``, ``face-diffuser`` (the default ``alpha``/``beta`` of
:class:`~facediffuser.settings.SamplingSettings`), ``face-diffuser:ALPHA:BETA``; a method that runs the SDM may end in
``:text`` or ``:null``, the SDM's guidance base for that row only (``face-diffuser:0.3:0.6:null``, ``sdm:null``;
without it, the run's ``--subject-guidance-base``); ``SPEC@MODEL`` runs it with that model only
(``sdm@fastcomposer``), a spec without ``@`` runs with every model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from ..fusion import SubjectGuidanceBase
from ..settings import SamplingSettings

FIXED_METHODS = {"tdm": (1.0, 1.0), "sdm": (0.0, 0.0)}
FACE_DIFFUSER = "face-diffuser"
METHOD_NAMES = (*FIXED_METHODS, FACE_DIFFUSER)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Method:
    """A method and its stage fractions; ``guidance_base`` is the SDM's guidance base when this method sets its own
    (``None``: the run's ``--subject-guidance-base``, which ``run.json`` records)."""

    name: str
    alpha: float
    beta: float
    guidance_base: SubjectGuidanceBase | None = None

    @property
    def label(self) -> str:
        """Unique and file-name safe: ``tdm``, ``sdm``, ``face-diffuser_a0.2_b0.7``, ``face-diffuser_a0.3_b0.6_null``
        (a method with its own SDM guidance base)."""
        base = f"_{self.guidance_base.value}" if self.guidance_base is not None else ""
        if self.name in FIXED_METHODS:
            return self.name + base
        return f"{self.name}_a{self.alpha:g}_b{self.beta:g}{base}"

    @property
    def display_name(self) -> str:
        """The row title of a table: ``TDM (alpha=beta=1)``, ``Face-diffuser (alpha=0.2, beta=0.7)``, with
        ``, SDM guidance base null`` when the method sets its own."""
        base = f", SDM guidance base {self.guidance_base.value}" if self.guidance_base is not None else ""
        if self.name == "tdm":
            return "TDM alone (alpha=beta=1)"
        if self.name == "sdm":
            return f"SDM alone (alpha=beta=0{base})"
        return f"Face-diffuser (alpha={self.alpha:g}, beta={self.beta:g}{base})"

    def sampling(self, run: SamplingSettings) -> SamplingSettings:
        """The run's sampling settings with this method's stage fractions (and guidance base, when it sets one)."""
        changes = {"alpha": self.alpha, "beta": self.beta}
        if self.guidance_base is not None:
            changes["subject_guidance_base"] = self.guidance_base
        return run.replace(**changes)


@dataclass(frozen=True)
class ModelSpec:
    """A model of the evaluation: a short ``name`` (labels, folders) and where to load it from."""

    name: str
    source: str


@dataclass(frozen=True)
class Variant:
    """One row of the tables: a method run with a model."""

    model: ModelSpec
    method: Method

    @property
    def label(self) -> str:
        """Unique and usable as a relative path: ``<model>/<method label>``."""
        return f"{self.model.name}/{self.method.label}"

    @property
    def display_name(self) -> str:
        return f"{self.method.display_name} [{self.model.name}]"


def parse_model(spec: str) -> ModelSpec:
    """``NAME=SOURCE``, or a bare source named after its last path part (``pipes/fd-v1/`` is ``fd-v1``).

    Example: ``parse_model("fastcomposer=converted/fastcomposer")``.
    """
    name, sep, source = spec.partition("=")
    if not sep:
        source = spec
        name = PurePath(spec.rstrip("/\\")).name or spec
    if not source.strip():
        raise ValueError(f"Model {spec!r}: give NAME=FOLDER, or a folder, hub id, 'mini' or 'tiny'.")
    if not MODEL_NAME.match(name):
        raise ValueError(
            f"Model name {name!r} (from {spec!r}) must be letters, digits, '.', '_' or '-': write NAME=FOLDER, "
            "e.g. --model fastcomposer=converted/fastcomposer."
        )
    return ModelSpec(name, source)


def parse_models(specs: list[str]) -> list[ModelSpec]:
    """Each spec parsed; two different sources under one name are an error, a repeated spec is kept once."""
    models: dict[str, ModelSpec] = {}
    for spec in specs:
        model = parse_model(spec)
        if model.name in models and models[model.name] != model:
            raise ValueError(
                f"Two models are named {model.name!r} ({models[model.name].source} and {model.source}): name them, "
                "e.g. --model a=first/ --model b=second/."
            )
        models[model.name] = model
    if not models:
        raise ValueError("Give at least one --model: a pipeline folder, a hub id, 'mini', 'tiny', or NAME=FOLDER.")
    return list(models.values())


def parse_method(spec: str, defaults: SamplingSettings | None = None) -> Method:
    """``tdm``, ``sdm``, ``face-diffuser`` (with ``defaults``' alpha and beta) or ``face-diffuser:ALPHA:BETA``, each
    but ``tdm`` optionally ending in ``:text`` or ``:null`` (the SDM's guidance base for this method).

    A guidance base equal to ``defaults``' is the run's own and is not kept on the method, so that
    ``face-diffuser:0.3:0.6:text`` in a run with the default base is the row ``face-diffuser``, not a second one.

    Example: ``parse_method("face-diffuser:0.1:0.6")`` is Face-diffuser with stage II from 10% to 60% of the steps;
    ``parse_method("face-diffuser:0.3:0.6:null")`` the same at 0.3 / 0.6 with paper eq. 2's SDM guidance.
    """
    defaults = defaults or SamplingSettings()
    name, *fractions = spec.strip().lower().split(":")
    base = None
    bases = [b.value for b in SubjectGuidanceBase]
    if fractions and fractions[-1] in bases:
        base = SubjectGuidanceBase(fractions.pop())
        if name == "tdm":
            raise ValueError(f"Method {spec!r}: the TDM alone runs no SDM, so it has no guidance base; write 'tdm'.")
        if base == defaults.subject_guidance_base:
            base = None
    if name in FIXED_METHODS:
        if fractions:
            raise ValueError(
                f"Method {spec!r}: {name} has fixed stage fractions; write just {name!r} (or {name}:null / "
                f"{name}:text for the SDM's guidance base)."
                if name == "sdm"
                else f"Method {spec!r}: {name} has fixed stage fractions; write just {name!r}."
            )
        return Method(name, *FIXED_METHODS[name], base)
    if name != FACE_DIFFUSER:
        raise ValueError(
            f"Unknown method {spec!r}; choose from {', '.join(METHOD_NAMES)}, or face-diffuser:ALPHA:BETA "
            "(e.g. face-diffuser:0.2:0.7)."
        )
    alpha, beta = defaults.alpha, defaults.beta
    if fractions:
        if len(fractions) != 2:
            raise ValueError(
                f"Method {spec!r}: write face-diffuser:ALPHA:BETA, e.g. face-diffuser:0.2:0.7, optionally followed "
                f"by :{' or :'.join(bases)} (the SDM's guidance base)."
            )
        try:
            alpha, beta = (float(f) for f in fractions)
        except ValueError as err:
            raise ValueError(f"Method {spec!r}: ALPHA and BETA must be numbers ({err}).") from err
    settings = defaults.replace(alpha=alpha, beta=beta)  # validates the fractions
    return Method(FACE_DIFFUSER, float(settings.alpha), float(settings.beta), base)


def parse_methods(specs: list[str], defaults: SamplingSettings | None = None) -> list[Method]:
    """Parses each spec; the same method named twice is kept once, in first-seen order."""
    methods: list[Method] = []
    for spec in specs:
        method = parse_method(spec, defaults)
        if method.label not in {m.label for m in methods}:
            methods.append(method)
    if not methods:
        raise ValueError("Give at least one method: tdm, sdm, face-diffuser or face-diffuser:ALPHA:BETA.")
    return methods


def parse_variants(
    specs: list[str], models: list[ModelSpec], defaults: SamplingSettings | None = None
) -> list[Variant]:
    """The rows of an evaluation: each method spec with the model after its ``@``, or with every model.

    Rows are ordered model first (in ``models`` order), then method (in ``specs`` order); duplicates are kept once.
    """
    by_name = {m.name: m for m in models}
    wanted: list[tuple[Method, ModelSpec]] = []
    for spec in specs:
        method_spec, sep, model_name = spec.partition("@")
        method = parse_method(method_spec, defaults)
        if sep:
            if model_name not in by_name:
                raise ValueError(
                    f"Method {spec!r} names the model {model_name!r}, which is not one of the --model names "
                    f"({', '.join(by_name)})."
                )
            wanted.append((method, by_name[model_name]))
        else:
            wanted += [(method, model) for model in models]
    if not wanted:
        raise ValueError("Give at least one method: tdm, sdm, face-diffuser or face-diffuser:ALPHA:BETA.")
    variants: list[Variant] = []
    for model in models:
        for method, chosen in wanted:
            variant = Variant(model, method)
            if chosen == model and variant not in variants:
                variants.append(variant)
    return variants
