#!/usr/bin/env python3
"""Convert a text file into a token shard (format: docs/data.md).

Byte-level tokenizer: every byte of the file is one token (vocabulary 256), so
any text round-trips exactly and no tokenizer files are needed. Standard
library only. Shards are written atomically (temporary file in the same folder,
fsync, rename), so an interrupted run never leaves a half-written shard.

usage: text_to_shard.py INPUT.txt OUTPUT.tok [--val VAL.tok] [--val-fraction F]
"""
import argparse
import array
import os
import struct
import sys
import tempfile

MAGIC = b"ASPTOKS1"
VERSION = 1
TOKEN_BYTES = 4
HEADER_BYTES = 64
VOCAB = 256


def write_shard(path, data, vocab_size):
    """Write bytes `data` as uint32 tokens (little-endian) to `path` atomically."""
    if len(data) < 2:
        sys.exit(f"text_to_shard: {path}: only {len(data)} tokens; a shard needs at least 2 "
                 "(one input and its target): use a longer text or a smaller --val-fraction")
    header = struct.pack("<8sIIQI", MAGIC, VERSION, TOKEN_BYTES, len(data), vocab_size)
    header += b"\0" * (HEADER_BYTES - len(header))
    # from a list: array("I", <bytes>) would reinterpret the raw bytes instead
    tokens = array.array("I", list(data))
    if tokens.itemsize != 4:
        sys.exit("text_to_shard: this Python has no 4-byte array type 'I'; cannot write uint32 tokens")
    if sys.byteorder != "little":
        tokens.byteswap()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            tokens.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def main():
    ap = argparse.ArgumentParser(description="Convert text to a byte-level token shard.")
    ap.add_argument("input", help="text file (any bytes; UTF-8 stays multi-byte)")
    ap.add_argument("output", help="token shard to write")
    ap.add_argument("--val", metavar="VAL.tok",
                    help="also write the last part of the text to this validation shard")
    ap.add_argument("--val-fraction", type=float, default=0.05,
                    help="fraction of the text held out for --val (default 0.05)")
    a = ap.parse_args()
    if not 0.0 < a.val_fraction < 1.0:
        sys.exit(f"text_to_shard: --val-fraction {a.val_fraction} must be between 0 and 1 (exclusive)")
    try:
        with open(a.input, "rb") as f:
            data = f.read()
    except OSError as e:
        sys.exit(f"text_to_shard: cannot read {a.input}: {e.strerror}")
    train = data
    if a.val:
        split = len(data) - int(len(data) * a.val_fraction)
        train, val = data[:split], data[split:]
        write_shard(a.val, val, VOCAB)
    write_shard(a.output, train, VOCAB)
    msg = f"{a.output}: {len(train)} tokens"
    if a.val:
        msg += f"; {a.val}: {len(val)} tokens"
    print(msg)


if __name__ == "__main__":
    main()
