"""``facediffuser mini build``: the mini Face-diffuser, trained on the world in stages, seeded and resumable.

Stages, in order (each under ``--out``, each ending with a marker ``stages/<stage>.json``: its settings, wall time
of all its runs):

- ``vae``: a small ``AutoencoderKL`` on the world's renders (:mod:`facediffuser.lab.mini.vae`); ``vae/vae`` is the
  model;
- ``tdm``: a pipeline folder is assembled (``tdm/base``: the VAE, the world CLIP's text tower and tokenizer, its
  vision tower, a fresh UNet of the ``[unet]`` settings, a fresh fuser), then the project's trainer
  (``facediffuser train tdm``) trains its scene UNet on the world's ``scenes`` data set into ``tdm/train``;
- ``sdm``: the trained TDM pipeline with the TDM's UNet copied into the subject slot (``sdm/base``), then
  ``facediffuser train sdm`` on the world's ``portraits`` into ``sdm/train``: the mini model;
- ``ip-adapter`` (only when asked: ``--to ip-adapter`` or ``--from ip-adapter``): ``facediffuser train ip-adapter``
  on the world's ``portraits``, a new IP-Adapter on the trained TDM's frozen scene UNet reading the world CLIP's
  untrained vision tower, into ``ip-adapter/train`` (``ip-adapter.safetensors`` and ``image_encoder/``): the mini
  model's adapter (``generate --model mini --ip-adapter mini``).

The recipes are TOML files (``configs/mini_vae.toml``, ``configs/mini_tdm.toml``, ``configs/mini_sdm.toml``): the
VAE's keys are :class:`~facediffuser.lab.mini.vae.VaeSettings` fields, the TDM's and SDM's are ``facediffuser train``
settings (``TrainConfig`` fields) plus, for the TDM, an ``[unet]`` table (:class:`UNetSettings`). The build sets the
data root, output folder, base model and seed itself.

A stage whose marker holds the same settings is skipped. A stage that was started writes its settings first
(``<stage>/settings.json``), so an interrupted stage continues from its last checkpoint (the trainers' exact resume)
only with the same settings; a stage built or started with other settings is refused, never mixed (the bookkeeping
is :mod:`facediffuser.lab.stages`, shared with ``world build``). Each stage's settings include those of the stages
before it, and the world by what it is (:func:`~facediffuser.lab.world.build.world_record`: its settings and the
sha256 of its CLIP), never by where it lies.

``--from STAGE`` takes the stages before it from ``--out`` when the stage right before is built there, else from the
mini model shipped in the package (:func:`package_source`): ``--from tdm`` its VAE, ``--from sdm`` its VAE, text
tower, tokenizer and scene UNet (the trained TDM's: the SDM stage never trains it) with the shipped world CLIP's
vision tower and a fresh seeded fuser. The shipped stages' settings (``mini ship`` puts the build's markers into the
package) must equal this build's, and the later stages record ``from_package``: which stages came from the package,
and the sha256 of each folder read. The shipped weights are the stages' float32 weights rounded to float16, so a
rerun from them is seeded and repeatable, but not bit-identical to the original build's later stages.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ...io import package_data
from ...io.configuration import check_file_values, config_to_dict, load_toml
from ...io.files import read_json, read_stage_marker
from ..stages import StageBook, changed_keys, marker_path
from ..stages import read_runs as read_runs  # (a stage's records, read by tests and scripts)
from ..stages import runs_path as runs_path
from ..stages import started_path as started_path
from ..world.build import world_record

logger = logging.getLogger(__name__)

STAGES = ("vae", "tdm", "sdm", "ip-adapter")
# The last stage a build runs when --to does not name one: the adapter is built only when asked.
DEFAULT_LAST = "sdm"
COMMAND = "mini build"  # the command named in --out's marker (see facediffuser.io.output_folders)
# A build folder written before the marker existed: a stage's marker, or a stage's started settings.
LEGACY = tuple(f"stages/{s}.json" for s in STAGES) + tuple(f"{s}/settings.json" for s in STAGES)
# Set by the build, never by a recipe file.
MANAGED_KEYS = ("data_root", "output_dir", "pretrained", "seed", "resume")


def _f(help_text: str, **extra: Any) -> dict:
    return {"help": help_text, **extra}


@dataclass
class MiniConfig:
    """Settings of ``facediffuser mini build``: one dataclass, the source of the flags."""

    out: Path = field(metadata=_f("folder of the build (one sub-folder per stage)"))
    world: Path = field(default=Path("world"), metadata=_f("folder of `facediffuser world build` (data sets, clip/)"))
    seed: int = field(default=0, metadata=_f("seed of every stage"))
    from_stage: str | None = field(
        default=None,
        metadata=_f(
            f"start at this stage ({', '.join(STAGES)}); the stages before it come from --out when built there, else "
            "from the mini model shipped in the package (with the same recorded settings)",
            flag="--from",
        ),
    )
    to_stage: str | None = field(
        default=None,
        metadata=_f(
            f"stop after this stage ({', '.join(STAGES)}); default: {DEFAULT_LAST} (the adapter is built when named)",
            flag="--to",
        ),
    )
    resolution: int = field(default=32, metadata=_f("side of the training images (the world's renders are resized)"))
    vae_config: Path = field(default=Path("configs/mini_vae.toml"), metadata=_f("recipe of the VAE stage"))
    tdm_config: Path = field(default=Path("configs/mini_tdm.toml"), metadata=_f("recipe of the TDM stage"))
    sdm_config: Path = field(default=Path("configs/mini_sdm.toml"), metadata=_f("recipe of the SDM stage"))
    ip_adapter_config: Path = field(
        default=Path("configs/mini_ip_adapter.toml"), metadata=_f("recipe of the ip-adapter stage")
    )
    threads: int = field(default=1, metadata=_f("torch threads (the machine may be shared)"))

    def __post_init__(self) -> None:
        self.out, self.world = Path(self.out), Path(self.world)
        for flag, stage in (("--from", self.from_stage), ("--to", self.to_stage)):
            if stage is not None and stage not in STAGES:
                raise ValueError(f"Unknown stage {stage!r} for {flag}; the stages are {', '.join(STAGES)}.")
        if self.stages == ():
            raise ValueError(f"--from {self.from_stage} comes after --to {self.to_stage}: no stage to run.")
        if self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}.")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"--resolution must be a positive multiple of 8, got {self.resolution}.")

    @property
    def stages(self) -> tuple[str, ...]:
        first = STAGES.index(self.from_stage) if self.from_stage else 0
        last = STAGES.index(self.to_stage) if self.to_stage else max(first, STAGES.index(DEFAULT_LAST))
        return STAGES[first : last + 1]

    def recipe(self, stage: str) -> Path:
        """The recipe file of a trainer stage."""
        return {"tdm": self.tdm_config, "sdm": self.sdm_config, "ip-adapter": self.ip_adapter_config}[stage]


@dataclass(frozen=True)
class UNetSettings:
    """The mini UNets (TDM and SDM share them): an SD1.x-shaped ``UNet2DConditionModel`` at any width. Cross-attention
    sits where the trainer's localization loss reads it (``down_blocks.1-2``, ``mid_block``, ``up_blocks.1-2``), not
    in the first down block and the first up block."""

    channels: tuple[int, ...] = (64, 128, 192)
    layers_per_block: int = 1
    head_dim: int = 8  # diffusers' `attention_head_dim` (the head count, for SD1.x)
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if len(self.channels) < 3 or any(c % self.norm_groups for c in self.channels):
            raise ValueError(
                f"[unet] channels {self.channels} need at least 3 levels, each a multiple of norm_groups "
                f"{self.norm_groups} (the localization loss reads down_blocks.2 and up_blocks.2)."
            )

    def build(self, cross_attention_dim: int, sample_size: int):
        from diffusers import UNet2DConditionModel

        levels = len(self.channels)
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=tuple(self.channels),
            layers_per_block=self.layers_per_block,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=self.head_dim,
            norm_num_groups=self.norm_groups,
        )


# ------------------------------------------------------------------------------------------------ recipes
def read_vae_recipe(config: MiniConfig):
    from .vae import VaeSettings

    data = load_toml(config.vae_config)
    known = {f.name for f in fields(VaeSettings)} - {"seed"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown VAE setting(s) {unknown} in {config.vae_config}; known: {sorted(known)}.")
    check_file_values(VaeSettings, data, str(config.vae_config))
    if "channels" in data:
        data["channels"] = tuple(data["channels"])
    try:
        return VaeSettings(**data, seed=config.seed)
    except ValueError as err:
        raise ValueError(f"{config.vae_config}: {err}") from None


def read_train_recipe(config: MiniConfig, stage: str) -> tuple[dict[str, Any], UNetSettings | None]:
    """The ``TrainConfig`` values of a stage's TOML (without the keys the build sets) and its ``[unet]`` table."""
    from ...io.configuration import build_config, flag_names
    from ...training.config import TrainConfig

    path = config.recipe(stage)
    data = load_toml(path)
    unet = data.pop("unet", None)
    if unet is not None and stage != "tdm":
        raise ValueError(
            f"{path} has a [unet] table: the {stage} stage starts from the TDM's UNet, set it in the TDM recipe."
        )
    managed = sorted(set(data) & set(MANAGED_KEYS))
    unknown = sorted(set(data) - set(flag_names(TrainConfig)))
    if managed or unknown:
        raise ValueError(
            f"{path}: the build sets {', '.join(MANAGED_KEYS)} itself ({managed} given); unknown key(s) {unknown}."
        )
    check_file_values(TrainConfig, data, str(path))
    if unet is not None and not isinstance(unet, dict):
        raise ValueError(f"In {path}, `unet` must be a table ([unet] with channels = [...] below it), got {unet!r}.")
    if "resolution" in data and data["resolution"] != config.resolution:
        raise ValueError(f"{path} sets resolution {data['resolution']}, the build --resolution {config.resolution}.")
    data["resolution"] = config.resolution
    try:  # the trainer's own checks, now rather than when the stage starts (after the stages before it)
        build_config(TrainConfig, base={**data, "data_root": config.world}, base_source=str(path))
    except ValueError as err:
        raise ValueError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    settings = None
    if stage == "tdm":
        unet = dict(unet or {})
        unknown = sorted(set(unet) - {f.name for f in fields(UNetSettings)})
        if unknown:
            known = sorted(f.name for f in fields(UNetSettings))
            raise ValueError(f"Unknown [unet] setting(s) {unknown} in {path}; known: {known}.")
        check_file_values(UNetSettings, unet, f"the [unet] table of {path}")
        if "channels" in unet:
            unet["channels"] = tuple(unet["channels"])
        try:
            settings = UNetSettings(**unet)
        except ValueError as err:
            raise ValueError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    return data, settings


