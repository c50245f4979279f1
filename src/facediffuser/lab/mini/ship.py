"""``facediffuser mini ship``: put a finished mini build and its world into the package's data folder: the pipeline's
export here, the world's files by :mod:`facediffuser.lab.world.package`.

What it writes (:mod:`facediffuser.io.package_data` names the places): every folder is built beside its place and all
are swapped in together once all are complete (a refusal or Ctrl-C before that leaves the old package whole). It
replaces only folders whose files an earlier ship wrote (the package folder's ``.facediffuser.json`` lists them; the
installation's own data folder, shipped into before that record existed, is the package's):

- ``mini/pipeline``: the mini Face-diffuser (the build's ``sdm/train``) with every weight in float16 safetensors and
  the tokenizer as ``vocab.json`` + ``merges.txt``; its text tower pruned to the world's vocabulary
  (:mod:`facediffuser.lab.mini.vocab`: the tokens of the world's texts and the bytes, 701 of CLIP's 49,408 for the
  present world; the world's texts must give exactly the same text features, else nothing is shipped); at most
  ``max_mib`` (40 MiB, the budget) in all, else refused;
- ``mini/ip_adapter`` (when the build has its ``ip-adapter`` stage): the adapter file and its image encoder in
  float16, each weight the trained one rounded (checked), for ``generate --model mini --ip-adapter mini``;
- ``mini/stages``: the build's stage markers (``stages/*.json``: each stage's settings and wall time), and the
  package's own markers of the stages the build took from it (``--from``), so that ``facediffuser mini build --from
  STAGE`` can start from the shipped stages with the settings they were built with;
- the world's files (:mod:`facediffuser.lab.world.package`): ``world/clip``, its CLIP in float16; ``world/faces``,
  its face recognizer; ``examples/mini``, example references of held-out people; ``world/references``, the mini
  benchmark's people.

Float16 is storage only: the loaders ask for float32 on the CPU (``load_pipeline``'s ``dtype="auto"``), and each
weight then equals the trained float32 weight rounded to float16 (checked here, before the swap). Nothing outside
the package data folder is written, and nothing in it but the folders above is replaced; the interim
``mini/vae`` (the VAE stage, shipped before the pipeline) is removed, as ``mini/pipeline/vae`` is the shipped VAE.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io import package_data
from ...io.files import read_stage_marker
from ..world import package as world_package
from ..world.package import (  # noqa: F401 (the world's files, shipped beside the pipeline; tests reach them here)
    EXAMPLE_PEOPLE,
    check_world,
    choose_people,
    follow_umask,
    non_float16_tensors,
    person_name,
    same_tokens,
    save_tokenizer_compact,
)

logger = logging.getLogger(__name__)

PIPELINE_BUDGET_MIB = 40.0  # the budget of the mini pipeline's weights: at most 40 MB in all
MIB = 1024 * 1024


def _f(help_text: str, **extra: Any) -> dict:
    return {"help": help_text, **extra}


@dataclass
class ShipConfig:
    """Settings of ``facediffuser mini ship``: one dataclass, the source of the flags."""

    build: Path = field(metadata=_f("folder of `facediffuser mini build` whose sdm stage is done"))
    world: Path = field(metadata=_f("folder of `facediffuser world build` (clip/, faces/, references/, world.json)"))
    package_dir: Path | None = field(
        default=None, metadata=_f("data folder to write into (default: this installation's facediffuser/data)")
    )
    max_mib: float = field(
        default=PIPELINE_BUDGET_MIB, metadata=_f("largest size of the shipped pipeline folder, in MiB")
    )
    people: int = field(default=EXAMPLE_PEOPLE, metadata=_f("held-out people to ship as example references"))
    subject_guidance_scale: float | None = field(
        default=None,
        metadata=_f(
            "the SDM guidance scale the shipped pipeline draws with when a call gives none (its model_index.json); "
            "default: none, the call's --guidance-scale"
        ),
    )
    scheduler: str | None = field(
        default=None,
        metadata=_f(
            "the scheduler the shipped pipeline samples with when a run names none (its scheduler/ folder: a name of "
            "generate --scheduler, made from the build's config); default: the build's, DDIM"
        ),
    )
    steps: int | None = field(
        default=None,
        metadata=_f(
            "the number of steps the shipped pipeline samples with when a run gives none (its model_index.json); "
            "default: none, the paper's 50"
        ),
    )

    def __post_init__(self) -> None:
        self.build, self.world = Path(self.build), Path(self.world)
        if self.package_dir is not None:
            self.package_dir = Path(self.package_dir)
        if not math.isfinite(self.max_mib) or self.max_mib <= 0:
            raise ValueError(f"--max-mib must be a positive number of MiB, got {self.max_mib}.")
        if self.people < 1:
            raise ValueError(f"--people must be at least 1, got {self.people}.")
        from ...settings import SamplingSettings

        # the sampling rules, with their words
        SamplingSettings(subject_guidance_scale=self.subject_guidance_scale, num_inference_steps=self.steps)
        if self.scheduler is not None:
            from ...io.loading import SCHEDULERS

            if self.scheduler not in SCHEDULERS:
                raise ValueError(f"Unknown scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULERS)}.")

    @property
    def target(self) -> Path:
        return self.package_dir if self.package_dir is not None else package_data.data_dir()


@dataclass
class ShipReport:
    """What was shipped: the folders written, the pipeline's size per component, in bytes, and its vocabulary
    (``kept`` and ``of`` tokens; ``texts`` and ``encoded``: the world texts its check compared)."""

    folders: dict[str, Path]
    pipeline_sizes: dict[str, int]
    people: list[str]
    vocabulary: dict[str, int] = field(default_factory=dict)

    @property
    def pipeline_total(self) -> int:
        return sum(self.pipeline_sizes.values())

    def size_table(self) -> str:
        table = size_table(self.pipeline_sizes)
        if self.vocabulary:
            v = self.vocabulary
            table += (
                f"\nvocabulary: {v['kept']:,d} of {v['of']:,d} tokens kept (the world's words and the bytes); "
                f"{v['texts']:,d} world texts tokenize as before, {v['encoded']:,d} encode exactly as before"
            )
        return table


# ------------------------------------------------------------------------------------------------ checks
def check_build(build: Path) -> Path:
    """The build's final pipeline folder (``sdm/train``), or a ``ValueError`` when the build is not finished."""
    from ...io.loading import check_pipeline_folder
    from .build import marker_path

    pipeline = build / "sdm" / "train"
    marker = marker_path(build, "sdm")
    if not (pipeline / "model_index.json").is_file() or not marker.is_file():
        raise ValueError(
            f"{build} is not a finished mini build: it needs {pipeline}/model_index.json and the stage marker "
            f"{marker}. Finish it with `facediffuser mini build --out {build} --world WORLD` first."
        )
    check_pipeline_folder(pipeline)
    return pipeline


