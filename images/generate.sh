#!/usr/bin/env bash
# Makes images/sample.raw: a 1 MiB MBR disk with an ext4 partition and a pattern partition.
# Deterministic: fixed UUIDs, hash seed, timestamps and owners, pseudo-random bytes from
# sha256 in counter mode, our own mke2fs.conf. See images/README.md for the layout and the
# sha256 the result must have.
#
# Usage: images/generate.sh [OUTPUT]        (default: sample.raw next to this script)
# Needs: bash, coreutils (dd, sha256sum, truncate, sort), mke2fs and debugfs (e2fsprogs).
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC
# Every timestamp e2fsprogs writes (superblock, root, lost+found, crtime): 2023-11-14 22:13:20 UTC.
export E2FSPROGS_FAKE_TIME=1700000000
EPOCH=1700000000
UUID=d15c0c0f-5a3b-4e1d-9c2a-000000000001

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/sample.raw}
for tool in mke2fs debugfs sha256sum dd truncate; do
    command -v "$tool" >/dev/null || { echo "generate.sh: $tool is required" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

KIB=1024
DISK_SIZE=$((1024 * KIB))
P1_START=$((64 * KIB))   # ext4, 640 KiB, 1 KiB blocks
P1_SIZE=$((640 * KIB))
P2_START=$((768 * KIB))  # pattern data (type 0xda, "non-FS data"), 256 KiB
P2_SIZE=$((256 * KIB))
# 704..768 KiB stays unpartitioned zeros.

# Little-endian u32 as printf escapes.
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }

# Writes stdin at byte offset $2 of file $1 without truncating it.
put() { dd of="$1" bs=1024 seek="$2" oflag=seek_bytes conv=notrunc status=none; }

# COUNT pseudo-random bytes (a multiple of 32) for SEED: sha256("SEED-i"), i = 0, 1, ...
prng() {
    local seed=$1 count=$2 i hex=""
    for ((i = 0; i < count / 32; i++)); do
        hex+=$(printf '%s-%d' "$seed" "$i" | sha256sum | cut -c1-64)
    done
    printf '%b' "$(printf '%s' "$hex" | sed 's/../\\x&/g')"
}

# 256 bytes 0x00..0xff.
ramp=$(for ((i = 0; i < 256; i++)); do printf '\\x%02x' "$i"; done)

# --- the ext4 partition ----------------------------------------------------------------------
root=$tmp/root
mkdir -p "$root/etc" "$root/data"
cat >"$root/README.txt" <<'EOF'
diskconv sample image
=====================

This ext4 file system is partition 1 of images/sample.raw, made by images/generate.sh.
Partition 2 holds pattern data; the gap between them is zeros.
EOF
printf 'diskconv-sample\n' >"$root/etc/hostname"
printf '# <fs> <mountpoint> <type> <options> <dump> <pass>\nLABEL=SAMPLE / ext4 defaults 0 1\n' \
    >"$root/etc/fstab"
seq 1 4000 >"$root/data/numbers.txt"
prng random 24576 >"$root/data/random.bin"
head -c 16384 /dev/zero >"$root/data/zeros.bin"
ln -s numbers.txt "$root/data/latest"

cat >"$tmp/mke2fs.conf" <<'EOF'
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	blocksize = 1024
	inode_size = 256
	inode_ratio = 4096
[fs_types]
	ext4 = {
		features = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
	small = {
		blocksize = 1024
	}
	floppy = {
		blocksize = 1024
	}
EOF
fs=$tmp/fs.img
MKE2FS_CONFIG=$tmp/mke2fs.conf mke2fs -q -F -t ext4 -b 1024 -O ^has_journal -L SAMPLE -m 0 -N 64 \
    -U "$UUID" -E "hash_seed=$UUID,root_owner=0:0" -d "$root" "$fs" $((P1_SIZE / KIB)) >/dev/null
# mke2fs -d copies owners and times from the staging files; pin them (ctime cannot be set with
# touch, and reading the files moved their atime).
(cd "$root" && find . -mindepth 1 | sort | sed 's|^\.||') | while read -r p; do
    for field in "atime @$EPOCH" "mtime @$EPOCH" "ctime @$EPOCH" "uid 0" "gid 0"; do
        echo "set_inode_field $p $field"
    done
done >"$tmp/pin.cmds"
debugfs -w -f "$tmp/pin.cmds" "$fs" >/dev/null 2>"$tmp/debugfs.err" || { cat "$tmp/debugfs.err" >&2; exit 1; }
if grep -v '^debugfs ' "$tmp/debugfs.err" | grep -q .; then cat "$tmp/debugfs.err" >&2; exit 1; fi

# --- the disk ----------------------------------------------------------------------------------
img=$tmp/sample.raw
truncate -s $DISK_SIZE "$img"

# MBR: disk signature "VNCD" (0x44434e56), two primary partitions (CHS fields set to the
# LBA-only placeholder fe ff ff), boot signature 55 aa.
entry() { # type start_lba sectors
    printf "\\x00\\xfe\\xff\\xff\\x$1\\xfe\\xff\\xff$(le32 "$2")$(le32 "$3")"
}
{
    printf "$(le32 0x44434e56)\\x00\\x00"
    entry 83 $((P1_START / 512)) $((P1_SIZE / 512))
    entry da $((P2_START / 512)) $((P2_SIZE / 512))
    head -c 32 /dev/zero
    printf '\x55\xaa'
} | put "$img" 440

put "$img" $P1_START <"$fs"

# Partition 2: 16 blocks of 4 KiB, each a text header padded to 64 bytes and then a byte ramp;
# 64 KiB of zeros; 32 KiB pseudo-random; 32 KiB of 0xff; zeros to the end.
{
    for ((b = 0; b < 16; b++)); do
        printf '%-63s\n' "diskconv sample pattern block $b"
        for ((k = 0; k < 16; k++)); do printf '%b' "$ramp"; done | head -c 4032
    done
} | put "$img" $P2_START
prng pattern 32768 | put "$img" $((P2_START + 128 * KIB))
head -c 32768 /dev/zero | tr '\0' '\377' | put "$img" $((P2_START + 160 * KIB))

size=$(stat -c %s "$img")
[ "$size" -eq $DISK_SIZE ] || { echo "generate.sh: wrong size $size" >&2; exit 1; }
mv "$img" "$out"
sha256sum "$out"