def stage_settings(config: MiniConfig, stage: str, world: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a stage's result depends on: its recipe, the seed, the world (by what it is:
    :func:`~facediffuser.lab.world.build.world_record`, ``world`` when already read), and the settings of the stages
    before it."""
    world = world_record(config.world) if world is None else world
    common = {"seed": config.seed, "world": world, "resolution": config.resolution}
    if stage == "vae":
        return {**common, "vae": read_vae_recipe(config).to_dict()}
    before = stage_settings(config, STAGES[STAGES.index(stage) - 1], world)
    train, unet = read_train_recipe(config, stage)
    out = {**before, stage: train}
    if unet is not None:
        out["unet"] = {**asdict(unet), "channels": list(unet.channels)}
    return out


# ------------------------------------------------------------------------------------------------ markers
def recorded_as(config: MiniConfig, recorded: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """A stage's recorded settings in today's terms: a record written before the world was recorded by what it is
    holds the world folder's path, which stands for today's record of the same folder."""
    world = recorded.get("world")
    if isinstance(world, str) and world == str(config.world.resolve()) and "world" in wanted:
        return {**recorded, "world": wanted["world"]}
    return recorded


def stage_book(config: MiniConfig) -> StageBook:
    """The bookkeeping of the build's stages in ``--out`` (:mod:`facediffuser.lab.stages`): resumable, each stage
    refused when built or started with other settings."""

    def hint(stage: str) -> str:
        where = f"{marker_path(config.out, stage)} and {config.out / stage}"
        return f"move {where} away to rebuild the stage, or build into another --out"

    return StageBook(
        out=config.out,
        label="mini",
        refuse=lambda stage, recorded, wanted, what: _refuse_if_changed(recorded, wanted, stage, config, what),
        marker_hint=hint,
        resumable=True,
        recorded_as=lambda recorded, wanted: recorded_as(config, recorded, wanted),
    )


def _refuse_if_changed(
    recorded: dict[str, Any], wanted: dict[str, Any], stage: str, config: MiniConfig, what: str, shipped: bool = False
):
    if recorded != wanted:
        changed = ", ".join(changed_keys(recorded, wanted))
        if shipped:
            raise ValueError(
                f"The {stage!r} stage shipped in the package ({shipped_marker_path(stage)}) was built with other "
                f"settings than this build's (changed: {changed}). Give the recipes, --seed, --resolution and "
                f"--world it was built with, or build the stage into --out (--from {stage}): stages are never mixed."
            )
        hint = ""
        if recorded.get("from_package") != wanted.get("from_package"):
            shipped_stages = (recorded.get("from_package") or {}).get("stages")
            hint = (
                f" It was {what} on the {', '.join(shipped_stages)} stage(s) shipped in the package: continue "
                f"it with --from {STAGES[len(shipped_stages)]}."
                if shipped_stages
                else f" It was {what} on stages built in {config.out}, not on shipped ones."
            )
        raise ValueError(
            f"Stage {stage!r} of {config.out} was {what} with other settings (changed: {changed}).{hint} Build "
            "into another --out, or move its folder away to rebuild it: stages are never mixed or overwritten."
        )


def stage_state(config: MiniConfig, stage: str, wanted: dict[str, Any]) -> str:
    """``"done"``, ``"started"`` (resumable) or ``"new"``; ``ValueError`` when built or started with other settings."""
    return stage_book(config).state(stage, wanted)


# ------------------------------------------------------------------------------------------------ shipped stages
# Settings that say where a stage ran, not what it is: left out when a shipped stage's settings are compared.
PLACE_KEYS = ("from_package",)
# The parts of the shipped pipeline the SDM stage starts from (the scene UNet is the trained TDM's).
SDM_BASE_PARTS = ("vae", "text_encoder", "tokenizer", "unet")


def shipped_marker_path(stage: str) -> Path:
    """The shipped build's marker of ``stage`` (``mini ship`` copies the build's ``stages/*.json``)."""
    return package_data.packaged(package_data.MINI_STAGES) / f"{stage}.json"


def shipped_vae_folder() -> Path | None:
    """The VAE the package ships, or ``None``: the shipped pipeline's ``vae/`` (the one its UNets were trained with,
    the single source once a pipeline is shipped), else the interim ``mini/vae`` shipped before the pipeline."""
    pipeline = package_data.packaged(package_data.MINI_PIPELINE)
    if (pipeline / "model_index.json").is_file():
        return pipeline / "vae"
    interim = package_data.packaged(package_data.MINI_VAE)
    return interim if (interim / "config.json").is_file() else None


def folder_sha256(folder: Path) -> str:
    """sha256 of a folder's files: each relative path, then its bytes, in path order."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PackageSource:
    """The stages taken from the package instead of ``--out`` and the shipped folders read for them."""

    stages: tuple[str, ...]
    folders: dict[str, Path]  # part -> folder: "vae"; for the SDM also "text_encoder", "tokenizer", "unet", "clip"

    def record(self) -> dict[str, Any]:
        """What the later stages' settings record: the stages and the sha256 of each folder read."""
        root = package_data.data_dir()
        return {
            "stages": list(self.stages),
            "sha256": {_relative(folder, root): folder_sha256(folder) for folder in self.folders.values()},
        }


def _relative(folder: Path, root: Path) -> str:
    try:
        return folder.relative_to(root).as_posix()
    except ValueError:
        return str(folder)


def inherited_record(config: MiniConfig) -> dict[str, Any] | None:
    """``from_package`` of the stage right before ``--from`` when it is built in ``--out`` on shipped stages (a
    ``--from tdm`` folder continued ``--from sdm``): the stages after it inherit it."""
    first = STAGES.index(config.stages[0])
    if first == 0 or not marker_path(config.out, STAGES[first - 1]).is_file():
        return None
    marker = marker_path(config.out, STAGES[first - 1])
    rebuild = f"move it and {config.out / STAGES[first - 1]} away to rebuild the stage"
    return read_stage_marker(marker, rebuild)["settings"].get("from_package")


def package_source(config: MiniConfig) -> PackageSource | None:
    """Where the stages before ``--from`` come from: ``None`` for ``--out`` (the stage right before is built there;
    then every earlier one must be, or have come from the package for it), else the package. ``FileNotFoundError``
    when neither has them."""
    first = config.stages[0]
    before = STAGES[: STAGES.index(first)]
    if not before:
        return None
    if marker_path(config.out, before[-1]).is_file():
        inherited = inherited_record(config) or {"stages": []}
        for stage in before:
            if stage not in inherited["stages"] and not marker_path(config.out, stage).is_file():
                raise FileNotFoundError(
                    f"--from {first} needs the {stage!r} stage built in {config.out}; build it first."
                )
        return None
    pipeline = package_data.packaged(package_data.MINI_PIPELINE)
    clip = package_data.packaged(package_data.WORLD_CLIP)
    if first == "tdm":
        vae = shipped_vae_folder()
        if vae is None:
            raise FileNotFoundError(
                f"--from tdm needs the 'vae' stage: it is not built in {config.out}, and this installation ships no "
                f"mini VAE ({pipeline / 'vae'}). Build it: drop --from, or --from vae."
            )
        folders = {"vae": vae}
    else:
        if not (pipeline / "model_index.json").is_file() or not (clip / "config.json").is_file():
            raise FileNotFoundError(
                f"--from {first} needs the 'tdm' stage: it is not built in {config.out}, and this installation ships "
                f"no mini model ({pipeline}) and world CLIP ({clip}) to start from. Build it: --from tdm, or drop "
                "--from."
            )
        folders = {part: pipeline / part for part in SDM_BASE_PARTS} | {"clip": clip}
    for stage in before:
        if not shipped_marker_path(stage).is_file():
            raise FileNotFoundError(
                f"--from {first} would take the {stage!r} stage from the package, but it ships no record of that "
                f"stage's settings ({shipped_marker_path(stage)}), so a rerun could silently mix. Ship the build "
                f"with `facediffuser mini ship` (which copies its stages/*.json), or build {stage!r} into --out."
            )
    return PackageSource(stages=before, folders=folders)


def _what_it_is(settings: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without :data:`PLACE_KEYS`, nor the world when ``recorded`` names it by a path (as markers did
    before the world was recorded by what it is): then it says where the stage ran, not on what."""
    place = PLACE_KEYS + (("world",) if isinstance(recorded.get("world"), str) else ())
    return {k: v for k, v in settings.items() if k not in place}


def check_shipped_settings(config: MiniConfig, source: PackageSource, wanted: dict[str, dict[str, Any]]) -> None:
    """The shipped stages were built with this build's recipes, seed, resolution and world (wherever it lies)."""
    for stage in source.stages:
        reship = f"reinstall the package, or build the {stage!r} stage into --out (--from {stage})"
        recorded = read_stage_marker(shipped_marker_path(stage), reship)["settings"]
        ours = _what_it_is(wanted[stage], recorded)
        _refuse_if_changed(_what_it_is(recorded, recorded), ours, stage, config, "built", shipped=True)


def check_world_clip(config: MiniConfig, source: PackageSource) -> None:
    """``--world``'s CLIP is the shipped world CLIP (its tensors rounded to float16, as ``mini ship`` stores them):
    the shipped stages were trained on that world, with its towers. Skipped, with a warning, when the package ships
    no world CLIP (only the interim VAE)."""
    import torch
    from safetensors.torch import load_file

    shipped = package_data.packaged(package_data.WORLD_CLIP)
    if not (shipped / "config.json").is_file():
        logger.warning(
            "This installation ships no world CLIP: whether --world %s is the world of the shipped %s cannot be "
            "checked here (their settings record the world they were trained on: its settings and its CLIP's sha256).",
            config.world,
            ", ".join(source.stages),
        )
        return
    mine = config.world / "clip"
    if not (mine / "config.json").is_file():
        raise FileNotFoundError(f"{mine} holds no CLIP: run `facediffuser world build --out {config.world}` first.")

    def tensors(folder: Path) -> dict[str, torch.Tensor]:
        return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}

    ours, theirs = tensors(mine), tensors(shipped)
    same = ours.keys() == theirs.keys() and all(torch.equal(ours[k].to(v.dtype), v) for k, v in theirs.items())
    if not same:
        raise ValueError(
            f"The CLIP of --world {config.world} is not the world CLIP shipped in the package ({shipped}), the world "
            f"the shipped {' and '.join(source.stages)} stage(s) were trained on. Give that world (`facediffuser "
            "world build` with its settings), or build the earlier stages into --out on this one (drop --from)."
        )


# ------------------------------------------------------------------------------------------------ stages
def build_vae(config: MiniConfig, settings: dict[str, Any], source: PackageSource | None) -> None:
    from .data import world_images
    from .vae import train_vae

    recipe = read_vae_recipe(config)
    train = world_images(config.world, "train", config.resolution)
    heldout = world_images(config.world, "test", config.resolution)
    result = train_vae(train, heldout, config.out / "vae", recipe)
    logger.info(
        "mini vae: held-out PSNR %.2f dB on %d images of held-out people",
        result["heldout"]["psnr"],
        result["heldout"]["images"],
    )


def fresh_fuser(seed: int, width: int):
    """The fuser both starting pipelines get: fresh, seeded by ``seed + 1`` (the fresh UNet takes ``seed``)."""
    import torch

    from ...models.fuser import SubjectFuser

    torch.manual_seed(seed + 1)
    return SubjectFuser(embed_dim=width)


def _check_widths(text_encoder, image_encoder) -> int:
    width = text_encoder.config.hidden_size
    if image_encoder.config.projection_dim != width:
        raise ValueError(
            f"The world CLIP's text width ({width}) and image projection ({image_encoder.config.projection_dim}) "
            "differ; the fuser needs them equal."
        )
    return width


def assemble_tdm_base(config: MiniConfig, unet_settings: UNetSettings, folder: Path, vae_folder: Path) -> None:
    """The TDM's starting pipeline: the trained VAE (``vae_folder``: the build's, or the package's), the world CLIP's
    towers and tokenizer, fresh seeded UNets (both slots) and fuser, the SD scheduler."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    from ...io.tiny import SD_SCHEDULER_CONFIG
    from ...io.tokenizer import load_folder_tokenizer
    from ...pipeline import FaceDiffuserPipeline

    clip = config.world / "clip"
    if not (clip / "config.json").is_file():
        raise FileNotFoundError(f"{clip} holds no CLIP: run `facediffuser world build --out {config.world}` first.")
    vae = AutoencoderKL.from_pretrained(vae_folder, torch_dtype=torch.float32)  # the package's is float16 storage
    text_encoder = CLIPTextModel.from_pretrained(clip)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(clip)
    width = _check_widths(text_encoder, image_encoder)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    torch.manual_seed(config.seed)
    unet = unet_settings.build(cross_attention_dim=width, sample_size=config.resolution // scale)
    fuser = fresh_fuser(config.seed, width)
    pipe = FaceDiffuserPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_folder_tokenizer(clip, text_encoder.config.max_position_embeddings),
        unet=unet,
        subject_unet=copy.deepcopy(unet),
        image_encoder=image_encoder,
        subject_fuser=fuser,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def assemble_sdm_base(tdm: Path, folder: Path) -> None:
    """The SDM's starting pipeline: the trained TDM pipeline with its scene UNet copied into the subject slot."""
    from ...pipeline import FaceDiffuserPipeline

    pipe = FaceDiffuserPipeline.from_pretrained(tdm, use_safetensors=True)
    pipe.subject_unet.load_state_dict(pipe.unet.state_dict())
    pipe.save_pretrained(folder, safe_serialization=True)


def assemble_sdm_base_from_package(config: MiniConfig, source: PackageSource, folder: Path) -> None:
    """The SDM's starting pipeline from the shipped stages: what :func:`assemble_sdm_base` gives from a TDM stage
    whose weights are the shipped ones. The shipped pipeline's VAE, text tower, tokenizer and scene UNet (the trained
    TDM's: the SDM stage trains the subject UNet, the fuser and the vision tower, never the scene UNet), copied into
    the subject slot; the shipped world CLIP's vision tower (untrained: the shipped pipeline's own was fine-tuned by
    the SDM); a fresh fuser seeded as the TDM stage seeds it. Loaded in float32 from float16 storage."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    from ...io.tiny import SD_SCHEDULER_CONFIG
    from ...pipeline import FaceDiffuserPipeline

    parts = source.folders
    text_encoder = CLIPTextModel.from_pretrained(parts["text_encoder"], dtype=torch.float32)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(parts["clip"], dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(parts["unet"], torch_dtype=torch.float32)
    pipe = FaceDiffuserPipeline(
        vae=AutoencoderKL.from_pretrained(parts["vae"], torch_dtype=torch.float32),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(parts["tokenizer"]),
        unet=unet,
        subject_unet=copy.deepcopy(unet),
        image_encoder=image_encoder,
        subject_fuser=fresh_fuser(config.seed, _check_widths(text_encoder, image_encoder)),
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def run_trainer(config: MiniConfig, stage: str, base: Path) -> Path:
    """``facediffuser train <stage>``'s Python entry on the world's data, resuming the stage's latest checkpoint."""
    from ...io.configuration import build_config
    from ...training import checkpoints
    from ...training.config import ModelKind, TrainConfig
    from ...training.runs import train

    values, _ = read_train_recipe(config, stage)
    data = config.world / ("scenes" if stage == "tdm" else "portraits")
    output = config.out / stage / "train"
    resume = "latest" if checkpoints.list_checkpoints(output / "checkpoints") else None
    managed = {"data_root": data, "output_dir": output, "pretrained": str(base), "seed": config.seed, "resume": resume}
    train_config = build_config(TrainConfig, base={**values, **managed})
    logger.info("mini %s: %s", stage, json.dumps(config_to_dict(train_config)))
    return train(ModelKind(stage), train_config)


def build_tdm(config: MiniConfig, settings: dict[str, Any], source: PackageSource | None) -> None:
    _, unet = read_train_recipe(config, "tdm")
    base = config.out / "tdm" / "base"
    if not (base / "model_index.json").is_file():
        vae = source.folders["vae"] if source is not None else config.out / "vae" / "vae"
        assemble_tdm_base(config, unet, base, vae)
    run_trainer(config, "tdm", base)


def build_sdm(config: MiniConfig, settings: dict[str, Any], source: PackageSource | None) -> None:
    base = config.out / "sdm" / "base"
    if not (base / "model_index.json").is_file():
        if source is not None and "tdm" in source.stages:
            assemble_sdm_base_from_package(config, source, base)
        else:
            assemble_sdm_base(config.out / "tdm" / "train", base)
    output = run_trainer(config, "sdm", base)
    if head_references(config):  # its detector was checked to exist
        attach_face_detector(output, config.world / "faces" / "detector")


def head_references(config: MiniConfig) -> bool:
    """Whether the SDM recipe trains on head references (``reference_region = "head"``): its pipeline then carries
    the world's face detector, to cut the references to heads at test too."""
    return read_train_recipe(config, "sdm")[0].get("reference_region") == "head"


def attach_face_detector(pipeline: Path, detector: Path) -> None:
    """Makes the SDM's pipeline folder cut its references to faces with the world's face detector (``faces/detector``
    of `world build`), for an SDM trained on head references (``reference_region = "head"``); see
    :func:`facediffuser.training.export.attach_face_detector`. Idempotent."""
    from ...training.export import attach_face_detector as attach

    read_json(pipeline / "model_index.json", dict, "a model index")  # a broken index names itself first
    if not (detector / "config.json").is_file():
        raise FileNotFoundError(f"{detector} holds no face detector: give the faces/detector of `world build`.")
    attach(pipeline, detector)


def build_ip_adapter(config: MiniConfig, settings: dict[str, Any], source: PackageSource | None) -> None:
    """A new IP-Adapter on the trained TDM's frozen scene UNet, reading the world CLIP's untrained vision tower:
    the TDM stage's pipeline holds both (the SDM stage fine-tunes a copy of the vision tower, not this one); from
    the package, the same parts assembled as for ``--from sdm``."""
    base = config.out / "tdm" / "train"
    if source is not None and "tdm" in source.stages:
        base = config.out / "ip-adapter" / "base"
        if not (base / "model_index.json").is_file():
            assemble_sdm_base_from_package(config, source, base)
    run_trainer(config, "ip-adapter", base)


BUILDERS: dict[str, Callable[[MiniConfig, dict[str, Any], PackageSource | None], None]] = {
    "vae": build_vae,
    "tdm": build_tdm,
    "sdm": build_sdm,
    "ip-adapter": build_ip_adapter,
}


def recipe_files(config: MiniConfig) -> list[Path]:
    """The recipes this build reads: the adapter's only when it builds the adapter."""
    files = [config.vae_config, config.tdm_config, config.sdm_config]
    return files + [config.ip_adapter_config] if "ip-adapter" in config.stages else files


def check_inputs(config: MiniConfig) -> PackageSource | None:
    """Everything a user can get wrong, before any model loads; where the stages before ``--from`` come from."""
    for path in recipe_files(config):
        if not path.is_file():
            raise FileNotFoundError(f"Recipe {path} not found: run from the repository root or pass its path.")
    for name in ("scenes", "portraits"):
        if not (config.world / name / "image_ids_train.txt").is_file():
            raise FileNotFoundError(
                f"{config.world / name} is not a world data set: run `facediffuser world build --out {config.world}` "
                "first, or pass --world."
            )
    detector = config.world / "faces" / "detector"
    if "sdm" in config.stages and head_references(config) and not (detector / "config.json").is_file():
        raise FileNotFoundError(
            f"{config.sdm_config} trains the SDM on head references, so its pipeline needs the world's face "
            f"detector, and {detector} holds none: run `facediffuser world build --out {config.world}` (or "
            "`facediffuser world faces`) first."
        )
    return package_source(config)


def run_stages(config: MiniConfig) -> dict[str, float]:
    """Runs the stages from ``--from`` on (skipping those built with the same settings); returns wall seconds."""
    import torch

    from ...io.output_folders import check, claim, own

    inputs = [config.world, *recipe_files(config)]
    check(config.out, command=COMMAND, inputs=inputs, legacy=LEGACY)
    source = check_inputs(config)
    world = world_record(config.world)
    wanted = {stage: stage_settings(config, stage, world) for stage in STAGES[: STAGES.index(config.stages[-1]) + 1]}
    if source is None:
        inherited = inherited_record(config)
        if inherited is not None:  # --out's earlier stages were built on shipped ones: so are the stages after them
            for stage in STAGES[len(inherited["stages"]) : len(wanted)]:
                wanted[stage] = {**wanted[stage], "from_package": inherited}
        for stage in STAGES[len((inherited or {"stages": []})["stages"]) : STAGES.index(config.stages[0])]:
            stage_state(config, stage, wanted[stage])  # a skipped earlier stage must still match
    else:
        check_world_clip(config, source)  # another world's CLIP is named as such, before the settings' difference
        check_shipped_settings(config, source, wanted)
        record = source.record()
        logger.info("mini: the %s stage(s) come from the package: %s", ", ".join(source.stages), record["sha256"])
        for stage in config.stages:
            wanted[stage] = {**wanted[stage], "from_package": record}
    # Every stage to run is checked before the first runs: a later one built on other stages is refused up front.
    for stage in config.stages:
        stage_state(config, stage, wanted[stage])
    claim(config.out, command=COMMAND, inputs=inputs, legacy=LEGACY, entries=[*(s + "/" for s in STAGES), "stages/"])
    torch.set_num_threads(config.threads)

    def build(stage: str) -> None:
        torch.manual_seed(config.seed)
        BUILDERS[stage](config, wanted[stage], source)

    return stage_book(config).run(
        config.stages, wanted, build=build, own=lambda stage: own(config.out, f"{stage}/", "stages/", command=COMMAND)
    )
