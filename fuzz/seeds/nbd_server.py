#!/usr/bin/env python3
"""Writes seed inputs for the nbd_server fuzz target into fuzz/corpus/nbd_server.

Each seed is one set-up byte (bit 0: writable export, bit 1: TLS required) followed by what a
client sends, built from the protocol description (doc/proto.md of the NBD project): the
handshake flags, options (LIST, STRUCTURED_REPLY, SET/LIST_META_CONTEXT, INFO, GO,
EXPORT_NAME, STARTTLS, ABORT, unknown ones) and requests (READ with and without DF, WRITE,
WRITE_ZEROES with NO_HOLE and FAST_ZERO, TRIM, FLUSH, BLOCK_STATUS with REQ_ONE, CACHE, DISC,
and hostile ones: past the end, length 0, unknown command and flags)."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "corpus", "nbd_server")
IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513


def opt(o, payload=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(payload)) + payload


def s32(s):
    return struct.pack(">I", len(s)) + s


def go(name=b"", infos=()):
    return s32(name) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def meta(name, queries):
    return s32(name) + struct.pack(">I", len(queries)) + b"".join(s32(q) for q in queries)


def req(cmd, off, length, flags=0, cookie=1, data=b""):
    return struct.pack(">IHHQQI", REQ, flags, cmd, cookie, off, length) + data


FLAGS = struct.pack(">I", 3)
STRUCT = opt(8) + opt(10, meta(b"", [b"base:allocation", b"qemu:dirty-bitmap:b0"]))
READS = (req(0, 0, 65536, cookie=1) + req(0, 4096, 100, flags=4, cookie=2)
         + req(7, 0, 65536, cookie=3) + req(7, 100, 9000, flags=8, cookie=4)
         + req(5, 0, 4096, cookie=5))
HOSTILE = (req(0, 65000, 1000) + req(0, 0, 0) + req(0, 0, 0xFFFFFFFF) + req(42, 0, 10)
           + req(0, 0, 10, flags=0x80) + req(1, 0, 4, data=b"evil"))
WRITES = (req(1, 10, 5, data=b"hello") + req(1, 1000, 3, flags=1, data=b"abc")
          + req(6, 4096, 100) + req(6, 8192, 10, flags=2) + req(6, 0, 10, flags=16)
          + req(4, 20000, 50) + req(3, 0, 0) + req(1, 65534, 4, data=b"over"))
DISC = req(2, 0, 0)

SEEDS = {
    "list_info_go_reads": b"\0" + FLAGS + opt(3) + opt(6, go(b"", [1, 2, 3])) + STRUCT
    + opt(7, go(b"", [3])) + READS + DISC,
    "simple_reads_hostile": b"\0" + FLAGS + opt(7, go()) + req(0, 0, 512) + HOSTILE + DISC,
    "structured_hostile": b"\0" + FLAGS + STRUCT + opt(7, go()) + HOSTILE + READS,
    "export_name": b"\0" + struct.pack(">I", 1) + opt(1, b"") + req(0, 0, 4096),
    "list_meta": b"\0" + FLAGS + opt(8) + opt(9, meta(b"", [])) + opt(9, meta(b"", [b"qemu:"]))
    + opt(10, meta(b"nope", [b"base:allocation"])) + opt(2),
    "bad_options": b"\0" + FLAGS + opt(77, b"x") + opt(7, b"\0\0\0\x09a") + opt(3, b"x")
    + opt(10, meta(b"", [b"base:allocation"])) + opt(5) + opt(11) + opt(7, go(b"nope")),
    "writes": b"\x01" + FLAGS + opt(8) + opt(7, go(b"w")) + WRITES + READS + DISC,
    "writes_simple": b"\x01" + FLAGS + opt(7, go(b"w")) + WRITES + HOSTILE + DISC,
    "tls": b"\x02" + FLAGS + opt(3) + opt(7, go()) + opt(5, b"x") + opt(5) + opt(5)
    + STRUCT + opt(7, go()) + READS + DISC,
    "tls_export_name": b"\x02" + FLAGS + opt(1, b""),
}

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(SEEDS)} seeds in {OUT}")
