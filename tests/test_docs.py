"""The repository documents itself (docs/architecture.md, "Conventions").

* Every path under ``docs/`` that ends in ``.md`` and is named in a repository file exists, and every relative
  Markdown link of a ``.md`` file points at a file that exists.
* A citation ``docs/<page>.md, "<Section>"`` (or ``docs/<page>.md, "<A>" and "<B>"``) names headings the page
  has.
* No file refers to documents the repository does not contain: internal design notes and specifications,
  or their section numbers. Code cites the pages under ``docs/`` and the papers instead.

The files checked are the repository's text files: ``git ls-files`` plus untracked files that git does not
ignore (``git ls-files --others --exclude-standard``); without git, the working tree minus the usual build,
cache and run folders. A failure lists every offender as ``file:line: text``.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()
MAX_BYTES = 2_000_000
SKIPPED_DIRS = {".git", ".venv", "venv", "runs", "wandb", "build", "dist", "__pycache__", ".pytest_cache",
                ".cache", ".ruff_cache"}

#: a path to a Markdown page under docs/ (placeholders such as ``<name>`` or ``*`` do not match)
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*?\w\.md\b")
#: a relative Markdown link ``[text](target.md#anchor)``
MD_LINK = re.compile(r"\]\(\s*<?([^)\s>#]+\.md)(?:#[^)\s]*)?>?\s*\)")
#: a section citation: ``docs/page.md, "Section"`` plus ``and "Other"`` / ``, "Other"`` (may wrap lines)
_QUOTED = r'(?:#\s*)?"([^"]{1,100})"'
CITATION = re.compile(r"(?<![\w/.-])(docs/[\w./-]*?\w\.md),\s*\(?" + _QUOTED
                      + r'((?:\s*(?:,|and)\s*(?:#\s*)?"[^"]{1,100}")*)')
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)

#: (pattern, what it is): references to documents that are not part of the repository
FORBIDDEN: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"DESIGN\.md"), "DESIGN.md"),
    (re.compile(r"(?<![\w.-])specs/"), "specs/"),
    (re.compile(r"frameworks\.md"), "frameworks.md"),
    (re.compile(r"deps\.md"), "deps.md"),
    (re.compile(r"stylegan2_backbone\.md"), "stylegan2_backbone.md"),
    (re.compile(r"nada_expansion\.md"), "nada_expansion.md"),
    (re.compile(r"idinvert_mixdl\.md"), "idinvert_mixdl.md"),
    (re.compile(r"(?<![/(\w])dualstylegan\.md"), "dualstylegan.md"),  # docs/methods/dualstylegan.md is ours
    (re.compile(r"\bspec\s*§", re.IGNORECASE), "spec section"),
    (re.compile(r"§\s?[A-Za-z0-9]"), "section number"),
]


def _git_files(root: Path) -> list[str] | None:
    try:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
        others = subprocess.run(["git", "ls-files", "-z", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    names = {n.decode() for n in (tracked + others).split(b"\0") if n}
    return sorted(names) or None


def _walked_files(root: Path) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        out.extend(Path(folder, f).relative_to(root).as_posix() for f in files)
    return sorted(out)


def repository_files(root: Path = ROOT) -> list[str]:
    """Relative paths of the repository's files (see the module docstring)."""
    names = _git_files(root)
    return names if names is not None else _walked_files(root)


