"""``facediffuser mini build``: train the mini Face-diffuser on the procedural world (VAE, then TDM, then SDM).
``facediffuser mini ship``: put a finished build, the world's CLIP and face recognizer and example references into
the package (see :mod:`facediffuser.lab.mini.ship`).
``facediffuser mini people``: a folder of validation people, on whom settings are chosen rather than on the
benchmark's (see :mod:`facediffuser.lab.mini.people`).

Run it after ``facediffuser world build``. Every stage is seeded, resumes where it was interrupted, and is skipped
when already built with the same settings (see :mod:`facediffuser.lab.mini.build`).
"""

from __future__ import annotations

import argparse
import logging

from ..io.configuration import add_dataclass_arguments, build_config

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Train the mini Face-diffuser on the world of `facediffuser world build`: a small VAE on its renders, the TDM on "
    "`scenes`, the SDM (from the TDM) on `portraits`, each with the project's own trainer and the world CLIP's towers. "
    "--from tdm / --from sdm start from the stages shipped in the package when --out lacks the ones before "
    "(same recorded settings and world CLIP required; see docs/mini.md)."
)


def run(args: argparse.Namespace) -> int:
    from ..lab.mini.build import MiniConfig, run_stages

    config = build_config(MiniConfig, args)
    times = run_stages(config)
    for stage, seconds in times.items():
        logger.info("%-4s %7.0f s", stage, seconds)
    logger.info("Done: %s (%.0f s this run).", config.out, sum(times.values()))
    return 0


SHIP_DESCRIPTION = (
    "Ship a finished mini build into the package's data folder: the pipeline in float16 (at most --max-mib), the "
    "world's CLIP and face recognizer, and example references of held-out people. Each folder is replaced as a whole."
)


def run_ship(args: argparse.Namespace) -> int:
    from ..lab.mini.ship import ShipConfig, ship

    report = ship(build_config(ShipConfig, args))
    print("mini pipeline, float16, per component:")
    print(report.size_table())
    for name, folder in report.folders.items():
        print(f"{name:<9} {folder}")
    print(f"examples: {', '.join(report.people)}")
    return 0


PEOPLE_DESCRIPTION = (
    "Write a folder of validation people for `facediffuser evaluate --benchmark mini --data OUT`: the world's "
    "held-out people that the benchmark does not score (or, with --training N, renders of N training people), so "
    "that settings are chosen on them and reported on the benchmark."
)


def run_people(args: argparse.Namespace) -> int:
    from ..lab.mini.people import PeopleConfig, write_people

    config = build_config(PeopleConfig, args)
    names = write_people(config)
    print(f"{len(names)} people -> {config.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..lab.mini.build import MiniConfig
    from ..lab.mini.people import PeopleConfig
    from ..lab.mini.ship import ShipConfig

    parser = subparsers.add_parser(
        "mini", help="train the mini Face-diffuser on the world, and ship it", description=DESCRIPTION
    )
    parts = parser.add_subparsers(dest="part", required=True, metavar="PART")
    sub = parts.add_parser("build", help="the whole recipe: vae, tdm, sdm", description=DESCRIPTION)
    add_dataclass_arguments(sub, MiniConfig)
    sub.set_defaults(func=run)
    sub = parts.add_parser("ship", help="put a finished build into the package", description=SHIP_DESCRIPTION)
    add_dataclass_arguments(sub, ShipConfig)
    sub.set_defaults(func=run_ship)
    sub = parts.add_parser("people", help="a folder of validation people", description=PEOPLE_DESCRIPTION)
    add_dataclass_arguments(sub, PeopleConfig)
    sub.set_defaults(func=run_people)
