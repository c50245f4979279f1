"""The stages of a lab build, and their bookkeeping in its output folder: one runner for ``world build`` and
``mini build``.

A build is a row of named stages, each writing under ``out``. When a stage is done, its marker
``stages/<stage>.json`` records the settings it was built with (``settings``) and its wall time (``seconds``):

- a stage whose marker holds the wanted settings is skipped;
- one whose marker holds other settings is refused (the command's own words, :attr:`StageBook.refuse`), never
  mixed, unless the command rebuilds it on request (``redo``);
- with :attr:`StageBook.depends`, the marker also records the modification stamps of the markers of the stages it
  reads (``inputs``), and a stage one of them was rebuilt after is built again;
- with :attr:`StageBook.resumable`, a stage that was started writes its settings first (``<stage>/settings.json``),
  so that an interrupted stage continues (its builder resumes from its own checkpoints) only with the same
  settings, and the wall seconds of each of its runs (``<stage>/runs.json``; the marker's ``runs``, ``seconds``
  their sum).

The runner writes only markers and these records; the command claims its folder and owns each stage's entries
(:mod:`facediffuser.io.output_folders`) through :meth:`StageBook.run`'s ``own``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.files import read_json, read_stage_marker

logger = logging.getLogger(__name__)


def marker_path(out: Path, stage: str) -> Path:
    """The marker of a built stage: ``out/stages/<stage>.json``."""
    return out / "stages" / f"{stage}.json"


def started_path(out: Path, stage: str) -> Path:
    """The settings a resumable stage was started with: ``out/<stage>/settings.json``."""
    return out / stage / "settings.json"


def runs_path(out: Path, stage: str) -> Path:
    """The wall seconds of each run of a resumable stage so far (``seconds``): the marker's ``seconds`` is their sum.
    While a run is going, ``running_since`` holds its start (seconds since the epoch): a run killed outright leaves
    it, and the next run counts the killed one up to the last file it wrote (:func:`read_runs`)."""
    return out / stage / "runs.json"


def read_runs(out: Path, stage: str) -> list[float]:
    """The seconds of the stage's finished runs, and of a run killed outright (``running_since`` left behind), from
    its start to the last file written in the stage's folder, the last sign of its work (a lower bound)."""
    path = runs_path(out, stage)
    if not path.is_file():
        return []
    record = read_json(path, dict, "a record of the stage's runs")
    runs, since = record.get("seconds"), record.get("running_since")
    number = (int, float)
    if not (
        isinstance(runs, list)
        and all(isinstance(r, number) and not isinstance(r, bool) for r in runs)
        and (since is None or isinstance(since, number) and not isinstance(since, bool))
    ):
        raise ValueError(
            f"{path} is not a record of the stage's runs (`seconds`: a list of numbers, `running_since`: a number): "
            "delete it to go on (only the wall time of the stage's earlier runs is lost)."
        )
    runs = list(runs)
    if since is not None:
        written = [f.stat().st_mtime for f in (out / stage).rglob("*") if f.is_file() and f != path]
        runs.append(round(max(max(written, default=since) - since, 0.0), 1))
    return runs


