"""Every tracked text file reads as the product's, not as the notes of the people who built it.

The words checked, over ``git ls-files`` (text files only; the CLIP tokenizer's vocabulary and merges are vendored
data and skipped):

* issue numbers: "issue 12", "issues 8 and 11", "#12", "the next issue";
* the team's working days: "session" / "sessions", except where the word is a library's (pytest's
  ``scope="session"``, a training or inference session);
* paths of the machine that built the model: ``/work/...``, ``/root/...``, ``/home/NAME/...``, ``/Users/NAME/...``;
* "REFERENCE" (a notes file that is not in the repository; the paper's sections and docs/method.md are);
* branch names and history: "the `x` branch", "branch x-y", "commit 1234abc" (a commit is named only as the one that
  holds a removed script: "at commit 1234abc").

Each failure names the file, the line and the words found.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()  # this file spells out the words it looks for

# Vendored data: CLIP's byte-pair vocabulary holds every English word, "session" and "#1" among them.
VENDORED = re.compile(r"tokenizer/(vocab\.json|merges\.txt)$")

RULES = {
    "issue number": re.compile(
        r"(?i)\bissues?[\s-]+#?\d+|(?<![&\w/])#\d+\b|\b(?:this|the|next|previous|an earlier|a later) issue\b"
    ),
    "working-day chronology": re.compile(r"(?i)\bsessions?\b"),
    "build-machine path": re.compile(r"(?<![\w.~-])/(?:work|root)/|(?<![\w.~-])/(?:home|Users)/[\w.-]+/"),
    "REFERENCE notes": re.compile(r"\bREFERENCE\b"),
    "branch or commit history": re.compile(
        r"(?i)`[\w./-]+`\s+branch\b|\b[a-z]+-[a-z0-9-]+\s+branch\b|\bbranch(?:es)?\s+`?[a-z]+[-/][\w./-]+"
        r"|\bmerge branch\b|(?<!at )\bcommit\s+[0-9a-f]{7,40}\b"
    ),
}

# "session" in a library's sense: pytest fixture scopes, a training or inference run.
LIBRARY_SESSION = re.compile(
    r"""(?i)scope\s*=\s*["']sessions?["']|\b(?:training|inference|interactive|browser|ssh|tmux)\s+sessions?\b"""
)


def tracked_text_files() -> list:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    files = []
    for name in filter(None, names):
        path = ROOT / name
        if name == THIS or VENDORED.search(name) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: images, weights
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


def hits(rule: str, text: str) -> list:
    """``(line number, words)`` of each place in ``text`` that ``rule`` forbids."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        allowed = [m.span() for m in LIBRARY_SESSION.finditer(line)] if rule == "working-day chronology" else []
        for match in RULES[rule].finditer(line):
            if any(start <= match.start() < end for start, end in allowed):
                continue
            found.append((number, match.group(0)))
    return found


@pytest.mark.parametrize("rule", list(RULES))
def test_tracked_text_has_no(rule):
    report = [
        f"{name}:{number}: {words!r}" for name, text in tracked_text_files() for number, words in hits(rule, text)
    ]
    assert not report, f"{len(report)} line(s) with {rule}:\n" + "\n".join(report)


@pytest.mark.parametrize(
    ("rule", "line"),
    [
        ("issue number", "Issue 13 trains a mini model"),
        ("issue number", "## `facediffuser generate` (issues 8 and 11)"),
        ("issue number", "fixed in #12"),
        ("issue number", "[generate](#facediffuser-generate-issues-8-and-11)"),
        ("issue number", "The next issue trains it"),
        ("working-day chronology", "the tenth session's run"),
        ("working-day chronology", "budgets split across sessions"),
        ("build-machine path", "facediffuser world build --out /work/artifacts/world/w"),
        ("build-machine path", '"world": "/work/artifacts/world/w",'),
        ("build-machine path", "(no /home/me/models/face-diffuser)"),
        ("REFERENCE notes", "# REFERENCE section 4: SNF"),
        ("branch or commit history", "This is the `harden-generate` branch's wiring, commit 763d891"),
        ("branch or commit history", "come with the harden-generate branch"),
    ],
)
def test_rule_catches(rule, line):
    assert hits(rule, line), f"{rule} should catch {line!r}"


@pytest.mark.parametrize(
    "line",
    [
        '@pytest.fixture(scope="session")',
        "one training session on a GPU",
        "<span style='color:#4287f5'>&#9632;</span>",
        '"WolfgangLanger_Pexels.mp4#120"',
        "`benchmarks/mini_identity_gap.py` at commit ceaf7ae",
        "facediffuser world build --out WORLD",
        "REFERENCE_FACE_CHECKS names the check; the reference images",
        "https://example.org/work/page and ~/work/x",
        "paper Sec. 3.3.1, eq. 4",
    ],
)
def test_rule_allows(line):
    assert not [(rule, hits(rule, line)) for rule in RULES if hits(rule, line)]
