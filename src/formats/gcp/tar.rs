//! The one member of a GCP image tarball: an old GNU (`--format=oldgnu`) header of type `S`
//! (sparse) naming `disk.raw`, its sparse map (four entries in the header, 21 in each extended
//! sparse header that follows), and the end of the archive.
//!
//! Layout (GNU tar manual, "Basic Tar Format", `struct oldgnu_header` and `struct sparse_header`
//! of `tar.h`; the same bytes GNU tar 1.34 writes with `tar --format=oldgnu -S`):
//!
//! | offset | size | field | what we write |
//! |---|---|---|---|
//! | 0 | 100 | name | `disk.raw`, NUL padded |
//! | 100 | 8 | mode | `0000644\0` |
//! | 108, 116 | 8, 8 | uid, gid | `0000000\0` |
//! | 124 | 12 | size | bytes of member data in the archive: the sum of the map's lengths |
//! | 136 | 12 | mtime | 0 (the same source gives the same bytes) |
//! | 148 | 8 | chksum | six octal digits, NUL, space |
//! | 156 | 1 | typeflag | `S` (old GNU sparse file) |
//! | 257 | 8 | magic + version | `ustar  \0` (old GNU) |
//! | 265, 297 | 32, 32 | uname, gname | `root` |
//! | 386 | 4 x 24 | sp\[4\] | offset (12) and numbytes (12) of the first four data regions |
//! | 482 | 1 | isextended | 1 when extended sparse headers follow |
//! | 483 | 12 | realsize | the size of `disk.raw` once extracted |
//!
//! An extended sparse header is one 512-byte block: 21 entries of 24 bytes, then `isextended`
//! at byte 504. Numbers are octal with a NUL terminator; one too large for the field's octal
//! digits (the 12-byte fields hold 8 GiB - 1 in octal) is written in GNU's base-256 form:
//! first byte 0x80, the value big-endian in the rest, as GNU tar does for `oldgnu`.
//!
//! Member data is the data regions' bytes one after the other. GNU tar pads each region to a
//! whole block when it writes and reads whole blocks per region; Python's `tarfile` and Go's
//! `archive/tar` read the regions back to back. Both agree because every region here starts
//! and ends on a 512-byte boundary (the raw size is a whole GiB). The map ends with a
//! zero-length entry at the real size, as GNU tar 1.34 writes it when it finds the holes with
//! SEEK_HOLE (its extraction truncates the file to that offset, so a file ending in a hole gets
//! its full size).

use std::ops::Range;

use crate::error::{Error, Result};

/// Tar block size.
pub const BLOCK: u64 = 512;
/// Sparse entries in the main header.
const HEADER_ENTRIES: usize = 4;
/// Sparse entries in one extended sparse header.
const EXT_ENTRIES: usize = 21;
/// GNU tar's default record: 20 blocks. GNU tar pads an archive to a whole record; so do we.
pub const RECORD: u64 = 20 * BLOCK;
/// The member's name: Compute Engine requires exactly `disk.raw`.
pub const MEMBER_NAME: &str = "disk.raw";

/// One entry of the sparse map: `len` bytes of data at `offset` of the extracted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseEntry {
    /// Offset in the extracted file.
    pub offset: u64,
    /// Bytes of data there, stored in the archive.
    pub len: u64,
}

/// The sparse map of `disk.raw`: sorted, disjoint, block-aligned data regions, then the
/// zero-length end marker at the real size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    entries: Vec<SparseEntry>,
    real_size: u64,
}

