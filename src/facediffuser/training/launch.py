"""How the processes of a run were launched: the CPU fallback of a distributed launch, and a launch that starts fewer
processes than it was asked for."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

# Where launchers write the number of processes they started: torchrun (and `accelerate launch --multi_gpu`),
# Open MPI, MPICH / Intel MPI, MVAPICH.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_without_accelerator() -> bool:
    """True for a multi-process launch (torchrun, ``accelerate launch --multi_gpu``) on a machine with no GPU: the
    processes then train on the CPU and talk over gloo (accelerate alone would not start them distributed)."""
    if os.environ.get("LOCAL_RANK") is None:
        return False
    probe = getattr(torch, "accelerator", None)
    return not (probe.is_available() if probe is not None else torch.cuda.is_available())


def process_count_mismatch(running: int, environ: Mapping[str, str] | None = None) -> str | None:
    """A sentence for the user when the launch asked for another number of processes than the ``running`` ones;
    ``None`` when they agree or nothing asked for a number.

    ``accelerate launch`` sets ``MASTER_ADDR`` only when it was asked for more than one process or machine. Its
    ``--cpu`` launcher then starts one process (several need an MPI hostfile), which sets no world size: that
    combination is the silent single-process run.
    """
    env = os.environ if environ is None else environ
    for name in WORLD_SIZE_VARIABLES:
        value = env.get(name, "").strip()
        if value.isdigit():
            if int(value) == running:
                return None
            return (
                f"The launcher started {value} processes ({name}={value}) but only {running} process"
                f"{' runs' if running == 1 else 'es run'} in this training. Check the accelerate configuration."
            )
    if running == 1 and "MASTER_ADDR" in env and "ACCELERATE_USE_CPU" in env:
        return (
            "accelerate launch was asked for several processes, but only 1 process runs: `accelerate launch --cpu "
            "--num_processes N` starts a single process unless an MPI launcher is configured (--mpirun_hostfile). "
            "On a machine without a GPU, run `accelerate launch --multi_gpu --num_processes N ...`: the processes "
            "then train on the CPU over gloo."
        )
    return None


# DeepSpeed applies these itself (accelerate's `clip_grad_norm_` leaves clipping to it, and its engine counts the
# micro-batches of a step): the accelerate config's values must be the trainer's. Setting, flag, TrainConfig field.
DEEPSPEED_SETTINGS = (
    ("gradient_accumulation_steps", "--gradient-accumulation-steps", "gradient_accumulation_steps"),
    ("gradient_clipping", "--max-grad-norm", "max_grad_norm"),
)


def fill_deepspeed_settings(deepspeed_config: dict, config) -> None:
    """Writes the trainer's gradient accumulation and clipping into the DeepSpeed config that accelerate hands to
    DeepSpeed where it says ``auto`` or nothing (so an accelerate config may leave them out); raises ``ValueError``
    where it names another value (accelerate would take DeepSpeed's accumulation over the trainer's with a warning,
    and clip at a norm other than ``--max-grad-norm``)."""
    for key, flag, name in DEEPSPEED_SETTINGS:
        want = getattr(config, name)
        have = deepspeed_config.get(key, "auto")
        if have == "auto":
            deepspeed_config[key] = want
        elif float(have) != float(want):
            raise ValueError(
                f"The accelerate config's DeepSpeed {key} is {have} but {flag} is {want}: DeepSpeed applies it in the "
                f"trainer's stead. Leave {key} out of the accelerate config (the trainer fills it in), or make the "
                "two equal."
            )
