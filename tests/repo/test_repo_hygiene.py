"""The repository speaks for itself: no tracked file points the reader to a tracker or to files
that are not in the repository.

Refused, in every file `git ls-files` lists (binary files aside: a NUL byte in the first 8 KiB,
git's own test):

- tracker references: the word "issue" or "issues" followed by a number (with or without "#"),
  and GitHub's bare "#" plus number shorthand;
- the design and notes files that lived beside the repository: DESIGN, NOTES and NOTES-*
  Markdown files, and paths into the sibling `shared` directory;
- any Markdown file named by path or name that no tracked file answers to (a reference to a
  Markdown file must resolve to one in the repository), except the reports the benchmarks write.

Say what is meant instead: name the feature, or the file and section inside the repository.

    .venv/bin/python -m pytest -q tests/repo
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Each pattern is written so that this file's own source does not match it.
TRACKER = [
    re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE),  # "issue N", "Issue #N", "issues N" with a number for N
    re.compile(r"(?<![\w&#/])#\d+\b"),  # "#N" with a number for N; not PKCS#8, &#39; or a URL's fragment
]
OUTSIDE = [
    re.compile(r"\bDESIGN\.md\b", re.IGNORECASE),
    re.compile(r"\bNOTES[\w.-]*\.md\b", re.IGNORECASE),
    re.compile(r"\.\./shared\b"),
]
MARKDOWN_REF = re.compile(r"[\w./-]*[\w-]\.md\b")
# Markdown files that are written, not tracked: bench/run-all's summary (RESULTS_DIR/summary.md).
GENERATED_MARKDOWN = {"summary.md"}


@cache
def tracked_files() -> tuple[str, ...]:
    out = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached"], capture_output=True, check=True
    ).stdout.decode("utf-8")
    return tuple(sorted(p for p in out.split("\0") if p))


def is_binary(data: bytes) -> bool:
    return b"\0" in data[:8192]


@cache
def text_files() -> tuple[tuple[str, str], ...]:
    """(path, text) of every tracked text file present in the work tree (symlinks followed)."""
    files = []
    for rel in tracked_files():
        path = REPO_ROOT / rel
        if not path.is_file():  # deleted in the work tree, or a symlink to a directory
            continue
        data = path.read_bytes()
        if is_binary(data):
            continue
        files.append((rel, data.decode("utf-8", errors="replace")))
    return tuple(files)


def hits(patterns: list[re.Pattern[str]]) -> list[str]:
    found = []
    for rel, text in text_files():
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern in patterns:
                for m in pattern.finditer(line):
                    found.append(f"{rel}:{lineno}: {m.group(0)!r} in {line.strip()[:160]!r}")
    return found


def test_the_files_are_read():
    """The scan sees the repository: the README, the Python tests and the Rust sources are among
    the text files read (a broken `git ls-files` would make every other test pass vacuously)."""
    read = {rel for rel, _ in text_files()}
    assert "README.md" in read
    assert any(rel.startswith("tests/") and rel.endswith(".py") for rel in read)
    assert any(rel.startswith("modules/") and rel.endswith(".rs") for rel in read)


def test_no_tracker_references():
    found = hits(TRACKER)
    if found:
        pytest.fail("references to a tracker that is not in the repository:\n" + "\n".join(found), pytrace=False)


def test_no_references_to_design_or_notes_files_outside_the_repository():
    found = hits(OUTSIDE)
    if found:
        pytest.fail("references to files that are not in the repository:\n" + "\n".join(found), pytrace=False)


def test_every_markdown_file_named_is_in_the_repository():
    tracked = set(tracked_files())
    names = {PurePosixPath(p).name for p in tracked}
    missing = []
    for rel, text in text_files():
        base = PurePosixPath(rel).parent
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in MARKDOWN_REF.finditer(line):
                ref = m.group(0)
                name = PurePosixPath(ref).name
                if name in GENERATED_MARKDOWN:
                    continue
                if "/" not in ref:
                    # A bare name ("interfaces.md", "README.md") may be any tracked file of that name.
                    if name in names:
                        continue
                else:
                    # A path: from the repo root, from the naming file's directory, or the tail of
                    # a tracked path ("signers.md" under docs/, "fuzz/README.md").
                    candidates = {posixpath.normpath(ref), posixpath.normpath(str(base / ref))}
                    if candidates & tracked or any(p.endswith("/" + ref.lstrip("./")) for p in tracked):
                        continue
                missing.append(f"{rel}:{lineno}: {ref!r}")
    if missing:
        pytest.fail("Markdown files named but not in the repository:\n" + "\n".join(missing), pytrace=False)
