"""Zero the device code of every GPU architecture but the ones kept, in a
CUDA shared library's fat binaries, so that it compresses to a size that a
transfer to the lent GPU machine can carry. Entry headers are kept; only the
payloads of the other architectures become zeros (the CUDA runtime loads the
entry that matches the GPU: keep that one).

Usage: strip_fatbin.py IN.so OUT.so SM[,SM...]   (e.g. 90 for Hopper)
"""
import collections
import mmap
import struct
import sys

MAGIC = struct.pack("<I", 0xBA55ED50)


def entries(data):
    """(offset, header size, padded payload size, kind, sm) of every entry."""
    pos = 0
    while (i := data.find(MAGIC, pos)) >= 0:
        version, header, size = struct.unpack_from("<HHQ", data, i + 4)
        if version != 1 or header != 16 or size == 0 or i + 16 + size > len(data):
            pos = i + 4
            continue
        e, end = i + 16, i + 16 + size
        while e < end:
            kind, _, entry_header, padded = struct.unpack_from("<HHII", data, e)
            (sm,) = struct.unpack_from("<I", data, e + 28)
            if entry_header < 64:
                break
            yield e, entry_header, padded, kind, sm
            e += entry_header + padded
        pos = end


def main(src, dst, keep):
    keep = {int(s) for s in keep.split(",")}
    with open(src, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        out = bytearray(data)
    sizes = collections.Counter()
    for e, header, padded, _kind, sm in entries(data):
        sizes[sm] += padded
        if sm not in keep:
            out[e + header : e + header + padded] = bytes(padded)
    with open(dst, "wb") as f:
        f.write(out)
    for sm, size in sorted(sizes.items()):
        print(f"sm_{sm}: {size / 1e6:.1f} MB {'kept' if sm in keep else 'zeroed'}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
