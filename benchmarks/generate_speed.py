"""How long an image of the shipped model takes, where users feel it: `facediffuser generate` from a fresh process
(cold), and a call of the Python API on a model already loaded (warm: the demo, a script), for the paper's sampling
and the model's own default side by side in one run.

Each round runs, one after the other, in fresh processes and in rotating order of the settings:

* ``cold``: the README's command itself (``python -m facediffuser.cli.main generate ...``), timed from outside: what
  the user waits for, from the interpreter's start to the PNG on disk;
* ``imports``: the same command under ``python -X importtime``: the seconds each package's own modules take to import
  (self time summed by top-level package, so that diffusers' import of torch counts for torch);
* ``python``: an interpreter that imports nothing (``python -c pass``): the floor;
* ``phases``: one process that does what ``generate`` does, step by step, and times each part: the imports, the
  checks before loading, the model load, the encoders, the UNet calls of all steps (TDM and SDM apart), the rest of
  the steps (scheduler and noise fusion), the VAE decode and writing the PNG.

Then one process loads the model once and times ``--warm-calls`` calls per setting, alternating (``warm``: per-image
latency of the Python API, median).

A setting is ``paper`` (DDIM at 50 steps: ``--paper-sampling``), ``own`` (the model's own scheduler and steps: no
flag) or ``SCHEDULER:STEPS``. Example (the README's command, on the shipped mini model)::

    PYTHONPATH=src python benchmarks/generate_speed.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
from facediffuser.settings import SamplingSettings
mark("import facediffuser")
args = json.loads(sys.argv[1])
config = GenerateConfig(
    prompt=args["prompt"], ref=args["ref"], model=args["model"], out=Path(args["out"]), overwrite=True,
    sampling=SamplingSettings(num_inference_steps=args["steps"]), scheduler=args["scheduler"],
)
device, dtype, paths, people = check_before_loading(config)
mark("checks + references")
pipe = load_pipeline(config.model, device=device, dtype=dtype, scheduler=config.scheduler)
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

# The warm figure's child: the model loaded once, then each setting's calls alternate (a setting's scheduler is made
# from the model's own config, as generate's --scheduler makes it).
WARM = r"""
import copy, json, sys, time
import torch
from facediffuser.evaluation.samplers import SamplerSetting, unet_evaluations
from facediffuser.io.inputs import check_request
from facediffuser.io.loading import load_pipeline, scheduler_from_config, scheduler_name
from facediffuser.settings import SamplingSettings
args = json.loads(sys.argv[1])
pipe = load_pipeline(args["model"], device="cpu")
pipe.set_progress_bar_config(disable=True)
own = copy.deepcopy(pipe.scheduler)
people = check_request(args["prompt"], args["ref"], placeholder=pipe.placeholder, face_check=False)
def use(setting):
    scheduler, steps = setting["scheduler"], setting["steps"]
    pipe.scheduler = copy.deepcopy(own) if scheduler is None else scheduler_from_config(scheduler, own.config)
    return steps or pipe.default_num_inference_steps
def call(steps):
    start, cpu = time.perf_counter(), time.process_time()
    pipe(args["prompt"], reference_images=people, generator=torch.Generator("cpu").manual_seed(0),
         num_inference_steps=steps)
    return time.perf_counter() - start, time.process_time() - cpu
times = {s["label"]: [] for s in args["settings"]}
described = {}
for s in args["settings"]:
    steps = use(s)
    call(steps)  # warm-up: first-call allocations, lazy imports
    name = scheduler_name(pipe.scheduler)
    evaluations = unet_evaluations(SamplerSetting(name, steps), own.config, SamplingSettings())
    described[s["label"]] = {"scheduler": name, "steps": steps, "evaluations": evaluations}
for k in range(args["calls"]):
    for s in args["settings"][k % len(args["settings"]):] + args["settings"][:k % len(args["settings"])]:
        times[s["label"]].append(call(use(s)))
