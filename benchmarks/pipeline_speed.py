"""Face-diffuser against plain Stable Diffusion: time, memory and the fast paths.

Both pipelines run in one process on the same components (``StableDiffusionPipeline`` gets the TDM ``unet``, the
text encoder, the VAE and the scheduler of the ``FaceDiffuserPipeline``), with the same seeds, in alternating
rounds. For each configuration it prints:

* median seconds per image of each pipeline, and the Face-diffuser / SD ratio beside the UNet-evaluation ratio of
  the stage schedule (REFERENCE section 8: 1.30 with the official guidance base, 1.65 with paper eq. 2, at
  T = 50, alpha 0.3, beta 0.6);
* the fraction of the time spent outside the UNets (the UNet forwards are timed with hooks);
* peak memory: the weights each pipeline needs (distinct tensors) plus the activation peak of a call;
* the fast paths: UNet calls per step, encoder calls per call, host syncs, SDPA, VAE slicing/tiling, the float16
  VAE upcast, CPU offloading (needs CUDA) and ``torch.compile`` (``--compile``).

Examples::

    PYTHONPATH=src python benchmarks/pipeline_speed.py                      # CPU, float32, tiny + SD1.5-shaped
    PYTHONPATH=src python benchmarks/pipeline_speed.py --device cuda --dtype float16 --sd15-size 512 --steps 50

The SD1.5-shaped configuration has the real SD1.5 architecture (UNet, VAE, CLIP ViT-L/14 text and vision towers)
with random weights: its images are noise, its cost is the real one.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from facediffuser import FaceDiffuserPipeline
from facediffuser.fusion import Stage, saliency_adaptive_noise_fusion, stage_schedule
from facediffuser.tiny import SD15_SHAPED, tiny_components

PROMPT = "a photo of a man <|image|> riding a horse on the beach"
SD_PROMPT = "a photo of a man riding a horse on the beach"
GB = 1e9


def fmt_bytes(n: float) -> str:
    return f"{n / GB:.2f} GB" if abs(n) >= 0.1 * GB else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------------- components
def sd15_components(seed: int) -> dict:
    """The SD1.5 architecture with random weights, and the CLIP ViT-L/14 image tower of Face-diffuser's SDM."""
    return tiny_components(seed, SD15_SHAPED)


def make_pipelines(components: dict, device: str, dtype: torch.dtype):
    fd = FaceDiffuserPipeline(**components)
    fd.to(device=device, dtype=dtype)
    sd = fd.text_model_pipeline()
    for pipe in (fd, sd):
        pipe.set_progress_bar_config(disable=True)
    return fd, sd


