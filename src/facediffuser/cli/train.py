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

from ..training.config import ModelKind, TrainConfig
from .config_args import add_dataclass_arguments, build_config

HELP = "train the SDM (subject model) or the TDM (scene model) on FFHQ-wild data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=[k.value for k in ModelKind], help="which model to train")
    parser.add_argument("--config", type=Path, default=None, help="TOML file of settings (flags override it)")
    add_dataclass_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import train  # heavy imports only when training

    config = build_config(TrainConfig, args, args.config)
    out = train(ModelKind(args.model), config)
    logging.getLogger(__name__).info("Done: load the model with FaceDiffuserPipeline.from_pretrained(%r).", str(out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m facediffuser.cli.train`` (what ``accelerate launch -m`` runs)."""
    parser = argparse.ArgumentParser(prog="facediffuser train", description=HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"facediffuser train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
