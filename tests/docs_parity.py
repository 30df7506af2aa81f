#!/usr/bin/env python3
"""Helpers of tests/test_docs_parity.sh (standard library only).

  docs_parity.py shards DIR EOS SEED LEN...   write DIR/packed.tok (the documents
        of the given lengths packed into one sample, each but the last ended by
        EOS) and DIR/doc-I.tok (document I alone, EOS included); print S, the
        packed sample's sequence length
  docs_parity.py combine OUT DUMP:VALID...    the gradient dump of the documents
        run one by one, summed with the global valid-target count: loss and
        gradient = sum(valid_i * x_i) / sum(valid_i)
"""
import random
import struct
import sys
from array import array

MAGIC = b"ASPTOKS1"
DUMP = b"ASPDUMP1"


def write_shard(path, tokens, vocab=256):
    with open(path, "wb") as f:
        f.write(struct.pack("<8sIIQI", MAGIC, 1, 4, len(tokens), vocab).ljust(64, b"\0"))
        f.write(array("I", tokens).tobytes())


def shards(out, eos, seed, lens):
    rng = random.Random(seed)
    docs = []
    for i, n in enumerate(lens):
        body = [rng.choice([t for t in range(32, 127) if t != eos]) for _ in range(n - 1)]
        docs.append(body + [eos])          # the last document's EOS is its final target
        write_shard(f"{out}/doc-{i}.tok", docs[-1])
    packed = [t for d in docs for t in d]
    write_shard(f"{out}/packed.tok", packed)
    print(len(packed) - 1)


def read_dump(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == DUMP, f"{path}: not a gradient dump"
    n, steps = struct.unpack_from("<qq", data, 8)
    loss = struct.unpack_from(f"<{steps}d", data, 24)
    grad = array("f")
    grad.frombytes(data[24 + 8 * steps:24 + 8 * steps + 4 * n])
    return n, loss, grad


def combine(out, items):
    total, loss, acc, n0 = 0, 0.0, None, None
    for item in items:
        path, valid = item.rsplit(":", 1)
        valid = int(valid)
        n, l, g = read_dump(path)
        if acc is None:
            n0, acc = n, [0.0] * n
        assert n == n0, "parameter counts differ"
        loss += valid * l[0]
        for i in range(n):
            acc[i] += valid * g[i]
        total += valid
    with open(out, "wb") as f:
        f.write(DUMP + struct.pack("<qq", n0, 1) + struct.pack("<d", loss / total))
        f.write(array("f", [x / total for x in acc]).tobytes())


if __name__ == "__main__":
    if sys.argv[1] == "shards":
        shards(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), [int(x) for x in sys.argv[5:]])
    elif sys.argv[1] == "combine":
        combine(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"docs_parity.py: unknown command {sys.argv[1]}")
