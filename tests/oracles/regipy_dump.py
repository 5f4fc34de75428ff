#!/usr/bin/env python3
"""Dump a registry hive with regipy (an independent reader) in a canonical text form.

Usage: regipy_dump.py HIVE

One line per key, `[path]` (path relative to the root, components joined with a backslash), then
one line per value: `  name = TYPE: value`, where value is regipy's own decoding (bytes in hex,
strings as they are, lists as JSON). Subkeys and values are printed in the order their lists
hold them. Used by the integration tests to check hives written by diskconv.
"""
import json
import sys

from regipy.registry import RegistryHive


def render(v):
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, (list, tuple)):
        return json.dumps([render(x) for x in v], ensure_ascii=False)
    return str(v)


def walk(nk, path, out):
    out.append("[%s]" % path)
    if nk.values_count:
        for val in nk.iter_values(as_json=False, trim_values=False):
            out.append("  %s = %s: %s" % (val.name, val.value_type, render(val.value)))
    if nk.subkey_count:
        for sk in nk.iter_subkeys():
            walk(sk, path + "\\" + sk.name if path else sk.name, out)


def main():
    hive = RegistryHive(sys.argv[1])
    out = []
    walk(hive.root, "", out)
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