impl SparseMap {
    /// The map of a `real_size`-byte file (a multiple of [`BLOCK`]) whose data lies in `data`
    /// (sorted, disjoint ranges inside the file). Each range is widened to whole blocks;
    /// ranges that then touch or overlap are merged.
    pub fn new(data: &[Range<u64>], real_size: u64) -> Result<Self> {
        if real_size % BLOCK != 0 {
            return Err(Error::Internal(format!(
                "internal error: the raw size {real_size} of a GCP image is not a whole number \
                 of 512-byte blocks"
            )));
        }
        let mut entries: Vec<SparseEntry> = Vec::new();
        let mut last_end = 0u64;
        for r in data.iter().filter(|r| r.start < r.end) {
            if r.end > real_size {
                return Err(Error::Internal(format!(
                    "internal error: data range {:#x}..{:#x} lies outside the {real_size}-byte \
                     disk",
                    r.start, r.end
                )));
            }
            if r.start < last_end {
                return Err(Error::Internal(format!(
                    "internal error: data range {:#x}..{:#x} is not after {last_end:#x}",
                    r.start, r.end
                )));
            }
            last_end = r.end;
            let start = r.start / BLOCK * BLOCK;
            // Cannot pass real_size: it is a whole number of blocks at least r.end.
            let end = r.end.div_ceil(BLOCK) * BLOCK;
            match entries.last_mut() {
                Some(prev) if prev.offset + prev.len >= start => {
                    prev.len = end.max(prev.offset + prev.len) - prev.offset;
                }
                _ => entries.push(SparseEntry {
                    offset: start,
                    len: end - start,
                }),
            }
        }
        // The end marker, always: GNU tar 1.34 writes it whenever it finds the data with
        // SEEK_DATA/SEEK_HOLE (its default), also after a last region that reaches the end.
        entries.push(SparseEntry {
            offset: real_size,
            len: 0,
        });
        Ok(SparseMap { entries, real_size })
    }

    /// The entries, in order (the last one may be the zero-length end marker).
    pub fn entries(&self) -> &[SparseEntry] {
        &self.entries
    }

    /// The size of the extracted file.
    pub fn real_size(&self) -> u64 {
        self.real_size
    }

    /// Bytes of member data in the archive: the sum of the entries' lengths.
    pub fn data_len(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }

    /// The data regions (the entries without the end marker), as ranges.
    pub fn regions(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.entries
            .iter()
            .filter(|e| e.len > 0)
            .map(|e| e.offset..e.offset + e.len)
    }

    /// The header block and the extended sparse headers, ready to be written before the data.
    pub fn header_blocks(&self) -> Vec<u8> {
        let (first, rest) = self
            .entries
            .split_at(self.entries.len().min(HEADER_ENTRIES));
        let ext_blocks = rest.len().div_ceil(EXT_ENTRIES);
        let mut out = vec![0u8; BLOCK as usize * (1 + ext_blocks)];
        let h = &mut out[..BLOCK as usize];
        h[..MEMBER_NAME.len()].copy_from_slice(MEMBER_NAME.as_bytes());
        put_number(&mut h[100..108], 0o644);
        put_number(&mut h[108..116], 0);
        put_number(&mut h[116..124], 0);
        put_number(&mut h[124..136], self.data_len());
        put_number(&mut h[136..148], 0);
        h[156] = b'S';
        // OLDGNU_MAGIC: "ustar" and two spaces, NUL (magic and version together).
        h[257..265].copy_from_slice(b"ustar  \0");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        for (i, e) in first.iter().enumerate() {
            put_entry(&mut h[386 + 24 * i..386 + 24 * (i + 1)], e);
        }
        h[482] = u8::from(!rest.is_empty());
        put_number(&mut h[483..495], self.real_size);
        // The checksum is the sum of the header's bytes with its own field read as spaces.
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        // Six octal digits, NUL; the eighth byte stays a space.
        put_number(&mut h[148..155], u64::from(sum));
        for (b, chunk) in rest.chunks(EXT_ENTRIES).enumerate() {
            let start = BLOCK as usize * (1 + b);
            let x = &mut out[start..start + BLOCK as usize];
            for (i, e) in chunk.iter().enumerate() {
                put_entry(&mut x[24 * i..24 * (i + 1)], e);
            }
            x[504] = u8::from(b + 1 < ext_blocks);
        }
        out
    }
}

fn put_entry(field: &mut [u8], e: &SparseEntry) {
    put_number(&mut field[..12], e.offset);
    put_number(&mut field[12..24], e.len);
}

