"""Two processes on the CPU (gloo), launched by accelerate: data-parallel SDM training keeps them in agreement, and a
run stopped mid-epoch and resumed continues like the uninterrupted one."""

from __future__ import annotations

import csv
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

pytestmark = pytest.mark.slow  # accelerate launches of two training processes: about a minute

SRC = Path(__file__).resolve().parents[1] / "src"

# 8 images, 1 per process and micro-batch, 2 processes: 4 optimizer steps per epoch. The whole run takes 6 steps; the
# cut run stops at step 5, the first step of the second epoch, so the resumed run starts mid-epoch (it skips one
# micro-batch per process) in an epoch other than the first: the case where the epoch must reach the sampler.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from facediffuser.training import ModelKind, TrainConfig, Trainer

    data, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    config = TrainConfig(
        data_root=data, output_dir=out, resolution=64, train_batch_size=1, max_train_steps=steps, learning_rate=1e-3,
        checkpointing_steps=5, validation_steps=0, logging_steps=1, log_with="csv", subject_keep_prob=0.7,
        resume=sys.argv[4] if len(sys.argv) > 4 else None,
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


def launch(*args: str, cwd: Path, multi_gpu: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path (gloo) even on a machine with GPUs
    # `--multi_gpu` starts the processes with torchrun; with no GPU the trainer puts them on the CPU over gloo.
    # (`accelerate launch --cpu` alone starts a single process unless an MPI launcher is configured.)
    command = [
        "accelerate",
        "launch",
        "--multi_gpu" if multi_gpu else "--cpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        *args,
    ]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def logged_losses(out: Path) -> dict[int, float]:
    with (out / "logs" / "metrics.csv").open() as f:
        return {int(row["step"]): float(row["value"]) for row in csv.DictReader(f) if row["name"] == "train/loss"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run (``whole``), and one cut at step 5 then resumed (``cut``)."""
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate launcher is not on PATH")
    tmp = tmp_path_factory.mktemp("two-processes")
    data = write_synthetic_ffhq_wild(tmp / "data", num_images=8, size=72)
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    for out, steps, resume in (("whole", 6, None), ("cut", 5, None), ("cut", 6, "latest")):
        (tmp / out).mkdir(exist_ok=True)
        args = [str(worker), str(data), str(tmp / out), str(steps)] + ([resume] if resume else [])
        result = launch(*args, cwd=tmp)
        assert result.returncode == 0, result.stderr[-4000:]
    return tmp


def test_two_cpu_processes_train_in_agreement(runs):
    out = runs / "whole"
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert a.keys() == b.keys() and len(a) > 0
    # Data parallelism hands both processes the same averaged gradients; what is left is AdamW's element-wise
    # arithmetic on equal inputs. Processes that failed to synchronize differ by about lr = 1e-3 after one step.
    assert all(torch.allclose(a[n], b[n], rtol=0, atol=1e-7) for n in a)
    state = json.loads((out / "checkpoints" / "checkpoint-0000005" / "training_state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 5
    assert sorted(p.name for p in (out / "checkpoints" / "checkpoint-0000005").glob("random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    pipe = FaceDiffuserPipeline.from_pretrained(out, use_safetensors=True)
    exported = dict(pipe.subject_unet.named_parameters())
    # Saving and loading copies the tensors: exact by construction.
    assert all(torch.equal(exported[n.removeprefix("unet.")], a[n]) for n in a if n.startswith("unet."))


def test_two_process_run_resumed_mid_epoch_matches_the_uninterrupted_run(runs):
    whole, resumed = (torch.load(runs / out / "rank0.pt", weights_only=True)["params"] for out in ("whole", "cut"))
    assert whole.keys() == resumed.keys()
    # Same machine, same process count, same data and noise at every step: the runs agree to float rounding. The
    # tolerance is far below what a different data order causes (3.5e-4 in `subject_unet` after one step).
    for name in whole:
        assert torch.allclose(whole[name], resumed[name], rtol=0, atol=1e-6), name
    losses_whole, losses_cut = logged_losses(runs / "whole"), logged_losses(runs / "cut")
    assert sorted(losses_cut) == sorted(losses_whole) == [1, 2, 3, 4, 5, 6]
    # Step 6 is the first resumed step: the loss of the same batch and noise, logged with 8 significant digits.
    assert losses_cut[6] == pytest.approx(losses_whole[6], rel=1e-5)


def test_accelerate_launch_cpu_with_two_processes_warns_that_one_runs(tmp_path):
    """``accelerate launch --cpu --num_processes 2`` starts one process (no MPI launcher): the user is told."""
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate launcher is not on PATH")
    data = write_synthetic_ffhq_wild(tmp_path / "data", num_images=2, size=64, test_images=0)
    args = ["-m", "facediffuser.cli.train", "tdm", "--data-root", str(data), "--output-dir", str(tmp_path / "out")]
    args += ["--resolution", "64", "--train-batch-size", "1", "--max-train-steps", "1", "--checkpointing-steps", "0"]
    args += ["--validation-steps", "0", "--log-with", "csv"]
    result = launch(*args, cwd=tmp_path, multi_gpu=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "only 1 process runs" in result.stderr, result.stderr[-3000:]
    assert "--multi_gpu" in result.stderr