COMMAND = "mini ship"  # the command named in the package folder's marker (see facediffuser.io.output_folders)


def shipped_folders(target: Path) -> dict[str, Path]:
    """The folders ``mini ship`` replaces in ``target``, by name."""
    return {
        "pipeline": target.joinpath(*package_data.MINI_PIPELINE),
        "ip_adapter": target.joinpath(*package_data.MINI_IP_ADAPTER),
        "stages": target.joinpath(*package_data.MINI_STAGES),
        **world_package.world_folders(target),
    }


def _is_installation(target: Path) -> bool:
    return target.resolve() == package_data.data_dir().resolve()


def check_target(target: Path, inputs: tuple[Path, ...] = ()) -> dict | None:
    """Refuses a ``--package-dir`` that ``mini ship`` may not write into; returns its marker (None without one).

    Each folder it replaces must be new, empty, or hold only files that an earlier ship wrote (its marker lists
    them); none may be, hold or lie inside an input (the build, the world). The installation's own data folder,
    shipped before markers existed, is the package's: its shipped folders are replaced as they are.
    """
    from ...io.output_folders import absolute, check_apart, foreign_files, protected_reason, read_marker

    if str(target).strip() == "":
        raise ValueError("--package-dir is empty: name the package's data folder, or leave the flag out.")
    if os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"--package-dir {target} is a file, not a folder.")
    reason = protected_reason(absolute(target).resolve())
    if reason:
        raise ValueError(f"--package-dir {target} is {reason}: choose the package's data folder or a new one.")
    for folder in [*shipped_folders(target).values(), target.joinpath(*package_data.MINI_VAE)]:
        check_apart(folder, inputs, flag="--package-dir's")
    marker = read_marker(target) if target.is_dir() else None
    if marker is not None and marker["command"] != COMMAND:
        raise ValueError(
            f"--package-dir {target} was made by `facediffuser {marker['command']}`, not `facediffuser {COMMAND}`: "
            "choose the package's data folder or a new one."
        )
    if marker is None and target.is_dir() and _is_installation(target):
        return None
    places = [*shipped_folders(target).values(), target.joinpath(*package_data.MINI_VAE)]
    foreign = sorted(f for folder in places for f in foreign_files(folder, target, marker))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f", and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(
            f"--package-dir {target} holds files facediffuser did not write where `mini ship` replaces whole "
            f"folders ({shown}): move them away, or choose a new or empty --package-dir. Nothing was shipped."
        )
    return marker


