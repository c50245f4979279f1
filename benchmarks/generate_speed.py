"""How long `facediffuser generate` takes, from a fresh process to the PNG on disk, and where the seconds go.

The speed target: a fresh clone, the README's install, then the README's main command writes a PNG on 2 CPU
cores in under 10 seconds, model load included (the goal beyond that: 2 seconds). Each round runs, one after the
other, in fresh processes:

* ``end-to-end``: the command itself (``python -m facediffuser.cli.main generate ...``), timed from outside: what
  the user waits for;
* ``python``: an interpreter that imports nothing (``python -c pass``): the floor;
* ``phases``: one process that does what ``generate`` does, step by step, and times each part: the imports (torch,
  diffusers, transformers, then the project's), the checks before loading (the references and the face check),
  the model load, the encoders (text tower, vision tower, fuser), the UNet calls of all steps (TDM and SDM apart),
  the rest of the steps (scheduler and noise fusion), the VAE decode and writing the PNG.

It prints the median of each figure over ``--rounds`` rounds, and the phases as shares of their sum. Example (the
README's command, on the shipped mini model)::

    PYTHONPATH=src python benchmarks/generate_speed.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a woman <|image|> in a yellow sweater on a beach at night"

# The child process of the ``phases`` figure. It is a separate program so that its imports are timed from a fresh
# interpreter, as the user's command imports them.
PHASES = r"""
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
marks = {}
def mark(name):
    marks[name] = time.perf_counter()
import torch
mark("import torch")
import diffusers
mark("import diffusers")
import transformers
mark("import transformers")
from facediffuser.cli.generate import GenerateConfig, check_before_loading, output_paths
from facediffuser.io.loading import load_pipeline
from facediffuser.io.outputs import write_png
mark("import facediffuser")
args = json.loads(sys.argv[1])
config = GenerateConfig(
    prompt=args["prompt"], ref=args["ref"], model=args["model"], out=Path(args["out"]), overwrite=True
)
device, dtype, paths, people = check_before_loading(config)
mark("checks + references")
pipe = load_pipeline(config.model, device=device, dtype=dtype)
mark("load model")
spent = {"encoders": 0.0, "unet (TDM)": 0.0, "subject_unet (SDM)": 0.0, "vae decode": 0.0}
def timed(fn, key):
    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[key] += time.perf_counter() - s
    return wrapper
pipe.text_encoder.forward = timed(pipe.text_encoder.forward, "encoders")
pipe.image_encoder.forward = timed(pipe.image_encoder.forward, "encoders")
pipe.subject_fuser.forward = timed(pipe.subject_fuser.forward, "encoders")
pipe.unet.forward = timed(pipe.unet.forward, "unet (TDM)")
pipe.subject_unet.forward = timed(pipe.subject_unet.forward, "subject_unet (SDM)")
pipe.vae.decode = timed(pipe.vae.decode, "vae decode")
start = time.perf_counter()
result = pipe(config.prompt, reference_images=people, generator=torch.Generator("cpu").manual_seed(0),
              **config.sampling.pipeline_kwargs())
call = time.perf_counter() - start
mark("pipeline call")
write_png(result.images[0], paths[0], overwrite=True)
mark("write png")
order = list(marks)
out = {}
prev = t0
for name in order:
    out[name] = marks[name] - prev
    prev = marks[name]
call_parts = dict(spent)
call_parts["steps: scheduler, fusion, rest"] = call - sum(spent.values())
out.pop("pipeline call")
print(json.dumps({"phases": out, "call": call_parts, "image": list(result.images[0].size)}))
"""


def timed_run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini", help="model to time (default: the shipped mini model)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--ref", action="append", help="reference (default: the README's shipped example)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    refs = args.ref or [str(Path(__file__).resolve().parents[1] / "src/facediffuser/data/examples/mini/id0006")]
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    env["TQDM_DISABLE"] = "1"

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.png"
        command = [sys.executable, "-m", "facediffuser.cli.main", "generate", "--prompt", args.prompt]
        for ref in refs:
            command += ["--ref", ref]
        command += ["--model", args.model, "--out", str(out), "--overwrite"]
        end_to_end, floor, phases, calls = [], [], [], []
        for _ in range(args.rounds):
            end_to_end.append(timed_run(command, env))
            floor.append(timed_run([sys.executable, "-c", "pass"], env))
            spec = json.dumps({"prompt": args.prompt, "ref": refs, "model": args.model, "out": str(out)})
            done = subprocess.run(
                [sys.executable, "-c", PHASES, spec], check=True, env=env, capture_output=True, text=True
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            phases.append(result["phases"])
            calls.append(result["call"])

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"model {args.model}, prompt {args.prompt!r}, {args.rounds} rounds, {os.cpu_count()} CPU cores")
    print(f"image {result['image'][0]}x{result['image'][1]} px")
    print(
        f"end-to-end `facediffuser generate` (median): {statistics.median(end_to_end):.2f} s "
        f"(min {min(end_to_end):.2f}, max {max(end_to_end):.2f})"
    )
    print(f"python -c pass (median): {statistics.median(floor):.2f} s")
    total = sum(median(phases, k) for k in phases[0])
    print(f"phases of one in-process run (medians; sum {total:.2f} s):")
    for key in phases[0]:
        value = median(phases, key)
        print(f"  {key:32s} {value:6.2f} s  {100 * value / total:5.1f}%")
        if key == "load model":
            for part in calls[0]:
                v = median(calls, part)
                print(f"  {'  call: ' + part:32s} {v:6.2f} s  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
