"""One smoke test per maintained benchmark of benchmarks/ (benchmarks/README.md), and one for the README's figures
(docs/mini/figures.py): each runs on tiny settings and checks the rows it prints, so a broken script fails here. Their
figures are for docs/performance.md, not tests."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pipeline_speed.py"
MAINTAINED = [
    "generate_speed.py",
    "pipeline_speed.py",
    "train_memory_xl.py",
    "train_throughput.py",
    "world_render_speed.py",
]


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


def script_module(path: Path):
    """A script loaded as a module (its ``main`` and helpers, without running it)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *argv: str) -> str:
    """Runs ``benchmarks/<name>`` as a user does, in a fresh process; returns what it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_benchmarks_holds_the_maintained_benchmarks_and_their_readme():
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")) == MAINTAINED
    readme = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert all(f"python benchmarks/{name}" in readme for name in MAINTAINED)


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
    assert "ratios at T=50, alpha 0.3 beta 0.6: text 1.30x, null 1.65x" in out  # docs/method.md, Cost per image


def test_flags_default_to_the_sampling_settings(pipeline_speed):
    from facediffuser.settings import SamplingSettings

    args = pipeline_speed.parse_args([])
    defaults = SamplingSettings()
    # the guidance scale: the paper's, as the pipelines timed there name none of their own
    assert (args.alpha, args.beta, args.guidance_scale) == (
        defaults.alpha,
        defaults.beta,
        defaults.effective_guidance_scale,
    )


@pytest.mark.slow
def test_generate_speed_times_the_readme_command_and_its_phases():
    out = run_script(
        "generate_speed.py", "--rounds", "1", "--warm-calls", "1", "--settings", "ddim:2", "own", "--threads", "1"
    )
    assert "image 32x32 px" in out  # the shipped mini model's size
    # both settings side by side, each with its sampler, cost, cold and warm times
    rows = re.findall(
        r"^(\S+)\s+\| (\S+) (\d+) \| (\d+) \| ([\d.]+) s, ([\d.]+) s \| ([\d.]+) s, ([\d.]+) s$", out, re.M
    )
    assert [(r[0], r[1], r[2], r[3]) for r in rows][:1] == [("ddim:2", "ddim", "2", "6")]  # 0 / 1 / 1 steps: 4 + 2
    assert [r[0] for r in rows] == ["ddim:2", "own"] and all(float(r[4]) > 0 and float(r[6]) > 0 for r in rows)
    assert re.search(r"^  torch\s+\d+\.\d\d s$", out, re.M)  # the import breakdown by package
    phases = re.findall(r"^  (.+?)\s+(\d+\.\d\d) s\s+(\d+\.\d)%$", out, re.M)
    names = [name.strip() for name, _, _ in phases]
    assert names[:6] == ["import torch", "import diffusers", "import transformers", "import facediffuser",
                         "checks + references", "load model"] and names[-1] == "write png"  # fmt: skip
    assert "call: subject_unet (SDM)" in names and "call: vae decode" in names
    assert abs(sum(float(share) for _, _, share in phases) - 100) < 1  # shares of one sum (rounded to 0.1% each)


@pytest.mark.slow
def test_train_throughput_measures_a_tiny_training_step():
    out = run_script("train_throughput.py", "--models", "tiny", "--kinds", "tdm", "--steps", "1", "--warmup", "0",
                     "--resolution", "64")  # fmt: skip
    row = next(line.split() for line in out.splitlines() if line.startswith("tiny"))
    assert (
        row[1] == "tdm" and float(row[2]) > 0 and abs(float(row[3]) - 1 / float(row[2])) < 0.01 + 0.01 * float(row[3])
    )
    assert int(row[5]) > 0  # the child's peak resident memory, from the kernel


def test_world_render_speed_renders_each_distribution(capsys):
    script_module(ROOT / "benchmarks" / "world_render_speed.py").main(
        ["--images", "2", "--rounds", "1", "--size", "32"]
    )
    rows = re.findall(r"^(\w+)\s+32 px: render (\d+\.\d) ms/image, write (\d+\.\d) ms/image", capsys.readouterr().out,
                      re.M)  # fmt: skip
    assert [name for name, _, _ in rows] == ["scenes", "portraits"]
    assert all(float(render) > 0 for _, render, _ in rows)


@pytest.mark.slow
def test_readme_figures_draw_both_pictures(tmp_path):
    script_module(ROOT / "docs" / "mini" / "figures.py").main(["--out", str(tmp_path), "--steps", "1"])
    committed = {name: Image.open(ROOT / "docs" / "mini" / name).size for name in ("example.png", "seeds.png")}
    assert {name: Image.open(tmp_path / name).size for name in committed} == committed  # the same layout


def test_two_person_figure_draws_each_runs_methods_beside_the_references(tmp_path):
    """docs/mini/two_people.py on two small runs of the shipped benchmark people: one row per two-person case (the
    one-person row left out), one column per method of either run."""
    from facediffuser.evaluation.figures import GRID_TILE
    from facediffuser.evaluation.reports import ScoreRow, write_scores
    from facediffuser.lab.world.benchmark import default_references

    data = default_references()
    pairs = ["id0020+id0051/multi", "id0051+id0020/multi"]
    for run, methods in (("a", ["mini/tdm", "mini/sdm"]), ("b", ["mini/face-diffuser_a0.3_b0.6_ra"])):
        folder = tmp_path / run
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"data": str(data)}), encoding="utf-8")
        rows = []
        for method in methods:
            for case in [*pairs, "id0020/single-0"]:
                image = f"images/{method}/{case}/0.png"
                (folder / image).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), "red").save(folder / image)
                rows.append(ScoreRow(
                    model="mini", method=method, alpha=0.3, beta=0.6, case_id=case,
                    group="single" if "single" in case else "multi", subjects="", prompt="a man <|image|> and a man",
                    text="", image_index=0, image=image, ip=0.0, faces=0, pc=0.0, ip_backend="mini", clip_model="c",
                    rank=0, generated=True,
                ))  # fmt: skip
        write_scores(folder / "scores.csv", rows)
    out = tmp_path / "two.png"
    script_module(ROOT / "docs" / "mini" / "two_people.py").main(
        ["--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]
    )
    width, height = Image.open(out).size
    gap = 4
    assert width == (2 + 3) * (GRID_TILE + gap) + gap  # two references, three methods
    assert height == 28 + 2 * (GRID_TILE + 26 + gap) + gap  # two cases


@pytest.mark.slow
def test_train_memory_xl_measures_the_tiny_sdxl_step_and_the_sdxl_counts():
    def fields(out: str) -> dict[str, str]:
        return dict(item.split("=", 1) for item in out.split())

    tiny = fields(run_script("train_memory_xl.py", "--what", "tiny-xl"))
    assert float(tiny["saved_for_backward_MiB"]) > 0
    # AdamW keeps two float32 moments per trained weight; 0.015 covers the printed figures' rounding (0.005 each).
    assert abs(float(tiny["adamw_MiB"]) - 2 * float(tiny["params_MiB"])) <= 0.015
    sdxl = fields(run_script("train_memory_xl.py", "--what", "sdxl-params"))
    assert int(sdxl["unet"]) == 2_567_463_684  # SDXL base's UNet, as published
    small = fields(run_script("train_memory_xl.py", "--what", "sdxl-activations", "--resolution", "64"))
    assert small["captured_layers"] == "70" and float(small["saved_total_MiB"]) > 0
