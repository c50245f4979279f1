"""``facediffuser mini build``: train the mini Face-diffuser on the procedural world (VAE, then TDM, then SDM).

Run it after ``facediffuser world build``. Every stage is seeded, resumes where it was interrupted, and is skipped
when already built with the same settings (see :mod:`facediffuser.mini.build`).
"""

from __future__ import annotations

import argparse
import logging

from ..configuration import add_dataclass_arguments, build_config

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Train the mini Face-diffuser on the world of `facediffuser world build`: a small VAE on its renders, the TDM on "
    "`scenes`, the SDM (from the TDM) on `portraits`, each with the project's own trainer and the world CLIP's towers."
)


def run(args: argparse.Namespace) -> int:
    from ..mini.build import MiniConfig, run_stages

    config = build_config(MiniConfig, args)
    times = run_stages(config)
    for stage, seconds in times.items():
        logger.info("%-4s %7.0f s", stage, seconds)
    logger.info("Done: %s (%.0f s this run).", config.out, sum(times.values()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..mini.build import MiniConfig

    parser = subparsers.add_parser("mini", help="train the mini Face-diffuser on the world", description=DESCRIPTION)
    parts = parser.add_subparsers(dest="part", required=True, metavar="PART")
    sub = parts.add_parser("build", help="the whole recipe: vae, tdm, sdm", description=DESCRIPTION)
    add_dataclass_arguments(sub, MiniConfig)
    sub.set_defaults(func=run)
