"""Face-diffuser against plain Stable Diffusion: time and memory.

Both pipelines run in one process on the same components (``StableDiffusionPipeline`` gets the TDM ``unet``, the
text encoder, the VAE and the scheduler of the ``FaceDiffuserPipeline``), with the same seeds, in alternating
rounds. For each configuration it prints:

* median seconds per image of each pipeline, and the Face-diffuser / SD ratio beside the UNet-evaluation ratio of
  the stage schedule (``facediffuser.fusion.unet_evaluations_per_image``; docs/method.md, Cost per image);
* the fraction of the time spent outside the UNets (the UNet forwards are timed with hooks);
* peak memory: the weights each pipeline needs (distinct tensors) plus the activation peak of a call;
* what the switches cost or save: the noise fusion per step, SDPA against the classic attention processor, VAE
  slicing and tiling, CPU offloading (needs CUDA) and ``torch.compile`` (``--compile``).

Whether the fast paths work (one batched UNet call per model per step, no host syncs in the fusion, SDPA, the float16
VAE upcast, offload wiring) is tested, not measured: ``tests/test_performance.py`` and ``tests/test_offload.py``.

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
import dataclasses
import gc
import re
import resource
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from facediffuser import FaceDiffuserPipeline, SubjectGuidanceBase
from facediffuser.fusion import Stage, saliency_adaptive_noise_fusion, stage_schedule, unet_evaluations_per_image
from facediffuser.io.tiny import SD15_SHAPED, tiny_components
from facediffuser.settings import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, SamplingSettings

PROMPT = "a photo of a man <|image|> riding a horse on the beach"
SD_PROMPT = "a photo of a man riding a horse on the beach"
GB = 1e9
FD_RUNS = {f"FD {base.value}": base for base in SubjectGuidanceBase}  # "FD text" (release), "FD null" (eq. 2)


def fmt_bytes(n: float) -> str:
    return f"{n / GB:.2f} GB" if abs(n) >= 0.1 * GB else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------------- components
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


_STATUS = Path("/proc/self/status")


def _resident_peak() -> int:
    """The process's peak resident set in bytes: ``VmHWM`` where Linux gives it, else ``getrusage``."""
    if _STATUS.is_file():
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


