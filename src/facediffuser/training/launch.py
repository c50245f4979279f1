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
