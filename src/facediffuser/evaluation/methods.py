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
without it, the run's ``--subject-guidance-base``); a Face-diffuser spec may end in sampling options, each a further
``:`` token: ``ra``, ``rat`` and ``rs`` (the person-region options ``region_attention``, ``region_attention_text``,
``region_saliency``), or ``KEY=VALUE`` for any other field of :class:`~facediffuser.settings.SamplingSettings`
(``face-diffuser:0.3:0.6:ra:rs``, ``face-diffuser:smoothing=gaussian``); ``SPEC@MODEL`` runs it with that model only
(``sdm@fastcomposer``), a spec without ``@`` runs with every model.

With an IP-Adapter as the subject model (``evaluate --ip-adapter``, loaded on the model's scene UNet as ``generate
--ip-adapter`` loads it): ``ip-adapter`` is the adapter alone (``alpha = beta = 0``), ``face-diffuser+ip`` and
``face-diffuser+ip:ALPHA:BETA`` Face-diffuser's fusion with the adapter drawing the people (several people: each
their own image, masked by their stage-I region); either may end in ``:shared``, every person's photos as one shared
image drawn everywhere (the plain adapter's way with several people), or in ``:gt``, each person masked by where the
world puts them (the mini benchmark's cases: the ground-truth person segments of the world's render of the case, an
upper bound for masks that the models compute).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ..fusion import SubjectGuidanceBase
from ..settings import SamplingSettings

FIXED_METHODS = {"tdm": (1.0, 1.0), "sdm": (0.0, 0.0), "ip-adapter": (0.0, 0.0)}
FACE_DIFFUSER = "face-diffuser"
FACE_DIFFUSER_IP = "face-diffuser+ip"
METHOD_NAMES = (*FIXED_METHODS, FACE_DIFFUSER, FACE_DIFFUSER_IP)
# The methods whose subject model is the IP-Adapter; ``shared``: one image of every person's photos, everywhere.
ADAPTER_METHODS = ("ip-adapter", FACE_DIFFUSER_IP)
SHARED = "shared"
WORLD_MASKS = "gt"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The short method tokens of the sampling options that use the person regions (docs/method.md, Person regions).
SHORT_OPTIONS = {"ra": "region_attention", "rat": "region_attention_text", "rs": "region_saliency"}
SHORT_NAMES = {
    "region_attention": "region attention",
    "region_attention_text": "region attention on the TDM's class nouns",
    "region_saliency": "region saliency",
}
# What a KEY=VALUE option's value may be: it becomes part of the row's folder name.
OPTION_VALUE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
# Set by the method's own tokens (ALPHA:BETA, :text/:null), not by KEY=VALUE.
POSITIONAL_FIELDS = {"alpha": "ALPHA", "beta": "BETA", "subject_guidance_base": ":text or :null"}
# The options the fixed methods take: only these change what they draw (the TDM alone runs stage I only, the SDM
# alone stage III only: no stage II to fuse in, no stage I to read person regions from).
FIXED_OPTIONS = {
    "tdm": ("num_inference_steps", "guidance_scale"),
    "sdm": ("num_inference_steps", "guidance_scale", "subject_guidance_scale"),
    "ip-adapter": ("num_inference_steps", "guidance_scale", "subject_guidance_scale"),
}
FIXED_STAGES = {
    "tdm": "runs only stage I (no fusion, no SDM)",
    "sdm": "runs only stage III (no stage I, no fusion)",
    "ip-adapter": "runs only stage III (no stage I, no fusion)",
}


@dataclass(frozen=True)
class Method:
    """A method and its stage fractions; ``guidance_base`` is the SDM's guidance base when this method sets its own
    (``None``: the run's ``--subject-guidance-base``, which ``run.json`` records)."""

    name: str
    alpha: float
    beta: float
    guidance_base: SubjectGuidanceBase | None = None
    options: tuple[tuple[str, Any], ...] = ()
    shared: bool = False  # an adapter method with every person's photos as one image, drawn everywhere
    world_masks: bool = False  # an adapter method with each person masked by the world's render of the case

    @property
    def adapter(self) -> bool:
        """Whether the IP-Adapter (``evaluate --ip-adapter``) is this method's subject model."""
        return self.name in ADAPTER_METHODS

    @property
    def option_tokens(self) -> list[str]:
        """This method's own sampling options as they read in its label: ``ra``, ``rat``, ``rs`` for a region option
        that is on, ``KEY-VALUE`` for any other (``smoothing-gaussian``)."""
        short = {field: token for token, field in SHORT_OPTIONS.items()}
        return [short[k] if k in short and v is True else f"{k}-{option_text(v)}" for k, v in self.options]

    @property
    def label(self) -> str:
        """Unique and file-name safe: ``tdm``, ``sdm``, ``face-diffuser_a0.2_b0.7``, ``face-diffuser_a0.3_b0.6_null``
        (a method with its own SDM guidance base), ``face-diffuser_a0.3_b0.6_ra_rs`` (with sampling options)."""
        base = f"_{self.guidance_base.value}" if self.guidance_base is not None else ""
        options = "".join(f"_{token}" for token in self.option_tokens) + ("_shared" if self.shared else "")
        options += "_gt" if self.world_masks else ""
        if self.name in FIXED_METHODS:
            return self.name + base + options
        return f"{self.name}_a{self.alpha:g}_b{self.beta:g}{base}{options}"

    @property
    def display_name(self) -> str:
        """The row title of a table: ``TDM (alpha=beta=1)``, ``Face-diffuser (alpha=0.2, beta=0.7)``, with
        ``, SDM guidance base null`` when the method sets its own and its options (``, region attention``,
        ``, smoothing=gaussian``)."""
        base = f", SDM guidance base {self.guidance_base.value}" if self.guidance_base is not None else ""
        base += "".join(
            f", {SHORT_NAMES[k]}" if k in SHORT_NAMES and v is True else f", {k}={option_text(v)}"
            for k, v in self.options
        )
        base += ", one shared embedding" if self.shared else ""
        base += ", the world's person masks" if self.world_masks else ""
        if self.name == "tdm":
            return f"TDM alone (alpha=beta=1{base})"
        if self.name == "sdm":
            return f"SDM alone (alpha=beta=0{base})"
        if self.name == "ip-adapter":
            return f"IP-Adapter alone (alpha=beta=0{base})"
        if self.name == FACE_DIFFUSER_IP:
            return f"Face-diffuser + IP-Adapter (alpha={self.alpha:g}, beta={self.beta:g}{base})"
        return f"Face-diffuser (alpha={self.alpha:g}, beta={self.beta:g}{base})"

    def sampling(self, run: SamplingSettings) -> SamplingSettings:
        """The run's sampling settings with this method's stage fractions (and guidance base and options, when it
        sets them)."""
        changes = {"alpha": self.alpha, "beta": self.beta, **dict(self.options)}
        if self.guidance_base is not None:
            changes["subject_guidance_base"] = self.guidance_base
        return run.replace(**changes)


def option_text(value: Any) -> str:
    """A setting's value as a method token writes it: ``true``, ``gaussian``, ``1.5``, ``none``."""
    value = getattr(value, "value", value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_option(spec: str, token: str) -> tuple[str, Any]:
    """One option token of method ``spec``: ``ra``/``rat``/``rs`` (that region option on) or ``KEY=VALUE``, the value
    read as JSON (``true``, ``2``, ``1.5``, ``null``) or else kept as a word (``gaussian``); the value is checked by
    :class:`SamplingSettings`, not here."""
    if token in SHORT_OPTIONS:
        return SHORT_OPTIONS[token], True
    key, _, text = token.partition("=")
    fields = [f.name for f in dataclasses.fields(SamplingSettings)]
    if key in POSITIONAL_FIELDS:
        raise ValueError(
            f"Method {spec!r}: {key} is set by the method's {POSITIONAL_FIELDS[key]}, not by {key}=...; e.g. "
            "face-diffuser:0.3:0.6:null."
        )
    if key not in fields:
        raise ValueError(
            f"Method {spec!r}: {key!r} is not a sampling setting; write {', '.join(SHORT_OPTIONS)} or KEY=VALUE with "
            f"KEY one of {', '.join(f for f in fields if f not in POSITIONAL_FIELDS)}."
        )
    if not OPTION_VALUE.match(text):
        raise ValueError(
            f"Method {spec!r}: the value of {key} must be a number or a word of letters, digits, '.', '+' or '-', "
            f"got {text!r}."
        )
    try:
        return key, json.loads(text)
    except ValueError:
        return key, text


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
    but ``tdm`` optionally followed by ``:text`` or ``:null`` (the SDM's guidance base for this method), and by
    sampling options: ``:ra``, ``:rat``, ``:rs`` (the person-region options) or ``:KEY=VALUE`` (any other field of
    :class:`SamplingSettings`, checked by it). The fixed methods take only the options that change what they draw.

    A guidance base or option equal to ``defaults``' is the run's own and is not kept on the method, so that
    ``face-diffuser:0.3:0.6:text`` in a run with the default base is the row ``face-diffuser``, not a second one; the
    options are kept in :class:`SamplingSettings`' field order, so ``:rs:ra`` and ``:ra:rs`` are one row.

    Example: ``parse_method("face-diffuser:0.1:0.6")`` is Face-diffuser with stage II from 10% to 60% of the steps;
    ``parse_method("face-diffuser:0.3:0.6:null")`` the same at 0.3 / 0.6 with paper eq. 2's SDM guidance;
    ``parse_method("face-diffuser:0.3:0.6:ra:rs")`` at 0.3 / 0.6 with region attention and region saliency.
    """
    defaults = defaults or SamplingSettings()
    name, *tokens = spec.strip().lower().split(":")
    base = None
    bases = [b.value for b in SubjectGuidanceBase]
    fractions: list[str] = []
    options: dict[str, Any] = {}
    shared = world_masks = False
    for token in tokens:
        if token in (SHARED, WORLD_MASKS):
            if name not in ADAPTER_METHODS:
                raise ValueError(
                    f"Method {spec!r}: :{token} is for the IP-Adapter's methods ({', '.join(ADAPTER_METHODS)}): the "
                    "fused SDM always reads each person on their own class noun."
                )
            shared, world_masks = shared or token == SHARED, world_masks or token == WORLD_MASKS
            if shared and world_masks:
                raise ValueError(f"Method {spec!r}: give :shared (one image everywhere) or :gt (masks), not both.")
        elif token in bases:
            if base is not None:
                raise ValueError(f"Method {spec!r}: give one SDM guidance base, :text or :null.")
            base = SubjectGuidanceBase(token)
        elif token in SHORT_OPTIONS or "=" in token:
            key, value = parse_option(spec, token)
            if key in options:
                raise ValueError(f"Method {spec!r} sets {key} twice; give it once.")
            options[key] = value
        else:
            fractions.append(token)
    if base is not None and name == "tdm":
        raise ValueError(f"Method {spec!r}: the TDM alone runs no SDM, so it has no guidance base; write 'tdm'.")
    if name in FIXED_METHODS:
        if fractions:
            raise ValueError(
                f"Method {spec!r}: {name} has fixed stage fractions; write just {name!r} (or {name}:null / "
                f"{name}:text for the SDM's guidance base)."
                if name == "sdm"
                else f"Method {spec!r}: {name} has fixed stage fractions; write just {name!r}."
            )
        for key in options:
            if key not in FIXED_OPTIONS[name]:
                raise ValueError(
                    f"Method {spec!r}: the {name.upper()} alone {FIXED_STAGES[name]}, so {key} changes nothing in "
                    f"it; give it to face-diffuser (e.g. face-diffuser:0.3:0.6:{token_of(key, options[key])})."
                )
        alpha, beta = FIXED_METHODS[name]
    elif name not in (FACE_DIFFUSER, FACE_DIFFUSER_IP):
        raise ValueError(
            f"Unknown method {spec!r}; choose from {', '.join(METHOD_NAMES)}, or face-diffuser:ALPHA:BETA "
            "(e.g. face-diffuser:0.2:0.7)."
        )
    else:
        alpha, beta = defaults.alpha, defaults.beta
        if fractions:
            if len(fractions) != 2:
                raise ValueError(
                    f"Method {spec!r}: write face-diffuser:ALPHA:BETA, e.g. face-diffuser:0.2:0.7, optionally "
                    f"followed by :{' or :'.join(bases)} (the SDM's guidance base) and options (:ra, :rat, :rs, "
                    ":KEY=VALUE)."
                )
            try:
                alpha, beta = (float(f) for f in fractions)
            except ValueError as err:
                raise ValueError(f"Method {spec!r}: ALPHA and BETA must be numbers ({err}).") from err
    try:  # validates the fractions and the options, in SamplingSettings' words
        settings = defaults.replace(alpha=alpha, beta=beta, **options)
    except ValueError as err:
        raise ValueError(f"Method {spec!r}: {err}") from None
    if base == defaults.subject_guidance_base:
        base = None
    own = tuple(
        (f.name, getattr(settings, f.name))
        for f in dataclasses.fields(SamplingSettings)
        if f.name in options and getattr(settings, f.name) != getattr(defaults, f.name)
    )
    return Method(name, float(settings.alpha), float(settings.beta), base, own, shared, world_masks)


def token_of(key: str, value: Any) -> str:
    """How a method spec writes an option: ``ra`` for ``region_attention`` on, else ``KEY=VALUE``."""
    short = {field: token for token, field in SHORT_OPTIONS.items()}
    return short[key] if key in short and value is True else f"{key}={option_text(value)}"


def parse_methods(specs: list[str], defaults: SamplingSettings | None = None) -> list[Method]:
    """Parses each spec; the same method named twice is kept once, in first-seen order."""
    methods: list[Method] = []
    for spec in specs:
        method = parse_method(spec, defaults)
        if method.label not in {m.label for m in methods}:
            methods.append(method)
    if not methods:
        raise ValueError(
            "Give at least one method: tdm, sdm, face-diffuser or face-diffuser:ALPHA:BETA (optionally :ra, :rat, :rs)."
        )
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
        raise ValueError(
            "Give at least one method: tdm, sdm, face-diffuser or face-diffuser:ALPHA:BETA (optionally :ra, :rat, :rs)."
        )
    variants: list[Variant] = []
    for model in models:
        for method, chosen in wanted:
            variant = Variant(model, method)
            if chosen == model and variant not in variants:
                variants.append(variant)
    return variants
