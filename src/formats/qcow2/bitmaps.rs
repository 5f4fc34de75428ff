//! Persistent dirty bitmaps (qcow2.txt, "Bitmaps", header extension 0x23852875).
//!
//! The header extension points at the bitmap directory: variable-length entries, each naming a
//! bitmap, its granularity, flags and the offset of its bitmap table. The bitmap table lists
//! the clusters holding the bitmap's bits ([`TableEntry`]). Bit `k` of a bitmap covers guest
//! bytes `[k * granularity, (k + 1) * granularity)`; bits are numbered from the least
//! significant bit of each byte.

use std::ops::Range;

use super::Qcow2Error;
use crate::bytes::{be16, be32, be64};
use crate::image::BitmapInfo;

/// Length of the fixed part of a bitmap directory entry.
pub const ENTRY_FIXED_LEN: usize = 24;
/// Most bitmaps in one image (qemu's QCOW2_MAX_BITMAPS).
pub const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory accepted (qemu's QCOW2_MAX_BITMAP_DIRECTORY_SIZE).
pub const MAX_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;
/// Longest bitmap name (qemu's BME_MAX_NAME_SIZE).
pub const MAX_NAME_LEN: usize = 1023;
/// Smallest and largest granularity_bits accepted (qemu's BME_MIN/MAX_GRANULARITY_BITS).
pub const GRANULARITY_BITS: std::ops::RangeInclusive<u8> = 9..=31;
/// Largest bitmap table read into memory, in bytes (the same bound as L1 tables).
pub const MAX_TABLE_BYTES: u64 = 32 << 20;
/// Flag bit 0: the bitmap was not saved cleanly.
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Flag bit 1: the bitmap tracks every write.
pub const FLAG_AUTO: u32 = 1 << 1;
/// Flag bit 2: unknown extra data may be ignored.
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// Bitmap type 1: dirty tracking bitmap.
pub const TYPE_DIRTY_TRACKING: u8 = 1;
/// Bits of a bitmap table entry that must be zero (1-8 and 56-63).
pub const TABLE_ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// Offset bits of a bitmap table entry (9-55).
pub const TABLE_ENTRY_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

/// One decoded bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Bitmap {
    /// Byte offset of this directory entry in the file (for error messages).
    pub entry_offset: u64,
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Number of entries in the bitmap table.
    pub table_size: u32,
    /// Raw flags.
    pub flags: u32,
    /// log2 of the granularity.
    pub granularity_bits: u8,
    /// Size of the type-specific extra data.
    pub extra_data_size: u32,
    /// Name.
    pub name: String,
}

impl Qcow2Bitmap {
    /// Bytes of virtual disk per bit.
    pub fn granularity(&self) -> u64 {
        1 << self.granularity_bits
    }

    /// The bitmap was not saved cleanly and may be stale.
    pub fn in_use(&self) -> bool {
        self.flags & FLAG_IN_USE != 0
    }

    /// The bitmap tracks every write.
    pub fn auto(&self) -> bool {
        self.flags & FLAG_AUTO != 0
    }

    /// Whether the bitmap may be used: it has no extra data, or extra data marked compatible.
    pub fn usable_extra_data(&self) -> bool {
        self.extra_data_size == 0 || self.flags & FLAG_EXTRA_DATA_COMPATIBLE != 0
    }

    /// The public description.
    pub fn info(&self) -> BitmapInfo {
        BitmapInfo {
            name: self.name.clone(),
            granularity: self.granularity(),
            in_use: self.in_use(),
            auto: self.auto(),
        }
    }
}

/// Bytes of bitmap data for a disk of `virtual_size` bytes at `granularity_bits`.
pub fn data_bytes(virtual_size: u64, granularity_bits: u8) -> u64 {
    let bits = virtual_size.div_ceil(1u64 << granularity_bits);
    bits.div_ceil(8)
}

