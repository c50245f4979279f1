"""Every shell command in README.md and docs/*.md, checked against the installed packages without running it.

Each command line is parsed by its program's own argument parser and stopped there (``facediffuser``, ``python -m``
modules and scripts, ``accelerate launch``), or run offline in a dry-run (``hf download``); modules, ``python -c``
imports, ``pip`` extras and pins, and the repository files a command names must exist. Nothing is downloaded,
trained or generated, except the README's first command, which runs as written (the tiny offline model).
New flags elsewhere do not break this test; a documented flag that no longer exists does.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from facediffuser.cli.main import main as facediffuser_main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
REPO_DIRS = ("configs", "src", "benchmarks", "docs", "tests")  # a token starting with these names a repository file


def documented_commands() -> list:
    """``(doc, argv)`` for every command in a shell block: continuation lines joined, comments and ``VAR=x`` dropped,
    ``a && b`` split."""
    found = []
    for doc in DOCS:
        for block in SHELL_BLOCK.findall(doc.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words:
                    cut = words.index("&&") if "&&" in words else len(words)
                    argv, words = words[:cut], words[cut + 1 :]
                    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                        argv = argv[1:]
                    if argv:
                        found.append(pytest.param(doc.name, argv, id=f"{doc.name}: {' '.join(argv)[:70]}"))
    return found


COMMANDS = documented_commands()


class Parsed(Exception):
    """Raised in place of running a program once its arguments have parsed."""


def parses(run, monkeypatch, capsys) -> None:
    """Runs ``run`` until its first ``ArgumentParser.parse_args`` returns; a usage error fails with its message."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        run()
    except Parsed:
        return
    except SystemExit as exit:
        assert exit.code in (0, None), capsys.readouterr().err  # 0: --help
        return
    pytest.fail("the program returned without parsing any arguments")


def parses_as_main(argv: list[str], run, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    parses(run, monkeypatch, capsys)


def console_scripts() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}


def run_module(module: str) -> None:
    """``python -m module``, in this process, where the module was already imported by the tests."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        runpy.run_module(module, run_name="__main__")


def check_python(args: list[str], monkeypatch, capsys) -> None:
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        assert importlib.util.find_spec(module), f"python -m {module}: no such module"
        if module.startswith("facediffuser."):
            parses_as_main([module, *rest], lambda: run_module(module), monkeypatch, capsys)
    elif args[0] == "-c":
        for node in ast.walk(ast.parse(args[1])):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{node.module} has no {missing}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
    else:
        script = ROOT / args[0]
        assert script.is_file(), f"{args[0]}: no such script"
        parses_as_main(
            [str(script), *args[1:]], lambda: runpy.run_path(str(script), run_name="__main__"), monkeypatch, capsys
        )


def check_pip(args: list[str]) -> None:
    # `pip install` (pins checked against this environment) or `pip download` (the requirements must parse; what
    # the registry serves is not checked offline).
    assert args[0] in ("install", "download"), args
    downloading = args[0] == "download"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    takes_value = {"-d", "--dest", "-r", "--requirement", "-c", "--constraint", "--platform", "--python-version"}
    words = args[1:]
    for i, word in enumerate(words):
        if word.startswith("-") or (i > 0 and words[i - 1] in takes_value):
            continue
        if word.startswith("."):  # the project itself, with extras
            wanted = re.findall(r"\[(.*)\]", word)
            unknown = [e for e in (wanted[0].split(",") if wanted else []) if e.strip() not in extras]
            assert not unknown, f"pyproject.toml has no extra {unknown}"
            continue
        try:
            requirement = Requirement(word)
        except InvalidRequirement:
            assert ".X" in word, f"{word}: not a requirement pip understands"  # a placeholder, like 0.X.Y
            continue
        if downloading:
            continue
        try:
            installed = Version(importlib.metadata.version(requirement.name)).base_version
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional package this environment does not have; nothing to compare with
        pinned = [s.version for s in requirement.specifier if s.operator == "=="]
        assert all(p == installed for p in pinned), f"{word}, but {installed} is installed"


def check_accelerate(args: list[str], monkeypatch, capsys) -> None:
    assert args[0] == "launch", f"accelerate {args[0]}: only `accelerate launch` is checked here"
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    try:
        launched = argparse.ArgumentParser.parse_args(parser, args[1:])
    except SystemExit:
        pytest.fail(f"accelerate launch refuses these arguments: {capsys.readouterr().err}")
    target = [launched.training_script, *launched.training_script_args]
    check_python(["-m", *target] if launched.module else target, monkeypatch, capsys)


def check_hf(args: list[str], tmp_path) -> None:
    """The installed ``hf``, offline, in a dry run: a usage error exits 2, and a pattern that ``hf`` took for a file
    name (``--include a b`` instead of ``--include a --include b``) makes it warn that it ignores the patterns."""
    entry = console_scripts()["hf"]
    module, function = entry.value.split(":")
    code = f"import sys; from {module} import {function} as main; sys.argv[0] = 'hf'; sys.exit(main())"
    extra = ["--dry-run"] if args[0] == "download" else ["--help"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode != 2, output
    assert "Ignoring `--include`" not in output and "Ignoring `--exclude`" not in output, output


def check_repo_paths(argv: list[str]) -> None:
    for word in argv:
        value = word.split("=", 1)[-1]
        if value.split("/")[0] in REPO_DIRS and not any(c in value for c in "*?"):
            assert (ROOT / value).exists(), f"{value}: no such file in the repository"


@pytest.mark.parametrize("doc,argv", COMMANDS)
def test_documented_command_exists_and_parses(doc, argv, monkeypatch, capsys, tmp_path):
    program, args = argv[0], argv[1:]
    check_repo_paths(argv)
    if program in ("python", "python3"):
        check_python(args, monkeypatch, capsys)
    elif program == "pip":
        check_pip(args)
    elif program == ".":
        assert args and args[0].endswith("activate")
    elif program == "facediffuser":
        parses(lambda: facediffuser_main(args), monkeypatch, capsys)
    elif program == "accelerate":
        check_accelerate(args, monkeypatch, capsys)
    elif program == "hf":
        check_hf(args, tmp_path)
    else:
        installed = program in console_scripts() or shutil.which(program) is not None
        assert installed, f"{program}: no such command with the installed packages"


def test_commands_were_found():
    programs = {argv[0] for _, argv in (p.values for p in COMMANDS)}
    assert {"facediffuser", "accelerate", "hf", "pip", "python"} <= programs, programs


@pytest.mark.slow
def test_the_readmes_first_command_runs_as_written(tmp_path, monkeypatch):
    """The README's first ``facediffuser generate`` runs from a fresh clone, offline, on the shipped mini model; a
    checkout without the shipped weights runs it on the tiny pipeline in their place."""
    from facediffuser.io import package_data
    from facediffuser.io.loading import packaged_mini_pipeline
    from facediffuser.io.tiny import build_tiny_pipeline

    if not (packaged_mini_pipeline() / "model_index.json").is_file():
        build_tiny_pipeline().save_pretrained(tmp_path / "data" / "mini" / "pipeline", safe_serialization=True)
        monkeypatch.setattr(package_data, "data_dir", lambda: tmp_path / "data")
    argv = next(argv for doc, argv in (p.values for p in COMMANDS) if argv[:2] == ["facediffuser", "generate"])
    out = argv[argv.index("--out") + 1]
    monkeypatch.chdir(ROOT)
    argv = [tmp_path / out if word == out else word for word in argv]
    assert facediffuser_main([str(word) for word in argv[1:]]) == 0
    assert (tmp_path / out).is_file()


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= parser_flags(sub)
    return flags


def script_flags(script: Path, monkeypatch) -> set[str]:
    """The flags of a script's argument parser, taken as it parses (the script does not run)."""
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise Parsed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr(sys, "argv", [str(script)])
        with pytest.raises(Parsed):
            runpy.run_path(str(script), run_name="__main__")
    return parser_flags(seen[0])


