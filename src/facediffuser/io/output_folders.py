"""Output folders: one rule for every command that writes one (``world``, ``mini build``, ``mini ship``, ``train``,
``evaluate``, ``convert``).

A command writes only into a folder it created, an empty one, or one that holds its own marker; it never writes
over, moves or deletes a file it did not write; an input folder is never an output, nor inside one, nor holds one.

- :func:`check` says, before anything is written (and before any model loads), whether ``out`` may be claimed.
- :func:`claim` creates the folder (or takes an empty one, or one with the command's marker) and writes the marker
  :data:`MARKER`: JSON with the ``command`` that made the folder and the relative paths of what it wrote (``files``;
  a path ending in ``/`` is a whole sub-folder of the command's).
- :func:`own` is called before a command writes an entry of a claimed folder: it refuses one that exists and was not
  written by the command (a user's file put there later), and records the entry in the marker.
- :func:`write_folder_atomically` and :func:`write_folders_atomically` build whole folders beside their place and swap
  them in only once every one is complete: a refusal or Ctrl-C before the swap leaves the old folders whole.

Folders written before the marker existed are recognized by the files only the command writes (``legacy``): a world
or mini build with its ``stages/*.json`` markers, an evaluation with its ``run.json``; they are taken over as they are.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER = ".facediffuser.json"
PathLike = str | os.PathLike


def protected_reason(target: Path) -> str | None:
    """Why a command must never write into, replace or delete ``target`` (an absolute, resolved path), or None."""
    if target == Path(target.anchor):
        return "the root folder"
    if target == Path.home().resolve():
        return "your home folder"
    cwd = Path.cwd().resolve()
    if target == cwd:
        return "the current folder"
    if target in cwd.parents:
        return "a folder above the current one"
    return None


def absolute(path: PathLike) -> Path:
    """``path`` made absolute (``~`` expanded), without following symbolic links."""
    return Path(os.path.abspath(Path(path).expanduser()))


def check_apart(out: PathLike, inputs: Iterable[PathLike | None], flag: str = "--out") -> None:
    """Refuses an output folder that is one of ``inputs``, holds one, or lies inside one: writing there could write
    over, or replace, what the command reads."""
    target = absolute(out).resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        path = absolute(given).resolve()
        if path == target:
            raise ValueError(f"{flag} {out} is the input {given}: choose a new folder for {flag}.")
        if target in path.parents:
            raise ValueError(f"{flag} {out} holds the input {given}: choose a new folder for {flag}, beside it.")
        if path in target.parents:
            raise ValueError(f"{flag} {out} lies inside the input {given}: choose a new folder for {flag}, outside it.")


def read_marker(folder: PathLike) -> dict | None:
    """The marker of ``folder`` (``{"command": ..., "files": [...]}``), or None when it has none."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it is facediffuser's record of the folder.") from err
    if not isinstance(marker, dict) or not isinstance(marker.get("command"), str):
        raise ValueError(f"{path} is not a facediffuser folder record (it names no command).")
    files = marker.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{path} is not a facediffuser folder record: 'files' is not a list of paths.")
    return {"command": marker["command"], "files": list(files)}


def write_marker(folder: PathLike, command: str, files: Iterable[str]) -> None:
    """Writes the marker of ``folder`` atomically (a new file beside it, then a rename)."""
    from .outputs import atomic_write

    record = {"command": command, "files": sorted(set(files))}
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(Path(folder) / MARKER, lambda f: f.write(text.encode("utf-8")), overwrite=True)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER)


Legacy = Sequence[str | Callable[[Path], bool]]


def _is_legacy(folder: Path, legacy: Legacy) -> bool:
    """Whether ``folder`` holds a file that only the command writes: a glob pattern that matches, or a test that
    passes (e.g. one that reads the file)."""
    for sign in legacy:
        if callable(sign):
            if sign(folder):
                return True
        elif next(iter(folder.glob(sign)), None) is not None:
            return True
    return False