def changed_keys(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two settings, sorted."""
    return sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))


@dataclass(frozen=True)
class StageBook:
    """The bookkeeping of one build's stages in its output folder ``out``.

    ``refuse(stage, recorded, wanted, what)`` raises the command's ``ValueError`` for a stage ``what`` (``"built"``
    or ``"started"``) with other settings; ``marker_hint(stage)`` says how to rebuild a stage whose marker cannot be
    read; ``recorded_as(recorded, wanted)`` reads a marker's settings in today's terms (a record written by an older
    version of the command) before they are compared."""

    out: Path
    label: str  # the command in the log ("world", "mini")
    refuse: Callable[[str, dict[str, Any], dict[str, Any], str], None]
    marker_hint: Callable[[str], str]
    depends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> the stages whose output it reads
    resumable: bool = False
    recorded_as: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = lambda recorded, wanted: recorded

    def marker(self, stage: str) -> Path:
        return marker_path(self.out, stage)

    def read_marker(self, stage: str) -> dict[str, Any] | None:
        """The marker of ``stage`` (``None`` when it is not built); ``ValueError`` when it cannot be read."""
        path = self.marker(stage)
        return read_stage_marker(path, self.marker_hint(stage)) if path.is_file() else None

    def inputs(self, stage: str) -> dict[str, int | None]:
        """The modification stamps of the markers of the stages ``stage`` reads (``None`` for one not built)."""
        stamps = {}
        for dep in self.depends.get(stage, ()):
            path = self.marker(dep)
            stamps[dep] = path.stat().st_mtime_ns if path.is_file() else None
        return stamps

    def _check(self, stage: str, recorded: dict[str, Any], wanted: dict[str, Any], what: str) -> None:
        recorded = self.recorded_as(recorded, wanted)
        if recorded != wanted:
            self.refuse(stage, recorded, wanted, what)
            raise AssertionError(f"refuse() returned for stage {stage!r}")  # pragma: no cover

    def state(self, stage: str, wanted: dict[str, Any], redo: bool = False) -> str:
        """``"done"``, ``"started"`` (resumable), ``"stale"`` (a stage it reads was rebuilt after it) or ``"new"``;
        ``ValueError`` (:attr:`refuse`) when built or started with other settings. ``redo``: the stage is to be
        built again whatever its marker holds."""
        path = self.marker(stage)
        if redo:
            return "new"
        if path.is_file():
            marker = read_stage_marker(path, self.marker_hint(stage))
            self._check(stage, marker["settings"], wanted, "built")
            if self.depends and marker.get("inputs", self.inputs(stage)) != self.inputs(stage):
                return "stale"
            return "done"
        started = started_path(self.out, stage)
        if self.resumable and started.is_file():
            try:
                recorded = read_json(started, dict, "the settings of a started stage")
            except ValueError as err:
                hint = f"move {self.out / stage} away to rebuild the stage"
                raise ValueError(f"{str(err).rstrip('.')}; {hint}.") from None
            self._check(stage, recorded, wanted, "started")
            return "started"
        return "new"

    def run(
        self,
        stages: Iterable[str],
        wanted: Mapping[str, dict[str, Any]],
        build: Callable[[str], None],
        own: Callable[[str], None],
        redo: Iterable[str] = (),
    ) -> dict[str, float]:
        """Builds the ``stages`` in order, each unless :meth:`state` finds it done; returns the wall seconds of each
        run. ``own(stage)`` claims the stage's entries in ``out`` before anything of it is written; ``build(stage)``
        builds it. A resumable stage's run counts in its record even when it fails or is interrupted."""
        redo = set(redo)
        times: dict[str, float] = {}
        for stage in stages:
            state = self.state(stage, wanted[stage], redo=stage in redo)
            if state == "done":
                logger.info("%s %s: already built in %s, skipping", self.label, stage, self.out)
                continue
            if state == "stale":
                logger.info("%s %s: a stage it reads was rebuilt since, rebuilding", self.label, stage)
            logger.info("%s %s: %s", self.label, stage, "resuming" if state == "started" else "building")
            own(stage)
            runs = read_runs(self.out, stage) if self.resumable else []  # before anything is written in its folder
            runs_file = runs_path(self.out, stage)
            if self.resumable:
                started = started_path(self.out, stage)
                started.parent.mkdir(parents=True, exist_ok=True)
                started.write_text(json.dumps(wanted[stage], indent=1), encoding="utf-8")
                runs_file.write_text(json.dumps({"seconds": runs, "running_since": time.time()}), encoding="utf-8")
            start = time.perf_counter()
            try:
                build(stage)
            finally:  # an interrupted or failed run of a resumable stage counts too: its time is part of the stage's
                times[stage] = time.perf_counter() - start
                if self.resumable:
                    runs.append(round(times[stage], 1))
                    runs_file.write_text(json.dumps({"seconds": runs}), encoding="utf-8")
            self.write_marker(stage, wanted[stage], times[stage], runs)
            logger.info("%s %s: done in %.0f s", self.label, stage, times[stage])
        return times

    def write_marker(self, stage: str, settings: dict[str, Any], seconds: float, runs: list[float]) -> None:
        path = self.marker(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.resumable:
            record = {"settings": settings, "seconds": round(sum(runs), 1), "runs": runs}
        else:
            record = {"settings": settings, "seconds": round(seconds, 1)}
            if self.depends:
                record["inputs"] = self.inputs(stage)
        path.write_text(json.dumps(record, indent=1), encoding="utf-8")
