"""How a run was launched: a launch that starts fewer processes than it was asked for is named; a CPU run keeps its
freed large blocks (the C allocator's settings of the training process)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from facediffuser.training.launch import process_count_mismatch

# What `accelerate launch --cpu --num_processes 2` leaves in the environment of the single process it starts.
ACCELERATE_CPU_TWO = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_accelerate_cpu_launch_of_several_processes_that_runs_one_is_named():
    message = process_count_mismatch(1, ACCELERATE_CPU_TWO)
    assert message is not None and "only 1 process runs" in message and "--multi_gpu" in message


def test_world_size_that_differs_from_the_running_processes_is_named():
    message = process_count_mismatch(1, {"WORLD_SIZE": "4", "MASTER_ADDR": "h"})
    assert message is not None and "started 4 processes (WORLD_SIZE=4) but only 1 process runs" in message
    assert "OMPI_COMM_WORLD_SIZE=2" in process_count_mismatch(3, {"OMPI_COMM_WORLD_SIZE": "2"})


def test_launches_that_agree_say_nothing():
    assert process_count_mismatch(1, {}) is None  # plain `python -m facediffuser.cli.train`
    assert process_count_mismatch(1, {"ACCELERATE_USE_CPU": "True"}) is None  # `accelerate launch --cpu`, 1 process
    assert process_count_mismatch(2, {**ACCELERATE_CPU_TWO, "WORLD_SIZE": "2"}) is None  # torchrun / --multi_gpu
    assert process_count_mismatch(2, {"PMI_SIZE": "2", "MASTER_ADDR": "h", "ACCELERATE_USE_CPU": "True"}) is None


# A fresh process allocates a 20 MiB block (the size of the mini SDM's largest attention maps), with or without
# keep_freed_blocks, and prints what glibc's mallinfo2 counts as mapped (hblkhd) while the block is held, then the
# heap's size after it was freed.
ALLOCATE = """
import ctypes, json, sys
import torch
from facediffuser.training.allocator import keep_freed_blocks
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
kept = keep_freed_blocks() if sys.argv[1] == "on" else False
block = torch.empty(20 * 2**20 // 4)
mapped = libc.mallinfo2().hblkhd
del block
print(json.dumps({"kept": kept, "mapped": mapped, "heap_after_free": libc.mallinfo2().arena}))
"""


def _allocate(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cpu_training_keeps_freed_large_blocks_on_the_heap():
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc 2.33 or newer (mallinfo2)")
    block = 20 * 2**20
    default = _allocate("off")
    assert default["mapped"] >= block  # glibc's default: a mapping of its own, given back when freed
    kept = _allocate("on")
    assert kept["kept"] is True
    assert kept["mapped"] < block  # on the heap ...
    assert kept["heap_after_free"] >= block  # ... which keeps it for the next step
    # A user's own malloc settings are left alone.
    assert _allocate("on", MALLOC_MMAP_THRESHOLD_="131072")["kept"] is False
    assert _allocate("on", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["kept"] is False
