#!/usr/bin/env python3
"""Compare the losses of steps FIRST..LAST (1-based) of two --dump-grads
files bitwise (TOL 0) or to a relative TOL. Exit 1 on a difference.

    dump_losses.py A B FIRST LAST TOL"""
import struct, sys

def losses(path):
    with open(path, "rb") as f:
        magic, n, steps = struct.unpack("<8sqq", f.read(24))
        assert magic == b"ASPDUMP1", f"{path}: not a gradient dump"
        return struct.unpack(f"<{steps}d", f.read(8 * steps))

a, b = losses(sys.argv[1]), losses(sys.argv[2])
first, last, tol = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
bad = 0
for s in range(first, last + 1):
    x, y = a[s - 1], b[s - 1]
    ok = x == y if tol == 0 else abs(x - y) <= tol * abs(x)
    print(f"loss step {s}: {x!r} vs {y!r}{'' if ok else '  DIFFERENT'}")
    bad += not ok
sys.exit(1 if bad else 0)
