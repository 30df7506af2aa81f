#!/usr/bin/env python3
"""The shape of the source tree, as docs/architecture.md states it:

  - no function over MAX_FUNC lines, no .c/.cu file over MAX_FILE lines
  - at most MAX_ROOT .c files at the root of src/ (the top floors)
  - an #include goes down the floors, never up or sideways out of order
  - no circle between the files of src/plan/ (from the built objects' symbols)
  - no build product tracked by git

  scripts/check_shape.py [--objects BUILDDIR]   exit 1 and a line per breach
"""
import os
import re
import subprocess
import sys

MAX_FUNC, MAX_FILE, MAX_ROOT = 150, 1200, 6
# Floors, lowest first: a file may include its own floor and those below.
FLOORS = [("base", ["src/util", "src/dtype.h", "src/opshapes.h", "autosp_config.h"]),
          ("config", ["src/config"]),
          ("model", ["src/model/"]),
          ("plan", ["src/plan/"]),
          ("backends", ["src/backend.h", "src/cpu/", "cuda/", "src/parallel/"]),
          ("exec", ["src/exec/"]),
          ("io", ["src/io/"]),
          ("top", ["src/train", "src/main.c"])]
# Within the backends floor the three folders are side by side: none includes another.
SIDEWAYS = ["src/cpu/", "cuda/", "src/parallel/"]


def floor_of(path):
    for i, (_, prefixes) in enumerate(FLOORS):
        if any(path.startswith(p) for p in prefixes):
            return i
    return None


def sources(top):
    out = []
    for d in ("src", "cuda"):
        for root, _, files in os.walk(os.path.join(top, d)):
            for f in files:
                if f.endswith((".c", ".cu", ".h")):
                    out.append(os.path.relpath(os.path.join(root, f), top))
    return sorted(out)


def long_functions(top, path):
    """(name, lines) of each top-level function body over MAX_FUNC lines."""
    lines = open(os.path.join(top, path), encoding="utf-8").read().split("\n")
    found, start, name = [], None, None
    for i, line in enumerate(lines):
        if start is None and line.endswith("{") and not line.startswith((" ", "\t", "#", "}")) \
                and "(" in line and "=" not in line.split("(")[0]:
            start, name = i, re.sub(r"\(.*", "", line).split()[-1].lstrip("*")
        elif start is None and line.endswith("{") and line.startswith((" ", "\t")) and i > 0 \
                and lines[i - 1].rstrip().endswith(",") and "(" in "".join(lines[max(0, i - 4):i]):
            # a signature over several lines: find where it began
            j = i
            while j > 0 and (lines[j].startswith((" ", "\t"))):
                j -= 1
            if "(" in lines[j] and not lines[j].startswith(("#", "/", "}", "typedef", "struct", "static const")) \
                    and "=" not in lines[j].split("(")[0]:
                start, name = j, re.sub(r"\(.*", "", lines[j]).split()[-1].lstrip("*")
        elif start is not None and line == "}":
            n = i - start + 1
            if n > MAX_FUNC:
                found.append((name, n))
            start = None
    return found


def includes(top, path):
    for line in open(os.path.join(top, path), encoding="utf-8"):
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        if m:
            yield m.group(1)


def resolve(top, path, inc):
    for base in (os.path.dirname(path), "src", "."):
        cand = os.path.normpath(os.path.join(base, inc))
        if os.path.exists(os.path.join(top, cand)):
            return cand
    return inc   # generated (autosp_config.h) or a test's own header


def check_includes(top, files, breaches):
    for path in files:
        here = floor_of(path)
        for inc in includes(top, path):
            target = resolve(top, path, inc)
            there = floor_of(target)
            if here is None or there is None:
                continue
            if there > here:
                breaches.append(f"{path} includes {target}: floor '{FLOORS[there][0]}' is above '{FLOORS[here][0]}'")
            if (path.startswith(tuple(SIDEWAYS)) or path == "src/backend.h") and there not in (0, here):
                breaches.append(f"{path} includes {target}: the backends know no config, model or plan "
                                "(base only, docs/architecture.md)")
            side_here = [s for s in SIDEWAYS if path.startswith(s)]
            side_there = [s for s in SIDEWAYS if target.startswith(s)]
            if side_here and side_there and side_here != side_there:
                breaches.append(f"{path} includes {target}: {side_here[0]} and {side_there[0]} are side by side")


def plan_circles(objdir, breaches):
    objs = sorted(os.path.join(objdir, "src/plan", f) for f in os.listdir(os.path.join(objdir, "src/plan"))
                  if f.endswith(".o"))
    if not objs:
        breaches.append(f"no objects in {objdir}/src/plan: build first")
        return
    defs, uses = {}, {}
    for o in objs:
        for line in subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in "TDBR":
                defs[p[2]] = o
            elif len(p) == 2 and p[0] == "U":
                uses.setdefault(o, set()).add(p[1])
    edges = {o: {defs[u] for u in uses.get(o, ()) if u in defs and defs[u] != o} for o in objs}

    def reach(a, b, seen):
        return a == b or any(n not in seen and (seen.add(n) or reach(n, b, seen)) for n in edges[a])
    for a in objs:
        for b in edges[a]:
            if a < b and reach(b, a, set()):
                breaches.append(f"circle between {os.path.basename(a)[:-2]}.c and {os.path.basename(b)[:-2]}.c "
                                "in src/plan: one must not use the other")


def tracked_binaries(top, breaches):
    files = subprocess.run(["git", "-C", top, "ls-files", "-z"], capture_output=True, check=True).stdout
    for f in files.decode().split("\0"):
        if not f or f.endswith((".png", ".txt")) or f.startswith("tests/fuzz/corpus/"):
            continue
        try:
            with open(os.path.join(top, f), "rb") as fh:
                head = fh.read(8192)
        except OSError:
            continue
        if head.startswith(b"\x7fELF") or head.startswith(b"!<arch>") or b"\0" in head:
            breaches.append(f"{f}: a binary or build product is tracked in git")


def main():
    top = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    objdir = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--objects" else top
    breaches = []
    files = sources(top)
    for path in files:
        if path.endswith((".c", ".cu")):
            n = sum(1 for _ in open(os.path.join(top, path), encoding="utf-8"))
            if n > MAX_FILE:
                breaches.append(f"{path}: {n} lines (at most {MAX_FILE})")
            for name, k in long_functions(top, path):
                breaches.append(f"{path}: {name}() is {k} lines (at most {MAX_FUNC})")
    for d in ("tests", "bench"):
        for f in sorted(os.listdir(os.path.join(top, d))):
            if f.endswith(".c"):
                n = sum(1 for _ in open(os.path.join(top, d, f), encoding="utf-8"))
                if n > MAX_FILE:
                    breaches.append(f"{d}/{f}: {n} lines (at most {MAX_FILE})")
    root = [f for f in os.listdir(os.path.join(top, "src")) if f.endswith(".c")]
    if len(root) > MAX_ROOT:
        breaches.append(f"src/ holds {len(root)} .c files at its root (at most {MAX_ROOT}): {' '.join(sorted(root))}")
    check_includes(top, files, breaches)
    plan_circles(objdir, breaches)
    if os.path.isdir(os.path.join(top, ".git")) or os.path.isfile(os.path.join(top, ".git")):
        tracked_binaries(top, breaches)
    for b in breaches:
        print("shape:", b)
    print(f"shape: {len(files)} source files, {len(breaches)} breaches")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