def read_text(path: Path) -> str | None:
    """The file's text, or None for binary, unreadable, missing or very large files."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_files(root: Path = ROOT) -> dict[str, str]:
    """``{relative path: text}`` of every text file of the repository except this test."""
    out = {}
    for name in repository_files(root):
        if name == SELF:
            continue
        text = read_text(root / name)
        if text is not None:
            out[name] = text
    return out


def _lines(text: str):
    yield from enumerate(text.splitlines(), 1)


def _shorten(line: str, limit: int = 140) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


def missing_docs_paths(files: dict[str, str], root: Path = ROOT) -> list[str]:
    """``file:line: docs/...`` for every named Markdown page under docs/ that does not exist."""
    found = []
    for name, text in files.items():
        for number, line in _lines(text):
            for match in DOCS_PATH.finditer(line):
                if not (root / match.group(0)).is_file():
                    found.append(f"{name}:{number}: {match.group(0)}  (in: {_shorten(line)})")
    return found


def broken_markdown_links(files: dict[str, str], root: Path = ROOT) -> list[str]:
    """``file:line: target`` for every relative ``.md`` link of a Markdown file that points nowhere."""
    found = []
    for name, text in files.items():
        if not name.endswith(".md"):
            continue
        for number, line in _lines(text):
            for match in MD_LINK.finditer(line):
                target = match.group(1)
                if "://" in target or target.startswith("mailto:"):
                    continue
                resolved = ((root / name).parent / target).resolve()
                if resolved.is_file():
                    continue
                if resolved.is_relative_to(root.resolve()):
                    where = f"{resolved.relative_to(root.resolve()).as_posix()} does not exist"
                else:
                    where = "outside the repository"
                found.append(f"{name}:{number}: link to {target} ({where})")
    return found


def _normal(text: str) -> str:
    """A heading or a cited name without Markdown code marks, comment markers of wrapped lines or extra spaces."""
    return " ".join(re.sub(r"\n\s*(?:#\s*)?", " ", text).replace("`", "").split())


def headings(page: Path) -> set[str]:
    text = read_text(page)
    return set() if text is None else {_normal(m.group(1)) for m in HEADING.finditer(text)}


def unknown_sections(files: dict[str, str], root: Path = ROOT) -> list[str]:
    """``file:line: page, "name"`` for every cited section that the (existing) page has no heading for."""
    found, cache = [], {}
    for name, text in files.items():
        for match in CITATION.finditer(text):
            page = root / match.group(1)
            if not page.is_file():
                continue  # reported by missing_docs_paths
            if page not in cache:
                cache[page] = headings(page)
            cited = [match.group(2)] + re.findall(r'"([^"]{1,100})"', match.group(3))
            number = text.count("\n", 0, match.start()) + 1
            for section in cited:
                if _normal(section) not in cache[page]:
                    found.append(f'{name}:{number}: {match.group(1)}, "{_normal(section)}" (no such heading)')
    return found


def outside_references(files: dict[str, str]) -> list[str]:
    """``file:line: [what] text`` for every line that refers to a document the repository does not hold."""
    found = []
    for name, text in files.items():
        for number, line in _lines(text):
            hits = [what for pattern, what in FORBIDDEN if pattern.search(line)]
            if hits:
                found.append(f"{name}:{number}: [{', '.join(hits)}] {_shorten(line)}")
    return found


def _report(title: str, offenders: list[str]) -> str:
    files = sorted({o.split(":", 1)[0] for o in offenders})
    return (f"{title}: {len(offenders)} line(s) in {len(files)} file(s)\n  " + "\n  ".join(offenders)
            + "\nfiles: " + ", ".join(files))


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    found = text_files()
    assert found, f"no repository files found under {ROOT}"
    return found


def test_every_named_docs_page_exists(files):
    missing = missing_docs_paths(files)
    if missing:
        pytest.fail(_report("docs/ pages that are named but do not exist", missing), pytrace=False)


def test_markdown_links_resolve(files):
    broken = broken_markdown_links(files)
    if broken:
        pytest.fail(_report("relative Markdown links that point nowhere", broken), pytrace=False)


def test_cited_sections_exist(files):
    unknown = unknown_sections(files)
    if unknown:
        pytest.fail(_report("cited sections that the page does not have", unknown), pytrace=False)


def test_no_references_to_documents_outside_the_repository(files):
    offenders = outside_references(files)
    if offenders:
        pytest.fail(_report("references to documents that are not in the repository (cite docs/ pages or the "
                            "papers instead)", offenders), pytrace=False)


def test_the_checks_catch_what_they_should(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("# Part\n\n## The `code` part\n\n"
                                              "[ok](here.md) [gone](missing.md) [web](https://x.org/a.md)\n")
    files = {
        "docs/here.md": (tmp_path / "docs" / "here.md").read_text(),
        "a.py": ('"""See docs/here.md, "Part" and docs/gone.md; docs/methods/<name>.md is a placeholder."""\n'
                 "# DESIGN.md contract 3\n# spec stylegan2_backbone.md §6\n# (spec §A5) and §2.3\n"
                 "# metrics/specs.py is a module, specs/deps.md is not\n# a plain line\n"),
    }
    assert missing_docs_paths(files, tmp_path) == [
        'a.py:1: docs/gone.md  (in: """See docs/here.md, "Part" and docs/gone.md; docs/methods/<name>.md is a '
        'placeholder.""")']
    assert broken_markdown_links(files, tmp_path) == [
        "docs/here.md:5: link to missing.md (docs/missing.md does not exist)"]
    cites = {"b.py": '# docs/here.md, "Part" and "The code\n# part"; docs/here.md, "Nope"\n'
                     '"""(docs/here.md, "Part", "Other")."""\n'}
    assert unknown_sections(cites, tmp_path) == ['b.py:2: docs/here.md, "Nope" (no such heading)',
                                                  'b.py:3: docs/here.md, "Other" (no such heading)']
    found = outside_references(files)
    assert [f.split(" ", 2)[:2] for f in found] == [
        ["a.py:2:", "[DESIGN.md]"], ["a.py:3:", "[stylegan2_backbone.md,"], ["a.py:4:", "[spec"],
        ["a.py:5:", "[specs/,"]]
    assert "section number" in found[1] and "spec section" in found[2] and "deps.md" in found[3]
