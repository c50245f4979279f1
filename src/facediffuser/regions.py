"""Per-person regions at sampling time, read from the models' cross-attention by the end of stage I (docs/method.md,
Person regions).

:class:`RegionSampler` is what :class:`~facediffuser.pipeline.FaceDiffuserPipeline` holds during one call when the
regions are wanted (``return_masks=True``, or a region option of
:class:`~facediffuser.settings.SamplingSettings`): it puts a :class:`~facediffuser.attention.SideAttentionProcessor`
on the cross-attention layers of :data:`~facediffuser.attention.LOCALIZATION_LAYERS` (those it has; all of them
when it has none) of each UNet for the call only,
and before each model's UNet call says what those processors do:

* stage I, with ``region_source="tdm"``: in the TDM, the probabilities of each person's class-noun column, for the
  ``c`` rows of the batch, computed beside SDPA (the TDM's output is unchanged) and summed at latent resolution;
* the last stage-I step, with ``region_source="sdm"`` (:meth:`RegionSampler.probe_subject_model`): one extra SDM call
  on ``c`` and ``c_aug`` (its guidance's conditions) at that step's latents, whose prediction is thrown away: each
  person's column in the ``c_aug`` rows (the fused token) less the same column in the ``c`` rows (the class noun),
  clipped at 0, so that what the reference adds, not the noun both people may share, makes the map (a fused token
  that nowhere draws more than its noun keeps its own attention as its map);
* after the last stage-I step the maps become the soft regions (:func:`~facediffuser.fusion.person_regions`) and the
  hard assignment (:func:`~facediffuser.fusion.assign_regions`);
* stages II-III, with ``region_attention``: in the SDM's ``c_aug`` rows, the bias of
  :func:`~facediffuser.fusion.region_key_bias` (each fused token attended only inside its person's region); stage II
  with ``region_attention_text``: the same on the TDM's ``c`` rows for the class-noun tokens.

The tensor rules are the pure functions of :mod:`facediffuser.fusion`; this module only wires them to the UNets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

from .attention import (
    LOCALIZATION_LAYERS,
    SideAttentionControl,
    SideAttentionProcessor,
    attention_processors,
    cross_attention_names,
)
from .fusion import (
    SUBJECT_MODEL_GUIDANCE,
    Condition,
    Guidance,
    RegionSource,
    Stage,
    SubjectGuidanceBase,
    assign_regions,
    person_regions,
    region_key_bias,
    region_masks,
)
from .settings import SamplingSettings

logger = logging.getLogger(__name__)


def layer_size(latent_size: tuple[int, int], queries: int) -> tuple[int, int]:
    """The ``(h, w)`` grid of a UNet layer with ``queries`` positions: the latent's, halved (rounding up, as the
    UNet's stride-2 convolutions do) until it has that many positions."""
    h, w = latent_size
    while h * w > queries and (h > 1 or w > 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != queries:
        raise ValueError(f"A layer of {queries} positions is not a halving of the {latent_size} latent.")
    return h, w


def subject_columns(marks: list[list[int]], copies: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(columns, present)``: each image's class-noun token index per person, ``(B, K)`` long (0, the start token, for
    a person a shorter prompt lacks), and ``(B, K)`` bool of the persons each image has."""
    people = max((len(m) for m in marks), default=0)
    columns = torch.zeros(len(marks), people, dtype=torch.long)
    present = torch.zeros(len(marks), people, dtype=torch.bool)
    for b, indices in enumerate(marks):
        columns[b, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        present[b, : len(indices)] = True
    return columns.repeat_interleave(copies, 0).to(device), present.repeat_interleave(copies, 0).to(device)


# The SDM probe of ``region_source="sdm"``: one call on ``(c, c_aug)``, the conditions of the release's SDM guidance.
PROBE_GUIDANCE = SUBJECT_MODEL_GUIDANCE[SubjectGuidanceBase.TEXT]


def _rows(guidance: Guidance, condition: Condition, batch: int) -> slice:
    j = guidance.conditions.index(condition)
    return slice(j * batch, (j + 1) * batch)


class RegionSampler:
    """The person regions of one pipeline call (see the module's docstring)."""

    def __init__(
        self,
        settings: SamplingSettings,
        marks: list[list[int]],
        copies: int,
        latent_size: tuple[int, int],
        num_keys: int,
        device: torch.device,
    ):
        self.settings = settings
        self.columns, self.present = subject_columns(marks, copies, device)
        self.latent_size = tuple(latent_size)
        self.num_keys = num_keys
        self.sums: torch.Tensor | None = None  # (R, K, h, w) attention summed over captured rows' layers and steps
        self.regions: torch.Tensor | None = None  # (B, K, h, w) soft maps, after stage I
        self.assignment: torch.Tensor | None = None  # (B, h, w) person index or NO_PERSON, after stage I
        self.controls: dict[int, SideAttentionControl] = {}

    @property
    def batch(self) -> int:
        return self.columns.shape[0]

    @property
    def people(self) -> int:
        return self.columns.shape[1]

    @contextmanager
    def installed(self, *unets) -> Iterator[RegionSampler]:
        """Within the block, each distinct UNet's cross-attention layers run a side processor; afterwards each has
        its old processors back (also after an error)."""
        with ExitStack() as stack:
            for unet in unets:
                if id(unet) in self.controls:
                    continue
                control = self.controls[id(unet)] = SideAttentionControl()

                def make(name, old, control=control):
                    return SideAttentionProcessor(old, name.removesuffix(".processor"), control)

                stack.enter_context(
                    attention_processors(unet, make, cross_attention_names(unet, LOCALIZATION_LAYERS, strict=False))
                )
            yield self

    # ------------------------------------------------------------------ before each UNet call
    def before_text_model(self, unet, stage: Stage, guidance: Guidance | None) -> None:
        """Sets what the TDM's processors do in this step's call: capture in stage I, the class-noun bias in stage II
        with ``region_attention_text``."""
        control = self.controls[id(unet)]
        control.capture, control.bias = None, None
        if guidance is None:
            return
        rows = _rows(guidance, Condition.TEXT, self.batch)
        if stage is Stage.TEXT and self.settings.region_source is RegionSource.TDM:
            control.capture = (rows, self.columns, self._record)
        elif self.settings.region_attention_text and self.assignment is not None:
            control.bias = self._bias(rows, guidance.evaluations * self.batch)

    def before_subject_model(self, unet, guidance: Guidance | None) -> None:
        """Sets what the SDM's processors do in this step's call: the fused-token bias with ``region_attention``."""
        control = self.controls[id(unet)]
        control.capture, control.bias = None, None
        if guidance is not None and self.settings.region_attention and self.assignment is not None:
            control.bias = self._bias(_rows(guidance, Condition.SUBJECT, self.batch), guidance.evaluations * self.batch)

    def probe_subject_model(
        self, unet, stage: Stage, next_stage: Stage | None, predict: Callable[[Guidance], object]
    ) -> None:
        """With ``region_source="sdm"``, at the last stage-I step: ``predict(guidance)`` runs the SDM once on
        :data:`PROBE_GUIDANCE`'s conditions while its processors capture each person's column in every row; the
        prediction is not used."""
        if self.settings.region_source is not RegionSource.SDM or not _ends_stage_one(stage, next_stage):
            return
        control = self.controls[id(unet)]
        rows = slice(0, PROBE_GUIDANCE.evaluations * self.batch)
        control.capture = (rows, self.columns.repeat(PROBE_GUIDANCE.evaluations, 1), self._record)
        control.bias = None
        try:
            predict(PROBE_GUIDANCE)
        finally:
            control.capture = None
        if self.sums is not None:
            maps = dict(zip(PROBE_GUIDANCE.conditions, self.sums.chunk(PROBE_GUIDANCE.evaluations)))
            fused = maps[Condition.SUBJECT]
            gain = (fused - maps[Condition.TEXT]).clamp_min(0)
            # a fused token that nowhere draws more attention than its noun keeps its own map (no empty region)
            self.sums = torch.where(gain.flatten(2).any(-1)[..., None, None], gain, fused)

    def after_step(self, stage: Stage, next_stage: Stage | None) -> None:
        """At the end of stage I, turns the summed attention into the regions."""
        if _ends_stage_one(stage, next_stage) and self.sums is not None:
            self.regions = person_regions(self.sums, self.present)
            self.assignment = assign_regions(self.regions)
            self.sums = None

    # ------------------------------------------------------------------ inside the processors
    def _record(self, name: str, probs: torch.Tensor) -> None:
        """``probs`` ``(B, HW, K)`` of one layer -> added to :attr:`sums` at latent resolution."""
        h, w = layer_size(self.latent_size, probs.shape[1])
        maps = probs.reshape(probs.shape[0], h, w, -1).permute(0, 3, 1, 2)
        if (h, w) != self.latent_size:
            maps = F.interpolate(maps, size=self.latent_size, mode="bilinear", align_corners=False)
        self.sums = maps if self.sums is None else self.sums + maps

    def _bias(self, rows: slice, total: int):
        cache: dict[tuple, torch.Tensor] = {}

        def bias(queries: int, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
            if batch != total:
                return None
            key = (queries, dtype, device)
            if key not in cache:
                inside = region_masks(self.assignment, self.people, layer_size(self.latent_size, queries))
                full = torch.zeros(total, queries, self.num_keys, dtype=dtype, device=device)
                full[rows] = region_key_bias(inside, self.columns, self.num_keys, dtype).to(device)
                cache[key] = full
            return cache[key]

        return bias


def _ends_stage_one(stage: Stage, next_stage: Stage | None) -> bool:
    return stage is Stage.TEXT and next_stage is not Stage.TEXT


def regions_wanted(settings: SamplingSettings, return_masks: bool, stages: list[Stage], people: int) -> bool:
    """Whether a call captures the regions: asked for (a region option, or the trace), with someone to find and a
    stage I to find them in. A region option that cannot work is said once, in the log."""
    if not (return_masks or settings.uses_regions) or people == 0:
        return False
    if Stage.TEXT not in stages:
        if settings.uses_regions:
            logger.warning(
                "alpha = %g leaves no stage I, so there are no person regions: the region options have no effect.",
                settings.alpha,
            )
        return False
    return True
