#!/usr/bin/env python3
"""Compare the tensors of two checkpoint folders (docs/checkpoints.md).

    ckpt_compare.py A B TOL

TOL 0: every array file must be byte-identical. Otherwise each array must
agree with ||b - a|| / ||a|| <= TOL (Adam v is compared the same way).
Exit 1 on a difference."""
import array, math, struct, sys

def load(path):
    with open(path, "rb") as f:
        head = f.read(32)
        magic, version, dtype, count = struct.unpack("<8sIIq", head[:24])
        assert magic == b"ASPCKPT1", f"{path}: bad magic"
        if dtype == 0:
            a = array.array("f"); a.frombytes(f.read(4 * count))
            return list(a)
        raw = array.array("H"); raw.frombytes(f.read(2 * count))
        return [struct.unpack("<f", struct.pack("<I", v << 16))[0] for v in raw]

a_dir, b_dir, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
bad = 0
for name in ("weights.bin", "master.bin", "adam_m.bin", "adam_v.bin"):
    pa, pb = f"{a_dir}/{name}", f"{b_dir}/{name}"
    if tol == 0:
        same = open(pa, "rb").read() == open(pb, "rb").read()
        print(f"{name}: {'bitwise equal' if same else 'DIFFERENT'}")
        bad += not same
        continue
    a, b = load(pa), load(pb)
    num = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    den = math.sqrt(sum(x * x for x in a)) or 1.0
    rel = num / den
    print(f"{name}: relative difference {rel:.2e}")
    bad += not (len(a) == len(b) and rel <= tol)
sys.exit(1 if bad else 0)