def modules_of(pipe) -> dict[str, torch.nn.Module]:
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def weight_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct parameter and buffer storages of ``modules`` (a shared module counts once)."""
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total


# ------------------------------------------------------------------------------------------------------ measuring
def clock(device: torch.device) -> float:
    """The benchmark's clock: wall time on a GPU (after a sync); on the CPU, the CPU time of this process, which other
    processes sharing the cores do not inflate (run with ``--threads 1`` so no worker thread spins while waiting)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class UnetTimer:
    """Sums the time spent inside the forward of the given modules (CUDA events on a GPU, so nothing syncs; process
    CPU time on the CPU)."""

    def __init__(self, modules: list[torch.nn.Module], device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list = []
        self.batches: list[tuple[int, int]] = []
        self._open: dict[int, object] = {}
        self.handles = []
        for index, module in enumerate(dict.fromkeys(modules)):
            self.handles.append(module.register_forward_pre_hook(self._pre(index), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post(index)))

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.process_time()

    def _pre(self, index):
        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            self.batches.append((index, sample.shape[0]))
            self._open[index] = self._mark()

        return hook

    def _post(self, index):
        def hook(module, args, output):
            self.spans.append((self._open.pop(index), self._mark()))

        return hook

    def reset(self) -> None:
        self.spans.clear()
        self.batches.clear()

    def durations(self) -> list[float]:
        """Seconds of every call, in call order."""
        if self.cuda:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) / 1000 for start, end in self.spans]
        return [end - start for start, end in self.spans]

    def seconds(self) -> float:
        return sum(self.durations())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class PeakMemory:
    """Peak memory of a block beyond what was allocated before it: CUDA allocator statistics on a GPU, else the
    process's resident set sampled every 5 ms (psutil)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            self._process = psutil.Process()
            self._before = self._process.memory_info().rss
            self._max = self._before
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._before
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self._max - self._before


class HostSyncCounter(TorchDispatchMode):
    """Counts the aten ops that make the host wait for the device (``.item()``, ``bool(t)``, data-sized outputs)."""

    SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def unet_evaluations(num_steps: int, alpha: float, beta: float, base: str) -> int:
    """UNet evaluations of one image: 2 per TDM step, 2 (``text`` base) or 3 (``null``) per SDM step."""
    subject = 2 if base == "text" else 3
    stages = stage_schedule(num_steps, alpha, beta)
    return sum(2 * s.uses_text_model + subject * s.uses_subject_model for s in stages)


# ------------------------------------------------------------------------------------------------------- the runs
@dataclass
class Run:
    seconds: float  # on the benchmark's clock
    wall_seconds: float
    unet_seconds: float  # on the benchmark's clock
    unet_batches: list[tuple[int, int]]  # (0 = unet / 1 = subject_unet, batch size) of every UNet call
    unet_durations: list[float]  # seconds of every UNet call, on the benchmark's clock
    calls: Counter  # forward calls of each model
    peak: int


@dataclass
class Setup:
    size: int
    steps: int
    images: int
    alpha: float
    beta: float
    guidance_scale: float = 5.0


def make_runners(fd, sd, setup: Setup, reference: Image.Image, device: torch.device):
    common = {
        "height": setup.size,
        "width": setup.size,
        "num_inference_steps": setup.steps,
        "guidance_scale": setup.guidance_scale,
        "num_images_per_prompt": setup.images,
        "output_type": "np",
    }

    def generator():
        return torch.Generator(device="cpu").manual_seed(0)

    def face(base):
        def run(**overrides):
            kwargs = {**common, **overrides}
            return fd(PROMPT, [reference], subject_guidance_base=base, alpha=setup.alpha, beta=setup.beta,
                      generator=generator(), **kwargs)  # fmt: skip

        return run

    def plain(**overrides):
        return sd(SD_PROMPT, generator=generator(), **{**common, **overrides})

    return {"SD": plain, "FD text": face("text"), "FD null": face("null")}


def timed(run, timer: UnetTimer, device: torch.device, watched: dict[str, torch.nn.Module], **overrides) -> Run:
    timer.reset()
    calls: Counter = Counter()
    handles = [m.register_forward_pre_hook(lambda *_, k=k: calls.update([k])) for k, m in watched.items()]
    gc.collect()
    try:
        with PeakMemory(device) as memory:
            start, wall = clock(device), time.perf_counter()
            run(**overrides)
            seconds, wall_seconds = clock(device) - start, time.perf_counter() - wall
    finally:
        for handle in handles:
            handle.remove()
    durations = timer.durations()
    return Run(seconds, wall_seconds, sum(durations), list(timer.batches), durations, calls, memory.peak)


def compare(fd, sd, setup: Setup, reference, device, rounds: int) -> dict[str, list[Run]]:
    runners = make_runners(fd, sd, setup, reference, device)
    timer = UnetTimer([fd.unet, fd.subject_unet], device)
    watched = {**modules_of(fd), "vae decoder": fd.vae.decoder}
    for run in runners.values():  # warm-up: one step, so every model has run once
        run(num_inference_steps=1)
    results: dict[str, list[Run]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate, so no pipeline always runs first
        for name in order:
            results[name].append(timed(runners[name], timer, device, watched))
        line = "  ".join(f"{n} {results[n][-1].seconds / setup.images:6.3f}" for n in names)
        print(f"    round {r + 1}/{rounds}: s/image  {line}", flush=True)
    timer.remove()
    return results


def report_comparison(results: dict[str, list[Run]], setup: Setup, fd, sd, device: torch.device) -> None:
    n = setup.images
    sd_runs = results["SD"]
    sd_evals = 2 * setup.steps
    sd_unet = statistics.median(run.unet_seconds for run in sd_runs)
    print(f"\n  {'pipeline':<9} {'s/image':>8} {'ratio':>6} {'UNet evals':>10} {'expected':>8} {'off by':>7} "
          f"{'UNet-time ratio':>15} {'outside UNets':>13} {'wall s/image':>12} {'activations':>11}")  # fmt: skip
    for name, runs in results.items():
        base = {"SD": None, "FD text": "text", "FD null": "null"}[name]
        evals = sd_evals if base is None else unet_evaluations(setup.steps, setup.alpha, setup.beta, base)
        if sum(b for _, b in runs[0].unet_batches) != evals * n:
            raise RuntimeError(f"{name}: the UNet hooks saw batches {runs[0].unet_batches}, not {evals} evaluations")
        expected = evals / sd_evals
        ratio = statistics.median(run.seconds / s.seconds for run, s in zip(runs, sd_runs))
        unet_ratio = statistics.median(run.unet_seconds for run in runs) / sd_unet
        outside = statistics.median(1 - run.unet_seconds / run.seconds for run in runs)
        peak = fmt_bytes(max(run.peak for run in runs))
        print(
            f"  {name:<9} {statistics.median(run.seconds for run in runs) / n:8.3f} {ratio:6.3f} {evals:10d} "
            f"{expected:8.3f} {(ratio / expected - 1) * 100:+6.1f}% {unet_ratio:15.3f} {outside * 100:12.1f}% "
            f"{statistics.median(run.wall_seconds for run in runs) / n:12.3f} {peak:>11}"
        )
    clock_name = "wall time" if device.type == "cuda" else "process CPU time"
    fd_weights = weight_bytes(*modules_of(fd).values())
    sd_weights = weight_bytes(*modules_of(sd).values())
    fd_peak = max(run.peak for name, runs in results.items() if name != "SD" for run in runs)
    sd_peak = max(run.peak for run in sd_runs)
    print(
        f"\n  s/image: median over rounds, {clock_name}; ratio: median over rounds of FD/SD within a round; "
        f"expected: the UNet-evaluation ratio of the stage schedule; UNet-time ratio: time inside the UNet forwards, "
        f"FD over SD.\n"
        f"  Peak memory (weights + activation peak of a call):\n"
        f"    Face-diffuser: {fmt_bytes(fd_weights)} weights + {fmt_bytes(fd_peak)} "
        f"= {fmt_bytes(fd_weights + fd_peak)}\n"
        f"    Stable Diff. : {fmt_bytes(sd_weights)} weights + {fmt_bytes(sd_peak)} "
        f"= {fmt_bytes(sd_weights + sd_peak)}"
    )
    sd_seconds = statistics.median(run.seconds for run in sd_runs)
    sd_outside = statistics.median(run.seconds - run.unet_seconds for run in sd_runs)
    extra = []
    for name in ("FD text", "FD null"):
        fd_outside = statistics.median(run.seconds - run.unet_seconds for run in results[name])
        share = (fd_outside - sd_outside) / sd_seconds
        extra.append(f"{name} {(fd_outside - sd_outside) / n:+.3f} s ({share * 100:+.1f}% of SD)")
    print(f"  Time outside the UNets beyond SD's, per image: {'; '.join(extra)}")
    by_batch: dict[int, list[float]] = {}
    for runs in results.values():
        for run in runs:
            for (_, batch), seconds in zip(run.unet_batches, run.unet_durations):
                by_batch.setdefault(batch, []).append(seconds)
    costs = {batch: statistics.median(times) for batch, times in sorted(by_batch.items())}
    smallest = min(costs)
    print(
        "  UNet call by batch size (median): "
        + "; ".join(f"batch {b}: {c:.3f} s ({c / costs[smallest]:.2f}x, {b / smallest:.2f}x the evaluations)"
                    for b, c in costs.items())
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- fast paths
def report_batching(results: dict[str, list[Run]], setup: Setup) -> None:
    """Counts from the timed runs: one UNet call per model per step, the encoders once per call."""
    stages = stage_schedule(setup.steps, setup.alpha, setup.beta)
    model_steps = sum(s.uses_text_model for s in stages) + sum(s.uses_subject_model for s in stages)
    for name, runs in results.items():
        run = runs[0]
        sizes = sorted({size for _, size in run.unet_batches})
        steps = setup.steps if name == "SD" else model_steps
        print(
            f"  {name}: {len(run.unet_batches)} UNet calls for {steps} model-steps, batch sizes {sizes} for "
            f"{setup.images} image(s); per call: text encoder x{run.calls['text_encoder']}, image encoder "
            f"x{run.calls['image_encoder']}, fuser x{run.calls['subject_fuser']}, "
            f"VAE decoder x{run.calls['vae decoder']}"
        )


def check_host_syncs(fd, sd, setup: Setup, reference, device) -> None:
    runners = make_runners(fd, sd, setup, reference, device)
    counts = {}
    for name in ("SD", "FD text"):
        per_steps = []
        for steps in (2, 4):  # alpha 0.3 / beta 0.6 give stages II and III, then I, II and III
            counter = HostSyncCounter()
            with counter:
                runners[name](num_inference_steps=steps, output_type="latent")
            per_steps.append(counter.count)
        counts[name] = (per_steps[1] - per_steps[0]) / 2
    latent = setup.size // fd.vae_scale_factor
    eps = [torch.randn(setup.images, 4, latent, latent, device=device) for _ in range(4)]
    counter = HostSyncCounter()
    with counter:
        saliency_adaptive_noise_fusion(*eps)
    print(
        f"  host syncs per denoising step: FD {counts['FD text']:.0f}, SD {counts['SD']:.0f} (the scheduler and "
        f"UNet timestep handling, shared); inside SNF: {counter.count}"
    )


def time_fusion(fd, setup: Setup, device) -> None:
    latent = setup.size // fd.vae_scale_factor
    eps = [torch.randn(setup.images, 4, latent, latent, device=device, dtype=fd.unet.dtype) for _ in range(4)]
    saliency_adaptive_noise_fusion(*eps)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(20):
        saliency_adaptive_noise_fusion(*eps)
    synchronize(device)
    per_step = (time.perf_counter() - start) / 20
    fusion_steps = stage_schedule(setup.steps, setup.alpha, setup.beta).count(Stage.FUSION)
    print(f"  SNF: {per_step * 1e3:.2f} ms per stage-II step, {per_step * fusion_steps:.4f} s per call")


def check_sdpa(fd, setup: Setup, device) -> None:
    processors = {type(p).__name__ for unet in (fd.unet, fd.subject_unet) for p in unet.attn_processors.values()}
    latent = setup.size // fd.vae_scale_factor
    dtype = fd.unet.dtype
    x = torch.randn(2 * setup.images, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2 * setup.images, 77, fd.unet.config.cross_attention_dim, device=device, dtype=dtype)
    seconds = {}
    for name, processor in (("SDPA", AttnProcessor2_0()), ("classic", AttnProcessor())):
        fd.unet.set_attn_processor(processor)
        times = []
        for _ in range(2):
            synchronize(device)
            start = time.perf_counter()
            fd.unet(x, 500, encoder_hidden_states=context)
            synchronize(device)
            times.append(time.perf_counter() - start)
        seconds[name] = times[-1]
    fd.unet.set_attn_processor(AttnProcessor2_0())
    print(
        f"  attention processors in both UNets: {sorted(processors)}; one TDM call (batch {2 * setup.images}): "
        f"SDPA {seconds['SDPA']:.3f} s, classic {seconds['classic']:.3f} s"
    )


def check_vae(fd, setup: Setup, device) -> None:
    vae = fd.vae
    latent = setup.size // fd.vae_scale_factor
    z = torch.randn(setup.images, 4, latent, latent, device=device, dtype=vae.dtype)
    saved = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    rows = []
    for name in ("plain", "slicing", "tiling"):
        vae.disable_slicing()
        vae.disable_tiling()
        if name == "slicing":
            vae.enable_slicing()
        if name == "tiling":  # tiles of half the image, so the benchmark's small images are tiled too
            vae.enable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = setup.size // 2, latent // 2
        gc.collect()
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            fd.vae_decode(z)
            synchronize(device)
        rows.append(f"{name} {time.perf_counter() - start:.2f} s / {fmt_bytes(memory.peak)}")
    vae.disable_slicing()
    vae.disable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = saved
    print(f"  VAE decode of {setup.images} image(s) at {setup.size} px (time / activation peak): {'; '.join(rows)}")
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    print(f"  VAE dtype {vae.dtype}, force_upcast={vae.config.force_upcast}: decode in float32 = {upcast}")


def check_offload(components: dict, setup: Setup, reference, device: torch.device, dtype: torch.dtype) -> None:
    if device.type != "cuda":
        print("  CPU offload: skipped (it moves weights to an accelerator; run with --device cuda)")
        return
    modes = {
        "FD model offload, one model at a time": ("FD text", "model"),
        "FD model offload, diffusers chain": ("FD text", "chain"),
        "FD sequential offload": ("FD text", "sequential"),
        "SD model offload": ("SD", "model"),
        "SD sequential offload": ("SD", "sequential"),
    }
    resident = torch.cuda.memory_allocated()  # should be ~0: the pipelines measured above are back on the CPU
    for label, (name, mode) in modes.items():
        fd, sd = make_pipelines(copy.deepcopy(components), "cpu", dtype)
        pipe = sd if name == "SD" else fd
        try:
            if mode == "sequential":
                pipe.enable_sequential_cpu_offload(device=device)
            elif pipe is fd:
                pipe.enable_model_cpu_offload(device=device, one_model_at_a_time=mode == "model")
            else:
                pipe.enable_model_cpu_offload(device=device)
            run = make_runners(fd, sd, setup, reference, device)[name]
            run(num_inference_steps=1)  # warm-up
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() - resident
            print(f"  {label:<40} peak GPU {fmt_bytes(peak)}, {seconds / setup.images:.2f} s/image")
        except Exception as error:  # a benchmark reports a failing mode and goes on with the others
            print(f"  {label:<40} failed: {type(error).__name__}: {error}")
        del fd, sd, pipe
        gc.collect()
        torch.cuda.empty_cache()


def check_compile(fd, sd, setup: Setup, reference, device) -> None:
    runners = make_runners(fd, sd, setup, reference, device)
    timer = UnetTimer([fd.unet, fd.subject_unet], device)
    before = {name: timed(runners[name], timer, device, {}).wall_seconds for name in ("SD", "FD text")}
    fd.compile_unets()  # also compiles SD's unet: it is the same module
    start = time.perf_counter()
    for name in ("SD", "FD text", "FD null"):
        runners[name](num_inference_steps=3)
    compile_seconds = time.perf_counter() - start
    after = {name: timed(runners[name], timer, device, {}).wall_seconds for name in ("SD", "FD text")}
    timer.remove()
    print(
        f"  torch.compile: first calls {compile_seconds:.1f} s; s/image eager -> compiled: "
        + "; ".join(f"{n} {before[n] / setup.images:.3f} -> {after[n] / setup.images:.3f}" for n in before)
    )


# ---------------------------------------------------------------------------------------------------------- main
def benchmark(name: str, components: dict, setup: Setup, args, device: torch.device, dtype: torch.dtype) -> None:
    print(f"\n=== {name}: {setup.size} px, {setup.steps} steps, {setup.images} image(s) per call, alpha "
          f"{setup.alpha} beta {setup.beta}, {args.rounds} rounds, {device.type} {dtype} ===")  # fmt: skip
    offload_components = copy.deepcopy(components) if device.type == "cuda" and not args.skip_extras else None
    fd, sd = make_pipelines(components, str(device), dtype)
    sizes = {k: weight_bytes(m) for k, m in modules_of(fd).items()}
    print("  weights: " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sizes.items()))
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))

    results = compare(fd, sd, setup, reference, device, args.rounds)
    report_comparison(results, setup, fd, sd, device)
    if args.skip_extras:
        return
    print("\n  Fast paths:")
    report_batching(results, setup)
    if not args.syncs_checked:  # the count does not depend on the model size: once, on the first configuration
        check_host_syncs(fd, sd, setup, reference, device)
        args.syncs_checked = True
    time_fusion(fd, setup, device)
    check_sdpa(fd, setup, device)
    check_vae(fd, setup, device)
    if offload_components is not None:
        fd.to("cpu")  # frees the GPU for the offload measurements
        del fd, sd
        gc.collect()
        torch.cuda.empty_cache()
        check_offload(offload_components, setup, reference, device, dtype)
        fd, sd = make_pipelines(offload_components, str(device), dtype)
    else:
        check_offload({}, setup, reference, device, dtype)
    if args.compile:
        check_compile(fd, sd, setup, reference, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=["tiny", "sd15"], default=["tiny", "sd15"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps T (10 gives the T=50 stage split)")
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--beta", type=float, default=0.6)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are over these")
    parser.add_argument("--tiny-size", type=int, default=64)
    parser.add_argument("--sd15-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2, help="images per call (the encoders run once per call)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of both UNets")
    parser.add_argument("--skip-extras", action="store_true", help="only the side-by-side comparison")
    args = parser.parse_args()
    args.syncs_checked = False
    build_threads = torch.get_num_threads()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    diffusers_logging.set_verbosity_error()  # `to(dtype)` warns about modules to keep in float32; none here
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, {args.threads or build_threads} CPU threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    for config in args.configs:
        build = time.perf_counter()
        torch.set_num_threads(build_threads)  # random initialisation, on all cores
        components = tiny_components(seed=0) if config == "tiny" else sd15_components(seed=0)
        torch.set_num_threads(args.threads or build_threads)
        size = args.tiny_size if config == "tiny" else args.sd15_size
        setup = Setup(size=size, steps=args.steps, images=args.images, alpha=args.alpha, beta=args.beta)
        print(f"\n[{config}: components built in {time.perf_counter() - build:.1f} s]")
        benchmark({"tiny": "Tiny pipeline", "sd15": "SD1.5-shaped pipeline"}[config], components, setup, args,
                  device, dtype)  # fmt: skip
        del components
        gc.collect()
    ratios = ", ".join(
        f"{base} {unet_evaluations(50, 0.3, 0.6, base) / 100:.2f}x" for base in ("text", "null")
    )  # fmt: skip
    print(f"\nUNet-evaluation ratios at T=50, alpha 0.3, beta 0.6: {ratios}")
    print(f"Total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
