#!/usr/bin/env python3
"""Convert a text file into a token shard (format: docs/data.md).

Byte-level tokenizer: every byte of the file is one token (vocabulary 256), so
any text round-trips exactly and no tokenizer files are needed. Standard
library only. Shards are written atomically (temporary file in the same folder,
fsync, rename), so an interrupted run never leaves a half-written shard.

Other scripts import its writers: write_shard (tokens in memory) and ShardWriter
(tokens appended piece by piece, for streams larger than memory; with a target
mask, per token, for fine-tuning data: format version 2).

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
VERSION_MASKED = 2      # the tokens are followed by a target mask, one bit per token
TOKEN_BYTES = 4
HEADER_BYTES = 64
VOCAB = 256


def shard_header(n_tokens, vocab_size, eos_id=None, masked=False):
    """The 64-byte header of a shard of `n_tokens` tokens below `vocab_size`;
    `eos_id`, when given, is recorded as the token that ends documents (flags
    bit 0 at offset 28, the id at offset 32); `masked`: version 2, a target
    mask follows the tokens."""
    version = VERSION_MASKED if masked else VERSION
    header = struct.pack("<8sIIQI", MAGIC, version, TOKEN_BYTES, n_tokens, vocab_size)
    if eos_id is not None:
        header += struct.pack("<II", 1, eos_id)
    return header + b"\0" * (HEADER_BYTES - len(header))


def pack_bits(flags):
    """0/1 per token -> the mask's bytes: bit i (least significant first) of byte i // 8."""
    n = len(flags)
    padded = bytes(flags) + bytes(-n % 8)
    out = bytearray(len(padded) // 8)
    for bit in range(8):
        plane = padded[bit::8]      # flag of token 8k + bit, for every k
        shifted = plane.translate(bytes([(1 << bit) if i else 0 for i in range(256)]))
        out = bytearray(a | b for a, b in zip(out, shifted)) if bit else bytearray(shifted)
    return bytes(out)


class ShardWriter:
    """A shard written piece by piece, for token streams that need not fit in memory.

    Tokens are appended to a temporary file in the destination folder; commit()
    writes the header, fsyncs and renames the file into place. abort(), or leaving
    a `with` block by an exception, removes the temporary file: until commit() the
    destination is untouched. append() raises OverflowError for an id outside
    [0, 2^32) and commit() ValueError for fewer than 2 tokens (or, with a mask,
    no target); max_id is the largest id appended, for the caller to check
    against the vocab_size. append(ids, targets) with a list of 0/1 per token
    makes a masked shard (version 2): tokens marked 0 are context, never
    learned; tokens appended without a mask are all targets.
    """

    def __init__(self, path):
        if array.array("I").itemsize != 4:
            sys.exit("text_to_shard: this Python has no 4-byte array type 'I'; cannot write uint32 tokens")
        self.path = path
        self.n_tokens = 0
        self.max_id = -1
        self.targets = None     # bytearray of 0/1 per token once any token is masked
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        self.f = os.fdopen(fd, "w+b")
        try:
            self.f.write(b"\0" * HEADER_BYTES)  # no magic until commit()
        except BaseException:
            self.abort()
            raise

    def append(self, ids, targets=None):
        """Append a list (or iterable) of token ids; bytes count as one id per byte.
        `targets`: 0/1 per id (1: learned); None: all learned."""
        # from a list: array("I", <bytes>) would reinterpret the raw bytes instead
        tokens = array.array("I", ids if isinstance(ids, list) else list(ids))
        if not tokens:
            return
        if targets is not None and len(targets) != len(tokens):
            raise ValueError(f"{len(targets)} target flags for {len(tokens)} tokens")
        if targets is not None and self.targets is None:
            self.targets = bytearray(b"\1" * self.n_tokens)
        if self.targets is not None:
            self.targets += bytes(1 if t else 0 for t in targets) if targets is not None else b"\1" * len(tokens)
        self.max_id = max(self.max_id, max(tokens))
        if sys.byteorder != "little":
            tokens.byteswap()
        tokens.tofile(self.f)
        self.n_tokens += len(tokens)

    def move_tail(self, n, other):
        """Move the last `n` tokens of this shard to the end of `other` (another ShardWriter)."""
        keep = self.n_tokens - n
        if not 0 <= keep <= self.n_tokens:
            raise ValueError(f"cannot move {n} of {self.n_tokens} tokens")
        self.f.flush()
        self.f.seek(HEADER_BYTES + TOKEN_BYTES * keep)
        while True:
            block = self.f.read(1 << 24)
            if not block:
                break
            other.f.write(block)
        if self.targets is not None:
            if other.targets is None:
                other.targets = bytearray(b"\1" * other.n_tokens)
            other.targets += self.targets[keep:]
            del self.targets[keep:]
        other.n_tokens += n
        other.max_id = max(other.max_id, self.max_id)  # an upper bound, enough for the check
        self.f.truncate(HEADER_BYTES + TOKEN_BYTES * keep)
        self.f.seek(0, os.SEEK_END)
        self.n_tokens = keep

    def commit(self, vocab_size, eos_id=None):
        """Write the header (with the EOS id when given) and rename the shard into place."""
        if self.n_tokens < 2:
            raise ValueError(f"{self.path}: only {self.n_tokens} tokens; a shard needs at least 2 "
                             "(one input and its target)")
        if self.targets is not None and not any(self.targets):
            raise ValueError(f"{self.path}: no token is marked as a target; a masked shard needs at least one")
        try:
            if self.targets is not None:
                self.f.seek(0, os.SEEK_END)
                self.f.write(pack_bits(self.targets))
            self.f.seek(0)
            self.f.write(shard_header(self.n_tokens, vocab_size, eos_id, self.targets is not None))
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.tmp = None

    def abort(self):
        """Remove the temporary file (nothing happens after commit())."""
        if self.tmp is None:
            return
        try:
            self.f.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
        self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()
        return False


def write_shard(path, data, vocab_size):
    """Write bytes `data` as uint32 tokens (little-endian) to `path` atomically."""
    if len(data) < 2:
        sys.exit(f"text_to_shard: {path}: only {len(data)} tokens; a shard needs at least 2 "
                 "(one input and its target): use a longer text or a smaller --val-fraction")
    with ShardWriter(path) as w:
        w.append(data)
        w.commit(vocab_size)


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
