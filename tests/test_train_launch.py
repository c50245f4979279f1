"""How a run was launched: a launch that starts fewer processes than it was asked for is named."""

from __future__ import annotations

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
