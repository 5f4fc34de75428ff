//! File extents (`EXTENT_DATA` items: inline, regular, preallocated) and the decompression of
//! compressed ones: zlib, LZO (btrfs framing around LZO1X blocks, decoded by our own
//! LZO1X decompressor below) and zstd.

use std::io::Read;

use super::{corrupt, le_u32, le_u64};
use crate::error::{Error, Result};

/// `BTRFS_EXTENT_DATA_KEY`.
pub const EXTENT_DATA_KEY: u8 = 108;
/// Compressed extents hold at most 128 KiB of file data (`BTRFS_MAX_UNCOMPRESSED`); a larger
/// `ram_bytes` is refused.
pub const MAX_UNCOMPRESSED: u64 = 128 * 1024;
/// The fixed part of a file extent item before inline data.
const INLINE_START: usize = 21;
/// The size of a regular or preallocated file extent item.
const REGULAR_SIZE: usize = 53;

/// Compression of an extent (`BTRFS_COMPRESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// A zlib stream.
    Zlib,
    /// btrfs' LZO framing.
    Lzo,
    /// A zstd frame.
    Zstd,
}

/// Where a file extent's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentData {
    /// In the item itself (compressed as `compression` says), `ram_bytes` when decoded.
    Inline {
        /// The stored bytes.
        data: Vec<u8>,
        /// How they are compressed.
        compression: Compression,
        /// Decoded size.
        ram_bytes: u64,
    },
    /// On disk: `disk_num_bytes` at logical `disk_bytenr` (0: a hole), of which the file uses
    /// `num_bytes` from `offset` of the decoded extent.
    Regular {
        /// Logical address of the extent (0 for a hole).
        disk_bytenr: u64,
        /// Stored size.
        disk_num_bytes: u64,
        /// Where the file's part starts in the decoded extent.
        offset: u64,
        /// How many bytes of the file it covers.
        num_bytes: u64,
        /// Decoded size.
        ram_bytes: u64,
        /// How it is compressed.
        compression: Compression,
    },
    /// Allocated, never written: reads as zeros.
    Prealloc {
        /// How many bytes of the file it covers.
        num_bytes: u64,
    },
}

impl ExtentData {
    /// Parses a file extent item of inode `ino` found at device offset `offset`.
    pub fn parse(b: &[u8], ino: u64, offset: u64) -> Result<ExtentData> {
        let what = || format!("file extent item of inode {ino}");
        if b.len() < INLINE_START {
            return Err(corrupt(
                &what(),
                offset,
                format!("{} bytes, expected at least {INLINE_START}", b.len()),
            ));
        }
        let ram_bytes = le_u64(b, 8);
        let compression = match b[16] {
            0 => Compression::None,
            1 => Compression::Zlib,
            2 => Compression::Lzo,
            3 => Compression::Zstd,
            c => {
                return Err(Error::Unsupported(format!(
                    "btrfs {} at {offset:#x}: compression type {c}",
                    what()
                )));
            }
        };
        if b[17] != 0 || b[18] != 0 || b[19] != 0 {
            return Err(Error::Unsupported(format!(
                "btrfs {} at {offset:#x}: encrypted or otherwise encoded extent",
                what()
            )));
        }
        let ty = b[20];
        if ty == 0 {
            return Ok(ExtentData::Inline {
                data: b[INLINE_START..].to_vec(),
                compression,
                ram_bytes,
            });
        }
        if b.len() < REGULAR_SIZE {
            return Err(corrupt(
                &what(),
                offset,
                format!("{} bytes, expected {REGULAR_SIZE}", b.len()),
            ));
        }
        let num_bytes = le_u64(b, 45);
        match ty {
            1 => Ok(ExtentData::Regular {
                disk_bytenr: le_u64(b, 21),
                disk_num_bytes: le_u64(b, 29),
                offset: le_u64(b, 37),
                num_bytes,
                ram_bytes,
                compression,
            }),
            2 => Ok(ExtentData::Prealloc { num_bytes }),
            t => Err(corrupt(
                &what(),
                offset + 20,
                format!("extent type {t}, expected 0, 1 or 2"),
            )),
        }
    }
}

