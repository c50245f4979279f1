"""``facediffuser convert``: released SDM/TDM (or FastComposer) ``.bin`` files + an SD v1.5 folder -> a pipeline;
or an SDXL base folder + a trained SDXL subject model (or a CLIP image encoder, to train one) -> an SDXL pipeline."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..io.configuration import add_dataclass_arguments, build_config


@dataclass
class ConvertConfig:
    out: Path = field(metadata={"help": "output pipeline folder (safetensors)"})
    sd15: Path | None = field(
        default=None, metadata={"help": "SD v1.5 diffusers folder (tokenizer, scheduler, configs); or --sdxl"}
    )
    sdm: Path | None = field(
        default=None,
        metadata={
            "help": "released SDM/pytorch_model.bin, or FastComposer's pytorch_model.bin; with --sdxl, a trained SDXL "
            "Face-diffuser folder"
        },
    )
    sdxl: Path | None = field(
        default=None,
        metadata={"help": "an SDXL base folder (diffusers' layout): the SDXL pipeline's VAE, text towers and TDM"},
    )
    image_encoder: Path | None = field(
        default=None,
        metadata={"help": "with --sdxl and no --sdm: a CLIP vision folder; the SDM starts untrained (for train sdm)"},
    )
    tdm: Path | None = field(default=None, metadata={"help": "released TDM/pytorch_model.bin (default: SD v1.5 UNet)"})
    scene_model: Path | None = field(
        default=None,
        metadata={"help": "any UNet of the base (SD1.x, or SDXL with --sdxl) as the TDM: a folder or a .safetensors"},
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
    inputs = [config.sd15, config.sdm, config.sdxl, config.image_encoder]
    inputs += [config.tdm, config.scene_model, config.image_encoder_config]
    inputs = [path for path in inputs if path is not None]
    if (config.sd15 is None) == (config.sdxl is None):
        raise ValueError("Give --sd15 (with --sdm, the released checkpoint) or --sdxl (an SDXL base), one of the two.")
    if config.sd15 is not None and (config.sdm is None or config.image_encoder is not None):
        raise ValueError("With --sd15 give --sdm, the released SDM checkpoint (--image-encoder goes with --sdxl).")
    if config.sdxl is not None and (config.tdm is not None or config.image_encoder_config is not None):
        raise ValueError(
            "--tdm and --image-encoder-config read released SD1.5 checkpoints: leave them out with --sdxl."
        )
    check_output_folder(config.out, overwrite=config.overwrite, inputs=inputs)  # before any model loads
    if config.sdxl is not None:
        from ..io.convert import assemble_xl_pipeline

        pipe = assemble_xl_pipeline(config.sdxl, config.sdm, config.image_encoder, config.scene_model)
    else:
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
