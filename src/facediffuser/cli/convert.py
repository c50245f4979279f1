"""``facediffuser convert``: released SDM/TDM (or FastComposer) ``.bin`` files + an SD v1.5 folder -> a pipeline."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..io.configuration import add_dataclass_arguments, build_config


@dataclass
class ConvertConfig:
    sd15: Path = field(metadata={"help": "SD v1.5 diffusers folder (tokenizer, scheduler, configs)"})
    sdm: Path = field(metadata={"help": "released SDM/pytorch_model.bin, or FastComposer's pytorch_model.bin"})
    out: Path = field(metadata={"help": "output pipeline folder (safetensors)"})
    tdm: Path | None = field(default=None, metadata={"help": "released TDM/pytorch_model.bin (default: SD v1.5 UNet)"})
    scene_model: Path | None = field(
        default=None, metadata={"help": "any SD1.x UNet as the TDM: a diffusers folder or a .safetensors file"}
    )
    image_encoder_config: Path | None = field(
        default=None, metadata={"help": "CLIP vision config.json or folder (default: inferred, ViT-L/14 heads)"}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace an existing pipeline folder (one with a model_index.json)"}
    )


def run(args: argparse.Namespace) -> int:
    from ..io.convert import check_output_folder, convert_release, save_pipeline_atomically

    config = build_config(ConvertConfig, args)
    inputs = [config.sd15, config.sdm, config.tdm, config.scene_model, config.image_encoder_config]
    inputs = [path for path in inputs if path is not None]
    check_output_folder(config.out, overwrite=config.overwrite, inputs=inputs)  # before any model loads
    pipe = convert_release(config.sd15, config.sdm, config.tdm, config.scene_model, config.image_encoder_config)
    out = save_pipeline_atomically(pipe, config.out, overwrite=config.overwrite, inputs=inputs)
    print(f"Wrote {out}. Generate with: facediffuser generate --model {out} --prompt ... --ref ...")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="import released weights into a pipeline folder", description=__doc__
    )
    add_dataclass_arguments(parser, ConvertConfig)
    parser.set_defaults(func=run)
