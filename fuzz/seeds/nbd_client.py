#!/usr/bin/env python3
"""Writes seed inputs for the nbd_client fuzz target into fuzz/corpus/nbd_client.

Scene byte 0x00: a server's negotiation (greeting, STRUCTURED_REPLY ack, a META_CONTEXT reply
and ack, GO info (export, block size) and ack). Scene 0x01: replies to the requests the target
registers (cookies 1..5: READ 4096 at 0, READ 512 at 4096, READ 65536 at 1 MiB - 64 KiB,
BLOCK_STATUS of 1 MiB at 0, WRITE 4096 at 8192): data, hole, block-status, error and simple
reply chunks, in and out of order. Layouts from the NBD protocol (doc/proto.md)."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "corpus", "nbd_client")
NBDMAGIC, IHAVEOPT, REPMAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x3E889045565A9
SIMPLE, STRUCT = 0x67446698, 0x668E33EF


def optrep(opt, typ, payload=b""):
    return struct.pack(">QIII", REPMAGIC, opt, typ, len(payload)) + payload


def chunk(cookie, typ, payload, done=True):
    return struct.pack(">IHHQI", STRUCT, 1 if done else 0, typ, cookie, len(payload)) + payload


def negotiation(bitmap=False, go_unsup=False):
    b = struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3)
    b += optrep(8, 1)
    b += optrep(10, 4, struct.pack(">I", 1) + b"base:allocation")
    if bitmap:
        b += optrep(10, 4, struct.pack(">I", 2) + b"qemu:dirty-bitmap:b0")
    b += optrep(10, 1)
    if go_unsup:
        return b + optrep(7, 0x80000001) + struct.pack(">QH", 1 << 20, 3)
    b += optrep(7, 3, struct.pack(">HQH", 0, 1 << 20, 3))
    b += optrep(7, 3, struct.pack(">HIII", 3, 512, 4096, 1 << 25))
    return b + optrep(7, 1)


def replies():
    b = chunk(2, 1, struct.pack(">Q", 4096) + b"\x11" * 512)
    b += chunk(1, 2, struct.pack(">QI", 0, 2048), done=False)
    b += chunk(1, 1, struct.pack(">Q", 2048) + b"\x22" * 2048)
    b += chunk(4, 5, struct.pack(">IIIII", 1, 65536, 3, (1 << 20) - 65536, 0), done=False)
    b += chunk(4, 5, struct.pack(">III", 2, 1 << 20, 1))
    b += chunk(3, 0x8002, struct.pack(">IH", 5, 3) + b"bad" + struct.pack(">Q", (1 << 20) - 100))
    b += struct.pack(">IIQ", SIMPLE, 0, 5)
    return b


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "negotiation": b"\x00" + negotiation(),
        "negotiation-bitmap": b"\x02" + negotiation(bitmap=True),
        "negotiation-export-name": b"\x00" + negotiation(go_unsup=True),
        "replies": b"\x01" + replies(),
        "simple-replies": b"\x03" + struct.pack(">IIQ", SIMPLE, 0, 2) + b"\x33" * 512
        + struct.pack(">IIQ", SIMPLE, 5, 1),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
