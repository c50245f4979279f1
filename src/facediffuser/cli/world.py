"""``facediffuser world``: build the procedural world (data sets, references, its CLIP and face recognizer).

``facediffuser world build --out DIR`` runs every stage; ``render``, ``clip``, ``faces`` and ``report`` run one part
(with the stages it needs before it). Every stage is seeded and skipped when already built with the same settings.
"""

from __future__ import annotations

import argparse
import logging

from ..io.configuration import add_dataclass_arguments, build_config

logger = logging.getLogger(__name__)

# command -> the stages it runs
PARTS = {
    "build": ("identities", "scenes", "portraits", "references", "clip", "faces", "report"),
    "render": ("identities", "scenes", "portraits", "references"),
    "clip": ("identities", "scenes", "portraits", "clip"),
    "faces": ("identities", "scenes", "portraits", "faces"),
    "report": ("identities", "scenes", "portraits", "references", "clip", "faces", "report"),
}
HELP = {
    "build": "everything: data sets, references, CLIP, face recognizer, held-out figures",
    "render": "the `scenes` and `portraits` data sets (FFHQ-wild layout) and the reference folders",
    "clip": "train the world's CLIP (a transformers CLIPModel folder)",
    "faces": "train the world's face detector and identity embedder (--ip-backend mini)",
    "report": "the held-out figures of the CLIP and the face networks",
}
DESCRIPTION = (
    "A procedural world of people in scenes: two data sets in the FFHQ-wild layout (`scenes` for the TDM, "
    "`portraits` for the SDM), reference folders of held-out people, the world's CLIP and its face recognizer."
)


def run(args: argparse.Namespace) -> int:
    from ..lab.world.build import WorldConfig, run_stages

    config = build_config(WorldConfig, args)
    times = run_stages(config, PARTS[args.part])
    for stage, seconds in times.items():
        logger.info("%-10s %7.0f s", stage, seconds)
    logger.info("Done: %s (%.0f s this run).", config.out, sum(times.values()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..lab.world.build import WorldConfig

    parser = subparsers.add_parser("world", help="build the procedural world and its networks", description=DESCRIPTION)
    parts = parser.add_subparsers(dest="part", required=True, metavar="PART")
    for name, stages in PARTS.items():
        sub = parts.add_parser(name, help=HELP[name], description=f"{HELP[name]} (stages: {', '.join(stages)})")
        add_dataclass_arguments(sub, WorldConfig)
        sub.set_defaults(func=run)
