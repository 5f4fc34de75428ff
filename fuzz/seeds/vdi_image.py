#!/usr/bin/env python3
"""Writes seed inputs for the vdi_image fuzz target into fuzz/corpus/vdi_image.

Small VDIs laid out from VirtualBox's VDICore.h (pre-header, header, block map, data), with
small blocks so that the inputs stay a few KiB: version 1.1 with and without the LCHS
geometry (VirtualBox's 400-byte header, qemu's 384), version 0, dynamic, fixed, per-block
extra data, free and zero entries, a differencing image, a disk size not a multiple of the
block size."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "corpus", "vdi_image")

FREE, ZERO = 0xFFFFFFFF, 0xFFFFFFFE


def vdi(disk, block, slots, version=0x00010001, kind=1, extra=0, cb_header=400,
        linkage=b"\0" * 16):
    """slots: one per block, None = free, 0 = zero, else the fill byte of a stored block."""
    n = len(slots)
    stored = [i for i in range(n) if slots[i] not in (None, 0)]
    if version >> 16 == 0:
        off_blocks, off_data = 420, 420 + 4 * n
    else:
        off_blocks = 512
        off_data = (off_blocks + 4 * n + 511) // 512 * 512
    stride = block + extra
    f = bytearray(off_data + stride * len(stored))
    f[0:20] = b"<<< seed VDI >>>\n\0\0\0"
    struct.pack_into("<II", f, 64, 0xBEDA107F, version)
    h = 72
    create, modify = bytes(range(1, 17)), bytes(range(17, 33))
    if version >> 16 == 0:
        struct.pack_into("<II", f, h, kind, 0)
        struct.pack_into("<I", f, h + 276, 512)
        struct.pack_into("<QIII", f, h + 280, disk, block, n, len(stored))
        f[h + 300:h + 316] = create
        f[h + 316:h + 332] = modify
        f[h + 332:h + 348] = linkage
    else:
        struct.pack_into("<III", f, h, cb_header, kind, 0)
        struct.pack_into("<II", f, h + 268, off_blocks, off_data)
        struct.pack_into("<I", f, h + 288, 512)
        struct.pack_into("<QIIII", f, h + 296, disk, block, extra, n, len(stored))
        f[h + 320:h + 336] = create
        f[h + 336:h + 352] = modify
        f[h + 352:h + 368] = linkage
        f[h + 368:h + 384] = modify if linkage != b"\0" * 16 else b"\0" * 16
        if cb_header >= 400:
            struct.pack_into("<I", f, h + 396, 512)
    for i, s in enumerate(slots):
        e = FREE if s is None else ZERO if s == 0 else stored.index(i)
        struct.pack_into("<I", f, off_blocks + 4 * i, e)
    for index, i in enumerate(stored):
        at = off_data + stride * index
        f[at:at + extra] = b"\xee" * extra
        f[at + extra:at + stride] = bytes([slots[i]]) * block
    return bytes(f)


SEEDS = {
    "dynamic": vdi(4 * 4096, 4096, [0x11, None, 0, 0x33]),
    "odd-size": vdi(3 * 4096 + 1536, 4096, [0x11, 0x22, None, 0x44]),
    "fixed": vdi(4 * 4096, 4096, [1, 2, 3, 4], kind=2),
    "extra": vdi(4 * 512, 512, [None, 5, 0, 6], extra=512),
    "qemu-header": vdi(2 * 4096, 4096, [7, None], cb_header=384),
    "version0": vdi(3 * 1024, 1024, [8, None, 9], version=0x00000002),
    "differencing": vdi(2 * 4096, 4096, [None, 10], kind=4, linkage=bytes(range(40, 56))),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