def _reset_resident_peak() -> bool:
    """Resets ``VmHWM`` to the current resident set (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block beyond what was in use before it: CUDA allocator statistics on a GPU; on the CPU the
    growth of the resident set's high-water mark, reset before the block on Linux (elsewhere the process's lifetime
    peak, so a block that stays under an earlier peak reads 0)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            _reset_resident_peak()
            self._before = _resident_peak()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._before
        else:
            self.peak = _resident_peak() - self._before


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
    images: int
    settings: SamplingSettings  # the guidance base is set per run: both are measured

    @property
    def steps(self) -> int:
        return self.settings.num_inference_steps

    @property
    def stages(self) -> list[Stage]:
        return stage_schedule(self.steps, self.settings.alpha, self.settings.beta)


def make_runners(fd, sd, setup: Setup, reference: Image.Image):
    common = {"height": setup.size, "width": setup.size, "num_images_per_prompt": setup.images, "output_type": "np"}

    def generator():
        return torch.Generator(device="cpu").manual_seed(0)

    def face(base: SubjectGuidanceBase):
        sampling = setup.settings.replace(subject_guidance_base=base).pipeline_kwargs()

        def run(**overrides):
            kwargs = {**sampling, **common, **overrides}
            return fd(PROMPT, [reference], generator=generator(), **kwargs)

        return run

    def plain(**overrides):
        kwargs = {"num_inference_steps": setup.steps, "guidance_scale": setup.settings.guidance_scale, **common}
        return sd(SD_PROMPT, generator=generator(), **{**kwargs, **overrides})

    return {"SD": plain, **{name: face(base) for name, base in FD_RUNS.items()}}


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
    runners = make_runners(fd, sd, setup, reference)
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
    sd_evals = 2 * setup.steps  # classifier-free guidance: (0, c) per step
    sd_unet = statistics.median(run.unet_seconds for run in sd_runs)
    print(f"\n  {'pipeline':<9} {'s/image':>8} {'ratio':>6} {'UNet evals':>10} {'expected':>8} {'off by':>7} "
          f"{'UNet-time ratio':>15} {'outside UNets':>13} {'wall s/image':>12} {'activations':>11}")  # fmt: skip
    for name, runs in results.items():
        evals = sd_evals if name == "SD" else unet_evaluations_per_image(setup.stages, FD_RUNS[name])
        # The ratios below mean something only if the pipelines evaluated what the stage schedule says.
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
    for name in FD_RUNS:
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


# ------------------------------------------------------------------------------------- what the switches cost
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
    fusion_steps = setup.stages.count(Stage.FUSION)
    print(f"  SNF: {per_step * 1e3:.2f} ms per stage-II step, {per_step * fusion_steps:.4f} s per call")


def time_attention(fd, setup: Setup, device) -> None:
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
        f"  one TDM call (batch {2 * setup.images}): SDPA {seconds['SDPA']:.3f} s, "
        f"classic attention {seconds['classic']:.3f} s"
    )


def time_vae(fd, setup: Setup, device) -> None:
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


def measure_offload(components: dict, setup: Setup, reference, device: torch.device, dtype: torch.dtype) -> None:
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
            run = make_runners(fd, sd, setup, reference)[name]
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


def time_compile(fd, sd, setup: Setup, reference, device) -> None:
    runners = make_runners(fd, sd, setup, reference)
    timer = UnetTimer([fd.unet, fd.subject_unet], device)
    before = {name: timed(runners[name], timer, device, {}).wall_seconds for name in ("SD", "FD text")}
    fd.compile_unets()  # also compiles SD's unet: it is the same module
    start = time.perf_counter()
    for run in runners.values():
        run(num_inference_steps=3)
    compile_seconds = time.perf_counter() - start
    after = {name: timed(runners[name], timer, device, {}).wall_seconds for name in ("SD", "FD text")}
    timer.remove()
    print(
        f"  torch.compile: first calls {compile_seconds:.1f} s; s/image eager -> compiled: "
        + "; ".join(f"{n} {before[n] / setup.images:.3f} -> {after[n] / setup.images:.3f}" for n in before)
    )


# ---------------------------------------------------------------------------------------------------------- main
def benchmark(name: str, components: dict, setup: Setup, args, device: torch.device, dtype: torch.dtype) -> None:
    s = setup.settings
    print(
        f"\n=== {name}: {setup.size} px, {setup.steps} steps, {setup.images} image(s) per call, alpha {s.alpha} "
        f"beta {s.beta}, w {s.guidance_scale}, {args.rounds} rounds, {device.type} {dtype} ==="
    )
    offload_components = copy.deepcopy(components) if device.type == "cuda" and not args.skip_extras else None
    fd, sd = make_pipelines(components, str(device), dtype)
    sizes = {k: weight_bytes(m) for k, m in modules_of(fd).items()}
    print("  weights: " + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in sizes.items()))
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))

    results = compare(fd, sd, setup, reference, device, args.rounds)
    report_comparison(results, setup, fd, sd, device)
    if args.skip_extras:
        return
    print("\n  What the switches cost:")
    time_fusion(fd, setup, device)
    time_attention(fd, setup, device)
    time_vae(fd, setup, device)
    if offload_components is not None:
        fd.to("cpu")  # frees the GPU for the offload measurements
        del fd, sd
        gc.collect()
        torch.cuda.empty_cache()
        measure_offload(offload_components, setup, reference, device, dtype)
        fd, sd = make_pipelines(offload_components, str(device), dtype)
    else:
        measure_offload({}, setup, reference, device, dtype)
    if args.compile:
        time_compile(fd, sd, setup, reference, device)


def sampling_flag(parser: argparse.ArgumentParser, name: str) -> None:
    """A flag for a field of :class:`SamplingSettings`, with its default and help text."""
    field = {f.name: f for f in dataclasses.fields(SamplingSettings)}[name]
    # the pipelines timed here name no guidance scale of their own: the paper's, as a number the SD baseline takes too
    default = DEFAULT_GUIDANCE_SCALE if name == "guidance_scale" else field.default
    parser.add_argument(
        "--" + name.replace("_", "-"),
        type=type(default),
        default=default,
        help=f"{field.metadata['help']} (default: %(default)s)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=["tiny", "sd15"], default=["tiny", "sd15"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument(
        "--steps", type=int, default=10, help="denoising steps T (default: 10, which splits the stages as T=50 does)"
    )
    for name in ("alpha", "beta", "guidance_scale"):
        sampling_flag(parser, name)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are over these")
    parser.add_argument("--tiny-size", type=int, default=64)
    parser.add_argument("--sd15-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2, help="images per call (the encoders run once per call)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of both UNets")
    parser.add_argument("--skip-extras", action="store_true", help="only the side-by-side comparison")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = SamplingSettings(
        num_inference_steps=args.steps, alpha=args.alpha, beta=args.beta, guidance_scale=args.guidance_scale
    )
    build_threads = torch.get_num_threads()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # `to(dtype)` warns about modules to keep in float32; none here
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, {args.threads or build_threads} CPU threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    try:
        for config in args.configs:
            build = time.perf_counter()
            torch.set_num_threads(build_threads)  # random initialisation, on all cores
            components = tiny_components(seed=0) if config == "tiny" else tiny_components(0, SD15_SHAPED)
            torch.set_num_threads(args.threads or build_threads)
            size = args.tiny_size if config == "tiny" else args.sd15_size
            setup = Setup(size=size, images=args.images, settings=settings)
            print(f"\n[{config}: components built in {time.perf_counter() - build:.1f} s]")
            benchmark({"tiny": "Tiny pipeline", "sd15": "SD1.5-shaped pipeline"}[config], components, setup, args,
                      device, dtype)  # fmt: skip
            del components
            gc.collect()
    finally:  # as it was, for a caller in the same process (the smoke test)
        torch.set_num_threads(build_threads)
        torch.set_grad_enabled(True)
        diffusers_logging.set_verbosity(verbosity)
    paper = SamplingSettings(num_inference_steps=DEFAULT_STEPS)  # the paper's T, alpha and beta
    stages = stage_schedule(paper.num_inference_steps, paper.alpha, paper.beta)
    ratios = ", ".join(
        f"{base.value} {unet_evaluations_per_image(stages, base) / (2 * len(stages)):.2f}x" for base in FD_RUNS.values()
    )
    print(f"\nUNet-evaluation ratios at T={paper.num_inference_steps}, alpha {paper.alpha} beta {paper.beta}: {ratios}")
    print(f"Total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
