"""``facediffuser train sdm|tdm``: train the subject-augmented or the text-driven model.

Flags come from :class:`~facediffuser.training.TrainConfig`; ``--config run.toml`` supplies any of them (keys are
the field names), and flags given on the command line win. Under several processes, launch the module with
accelerate::

    accelerate launch --config_file configs/accelerate_multi_gpu.yaml -m facediffuser.cli.train sdm --data-root ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..io.configuration import add_dataclass_arguments, build_config
from ..training.config import ModelKind, TrainConfig, check_output_dir

HELP = "train the SDM (subject model) or the TDM (scene model) on FFHQ-wild data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=[k.value for k in ModelKind], help="which model to train")
    parser.add_argument("--config", type=Path, default=None, help="TOML file of settings (flags override it)")
    add_dataclass_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    # The trainer (accelerate, the data reader, the losses) loads here, when a run starts: importing this module, or
    # facediffuser.training, loads only the settings.
    config = build_config(TrainConfig, args, args.config, name_flags_in_errors=True)
    check_output_dir(config)  # before any model loads; the trainer claims the folder when the run starts
    from ..training.trainer import train  # settings checked first: a refusal costs no import of the trainer

    out = train(ModelKind(args.model), config)
    logging.getLogger(__name__).info("Done: load the model with FaceDiffuserPipeline.from_pretrained(%r).", str(out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m facediffuser.cli.train`` (what ``accelerate launch -m`` runs)."""
    from .main import main as facediffuser_main

    return facediffuser_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