def _listed(relative: str, files: Iterable[str]) -> bool:
    """Whether ``relative`` (a posix path) is one of ``files`` or lies in a sub-folder listed as ``name/``."""
    relative = relative.rstrip("/")
    return any(e.rstrip("/") == relative or (e.endswith("/") and relative.startswith(e)) for e in files)


def _probe_writable(parent: Path, out: Path, flag: str) -> None:
    probe = parent / f".facediffuser-write-test-{secrets.token_hex(4)}"
    try:  # a real write, not os.access: root passes os.access on read-only file systems too
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise ValueError(
            f"Cannot write in {parent} ({err.strerror or err}): choose a {flag} in a folder you can write to."
        ) from err


def check(
    out: PathLike,
    *,
    command: str,
    inputs: Iterable[PathLike | None] = (),
    flag: str = "--out",
    legacy: Legacy = (),
) -> Path:
    """Whether ``command`` may write into ``out``; writes nothing. Returns ``out`` as an absolute path.

    ``out`` may be new (its nearest existing parent a folder this user can write to), an empty folder, a folder with
    ``command``'s marker, or one made before markers existed that shows one of the ``legacy`` signs (glob patterns,
    or tests of the folder). It is
    never the root, the home folder, the current folder or one above it, nor one of ``inputs``, inside one or holding
    one. Every refusal is a ``ValueError`` of one sentence.
    """
    if str(out).strip() == "":
        raise ValueError(f"{flag} is empty: name a new folder to write into.")
    path = absolute(out)
    if os.path.lexists(path):
        if not path.is_dir():
            raise ValueError(f"{flag} {out} is a file, not a folder: choose a new or empty folder.")
        reason = protected_reason(path.resolve())
        if reason:
            raise ValueError(f"{flag} {out} is {reason}: choose a new or empty folder for {flag}.")
    check_apart(out, inputs, flag)
    if os.path.lexists(path):
        marker = read_marker(path)
        if marker is not None:
            if marker["command"] != command:
                raise ValueError(
                    f"{out} was made by `facediffuser {marker['command']}`, not `facediffuser {command}`: choose a "
                    f"new or empty folder for {flag}."
                )
        else:
            entries = _entries(path)
            if entries and not _is_legacy(path, legacy):
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise ValueError(
                    f"{out} holds files facediffuser did not write ({shown}): choose a new or empty folder for {flag}."
                )
        _probe_writable(path, path, flag)
        return path
    _probe_writable(nearest_existing_folder(path, out, flag), path, flag)
    return path


def nearest_existing_folder(path: Path, out: PathLike, flag: str = "--out") -> Path:
    """The nearest existing folder above ``path`` (an absolute path that does not exist yet, given as ``out``), where
    it would be created; a broken symbolic link on the way, or a file there, is refused with one sentence."""
    parent = path.parent
    while not parent.exists():
        if os.path.lexists(parent):  # a dangling symbolic link
            raise ValueError(f"{parent} is a broken symbolic link: choose another {flag}.")
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{out} lies below {parent}, which is a file, not a folder: choose another {flag}.")
    return parent


def claim(
    out: PathLike,
    *,
    command: str,
    inputs: Iterable[PathLike | None] = (),
    flag: str = "--out",
    legacy: Legacy = (),
    entries: Sequence[str] = (),
) -> Path:
    """:func:`check`, then creates ``out`` (with its parents) and its marker. A folder made before markers existed
    (``legacy``) is taken over with those of ``entries`` (the names the command writes) that it holds."""
    path = check(out, command=command, inputs=inputs, flag=flag, legacy=legacy)
    path.mkdir(parents=True, exist_ok=True)
    marker = read_marker(path)
    if marker is None:
        found = [e for e in entries if (path / e.rstrip("/")).exists()]
        write_marker(path, command, found)
    return path


