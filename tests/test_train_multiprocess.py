"""Two processes on the CPU (gloo), launched by accelerate: data-parallel SDM training keeps them in agreement."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from facediffuser.pipeline import FaceDiffuserPipeline
from facediffuser.training.synthetic import write_synthetic_ffhq_wild

SRC = Path(__file__).resolve().parents[1] / "src"

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from facediffuser.training import ModelKind, TrainConfig, Trainer

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = TrainConfig(
        data_root=data, output_dir=out, resolution=64, train_batch_size=2, max_train_steps=3, learning_rate=1e-3,
        checkpointing_steps=3, validation_steps=0, logging_steps=1, log_with="csv",
    )
    trainer = Trainer(ModelKind.SDM, config)
    trainer.train()
    rank = trainer.accelerator.process_index
    params = {n: p.detach().cpu() for n, p in trainer.denoiser.named_parameters() if p.requires_grad}
    torch.save({"params": params, "world": trainer.accelerator.num_processes}, out / f"rank{rank}.pt")
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_in_agreement(tmp_path):
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate launcher is not on PATH")
    data = write_synthetic_ffhq_wild(tmp_path / "data", num_images=8, size=72)
    out = tmp_path / "out"
    out.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` starts the processes with torchrun; with no GPU the trainer puts them on the CPU over gloo.
    # (`accelerate launch --cpu` alone starts a single process unless an MPI launcher is configured.)
    command = [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        str(worker),
        str(data),
        str(out),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[n], b[n]) for n in a)
    state = json.loads((out / "checkpoints" / "checkpoint-0000003" / "training_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 3
    assert sorted(p.name for p in (out / "checkpoints" / "checkpoint-0000003").glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    pipe = FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True)
    exported = dict(pipe.subject_unet.named_parameters())
    assert all(torch.equal(exported[n.removeprefix("unet.")], a[n]) for n in a if n.startswith("unet."))
