"""Exit statuses and Ctrl-C of the command line, for every command: 0 done, 2 refused input, 1 a failure of the
system, 130 interrupted (one line, no traceback)."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import facediffuser
from facediffuser.cli import generate as generate_command
from facediffuser.cli import main as cli_main
from facediffuser.cli.main import COMMANDS, main

ASTRONAUT = str(Path(facediffuser.__file__).parent / "data" / "examples" / "astronaut.jpg")
ONE = ["generate", "--model", "tiny", "-p", "a man <|image|>", "--ref", ASTRONAUT]


def run(argv: list[str]) -> int:
    """``main(argv)``; a Ctrl-C that escapes it fails the test instead of stopping pytest."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): the user would see a traceback")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(facediffuser.__file__).parents[1])}


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_while_a_commands_modules_load_is_one_line(command, capsys, monkeypatch):
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main.importlib, "import_module", interrupted)
    code = run([command, "--help"])
    err = capsys.readouterr().err
    assert code == 130 and err == f"facediffuser {command}: interrupted\n", err


def test_ctrl_c_during_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_command, "generate", interrupted)
    code = run([*ONE, "-o", str(tmp_path / "x.png")])
    assert code == 130 and capsys.readouterr().err == "facediffuser generate: interrupted\n"


def test_the_entry_point_imports_no_torch():
    # The console script imports facediffuser.cli.main before main() runs: a Ctrl-C there would be a traceback of
    # the interpreter's own, so that import must not load torch or diffusers (the package's names are lazy).
    script = "import sys, facediffuser.cli.main; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_packages_names_still_import():
    # the lazy names of facediffuser/__init__.py: each resolves to its class, and __all__ lists exactly them
    assert facediffuser.__all__ == sorted(facediffuser._LAZY)
    for name in facediffuser.__all__:
        assert getattr(facediffuser, name).__name__ == name
    with pytest.raises(AttributeError):
        facediffuser.NoSuchName  # noqa: B018


@pytest.mark.slow
def test_ctrl_c_in_a_fresh_process_while_torch_loads(tmp_path):
    # A real SIGINT, as the terminal sends it, 0.5 s into `world render` (while torch and the world's modules load,
    # or, on a fast machine, while the first stage runs): one line, status 130, no traceback.
    # The child starts with SIGINT at its default, as a terminal starts a foreground command: a test run in the
    # background of a non-interactive shell (`.ci/run &`) ignores SIGINT, and its children would inherit that.
    cmd = [sys.executable, "-m", "facediffuser.cli.main", "world", "render", "--out", str(tmp_path / "w")]
    process = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()  # a run that ignored the interrupt is not left rendering
    # 130 from main(); or the interpreter ends itself by SIGINT (-2) when the interrupt passed through code that a
    # library ran with PyRun (CPython then re-raises the signal at exit whatever caught it). A shell shows both as 130.
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, err)
    assert "facediffuser world: interrupted" in err.splitlines() and "Traceback" not in err, err


@pytest.mark.parametrize(
    "error,status",
    [
        (FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), "x"), 2),
        (NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "x"), 2),
        (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "x"), 2),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "x"), 2),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), "x"), 2),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "x"), 1),
        (OSError(errno.EIO, os.strerror(errno.EIO), "x"), 1),
    ],
    ids=["exists", "not-a-folder", "is-a-folder", "permission", "read-only", "disk-full", "io-error"],
)
def test_a_refused_path_exits_2_and_a_system_failure_1(error, status, tmp_path, capsys, monkeypatch):
    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(generate_command, "generate", fails)
    code = main([*ONE, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == status and err == f"facediffuser generate: error: {error.strerror} (x)\n", err