def check_own(out: PathLike, *relatives: str, command: str) -> dict | None:
    """What :func:`own` refuses, without recording anything: an entry of ``out`` that exists and is not in its
    marker, or a marker of another command. Returns the marker (None for a folder without one, or no folder)."""
    folder = Path(out)
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is not None and marker["command"] != command:
        raise ValueError(f"{folder} was made by `facediffuser {marker['command']}`: nothing was written into it.")
    files = marker["files"] if marker is not None else []
    for relative in relatives:
        path = folder / relative.rstrip("/")
        if os.path.lexists(path) and not _listed(relative, files):
            raise ValueError(
                f"{path} was not written by facediffuser {command}, so it was not replaced: move it away, or choose "
                "another output folder."
            )
    return marker


def own(out: PathLike, *relatives: str, command: str) -> list[Path]:
    """Before ``command`` writes the entries ``relatives`` of ``out`` (posix paths; ``name/`` a whole sub-folder):
    refuses one that exists and is not in the marker (a file the command did not write), records the others in the
    marker, and returns their paths. A folder without a marker gets one (nothing in it is the command's yet)."""
    folder = Path(out)
    marker = check_own(folder, *relatives, command=command)
    files = marker["files"] if marker is not None else []
    paths = [folder / relative.rstrip("/") for relative in relatives]
    new = [r for r in relatives if not _listed(r, files)]
    if new or marker is None:
        folder.mkdir(parents=True, exist_ok=True)
        write_marker(folder, command, [*files, *new])
    return paths


def listed_files(folder: Path, base: Path) -> list[str]:
    """The files under ``folder``, as posix paths relative to ``base``."""
    return sorted(p.relative_to(base).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def foreign_files(folder: Path, base: Path, marker: Mapping | None) -> list[str]:
    """The files under ``folder`` that the marker of ``base`` does not list (all of them without a marker)."""
    if not folder.is_dir():
        return [folder.relative_to(base).as_posix()] if os.path.lexists(folder) else []
    files = marker["files"] if marker is not None else []
    return [f for f in listed_files(folder, base) if not _listed(f, files)]


# ------------------------------------------------------------------------------------------------ whole folders
def sibling(out: Path, tag: str) -> Path:
    """A new, hidden name beside ``out`` (``.<name>.<tag>-<random>``)."""
    return out.with_name(f".{out.name}.{tag}-{secrets.token_hex(4)}")


def write_folders_atomically(
    writes: Mapping[Path, Callable[[Path], None]], *, recheck: Callable[[], object] | None = None
) -> list[Path]:
    """Calls each ``write(folder)`` on a new folder beside its place, then swaps them all in.

    Nothing is replaced until every ``write`` (and ``recheck``, called just before the swap) has succeeded: a failure
    or Ctrl-C before that leaves every old folder as it was and no new one behind. During the swap, each old folder
    is set aside first; if the swap fails half-way, every folder swapped so far goes back. The old folders are deleted
    only once every new one is in place. The caller decides whether each place may be replaced at all. The new
    folders follow the user's umask.
    """
    new: dict[Path, Path] = {}
    old: dict[Path, Path] = {}
    done: list[Path] = []
    try:
        for out, write in writes.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            new[out] = sibling(out, "new")
            new[out].mkdir()  # mode 0o777 less the umask, unlike tempfile.mkdtemp's 0o700
            write(new[out])
        if recheck is not None:
            recheck()
        for out in writes:
            if os.path.lexists(out):
                old[out] = sibling(out, "old")
                out.rename(old[out])
            new[out].rename(out)
            done.append(out)
    except BaseException:
        for out in reversed(list(writes)):  # put back what was set aside, in reverse order
            if out in done:
                shutil.rmtree(out, ignore_errors=True)
            if out in old and not os.path.lexists(out):
                old[out].rename(out)
                del old[out]
        raise
    finally:
        for folder in new.values():
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    for out, folder in old.items():
        try:
            shutil.rmtree(folder)
        except OSError as err:  # the new folder is in place: say what is left over rather than fail
            logger.warning("Wrote %s, but could not delete the folder it replaced, %s: %s", out, folder, err)
    return list(writes)


def write_folder_atomically(
    out: Path, write: Callable[[Path], None], *, recheck: Callable[[], object] | None = None
) -> Path:
    """:func:`write_folders_atomically` for one folder."""
    write_folders_atomically({out: write}, recheck=recheck)
    return out
