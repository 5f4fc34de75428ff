#!/usr/bin/env python3
"""Writes seed inputs for the ntfs_index fuzz target into fuzz/corpus/ntfs_index.

Input format: $INDEX_ROOT value, then 512-byte INDX blocks (fixups applied), then one byte
giving the root's length in 8-byte units."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "corpus", "ntfs_index")


def key(name):
    """A $FILE_NAME value: 0x40 bytes of references/times/sizes (zero), length, namespace, name."""
    u = name.encode("utf-16-le")
    k = bytearray(0x42 + len(u))
    k[0x40] = len(u) // 2
    k[0x41] = 1
    k[0x42:] = u
    return bytes(k)


def entry(ref, k, child=None, last=False):
    n = 16 + ((len(k) + 7) & ~7) + (8 if child is not None else 0)
    e = bytearray(n)
    flags = (1 if child is not None else 0) | (2 if last else 0)
    struct.pack_into("<QHHH", e, 0, ref, n, len(k), flags)
    e[16:16 + len(k)] = k
    if child is not None:
        struct.pack_into("<Q", e, n - 8, child)
    return bytes(e)


def end(child=None):
    return entry(0, b"", child, True)


def block(vcn, ents, children=False):
    b = bytearray(512)
    b[0:4] = b"INDX"
    struct.pack_into("<HHQQ", b, 4, 0x28, 2, 0, vcn)
    body = b"".join(ents)
    first = 0x30 - 0x18
    struct.pack_into("<IIIB", b, 0x18, first, first + len(body), 512 - 0x18, int(children))
    b[0x30:0x30 + len(body)] = body
    b[0x28:0x2A] = b"\x01\x00"  # update sequence number 1
    b[0x2A:0x2C] = b[510:512]  # saved tail of the only stride
    b[510:512] = b"\x01\x00"
    return bytes(b)


def root(ents, large):
    body = b"".join(ents)
    r = struct.pack("<IIIB3x", 0x30, 1, 512, 1)
    return r + struct.pack("<IIIB3x", 16, 16 + len(body), 16 + len(body), int(large)) + body


def seed(r, *blocks):
    return r + b"".join(blocks) + bytes([len(r) // 8])


SEEDS = [
    seed(root([end(0)], True),
         block(0, [entry(64, key("abc")), entry(65, key("Foo")), entry(66, key("zeta")), end()])),
    seed(root([entry(70, key("m"), 0), end(1)], True),
         block(0, [entry(71, key("a")), entry(72, key("b")), end()]),
         block(1, [entry(73, key("x")), entry(74, key("y")), end()])),
    seed(root([entry(80, key("hello")), end()], False)),
]

os.makedirs(OUT, exist_ok=True)
for i, s in enumerate(SEEDS, 1):
    with open(os.path.join(OUT, f"seed{i}"), "wb") as f:
        f.write(s)