/// Decodes `data` compressed as `c` into exactly `ram_bytes` bytes (shorter output is padded
/// with zeros, as the kernel does for a stream that ends early; `ram_bytes` is capped at
/// [`MAX_UNCOMPRESSED`] by the caller). `what` names the extent in messages.
pub fn decompress(
    c: Compression,
    data: &[u8],
    ram_bytes: usize,
    sectorsize: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ram_bytes);
    let bad = |e: String| Error::Corrupt(format!("btrfs {what}: {e}"));
    match c {
        Compression::None => {
            out.extend_from_slice(&data[..data.len().min(ram_bytes)]);
        }
        Compression::Zlib => {
            flate2::read::ZlibDecoder::new(data)
                .take(ram_bytes as u64)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("zlib data does not decode: {e}")))?;
        }
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| bad(format!("zstd decoder: {e}")))?
                .single_frame();
            dec.take(ram_bytes as u64)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("zstd data does not decode: {e}")))?;
        }
        Compression::Lzo => lzo_btrfs(data, ram_bytes, sectorsize, &mut out).map_err(bad)?,
    }
    out.resize(ram_bytes, 0);
    Ok(out)
}

/// btrfs' LZO framing: a 4-byte total length (itself included), then segments of a 4-byte
/// length and an LZO1X block decoding to at most one sector; a segment header never straddles
/// a sector boundary (the bytes before the boundary are padding).
fn lzo_btrfs(
    data: &[u8],
    ram_bytes: usize,
    sectorsize: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    if data.len() < 4 {
        return Err(format!(
            "LZO data of {} bytes has no length header",
            data.len()
        ));
    }
    let total = le_u32(data, 0) as usize;
    if total < 4 || total > data.len() {
        return Err(format!(
            "LZO total length {total}, the extent holds {} bytes",
            data.len()
        ));
    }
    let mut at = 4usize;
    let mut seg = vec![0u8; sectorsize];
    while at < total && out.len() < ram_bytes {
        // A header that would cross a sector boundary starts at the next sector.
        let left_in_sector = sectorsize - at % sectorsize;
        if left_in_sector < 4 {
            at += left_in_sector;
            if at >= total {
                break;
            }
        }
        if at + 4 > total {
            return Err(format!(
                "LZO segment header at byte {at} is cut short (total {total})"
            ));
        }
        let len = le_u32(data, at) as usize;
        at += 4;
        let end = at.checked_add(len).filter(|&e| e <= total).ok_or_else(|| {
            format!("LZO segment of {len} bytes at byte {at} reaches past the total length {total}")
        })?;
        let want = (ram_bytes - out.len()).min(sectorsize);
        let n = lzo1x_decompress(&data[at..end], &mut seg[..want])
            .map_err(|e| format!("LZO segment at byte {}: {e}", at - 4))?;
        out.extend_from_slice(&seg[..n]);
        at = end;
    }
    Ok(())
}

/// Decompresses one LZO1X block (the format of `lzo1x_1_compress`, as the kernel's
/// `lzo1x_decompress_safe` reads it, including the LZO-RLE variant) into `out`; returns the
/// decoded length. Every read and copy is bounds-checked: bad input is an error.
pub fn lzo1x_decompress(input: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    if input.len() < 3 {
        return Err("input ends early".into());
    }
    let mut ip = 0usize;
    let mut bitstream_version = 0u8;
    if input.len() >= 5 && input[0] == 17 {
        bitstream_version = input[1];
        ip = 2;
    }
    let first = input[ip];
    if first > 17 {
        // The stream starts with a literal run of `first - 17` bytes; fewer than 4 set the
        // state as literals after a match do.
        let t = (first - 17) as usize;
        return lzo_loop(input, out, ip + 1, bitstream_version, Some((t, t.min(4))));
    }
    lzo_loop(input, out, ip, bitstream_version, None)
}