/// Writes `v` into a numeric header field: octal digits filling all but the last byte, which is
/// NUL; a value with too many digits is written in base 256 (first byte 0x80, then the value
/// big-endian), GNU tar's form for `oldgnu` and `gnu` archives.
pub fn put_number(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    if digits * 3 >= 64 || v < 1u64 << (3 * digits) {
        for (i, b) in field[..digits].iter_mut().enumerate() {
            let shift = 3 * (digits - 1 - i);
            *b = b'0' + ((v >> shift) & 7) as u8;
        }
        field[digits] = 0;
    } else {
        field.fill(0);
        let be = v.to_be_bytes();
        let n = field.len();
        let take = be.len().min(n - 1);
        field[n - take..].copy_from_slice(&be[be.len() - take..]);
        field[0] = 0x80;
    }
}

/// The end of the archive: two zero blocks, then zeros up to a whole [`RECORD`] when
/// `archive_len` bytes came before.
pub fn end_of_archive(archive_len: u64) -> u64 {
    let with_eof = archive_len + 2 * BLOCK;
    with_eof.div_ceil(RECORD) * RECORD - archive_len
}

#[cfg(test)]
// Layouts of one range are what these tests are about.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn field(h: &[u8], at: usize, len: usize) -> &[u8] {
        &h[at..at + len]
    }

    /// Reads a numeric field back the way GNU tar and Python's tarfile do.
    fn number(f: &[u8]) -> u64 {
        if f[0] & 0x80 != 0 {
            f[1..].iter().fold(0, |a, &b| (a << 8) | u64::from(b))
        } else {
            let s = std::str::from_utf8(f).unwrap().trim_end_matches('\0');
            u64::from_str_radix(s.trim(), 8).unwrap()
        }
    }

    #[test]
    fn numbers_are_octal_or_base_256() {
        let mut f = [0xffu8; 12];
        put_number(&mut f, 0);
        assert_eq!(&f, b"00000000000\0");
        put_number(&mut f, 10 << 20);
        assert_eq!(&f, b"00050000000\0");
        // The largest octal value of a 12-byte field, then the first base-256 one.
        put_number(&mut f, (1 << 33) - 1);
        assert_eq!(&f, b"77777777777\0");
        put_number(&mut f, 1 << 33);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(number(&f), 1 << 33);
        put_number(&mut f, 2 << 40);
        assert_eq!(number(&f), 2 << 40);
        let mut m = [0u8; 8];
        put_number(&mut m, 0o644);
        assert_eq!(&m, b"0000644\0");
    }

    /// The header of a 10 MiB file holding data in two regions, byte for byte what GNU tar
    /// 1.34 wrote for such a file with `tar --format=oldgnu -S` (mtime and owner aside, which
    /// we fix at 0 and root).
    #[test]
    fn header_matches_gnu_tar() {
        let map =
            SparseMap::new(&[409600..409600 + 12288, 1048576..1048576 + 5], 10 << 20).unwrap();
        assert_eq!(
            map.entries(),
            &[
                SparseEntry {
                    offset: 409600,
                    len: 12288
                },
                // The 5 bytes of data take one whole block.
                SparseEntry {
                    offset: 1048576,
                    len: 512
                },
                SparseEntry {
                    offset: 10 << 20,
                    len: 0
                },
            ]
        );
        let h = map.header_blocks();
        assert_eq!(h.len(), 512);
        assert_eq!(&h[..9], b"disk.raw\0"); // name
        assert_eq!(field(&h, 100, 8), b"0000644\0"); // mode
        assert_eq!(field(&h, 108, 8), b"0000000\0"); // uid
        assert_eq!(field(&h, 124, 12), b"00000031000\0"); // size: 12288 + 512
        assert_eq!(h[156], b'S'); // typeflag: old GNU sparse
        assert_eq!(field(&h, 257, 8), b"ustar  \0"); // OLDGNU_MAGIC
        assert_eq!(field(&h, 265, 5), b"root\0"); // uname
        assert_eq!(field(&h, 329, 16), &[0u8; 16]); // devmajor, devminor: empty as GNU's
        assert_eq!(field(&h, 386, 24), b"00001440000\x0000000030000\0"); // sp[0]
        assert_eq!(field(&h, 410, 24), b"00004000000\x0000000001000\0"); // sp[1]
        assert_eq!(field(&h, 434, 24), b"00050000000\x0000000000000\0"); // sp[2]: end
        assert_eq!(field(&h, 458, 24), &[0u8; 24]); // sp[3]: unused
        assert_eq!(h[482], 0); // isextended
        assert_eq!(field(&h, 483, 12), b"00050000000\0"); // realsize
        // Checksum: six octal digits, NUL, space; the sum with the field as spaces.
        assert_eq!(&h[154..156], b"\0 ");
        let mut blank = h.clone();
        blank[148..156].fill(b' ');
        let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(number(field(&h, 148, 7)), sum);
    }

    #[test]
    fn more_than_four_regions_take_extended_headers() {
        // 30 regions of one block, every other block: 4 in the header, 21 in the first
        // extended header, 5 (and the end marker) in the second.
        let data: Vec<_> = (0..30u64).map(|i| i * 1024..i * 1024 + 512).collect();
        let map = SparseMap::new(&data, 1 << 20).unwrap();
        assert_eq!(map.entries().len(), 31);
        assert_eq!(map.data_len(), 30 * 512);
        let h = map.header_blocks();
        assert_eq!(h.len(), 3 * 512);
        assert_eq!(h[482], 1);
        assert_eq!(number(field(&h, 386 + 72, 12)), 3 * 1024); // sp[3].offset
        let x1 = &h[512..1024];
        assert_eq!(number(&x1[..12]), 4 * 1024); // first extended entry
        assert_eq!(number(&x1[20 * 24..20 * 24 + 12]), 24 * 1024); // 21st
        assert_eq!(x1[504], 1); // another extended header follows
        let x2 = &h[1024..];
        assert_eq!(number(&x2[..12]), 25 * 1024);
        assert_eq!(number(&x2[5 * 24..5 * 24 + 12]), 1 << 20); // end marker offset
        assert_eq!(number(&x2[5 * 24 + 12..6 * 24]), 0); // and length
        assert_eq!(&x2[6 * 24..504], &[0u8; 504 - 144][..]);
        assert_eq!(x2[504], 0);
        assert_eq!(number(field(&h, 124, 12)), 30 * 512);
    }

    #[test]
    fn regions_are_widened_to_blocks_and_merged() {
        let map = SparseMap::new(&[1..2, 600..700, 1030..1100, 4096..8192], 8192).unwrap();
        let regions: Vec<_> = map.regions().collect();
        assert_eq!(regions, [0..1536, 4096..8192]);
        // The file ends with data: the end marker all the same, as GNU tar writes it.
        assert_eq!(
            map.entries()[2],
            SparseEntry {
                offset: 8192,
                len: 0
            }
        );
        // No data at all: only the end marker.
        let empty = SparseMap::new(&[], 1 << 30).unwrap();
        assert_eq!(
            empty.entries(),
            &[SparseEntry {
                offset: 1 << 30,
                len: 0
            }]
        );
        assert_eq!(empty.data_len(), 0);
        // Out of order or outside the file: refused.
        assert!(SparseMap::new(&[4096..5000, 0..10], 8192).is_err());
        assert!(SparseMap::new(&[0..9000], 8192).is_err());
        assert!(SparseMap::new(&[], 1000).is_err());
    }

    #[test]
    fn large_offsets_use_base_256() {
        let big = 16u64 << 30;
        let map = SparseMap::new(&[(12 << 30)..(12 << 30) + 4096], big).unwrap();
        let h = map.header_blocks();
        assert_eq!(h[386], 0x80);
        assert_eq!(number(field(&h, 386, 12)), 12 << 30);
        assert_eq!(number(field(&h, 483, 12)), big);
    }

    #[test]
    fn archive_ends_on_a_record() {
        assert_eq!(end_of_archive(512), RECORD - 512);
        assert_eq!(end_of_archive(RECORD - 1024), 1024);
        assert_eq!(end_of_archive(RECORD - 512), RECORD + 512);
    }
}
