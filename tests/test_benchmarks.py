"""The speed benchmark runs end to end on the tiny components (its figures are for docs/performance.md, not tests)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_speed.py"


@pytest.fixture(scope="module")
def pipeline_speed():
    spec = importlib.util.spec_from_file_location("pipeline_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.slow
def test_pipeline_speed_runs_on_tiny_components(pipeline_speed, capsys):
    # 4 steps split 1 / 1 / 2, so every stage runs; the script raises if a pipeline's UNet hooks see another number
    # of evaluations than the stage schedule gives.
    pipeline_speed.main(["--configs", "tiny", "--steps", "4", "--rounds", "1", "--images", "1"])
    out = capsys.readouterr().out
    rows = {
        line.split()[0] + " " + line.split()[1]: line.split() for line in out.splitlines() if line.startswith("  FD")
    }
    assert rows["FD text"][4] == "10" and rows["FD null"][4] == "13"  # (2) + (2+2) + 2*(2) and (2) + (2+3) + 2*(3)
    assert "SNF:" in out and "VAE decode" in out
    assert "ratios at T=50, alpha 0.3 beta 0.6: text 1.30x, null 1.65x" in out  # REFERENCE section 8


def test_flags_default_to_the_sampling_settings(pipeline_speed):
    from facediffuser.settings import SamplingSettings

    args = pipeline_speed.parse_args([])
    defaults = SamplingSettings()
    assert (args.alpha, args.beta, args.guidance_scale) == (defaults.alpha, defaults.beta, defaults.guidance_scale)
