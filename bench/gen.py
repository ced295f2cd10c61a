#!/usr/bin/env python3
"""Deterministic inputs for bench/run.sh.

  gen.py raw PATH SIZE SEED      a raw image of SIZE bytes, about 40% data
                                 in scattered extents of mixed
                                 compressibility, the rest holes
  gen.py iocmds SIZE SEED N MAXLEN
                                 N qemu-io "write -P" commands of 4 KiB to
                                 MAXLEN bytes at scattered offsets below
                                 SIZE, one a line (for qemu-io's stdin)

The same SIZE and SEED always give the same bytes, so qimg and qemu-img
see identical inputs from run to run and machine to machine.
"""
import os
import random
import sys

KIB = 1024
MIB = 1024 * KIB

# Extent kinds and their share of the data: random bytes (incompressible),
# text (compresses about 3:1 with zlib), a short repeated pattern
# (compresses to almost nothing), and explicit zeroes (allocated in the raw
# file, but zero detection should leave them out of the target).
KINDS = (("random", 35), ("text", 35), ("pattern", 20), ("zero", 10))

WORDS = ("qemu image cluster refcount table backing chain block status "
         "sector offset length convert compress snapshot metadata guest "
         "host allocate discard zero data file format driver request "
         "the of and to in is that for it as with on by this").split()


def text_pool(rng, size):
    """size bytes of word salad: compressible, but not trivially."""
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        line += " %d\n" % rng.randrange(1 << 32)
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def extent_bytes(rng, kind, length, pool):
    if kind == "random":
        return rng.randbytes(length)
    if kind == "text":
        start = rng.randrange(len(pool) - length) if len(pool) > length else 0
        chunk = pool[start:start + length]
        return chunk + bytes(length - len(chunk))
    if kind == "pattern":
        pat = bytes(rng.randrange(256) for _ in range(rng.choice((1, 16, 512))))
        return (pat * (length // len(pat) + 1))[:length]
    return bytes(length)


def pick_kind(rng):
    r = rng.randrange(100)
    for kind, share in KINDS:
        if r < share:
            return kind
        r -= share
    return KINDS[-1][0]


def gen_raw(path, size, seed):
    """Extents of 4 KiB..4 MiB, 4 KiB aligned (so some straddle clusters),
    separated by holes 1.5 times as long on average: 40% data."""
    rng = random.Random(seed)
    pool = text_pool(rng, 8 * MIB)
    written = 0
    with open(path, "wb") as f:
        f.truncate(size)
        pos = rng.randrange(0, 2 * MIB, 4 * KIB)
        while pos < size:
            # log-uniform lengths: many small extents, most bytes in big ones
            length = int(4 * KIB * 2 ** rng.uniform(0, 10))
            length = min(length // (4 * KIB) * (4 * KIB) or 4 * KIB, size - pos)
            f.seek(pos)
            f.write(extent_bytes(rng, pick_kind(rng), length, pool))
            written += length
            gap = int(length * rng.uniform(0.5, 2.5))
            pos += length + (gap + 4 * KIB - 1) // (4 * KIB) * (4 * KIB)
    sys.stderr.write("%s: %d of %d bytes written (%.0f%%)\n"
                     % (path, written, size, 100.0 * written / size))


def gen_iocmds(size, seed, n, maxlen):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = min(rng.randrange(4 * KIB, maxlen + 1, 4 * KIB), size)
        off = rng.randrange(0, (size - length) // (4 * KIB) + 1) * 4 * KIB
        out.append("write -P %d %d %d\n" % (rng.randrange(1, 256), off, length))
    sys.stdout.write("".join(out))


def main(argv):
    if len(argv) == 5 and argv[1] == "raw":
        gen_raw(argv[2], int(argv[3]), int(argv[4]))
    elif len(argv) == 6 and argv[1] == "iocmds":
        gen_iocmds(int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
