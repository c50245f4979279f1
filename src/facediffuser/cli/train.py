"""``facediffuser train sdm|tdm|ip-adapter``: train the subject-augmented or the text-driven model, or an IP-Adapter on
the frozen scene model (the adapter file and its image encoder, for ``generate --ip-adapter``).
``facediffuser train lcm``: distil one UNet of a pipeline folder into a few-step latent-consistency student.
``facediffuser train export``: a pipeline folder from one checkpoint of a run, with its EMA or its raw weights.

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

HELP = (
    "train the SDM (subject model), the TDM (scene model) or an IP-Adapter on FFHQ-wild data, distil one of them into "
    "a few-step LCM, or export a checkpoint"
)
MODEL_HELP = {
    ModelKind.SDM.value: "train the SDM (subject-augmented model) on FFHQ-wild data",
    ModelKind.TDM.value: "train the TDM (text-driven scene model) on FFHQ-wild data",
    ModelKind.IP_ADAPTER.value: (
        "train an IP-Adapter (image projection and image key/value layers) on the frozen scene UNet of --pretrained, "
        "with its vision tower, on FFHQ-wild data; writes ip-adapter.safetensors and image_encoder/ (what "
        "load_ip_adapter and generate --ip-adapter read)"
    ),
    ModelKind.LCM.value: (
        "distil one UNet of --pretrained (--lcm-unet tdm or sdm) into a latent-consistency (LCM) student that samples "
        "in 2 to 8 steps; writes the pipeline folder with the student and LCMScheduler"
    ),
}
EXPORT_HELP = (
    "write a pipeline folder from one checkpoint of a training run, with the weights its own export ships (the EMA "
    "when the run kept one) or the raw weights the optimizer trained; the run folder is only read"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``train sdm`` and ``train tdm``."""
    parser.add_argument("--config", type=Path, default=None, help="TOML file of settings (flags override it)")
    add_dataclass_arguments(parser, TrainConfig)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="the --output-dir of a `facediffuser train` run")
    parser.add_argument("--step", type=int, required=True, help="the step of the checkpoint to export")
    parser.add_argument(
        "--weights",
        choices=("ema", "raw"),
        default="ema",
        help="ema (default): what the run ships, its moving average when it kept one; raw: the optimizer's weights",
    )
    parser.add_argument("--out", type=Path, required=True, help="the pipeline folder to write (a new folder)")
    parser.add_argument(
        "--face-detector",
        type=Path,
        default=None,
        help="for an SDM trained on head references: a face detector folder (default: the run's own face_detector)",
    )


def run(args: argparse.Namespace) -> int:
    # The trainer (accelerate, the data reader, the losses) loads here, when a run starts: importing this module, or
    # facediffuser.training, loads only the settings.
    config = build_config(TrainConfig, args, args.config, name_flags_in_errors=True)
    check_output_dir(config)  # before any model loads; the trainer claims the folder when the run starts
    kind = ModelKind(args.model)
    from ..training.model_xl import check_base_for

    check_base_for(kind, config.pretrained)
    from ..training.runs import train  # settings checked first: a refusal costs no import of the trainer

    out = train(kind, config)
    log = logging.getLogger(__name__)
    if kind is ModelKind.IP_ADAPTER:
        log.info("Done: use the adapter with `facediffuser generate --ip-adapter %s`.", out)
    else:
        log.info("Done: try the model with `facediffuser generate --model %s`.", out)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..training.checkpoint_export import export_checkpoint  # checks everything before a model loads

    out = export_checkpoint(args.run, args.step, args.out, weights=args.weights, face_detector=args.face_detector)
    log = logging.getLogger(__name__)
    if (out / "ip-adapter.safetensors").is_file():
        log.info("Done: use the adapter with `facediffuser generate --ip-adapter %s`.", out)
    else:
        log.info("Done: load the model with FaceDiffuserPipeline.from_pretrained(%r).", str(out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    actions = parser.add_subparsers(dest="model", required=True, metavar="{sdm,tdm,ip-adapter,lcm,export}")
    for kind in ModelKind:
        model = actions.add_parser(kind.value, help=MODEL_HELP[kind.value], description=MODEL_HELP[kind.value])
        add_arguments(model)
        model.set_defaults(func=run)
    export = actions.add_parser("export", help=EXPORT_HELP, description=EXPORT_HELP)
    add_export_arguments(export)
    export.set_defaults(func=run_export)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m facediffuser.cli.train`` (what ``accelerate launch -m`` runs)."""
    from .main import main as facediffuser_main

    return facediffuser_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
