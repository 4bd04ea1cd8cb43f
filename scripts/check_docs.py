#!/usr/bin/env python3
"""Checks that the README and docs/ point at things that exist: every relative link (and its
#anchor) resolves, every repo path (in backticks, a code block, or a file named in prose) exists,
and every `bench/...` command names an existing script and flags that script accepts.

    scripts/check_docs.py          # one line per problem; exit 1 if there is any

Run by CI through tests/test_docs.py, so a renamed file or a dropped flag breaks the build
instead of the docs.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A token is taken for a repo path when it starts with one of the repo's own directories (or is
# one of its root files); paths elsewhere (/etc/..., ../shared/..., .venv/...) are not checked.
REPO_DIRS = ("aiagent_tui", "engine", "providers", "media", "runtime", "pbxsim", "bench", "scripts", "tests", "docs", "screenshots", ".ci")
ROOT_FILES = ("README.md", "config.toml", "pyproject.toml")
PATH_RE = re.compile(rf"^(?:(?:{'|'.join(re.escape(d) for d in REPO_DIRS)})/[\w./@-]*|{'|'.join(re.escape(f) for f in ROOT_FILES)})$")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE_RE = re.compile(r"(`+)(.+?)\1")
FENCE_RE = re.compile(r"^\s*(```+|~~~+)")
BENCH_RE = re.compile(r"^bench/\w+\.py$")
FLAG_RE = re.compile(r"^--[a-z][\w-]*")
# A repo file named in prose, outside code and links: "tests/test_reload.py reloads ...".
PROSE_PATH_RE = re.compile(rf"(?<![\w/.~-])(?:{'|'.join(re.escape(d) for d in REPO_DIRS)})/[\w./@-]*\.[a-z]+\b")


@dataclass(frozen=True, slots=True)
class Problem:
    file: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: {self.what}"


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_fence:
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def _code_tokens(line: str, in_fence: bool) -> list[list[str]]:
    """The code on a line as groups of words: each inline code span, or the whole line in a fence."""
    if in_fence:
        return [line.split("#", 1)[0].split()]
    return [span.split() for _, span in INLINE_CODE_RE.findall(line)]


def _bench_flags(script: Path, cache: dict[Path, str]) -> str:
    if script not in cache:
        common = script.parent / "common.py"
        cache[script] = script.read_text(encoding="utf-8") + (common.read_text(encoding="utf-8") if common.exists() else "")
    return cache[script]


def check_file(path: Path, root: Path = ROOT) -> list[Problem]:
    problems: list[Problem] = []
    anchor_cache: dict[Path, set[str]] = {}
    source_cache: dict[Path, str] = {}
    in_fence = False
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            prose = INLINE_CODE_RE.sub("", line)
            for token in PROSE_PATH_RE.findall(LINK_RE.sub("", prose)):
                if not (root / token).exists():
                    problems.append(Problem(path, no, f"no such path in the repo: {token}"))
            for target in LINK_RE.findall(prose):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                if not dest.exists():
                    problems.append(Problem(path, no, f"link to a missing file: {target}"))
                    continue
                if anchor and dest.suffix == ".md":
                    known = anchor_cache.setdefault(dest, anchors(dest))
                    if anchor not in known:
                        problems.append(Problem(path, no, f"link to a missing heading: {target}"))
        for words in _code_tokens(line, in_fence):
            bench: Path | None = None
            for word in words:
                token = word.strip(",;:()[]'\"").rstrip(".")
                if PATH_RE.match(token) and not any(c in token for c in "*{}…<>"):
                    if not (root / token).exists():
                        problems.append(Problem(path, no, f"no such path in the repo: {token}"))
                    bench = root / token if BENCH_RE.match(token) and (root / token).exists() else None
                    continue
                m = FLAG_RE.match(token)
                if bench is not None and m and f'"{m[0]}"' not in _bench_flags(bench, source_cache):
                    problems.append(Problem(path, no, f"{bench.relative_to(root)} has no option {m[0]}"))
    return problems


def main() -> int:
    problems = [p for f in doc_files() for p in check_file(f)]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