# ------------------------------------------------------------------------------------------------ sizes
def component_sizes(folder: Path) -> dict[str, int]:
    """Bytes per top-level entry of ``folder`` (a component folder, or a file such as ``model_index.json``)."""
    sizes = {}
    for entry in sorted(folder.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name] = sum(p.stat().st_size for p in files)
    return sizes


def size_table(sizes: dict[str, int]) -> str:
    rows = [f"{name:<20} {size / MIB:8.2f} MiB {size:>12,d} B" for name, size in sorted(sizes.items())]
    total = sum(sizes.values())
    rows.append(f"{'total':<20} {total / MIB:8.2f} MiB {total:>12,d} B")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ the parts
def write_pipeline(
    source: Path,
    folder: Path,
    max_mib: float,
    subject_guidance_scale: float | None = None,
    scheduler: str | None = None,
    steps: int | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """The pipeline of ``source`` in float16 into ``folder``, its text tower pruned to the world's vocabulary
    (:mod:`facediffuser.lab.mini.vocab`), drawing with ``subject_guidance_scale`` by default when it is given (else as
    the build's); its sizes and what the pruning kept and checked. ``ValueError`` when over
    ``max_mib``; :class:`~facediffuser.lab.mini.vocab.PruningError` when the shipped tokenizer and text encoder do not
    give exactly what the full ones give on the world's texts."""
    import copy

    import torch

    from ...pipeline import FaceDiffuserPipeline
    from . import vocab

    pipe = FaceDiffuserPipeline.from_pretrained(source, use_safetensors=True, dtype=torch.float32)
    # The full text tower as it would ship (float16 weights, loaded in float32): what the pruned one must equal.
    full_tokenizer, full_encoder = pipe.tokenizer, copy.deepcopy(pipe.text_encoder).half().float().eval()
    pruned = vocab.prune_vocabulary(pipe.tokenizer, pipe.text_encoder)
    pipe.register_modules(tokenizer=pruned.tokenizer, text_encoder=pruned.text_encoder)
    if subject_guidance_scale is not None:
        pipe.register_to_config(subject_guidance_scale=subject_guidance_scale)
    if scheduler is not None:  # the build's config (its noise schedule, spacing) under the named sampler
        from ...io.loading import swap_scheduler

        swap_scheduler(pipe, scheduler)
    if steps is not None:
        pipe.register_to_config(num_inference_steps=steps)
    expected = {name: _half_state(module) for name, module in _modules(pipe).items()}
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")
    save_tokenizer_compact(pipe.tokenizer, folder / "tokenizer")
    forget_source_paths(folder)
    follow_umask(folder)
    wrong = non_float16_tensors(folder)
    if wrong:
        raise ValueError(f"Some weights were not stored in float16: {', '.join(wrong[:5])}.")
    sizes = component_sizes(folder)
    total = sum(sizes.values())
    if total > max_mib * MIB:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        raise ValueError(
            f"The mini pipeline takes {total / MIB:.2f} MiB in float16, over the {max_mib:g} MiB budget by "
            f"{(total - max_mib * MIB) / MIB:.2f} MiB; nothing was shipped. Biggest: "
            + ", ".join(f"{n} {s / MIB:.2f} MiB" for n, s in biggest)
            + ". Per component:\n"
            + size_table(sizes)
            + "\nMake the model smaller, or pass --max-mib to accept the size."
        )
    # Loaded back as the package loads it (float32), every weight is the trained one rounded to float16, exactly.
    loaded = FaceDiffuserPipeline.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    for name, module in _modules(loaded).items():
        state = module.state_dict()
        for key, value in expected[name].items():
            if state[key].dtype != torch.float32 or not torch.equal(state[key], value):
                raise ValueError(f"The shipped {name} does not load back as written ({key}).")
    if loaded.subject_guidance_scale != pipe.subject_guidance_scale:
        raise ValueError("The shipped pipeline does not load back with its subject guidance scale.")

    def public(config) -> dict:
        return {k: v for k, v in config.items() if not k.startswith("_")}

    if (
        loaded.default_num_inference_steps != pipe.default_num_inference_steps
        or type(loaded.scheduler) is not type(pipe.scheduler)
        or public(loaded.scheduler.config) != public(pipe.scheduler.config)
    ):
        raise ValueError("The shipped pipeline does not load back with its scheduler and number of steps.")
    if not same_tokens(pipe.tokenizer, loaded.tokenizer):
        raise ValueError("The shipped tokenizer does not give the build's tokens.")
    checked = vocab.check_pruning(full_tokenizer, full_encoder, loaded.tokenizer, loaded.text_encoder)
    kept = {"kept": pruned.size, "of": len(full_tokenizer), "texts": checked["texts"], "encoded": checked["encoded"]}
    return sizes, kept


def write_ip_adapter(source: Path, folder: Path) -> dict[str, int]:
    """The adapter of ``source`` (``ip-adapter/train`` of a build: ``ip-adapter.safetensors`` and
    ``image_encoder/``) in float16 into ``folder``; its sizes. Loaded back in float32, every tensor must equal the
    trained one rounded to float16, else ``ValueError`` and nothing is shipped."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionModelWithProjection

    from ...training.adapter import IMAGE_ENCODER_FOLDER, WEIGHT_NAME

    state = load_file(source / WEIGHT_NAME)
    encoder = CLIPVisionModelWithProjection.from_pretrained(source / IMAGE_ENCODER_FOLDER, dtype=torch.float32)
    expected = _half_state(encoder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in state.items()}, folder / WEIGHT_NAME, metadata={"format": "pt"})
    encoder.half().save_pretrained(folder / IMAGE_ENCODER_FOLDER, safe_serialization=True)
    config_file = folder / IMAGE_ENCODER_FOLDER / "config.json"  # no path of the building machine (see below)
    settings = json.loads(config_file.read_text(encoding="utf-8"))
    if settings.pop("_name_or_path", None) is not None:
        config_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    follow_umask(folder)
    back = load_file(folder / WEIGHT_NAME)
    loaded = CLIPVisionModelWithProjection.from_pretrained(folder / IMAGE_ENCODER_FOLDER, dtype=torch.float32)
    same = back.keys() == state.keys() and all(torch.equal(back[k].float(), v.half().float()) for k, v in state.items())
    loaded_state = loaded.state_dict()
    if not same or any(not torch.equal(loaded_state[k].float(), v) for k, v in expected.items()):
        raise ValueError(f"The shipped IP-Adapter in {folder} does not load back as written.")
    return component_sizes(folder)


def forget_source_paths(folder: Path) -> None:
    """Drops ``_name_or_path`` from the configs of a saved pipeline folder. diffusers records there the folder each
    part was loaded from: the build's paths on the machine that shipped it, which say nothing to a user and would
    change the shipped folders' sha256 (what ``mini build --from`` records of them) at every ship, even of parts
    whose weights did not change."""
    for path in [folder / "model_index.json", *sorted(folder.glob("*/config.json"))]:
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _modules(pipe) -> dict[str, Any]:
    import torch

    return {name: getattr(pipe, name) for name in pipe.components if isinstance(getattr(pipe, name), torch.nn.Module)}


def _half_state(module) -> dict[str, Any]:
    """The module's floating-point tensors as they load back from float16 storage: rounded, then float32."""
    return {k: v.half().float() for k, v in module.state_dict().items() if v.is_floating_point()}


def write_stages(build: Path, folder: Path, shipped: Path | None = None, world: Path | None = None) -> None:
    """The build's stage markers (small JSON: each stage's settings and wall time), as they are but for a world
    recorded by its path (markers written before the world was recorded by what it is): that path must be ``world``
    (``--world``), and the marker ships :func:`~facediffuser.lab.world.build.world_record` of it instead, so no
    shipped file names a folder of the machine that built it. A stage the build took from the package (``mini build
    --from``, recorded in its later stages' ``from_package``) keeps the marker shipped in ``shipped``: the shipped
    stages stay described, and ``--from`` can continue from them again."""
    from ..world.build import world_record
    from .build import STAGES, marker_path

    from_package: set[str] = set()
    records = {}
    for stage in STAGES:
        if marker_path(build, stage).is_file():
            rebuild = f"move it and {build / stage} away and rebuild the stage with `facediffuser mini build`"
            records[stage] = read_stage_marker(marker_path(build, stage), rebuild)
            from_package.update((records[stage]["settings"].get("from_package") or {}).get("stages", []))
    for stage in STAGES:
        if stage in records:
            path = records[stage]["settings"].get("world")
            if not isinstance(path, str):
                shutil.copyfile(marker_path(build, stage), folder / f"{stage}.json")
                continue
            if world is None or str(world.resolve()) != path:
                raise ValueError(
                    f"{marker_path(build, stage)} records its world by the path {path}, not by what it is: ship it "
                    "with that world as --world (its settings and CLIP are shipped in the path's stead)."
                )
            record = {**records[stage], "settings": {**records[stage]["settings"], "world": world_record(world)}}
            (folder / f"{stage}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        elif stage in from_package:
            if shipped is None or not (shipped / f"{stage}.json").is_file():
                raise ValueError(
                    f"{build} was built on the {stage!r} stage shipped in the package, whose marker is not in "
                    f"{shipped}: ship into the package the build started from."
                )
            shutil.copyfile(shipped / f"{stage}.json", folder / f"{stage}.json")
    follow_umask(folder)


# ------------------------------------------------------------------------------------------------ the command
def ship(config: ShipConfig) -> ShipReport:
    """Checks the build, the world, the people asked for and the target; builds every shipped folder beside its
    place (a pipeline over budget, or any refusal, stops the ship before anything is replaced), then swaps them all
    in, and removes the interim ``mini/vae``. A refusal or Ctrl-C before the swap leaves the old package whole."""
    from ...io.output_folders import listed_files, write_folders_atomically, write_marker

    target = config.target
    inputs = (config.build, config.world)
    marker = check_target(target, inputs)
    source = check_build(config.build)
    check_world(config.world)
    choose_people(config.world, config.people)  # enough held-out people, before anything is written
    folders = shipped_folders(target)
    interim = target.joinpath(*package_data.MINI_VAE)
    sizes: dict[str, int] = {}
    kept: dict[str, int] = {}
    people: list[str] = []
    written: dict[str, list[str]] = {}

    def pipeline(new: Path) -> None:
        result, pruned = write_pipeline(
            source, new, config.max_mib, config.subject_guidance_scale, config.scheduler, config.steps
        )
        sizes.update(result)
        kept.update(pruned)

    adapter = config.build / "ip-adapter" / "train"

    def ip_adapter(new: Path) -> None:
        logger.info("The mini IP-Adapter:\n%s", size_table(write_ip_adapter(adapter, new)))

    writers = {
        "pipeline": pipeline,
        **({"ip_adapter": ip_adapter} if (adapter / "ip-adapter.safetensors").is_file() else {}),
        "stages": lambda new: write_stages(config.build, new, folders["stages"], config.world),
        **world_package.world_writers(config.world, config.people, people),  # the world's files, in the same swap
    }

    def recorded(name: str) -> Callable[[Path], None]:
        def write(new: Path) -> None:
            writers[name](new)
            base = folders[name].relative_to(target).as_posix()
            written[name] = [f"{base}/{f}" for f in listed_files(new, new)]

        return write

    replaced = [folders[name].relative_to(target).as_posix() + "/" for name in writers]
    replaced.append(interim.relative_to(target).as_posix() + "/")
    kept_files = [f for f in (marker or {"files": []})["files"] if not any(f.startswith(r) for r in replaced)]
    new_files = lambda: [f for files in written.values() for f in files]  # noqa: E731

    def before_swap() -> None:
        check_target(target, inputs)  # nothing of a user's appeared meanwhile
        # Until the old folders are gone, the marker lists both: an interrupted swap leaves nothing unlisted.
        write_marker(target, COMMAND, [*(marker or {"files": []})["files"], *new_files()])

    write_folders_atomically({folders[name]: recorded(name) for name in writers}, recheck=before_swap)
    logger.info("Shipped the mini pipeline to %s (%.2f MiB)", folders["pipeline"], sum(sizes.values()) / MIB)
    if interim.is_dir():
        shutil.rmtree(interim)
        logger.info("Removed the interim %s: the shipped VAE is now %s", interim, folders["pipeline"] / "vae")
    write_marker(target, COMMAND, [*kept_files, *new_files()])
    logger.info("Shipped the world's CLIP, face recognizer and %d example people to %s", len(people), target)
    written_folders = {name: folder for name, folder in folders.items() if name in writers}
    return ShipReport(folders=written_folders, pipeline_sizes=sizes, people=people, vocabulary=kept)