/// The instruction loop of [`lzo1x_decompress`] from input position `ip`; `first_literals`
/// (a count and the state after them) are copied first. The state is 0 after a match with no
/// literals, 1-3 after that many literals, 4 after a literal run of 4 or more.
fn lzo_loop(
    input: &[u8],
    out: &mut [u8],
    mut ip: usize,
    bitstream_version: u8,
    first_literals: Option<(usize, usize)>,
) -> std::result::Result<usize, String> {
    let mut op = 0usize;
    let mut state = 0usize;
    const M2_MAX_OFFSET: usize = 0x0800;
    let overrun = || "input ends early".to_string();
    let inb = |i: usize| input.get(i).copied().ok_or_else(overrun);
    let long_len = |ip: &mut usize| -> std::result::Result<usize, String> {
        let start = *ip;
        while inb(*ip)? == 0 {
            *ip += 1;
        }
        let zeros = *ip - start;
        let last = inb(*ip)? as usize;
        *ip += 1;
        zeros
            .checked_mul(255)
            .and_then(|z| z.checked_add(last))
            .ok_or_else(|| "a run length overflows".to_string())
    };
    let copy_lits = |ip: &mut usize,
                     op: &mut usize,
                     out: &mut [u8],
                     n: usize|
     -> std::result::Result<(), String> {
        if input.len() - *ip < n + 3 {
            return Err(overrun());
        }
        if out.len() - *op < n {
            return Err("output is larger than expected".into());
        }
        out[*op..*op + n].copy_from_slice(&input[*ip..*ip + n]);
        *ip += n;
        *op += n;
        Ok(())
    };
    if let Some((n, after)) = first_literals {
        copy_lits(&mut ip, &mut op, out, n)?;
        state = after;
    }
    loop {
        let mut t = inb(ip)? as usize;
        ip += 1;
        // The match: `dist` bytes back, `len` bytes, then `next` literals.
        let (dist, len, next);
        if t < 16 {
            if state == 0 {
                if t == 0 {
                    t = long_len(&mut ip)?.checked_add(15).ok_or_else(overrun)?;
                }
                t += 3;
                copy_lits(&mut ip, &mut op, out, t)?;
                state = 4;
                continue;
            } else if state != 4 {
                next = t & 3;
                dist = 1 + (t >> 2) + ((inb(ip)? as usize) << 2);
                ip += 1;
                len = 2;
            } else {
                next = t & 3;
                dist = 1 + M2_MAX_OFFSET + (t >> 2) + ((inb(ip)? as usize) << 2);
                ip += 1;
                len = 3;
            }
        } else if t >= 64 {
            next = t & 3;
            dist = 1 + ((t >> 2) & 7) + ((inb(ip)? as usize) << 3);
            ip += 1;
            len = (t >> 5) + 1;
        } else if t >= 32 {
            let mut l = (t & 31) + 2;
            if l == 2 {
                l = long_len(&mut ip)?.checked_add(33).ok_or_else(overrun)?;
            }
            let v = inb(ip)? as usize | (inb(ip + 1)? as usize) << 8;
            ip += 2;
            dist = 1 + (v >> 2);
            next = v & 3;
            len = l;
        } else {
            // 16..31: a far match, the end marker, or (LZO-RLE) a run of zeros.
            let v = inb(ip)? as usize | (inb(ip + 1)? as usize) << 8;
            if (v & 0xfffc) == 0xfffc && (t & 0xf8) == 0x18 && bitstream_version != 0 {
                // A run of zeros (LZO-RLE; btrfs' compressor does not write it).
                let run = ((t & 7) | (inb(ip + 2)? as usize) << 3) + 4;
                ip += 3;
                if out.len() - op < run {
                    return Err("output is larger than expected".into());
                }
                out[op..op + run].fill(0);
                op += run;
                next = v & 3;
                state = next;
                copy_lits(&mut ip, &mut op, out, next)?;
                continue;
            }
            let far = (t & 8) << 11;
            let mut l = (t & 7) + 2;
            if l == 2 {
                l = long_len(&mut ip)?.checked_add(9).ok_or_else(overrun)?;
            }
            let v = inb(ip)? as usize | (inb(ip + 1)? as usize) << 8;
            ip += 2;
            let d = far + (v >> 2);
            if d == 0 {
                // The end marker (0x11 0x00 0x00): it must be the 3-byte "length 3" form.
                if l != 3 {
                    return Err("a malformed end marker".into());
                }
                if ip != input.len() {
                    return Err(format!("{} bytes follow the end marker", input.len() - ip));
                }
                return Ok(op);
            }
            dist = d + 0x4000;
            next = v & 3;
            len = l;
        }
        if dist > op {
            return Err("a match points before the start".into());
        }
        if out.len() - op < len {
            return Err("output is larger than expected".into());
        }
        // Byte by byte: a match may overlap its own output.
        for i in 0..len {
            out[op + i] = out[op + i - dist];
        }
        op += len;
        state = next;
        copy_lits(&mut ip, &mut op, out, next)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lzo_literals_and_matches() {
        // 0x11+5: five literals "abcde"; then an M2 match (t >= 64) of 4 bytes 5 back with no
        // trailing literals: len = (t>>5)+1 = 4 → t>>5 = 3; dist-1 = 4 = ((t>>2)&7) + (b<<3)
        // → t = 0b011_100_00 = 0x70, b = 0; then the end marker 0x11 0x00 0x00.
        let s = [22, b'a', b'b', b'c', b'd', b'e', 0x70, 0, 0x11, 0, 0];
        let mut out = [0u8; 9];
        assert_eq!(lzo1x_decompress(&s, &mut out), Ok(9));
        assert_eq!(&out, b"abcdeabcd");
        // Too small an output, a cut stream, trailing bytes: errors, no panic.
        assert!(lzo1x_decompress(&s, &mut [0u8; 8]).is_err());
        for n in 0..s.len() {
            assert!(lzo1x_decompress(&s[..n], &mut out).is_err(), "{n}");
        }
        let mut long = s.to_vec();
        long.push(0);
        assert!(lzo1x_decompress(&long, &mut out).is_err());
        // A match reaching before the start.
        let s = [18, b'a', 0x70, 1, 0x11, 0, 0];
        assert!(lzo1x_decompress(&s, &mut out).is_err());
    }

    #[test]
    fn lzo_btrfs_framing() {
        // Two segments, the second of a 4-byte sector size... use a 4096 sector: total length,
        // one segment "abcdeabcd".
        let seg = [22, b'a', b'b', b'c', b'd', b'e', 0x70, 0, 0x11, 0, 0];
        let mut d = ((4 + 4 + seg.len()) as u32).to_le_bytes().to_vec();
        d.extend((seg.len() as u32).to_le_bytes());
        d.extend(seg);
        let out = decompress(Compression::Lzo, &d, 9, 4096, "x").unwrap();
        assert_eq!(out, b"abcdeabcd");
        assert!(decompress(Compression::Lzo, &d[..10], 9, 4096, "x").is_err());
        let mut bad = d.clone();
        bad[0] = 200;
        assert!(decompress(Compression::Lzo, &bad, 9, 4096, "x").is_err());
    }

    #[test]
    fn zlib_and_zstd_round_trip() {
        use std::io::Write;
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let mut zc = z.finish().unwrap();
        zc.resize(zc.len() + 100, 0); // sector padding
        assert_eq!(
            decompress(Compression::Zlib, &zc, data.len(), 4096, "x").unwrap(),
            data
        );
        let mut s = zstd::bulk::compress(&data, 3).unwrap();
        s.resize(s.len() + 100, 0);
        assert_eq!(
            decompress(Compression::Zstd, &s, data.len(), 4096, "x").unwrap(),
            data
        );
        assert!(decompress(Compression::Zstd, &s[..20], data.len(), 4096, "x").is_err());
    }

    #[test]
    fn parses_extent_items() {
        let mut b = vec![0u8; 53];
        b[8..16].copy_from_slice(&8192u64.to_le_bytes()); // ram_bytes
        b[20] = 1; // regular
        b[21..29].copy_from_slice(&0x100000u64.to_le_bytes()); // disk_bytenr
        b[29..37].copy_from_slice(&8192u64.to_le_bytes()); // disk_num_bytes
        b[45..53].copy_from_slice(&4096u64.to_le_bytes()); // num_bytes
        let e = ExtentData::parse(&b, 257, 0).unwrap();
        assert!(matches!(
            e,
            ExtentData::Regular {
                num_bytes: 4096,
                ..
            }
        ));
        b[16] = 9;
        assert_eq!(
            ExtentData::parse(&b, 257, 0).unwrap_err().kind(),
            crate::ErrorKind::Unsupported
        );
        b[16] = 0;
        b[20] = 5;
        assert!(ExtentData::parse(&b, 257, 0).is_err());
        assert!(ExtentData::parse(&b[..30], 257, 0).is_err());
    }
}