print(json.dumps({"times": times, "settings": described}))
"""

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def parse_setting(text: str) -> dict:
    """``paper``, ``own`` or ``SCHEDULER:STEPS`` -> ``{"label", "scheduler", "steps", "flags"}``."""
    if text == "paper":
        return {"label": "paper", "scheduler": "ddim", "steps": 50, "flags": ["--paper-sampling"]}
    if text == "own":
        return {"label": "own", "scheduler": None, "steps": None, "flags": []}
    scheduler, _, steps = text.partition(":")
    if not steps.isdigit():
        raise SystemExit(f"--settings {text!r}: write paper, own or SCHEDULER:STEPS (e.g. ddim:10).")
    return {
        "label": text,
        "scheduler": scheduler,
        "steps": int(steps),
        "flags": ["--scheduler", scheduler, "--steps", steps],
    }


def import_seconds(stderr: str) -> Counter:
    """``python -X importtime``'s report -> seconds of each top-level package's own modules (self time)."""
    seconds: Counter = Counter()
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            seconds[match[4].split(".")[0]] += int(match[1]) / 1e6
    return seconds


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """``(wall seconds, CPU seconds of the process, its stderr)``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:4])} ... failed (status {done.returncode}):\n{done.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, done.stderr


def child(program: str, spec: dict, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", program, json.dumps(spec)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"a timing process failed (status {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini", help="model to time (default: the shipped mini model)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--ref", action="append", help="reference (default: the README's shipped example)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of fresh processes")
    parser.add_argument("--warm-calls", type=int, default=5, help="timed calls per setting of the loaded model")
    parser.add_argument(
        "--settings", nargs="+", default=["paper", "own"], help="paper, own or SCHEDULER:STEPS (default: paper own)"
    )
    parser.add_argument("--top", type=int, default=8, help="packages shown in the import breakdown")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of every timed process (OMP_NUM_THREADS; default: torch's own). On a machine shared with "
        "other jobs, 1 keeps idle worker threads from spinning; read the CPU seconds then",
    )
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    refs = args.ref or [str(Path(__file__).resolve().parents[1] / "src/facediffuser/data/examples/mini/id0006")]
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    env["TQDM_DISABLE"] = "1"
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)

    cold: dict[str, list[tuple[float, float]]] = {s["label"]: [] for s in settings}
    imports: list[Counter] = []
    floor, phases, calls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.png"
        base = [sys.executable, "-m", "facediffuser.cli.main", "generate", "--prompt", args.prompt]
        for ref in refs:
            base += ["--ref", ref]
        base += ["--model", args.model, "--out", str(out), "--overwrite"]
        for k in range(args.rounds):
            for s in settings[k % len(settings) :] + settings[: k % len(settings)]:
                cold[s["label"]].append(timed_run(base + s["flags"], env)[:2])
            *_, report = timed_run([sys.executable, "-X", "importtime", *base[1:], *settings[-1]["flags"]], env)
            imports.append(import_seconds(report))
            floor.append(timed_run([sys.executable, "-c", "pass"], env)[0])
            last = settings[-1]
            spec = {"prompt": args.prompt, "ref": refs, "model": args.model, "out": str(out)}
            result = child(PHASES, {**spec, "steps": last["steps"], "scheduler": last["scheduler"]}, env)
            phases.append(result["phases"])
            calls.append(result["call"])
        warm = child(WARM, {**spec, "settings": settings, "calls": args.warm_calls}, env)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in rows)

    print(f"model {args.model}, prompt {args.prompt!r}, {args.rounds} rounds, {os.cpu_count()} CPU cores")
    print(f"image {result['image'][0]}x{result['image'][1]} px")
    print(f"python -c pass (median): {statistics.median(floor):.2f} s")
    print(
        "setting | sampler | UNet evals / image | cold `facediffuser generate`: wall, CPU (medians) | warm per image: "
        "wall, CPU (medians)"
    )
    for s in settings:
        label, described = s["label"], warm["settings"][s["label"]]
        c, w = cold[label], warm["times"][label]

        def med(pairs, k):
            return statistics.median(p[k] for p in pairs)

        print(
            f"{label:8s} | {described['scheduler']} {described['steps']} | {described['evaluations']} | "
            f"{med(c, 0):.2f} s, {med(c, 1):.2f} s | {med(w, 0):.3f} s, {med(w, 1):.3f} s"
        )
    packages = sorted({p for row in imports for p in row}, key=lambda p: -statistics.median(r[p] for r in imports))
    total = statistics.median(sum(r.values()) for r in imports)
    print(f"imports of `generate` ({settings[-1]['label']}), self time by package (median; sum {total:.2f} s):")
    for package in packages[: args.top]:
        print(f"  {package:24s} {statistics.median(r[package] for r in imports):6.2f} s")
    print(f"  {'facediffuser':24s} {statistics.median(r['facediffuser'] for r in imports):6.2f} s (the package's own)")
    # the pipeline call's parts stand in for the call itself, under "load model"
    total = sum(median(phases, k) for k in phases[0]) + sum(median(calls, k) for k in calls[0])
    print(f"phases of one in-process run ({settings[-1]['label']}; medians; sum {total:.2f} s):")
    for key in phases[0]:
        value = median(phases, key)
        print(f"  {key:32s} {value:6.2f} s  {100 * value / total:5.1f}%")
        if key == "load model":
            for part in calls[0]:
                v = median(calls, part)
                print(f"  {'  call: ' + part:32s} {v:6.2f} s  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
