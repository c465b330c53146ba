#!/usr/bin/env python3
"""Every file a doc or a comment names exists.

Scans the tracked text files (Markdown, sources, scripts, CMake) for repository paths -- Markdown links
and paths under the project's top-level folders such as include/simcalkv/stages.hpp or docs/eval.md --
and reports each one that is not in the working tree. Paths a program writes (results, build folders)
are named with a placeholder or sit under build/ and are not checked; a line may opt out of the check
with the marker 'check_references: generated'.

Usage: scripts/check_references.py [ROOT]   (exit 1 and a list when something is dangling)
"""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
TOP = ("include", "docs", "scripts", "tools", "tests", "benchmarks", "engine", "examples", "cmake", "data",
       "models", "python", "src", ".ci")
EXT = r"(?:md|hpp|cpp|h|cuh|cu|sh|py|txt|json|jsonl|cmake|in|safetensors|csv|png|yml|yaml|toml)"
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w.+/-]*?\.%s)(?![\w/]|\.\w)" % ("|".join(re.escape(t) for t in TOP), EXT))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
BARE_DOC = re.compile(r"(?<![\w./-])([A-Z][A-Z_]+\.md)\b")  # a doc named without its folder (SOURCES.md)
TEXT = re.compile(r"\.(md|hpp|cpp|h|cuh|cu|sh|py|cmake|in|txt|yml)$|(^|/)(CMakeLists\.txt|run)$")


def tracked_files():
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if TEXT.search(f) and os.path.isfile(os.path.join(ROOT, f))]


def exists(ref, source):
    ref = ref.rstrip(".,:;")
    if any(c in ref for c in "*<>{}$") or "..." in ref:
        return True  # a pattern, not a file
    if any(re.fullmatch(r"[A-Z][A-Z_]{2,}(\.\w+)?", part) for part in ref.split("/")):
        return True  # a placeholder such as data/hub/xsum/SPLIT.jsonl
    for base in (ROOT, os.path.dirname(os.path.join(ROOT, source))):
        if os.path.exists(os.path.normpath(os.path.join(base, ref))):
            return True
    return False


def main():
    dangling = []
    files = tracked_files()
    names = {os.path.basename(f) for f in files}
    for f in files:
        with open(os.path.join(ROOT, f), encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
        for n, line in enumerate(lines, 1):
            if "check_references: generated" in line:
                continue
            refs = set(PATH.findall(line))
            for bare in BARE_DOC.findall(line):
                if bare not in names:
                    dangling.append(f"{f}:{n}: {bare} (no file of that name in the repository)")
            if f.endswith(".md"):
                for link in LINK.findall(re.sub(r"`[^`]*`", "", line)):  # not inside code spans
                    if not re.match(r"[a-z]+:", link):  # not http:, mailto: ...
                        refs.add(link)
            for ref in sorted(refs):
                if ref.startswith("build") or "/build" in ref.split("/")[0]:
                    continue
                if not exists(ref, f):
                    dangling.append(f"{f}:{n}: {ref}")
    if dangling:
        print(f"{len(dangling)} references to files that do not exist:")
        print("\n".join(dangling))
        return 1
    print(f"check_references: {len(files)} files, every file they name exists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