/// Parses and validates the bitmap directory.
///
/// `bytes` are the `directory_size` bytes read from `directory_offset`; `count` is the number of
/// bitmaps the extension announces. Each bitmap table is checked against `file_len`, and its
/// size against what a disk of `virtual_size` bytes needs.
pub fn parse_directory(
    bytes: &[u8],
    directory_offset: u64,
    count: u32,
    cluster_size: u64,
    file_len: u64,
    virtual_size: u64,
) -> Result<Vec<Qcow2Bitmap>, Qcow2Error> {
    if count > MAX_BITMAPS {
        return Err(Qcow2Error::corrupt(
            "bitmap directory",
            directory_offset,
            format!("{count} bitmaps announced, more than {MAX_BITMAPS}"),
        ));
    }
    let mut out: Vec<Qcow2Bitmap> = Vec::with_capacity(count.min(1024) as usize);
    let mut pos = 0usize;
    for i in 0..count {
        let entry_offset = directory_offset.saturating_add(pos as u64);
        let corrupt = |detail: String| {
            Qcow2Error::corrupt(format!("bitmap directory entry {i}"), entry_offset, detail)
        };
        let rest = bytes.get(pos..).unwrap_or(&[]);
        if rest.len() < ENTRY_FIXED_LEN {
            return Err(corrupt(format!(
                "the directory ends at {:#x}, before the {ENTRY_FIXED_LEN}-byte entry header",
                directory_offset.saturating_add(bytes.len() as u64)
            )));
        }
        let table_offset = be64(rest, 0);
        let table_size = be32(rest, 8);
        let flags = be32(rest, 12);
        let ty = rest[16];
        let granularity_bits = rest[17];
        let name_len = usize::from(be16(rest, 18));
        let extra_data_size = be32(rest, 20);
        // 24 + 2^32 + 2^16 fits in u64; compare before converting to usize.
        let len =
            (ENTRY_FIXED_LEN as u64 + u64::from(extra_data_size) + name_len as u64).div_ceil(8) * 8;
        if len > rest.len() as u64 {
            return Err(corrupt(format!(
                "the entry is {len} bytes long but the directory ends after {} more bytes",
                rest.len()
            )));
        }
        if flags & !(FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE) != 0 {
            return Err(corrupt(format!(
                "reserved flag bits set (flags {flags:#x}, known bits 0-2)"
            )));
        }
        if ty != TYPE_DIRTY_TRACKING {
            return Err(corrupt(format!(
                "bitmap type is {ty}, expected 1 (dirty tracking)"
            )));
        }
        if !GRANULARITY_BITS.contains(&granularity_bits) {
            return Err(corrupt(format!(
                "granularity_bits is {granularity_bits}, expected {} to {}",
                GRANULARITY_BITS.start(),
                GRANULARITY_BITS.end()
            )));
        }
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(corrupt(format!(
                "name_size is {name_len}, expected 1 to {MAX_NAME_LEN}"
            )));
        }
        let table_bytes = u64::from(table_size) * 8;
        if table_offset == 0 || table_offset % cluster_size != 0 {
            return Err(corrupt(format!(
                "bitmap table offset {table_offset:#x} is not a non-zero multiple of the cluster \
                 size ({cluster_size:#x})"
            )));
        }
        match table_offset.checked_add(table_bytes) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(corrupt(format!(
                    "bitmap table at {table_offset:#x} ({table_size} entries) runs past the end \
                     of the file ({file_len:#x} bytes)"
                )));
            }
        }
        let expected = data_bytes(virtual_size, granularity_bits).div_ceil(cluster_size);
        if u64::from(table_size) != expected {
            return Err(corrupt(format!(
                "bitmap table has {table_size} entries, expected {expected} for a disk of \
                 {virtual_size} bytes at a granularity of {} bytes",
                1u64 << granularity_bits
            )));
        }
        // `len <= rest.len()`: the casts and slices below are in bounds.
        let e = &rest[..len as usize];
        let name_start = ENTRY_FIXED_LEN + extra_data_size as usize;
        let name = String::from_utf8_lossy(&e[name_start..name_start + name_len]).into_owned();
        // The padding after the name is not checked: qemu ignores it (`check_dir_entry`), so
        // an image it opens must open here too.
        if out.iter().any(|b| b.name == name) {
            return Err(corrupt(format!("duplicate bitmap name '{name}'")));
        }
        out.push(Qcow2Bitmap {
            entry_offset,
            table_offset,
            table_size,
            flags,
            granularity_bits,
            extra_data_size,
            name,
        });
        pos += len as usize;
    }
    if pos != bytes.len() {
        return Err(Qcow2Error::corrupt(
            "bitmap directory",
            directory_offset,
            format!(
                "{count} entries take {pos} bytes but the directory is {} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(out)
}

/// What one bitmap table entry says about one cluster of bitmap data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableEntry {
    /// Every bit of the cluster is 0.
    Zeros,
    /// Every bit of the cluster is 1.
    Ones,
    /// The bits are stored in the cluster at this offset.
    Data(u64),
}

/// Decodes a bitmap table entry; `Err` describes reserved bits or a misaligned offset.
pub fn decode_table_entry(raw: u64, cluster_size: u64) -> Result<TableEntry, String> {
    if raw & TABLE_ENTRY_RESERVED != 0 {
        return Err(format!(
            "reserved bits set in bitmap table entry {raw:#018x}"
        ));
    }
    let off = raw & TABLE_ENTRY_OFFSET;
    if off == 0 {
        return Ok(if raw & 1 != 0 {
            TableEntry::Ones
        } else {
            TableEntry::Zeros
        });
    }
    if raw & 1 != 0 {
        return Err(format!(
            "bitmap table entry {raw:#018x} has both an offset and bit 0 set"
        ));
    }
    if off % cluster_size != 0 {
        return Err(format!(
            "bitmap data offset {off:#x} is not aligned to the cluster size ({cluster_size:#x})"
        ));
    }
    Ok(TableEntry::Data(off))
}

/// Appends to `out` the guest byte ranges whose bits are set in `data`, where `data[0]` holds
/// bits `first_bit ..= first_bit + 7`. Ranges are clipped to `virtual_size` and merged with the
/// last range of `out` when they touch it.
pub fn push_set_ranges(
    data: &[u8],
    first_bit: u64,
    granularity_bits: u8,
    virtual_size: u64,
    out: &mut Vec<Range<u64>>,
) {
    let mut push = |start_bit: u64, end_bit: u64| {
        let start = start_bit.saturating_mul(1 << granularity_bits);
        let end = end_bit
            .saturating_mul(1 << granularity_bits)
            .min(virtual_size);
        if start >= end {
            return;
        }
        match out.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => out.push(start..end),
        }
    };
    let mut run: Option<u64> = None;
    let mut i = 0usize;
    while i < data.len() {
        // Skip whole zero words quickly when no run is open, and whole 0xff words when one is.
        if i % 8 == 0 && i + 8 <= data.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[i..i + 8]);
            let w = u64::from_le_bytes(w);
            if (run.is_none() && w == 0) || (run.is_some() && w == u64::MAX) {
                i += 8;
                continue;
            }
        }
        let byte = data[i];
        for b in 0..8u64 {
            let bit = first_bit + i as u64 * 8 + b;
            let set = byte & (1 << b) != 0;
            match (set, run) {
                (true, None) => run = Some(bit),
                (false, Some(s)) => {
                    push(s, bit);
                    run = None;
                }
                _ => {}
            }
        }
        i += 1;
    }
    if let Some(s) = run {
        push(s, first_bit + data.len() as u64 * 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds one directory entry.
    fn entry(table_off: u64, table_size: u32, flags: u32, gran: u8, name: &str) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&table_off.to_be_bytes()); // 0-7: bitmap table offset
        e.extend_from_slice(&table_size.to_be_bytes()); // 8-11: bitmap table entries
        e.extend_from_slice(&flags.to_be_bytes()); // 12-15: flags
        e.push(1); // 16: type (dirty tracking)
        e.push(gran); // 17: granularity_bits
        e.extend_from_slice(&(name.len() as u16).to_be_bytes()); // 18-19: name_size
        e.extend_from_slice(&0u32.to_be_bytes()); // 20-23: extra_data_size
        e.extend_from_slice(name.as_bytes()); // name
        while e.len() % 8 != 0 {
            e.push(0); // zero padding to a multiple of 8
        }
        e
    }

    const CS: u64 = 65536;
    const FILE: u64 = 0x100000;
    // 1 GiB disk at 64 KiB granularity: 16384 bits = 2048 bytes = one table entry.
    const SIZE: u64 = 1 << 30;

    #[test]
    fn parses_directory() {
        let mut d = entry(0x30000, 1, FLAG_AUTO, 16, "b0");
        d.extend_from_slice(&entry(0x40000, 1, FLAG_IN_USE, 16, "second"));
        let b = parse_directory(&d, 0x20000, 2, CS, FILE, SIZE).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].name, "b0");
        assert_eq!(b[0].granularity(), 65536);
        assert!(b[0].auto() && !b[0].in_use());
        assert_eq!(b[1].entry_offset, 0x20000 + 32);
        assert!(b[1].in_use() && !b[1].auto());
        let info = b[1].info();
        assert_eq!(info.name, "second");
        assert_eq!(info.granularity, 65536);
    }

    fn err(d: &[u8], count: u32) -> String {
        parse_directory(d, 0x20000, count, CS, FILE, SIZE)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rejects_bad_entries_with_offsets() {
        let good = entry(0x30000, 1, 0, 16, "b0");
        let e = err(&good, 2);
        assert!(e.contains("entry 1 at 0x20020"), "{e}");
        let e = err(&good[..30], 1);
        assert!(e.contains("entry 0 at 0x20000"), "{e}");
        let e = err(&entry(0x30000, 1, 1 << 5, 16, "b0"), 1);
        assert!(e.contains("reserved flag bits"), "{e}");
        let e = err(&entry(0x30000, 1, 0, 8, "b0"), 1);
        assert!(e.contains("granularity_bits is 8"), "{e}");
        let e = err(&entry(0x30000, 1, 0, 32, "b0"), 1);
        assert!(e.contains("granularity_bits is 32"), "{e}");
        let e = err(&entry(0x30000, 1, 0, 16, ""), 1);
        assert!(e.contains("name_size is 0"), "{e}");
        let long = "x".repeat(1024);
        let e = err(&entry(0x30000, 1, 0, 16, &long), 1);
        assert!(e.contains("name_size is 1024"), "{e}");
        let e = err(&entry(0x30001, 1, 0, 16, "b0"), 1);
        assert!(e.contains("not a non-zero multiple"), "{e}");
        let e = err(&entry(0xff000 & !0xffff, 0x10000, 0, 16, "b0"), 1);
        assert!(e.contains("runs past the end of the file"), "{e}");
        let e = err(&entry(0x30000, 2, 0, 16, "b0"), 1);
        assert!(e.contains("has 2 entries, expected 1"), "{e}");
        let mut t = entry(0x30000, 1, 0, 16, "b0");
        t[16] = 2;
        let e = err(&t, 1);
        assert!(e.contains("bitmap type is 2"), "{e}");
        let mut t = good.clone();
        t.extend_from_slice(&good);
        let e = err(&t, 2);
        assert!(e.contains("duplicate bitmap name 'b0'"), "{e}");
        let mut t = good.clone();
        t.extend_from_slice(&[0; 8]);
        let e = err(&t, 1);
        assert!(e.contains("take 32 bytes but the directory is 40"), "{e}");
        // Bytes in the padding are ignored, as qemu ignores them.
        let mut t = good.clone();
        t[27] = 1;
        assert_eq!(
            parse_directory(&t, 0x50000, 1, CS, FILE, SIZE).unwrap()[0].name,
            "b0"
        );
        let e = err(&[], MAX_BITMAPS + 1);
        assert!(e.contains("65536 bitmaps"), "{e}");
    }

    #[test]
    fn decodes_table_entries() {
        assert_eq!(decode_table_entry(0, CS), Ok(TableEntry::Zeros));
        assert_eq!(decode_table_entry(1, CS), Ok(TableEntry::Ones));
        assert_eq!(
            decode_table_entry(0x50000, CS),
            Ok(TableEntry::Data(0x50000))
        );
        assert!(decode_table_entry(0x50001, CS).is_err());
        assert!(decode_table_entry(0x50200, CS).is_err());
        assert!(decode_table_entry(1 << 60, CS).is_err());
        assert!(decode_table_entry(2, CS).is_err());
    }

    #[test]
    fn finds_set_ranges() {
        let mut out = Vec::new();
        // Bits 0, 1 and 9 set; little-endian bit order within each byte.
        push_set_ranges(&[0b0000_0011, 0b0000_0010], 0, 9, 1 << 20, &mut out);
        assert_eq!(out, vec![0..1024, 9 * 512..10 * 512]);
        // A run across a word of 0xff and into the next bytes, merged with the previous range.
        let mut out: Vec<Range<u64>> = Vec::new();
        out.push(0..512);
        let mut data = vec![0xffu8; 16];
        data[10] = 0x0f;
        data[11..].fill(0);
        push_set_ranges(&data, 1, 9, 1 << 30, &mut out);
        assert_eq!(out, vec![0..(1 + 84) * 512]);
        // Clipped at the end of the disk.
        let mut out = Vec::new();
        push_set_ranges(&[0xff], 0, 9, 1000, &mut out);
        assert_eq!(out, vec![0..1000]);
        // Zero words are skipped.
        let mut out = Vec::new();
        let mut data = vec![0u8; 24];
        data[23] = 0x80;
        push_set_ranges(&data, 0, 16, u64::MAX, &mut out);
        assert_eq!(out, vec![(191 << 16)..(192 << 16)]);
        assert_eq!(data_bytes(SIZE, 16), 2048);
        assert_eq!(data_bytes(1, 9), 1);
        assert_eq!(data_bytes(0, 9), 0);
    }
}
