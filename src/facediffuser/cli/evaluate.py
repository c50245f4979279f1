"""``facediffuser evaluate``: generate a benchmark with several methods, score IP and PC, write the reports.

Run it on several processes or GPUs with accelerate; each process takes its own share of the work::

    accelerate launch --num_processes 4 -m facediffuser.cli.main evaluate --model ... --data ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..io.configuration import add_dataclass_arguments, build_config

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Generate a benchmark's cases with each method (tdm, sdm, face-diffuser) and each --model, score identity "
    "preservation (IP) and prompt consistency (PC), and write scores.csv, summary.json, table.md (the paper's Table 1 "
    "with 95% intervals, per prompt group and per subject), sweep.png (Fig. 8) and fusion_masks/ (Fig. 9). Images "
    "and scores already in --out are reused. Under `accelerate launch` the work is split between the processes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.harness import EvaluationConfig

    parser.add_argument("--config", type=Path, help="TOML file of settings (field names as keys); flags override it")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="instead of evaluating, merge the summary.json of finished runs (single- and multi-subject, any models) "
        "into one Table 1, written to --out/table1.md; runs must agree on everything that changes a score",
    )
    parser.add_argument(
        "--samplers",
        nargs="*",
        metavar="SCHEDULER:STEPS[:noise][:wSCALE][@MODEL]",
        help="instead of one evaluation, the sampler study: Face-diffuser under each setting (e.g. ddim:50 dpm++:10 "
        "dpm++-karras:8 unipc:10:noise; ':noise' bounds the stages by noise level, ':w1.5' sets that setting's "
        "guidance scale (else --guidance-scale, else the model's own), '@FOLDER' or '@NAME=FOLDER' draws it with "
        "another model, such as a distilled one: "
        "lcm:4:w2@lcm=LCM), the first the reference, each "
        "run in --out/<setting>/ (resumable), then --out/samplers.md (each setting's difference from the reference "
        "with paired 95%% intervals over cases), samplers.json and pareto.png (against UNet evaluations per image); "
        "without settings, the study of docs/performance.md, from ddim:50 down to 4 steps",
    )
    parser.add_argument(
        "--pool-studies",
        type=Path,
        nargs="+",
        metavar="STUDY",
        help="instead of evaluating, pool finished sampler studies of one model that differ only in --seed into one "
        "paired table (each image against the same case and seed under the reference; cases resampled with their "
        "images of every seed), written to --out/samplers.md, samplers.json and pareto.png",
    )
    add_dataclass_arguments(parser, EvaluationConfig)


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="benchmark methods on IP and PC", description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)


def combine(runs: list[Path], out: Path) -> Path:
    from ..evaluation.harness import COMMAND, ENTRIES, LEGACY
    from ..evaluation.reports import combine_tables
    from ..io.files import read_json
    from ..io.output_folders import check, claim, own
    from ..io.outputs import atomic_write

    check(out, command=COMMAND, inputs=runs, legacy=LEGACY)  # before anything is read or written
    summaries = []
    for run_dir in runs:
        path = run_dir / "summary.json" if run_dir.is_dir() else run_dir
        if not path.is_file():
            raise FileNotFoundError(f"No summary.json in {run_dir}: give the --out folder of a finished evaluation.")
        summaries.append(read_json(path, dict, "the summary of an evaluation"))
    table = combine_tables(summaries).encode("utf-8")
    claim(out, command=COMMAND, inputs=runs, legacy=LEGACY, entries=ENTRIES)
    (target,) = own(out, "table1.md", command=COMMAND)
    atomic_write(target, lambda f: f.write(table), overwrite=True)
    return target


def run(args: argparse.Namespace) -> int:
    from ..evaluation.harness import EvaluationConfig, evaluate

    jobs = {"--combine": args.combine, "--pool-studies": args.pool_studies, "--samplers": args.samplers}
    given = [flag for flag, value in jobs.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"{given[0]} and {given[1]} are two different jobs: give one of them.")
    if args.combine:
        out = Path(getattr(args, "out", Path("outputs/evaluation")))
        logger.info("Wrote %s", combine(args.combine, out))
        return 0
    if args.pool_studies:
        from ..evaluation.samplers import pool_studies

        out = Path(getattr(args, "out", Path("outputs/evaluation")))
        _, files = pool_studies(args.pool_studies, out)
        print(files[0].read_text(encoding="utf-8"))
        return 0
    config = build_config(EvaluationConfig, args, args.config)
    if args.samplers is not None:
        from ..evaluation.samplers import DEFAULT_SETTINGS, run_study

        _, files = run_study(config, args.samplers or DEFAULT_SETTINGS)
        print(files[0].read_text(encoding="utf-8"))
        return 0
    result = evaluate(config)
    if result.summary is not None:
        print((Path(config.out) / "table.md").read_text(encoding="utf-8"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m facediffuser.cli.evaluate ...``: the ``evaluate`` sub-command alone."""
    from .main import main as facediffuser_main

    return facediffuser_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
