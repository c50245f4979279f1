"""``facediffuser demo``: the web page, on this machine only unless ``--host`` says otherwise."""

from __future__ import annotations

import argparse
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from ..demo.app import DEFAULT_HOST, FIRST_PORT
from ..io.configuration import add_dataclass_arguments, build_config
from ..io.loading import Offload

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    model: str = field(
        default="mini",
        metadata={
            "help": "'mini' (the small model shipped in the package: 32 px images of the procedural world's people), "
            "a pipeline folder or hub id; 'tiny' is a random test model"
        },
    )
    scene_model: Path | None = field(
        default=None, metadata={"help": "any SD1.x UNet (diffusers folder or .safetensors) to draw the scene"}
    )
    host: str = field(
        default=DEFAULT_HOST,
        metadata={"help": "address to listen on; 0.0.0.0 lets every machine that can reach this one in"},
    )
    port: int | None = field(
        default=None, metadata={"help": f"port to listen on (default: the first free one from {FIRST_PORT})"}
    )
    share: bool = field(default=False, metadata={"help": "also publish a public gradio.live link (anyone can use it)"})
    concurrency: int = field(
        default=1, metadata={"help": "runs at the same time; more queue behind them (each run holds its activations)"}
    )
    max_queue: int = field(default=16, metadata={"help": "requests that may wait; more are turned away"})
    max_upload_mb: float = field(default=10.0, metadata={"help": "largest photo upload, in MB"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, float16, bfloat16"})
    offload: Offload = field(
        default=Offload.NONE, metadata={"help": "model: one model on the GPU at a time; sequential: layer by layer"}
    )
    face_check: bool = field(
        default=True,
        metadata={
            "help": "refuse reference photos in which no face is found: by the model's own face detector when "
            "it has one (mini does), else by dlib when installed (the eval extra)"
        },
    )


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def demo(config: DemoConfig) -> int:
    from ..demo.app import require_gradio, serve
    from ..io.loading import check_model_source, check_offload, dtype_name, load_pipeline, resolve_device, resolve_dtype

    if config.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {config.concurrency}.")
    if config.concurrency > 1 and config.offload is not Offload.NONE:
        raise ValueError("--concurrency above 1 needs --offload none: offloading moves the shared models per run.")
    if config.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {config.max_upload_mb}.")
    require_gradio()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    check_offload(config.offload, device)
    check_model_source(config.model)  # a missing folder fails here, before the server starts
    recorded = {
        "scene_model": None if config.scene_model is None else str(config.scene_model),
        "device": str(device),
        "dtype": dtype_name(dtype),
    }

    def load():
        return load_pipeline(
            config.model, device=device, dtype=dtype, scene_model=config.scene_model, offload=config.offload
        )

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself, one line each
    server = serve(
        load,
        model=config.model,
        host=config.host,
        port=config.port,
        share=config.share,
        concurrency=config.concurrency,
        max_queue=config.max_queue,
        max_upload_mb=config.max_upload_mb,
        face_check=config.face_check,
        recorded=recorded,
    )
    # SIGTERM ends the demo the way Ctrl-C does, so that its temporary folder is removed either way.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    where = (
        "this machine only; pass --host 0.0.0.0 to let other machines in"
        if config.host in ("127.0.0.1", "localhost", "::1")
        else f"every machine that can reach {config.host}"
    )
    print(f"facediffuser demo: serving {server.url} ({where}). Press Ctrl-C to stop.", flush=True)
    print(f"facediffuser demo: uploads and images go to {server.tmpdir}, removed on exit.", flush=True)
    if config.share:
        print("facediffuser demo: --share publishes a public link: anyone who has it can use this machine.", flush=True)
    try:
        server.app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        print("facediffuser demo: stopped; temporary files removed.", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    return demo(build_config(DemoConfig, args))


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="start the web page (Gradio)", description=__doc__)
    add_dataclass_arguments(parser, DemoConfig)
    parser.set_defaults(func=run)