def help_flags(argv: list[str], env: dict | None = None) -> set[str]:
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, env=env)
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", done.stdout))


def test_flags_named_in_the_prose_exist(monkeypatch, tmp_path):
    """A flag written in backticks in the prose (``--offload``, ``--resume``) is a flag of some documented program."""
    from accelerate.commands.launch import launch_command_parser

    from facediffuser.cli.main import build_parser

    known = parser_flags(build_parser()) | parser_flags(launch_command_parser())
    for script in sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "docs" / "mini").glob("*.py")]):
        known |= script_flags(script, monkeypatch)
    hf = console_scripts()["hf"].value.split(":")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "NO_COLOR": "1"}
    known |= help_flags([sys.executable, "-c", f"from {hf[0]} import {hf[1]} as m; m()", "download"], env)
    known |= help_flags([sys.executable, "-m", "pip", "install"])
    unknown = []
    for doc in DOCS:
        for span in re.findall(r"`([^`\n]+)`", SHELL_BLOCK.sub("", doc.read_text(encoding="utf-8"))):
            script = re.match(r"(benchmarks/\w+\.py)\b", span)
            if script and not (ROOT / script.group(1)).is_file():
                continue  # a one-off script cited with the commit that holds it (docs/mini-findings.md)
            unknown += [f"{doc.name}: {flag}" for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", span)]
    missing = [u for u in unknown if u.split(": ")[1] not in known]
    assert unknown and not missing, missing


PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_examples() -> list:
    return [
        pytest.param(code, id=f"{doc.name}: python block {i}")
        for doc in DOCS
        for i, code in enumerate(PYTHON_BLOCK.findall(doc.read_text(encoding="utf-8")))
    ]


def check_keywords(function, call: ast.Call, where: str) -> None:
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [k.arg for k in call.keywords if k.arg is not None and k.arg not in parameters]
    assert not unknown, f"{where} takes no {unknown}"


@pytest.mark.parametrize("code", python_examples())
def test_documented_python_names_exist(code):
    """Python examples compile, their imports resolve, and the names and keywords they use on this project's classes
    exist (``pipe`` stands for a FaceDiffuserPipeline). Nothing is run."""
    from facediffuser import FaceDiffuserPipeline

    tree = ast.parse(code)
    names = {"pipe": FaceDiffuserPipeline}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    components = set(inspect.signature(FaceDiffuserPipeline.__init__).parameters)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:
            target = names[func.id]
            check_keywords(target.__call__ if func.id == "pipe" else target, node, func.id)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in names:
            owner = names[func.value.id]
            if func.attr not in components:
                assert hasattr(owner, func.attr), f"{func.value.id}.{func.attr} does not exist"
                check_keywords(getattr(owner, func.attr), node, f"{func.value.id}.{func.attr}")
