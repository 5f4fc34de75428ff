//! The compressed streams of Linux boot files: initramfs archives and compressed kernel modules.
//!
//! [`detect`] names the compression from the first bytes (the magic numbers the kernel's
//! `lib/decompress.c` knows), and [`decompress`] decodes exactly one stream from the start of a
//! byte slice, reporting how many input bytes it used, so that a caller finds what follows it (the
//! kernel accepts more archives after a compressed stream). Every decoder takes a cap on the
//! output size: hostile input is an error naming the cap, not an allocation of its choosing.
//!
//! | format | magic | decoder |
//! |---|---|---|
//! | gzip (RFC 1952) | `1f 8b` | our header and trailer (CRC-32, ISIZE checked) around flate2's raw inflate |
//! | xz | `fd 37 7a 58 5a 00` | lzma-rs (one stream; the check is verified) |
//! | lzma ("lzma_alone") | `5d 00 00` | lzma-rs |
//! | zstd | `28 b5 2f fd` | the zstd library, one frame after another while they follow |
//! | lz4 legacy | `02 21 4c 18` | our framing (8 MiB blocks) around lz4_flex's block decoder |
//! | lz4 frame | `04 22 4d 18` | our framing (xxh32 checksums checked) around lz4_flex |
//! | bzip2 | `BZh` | the bzip2 crate (one stream) |
//!
//! [`module_name`] turns a kernel module file name (`virtio_blk.ko.xz`) into the module name.

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use crate::error::{Error, ErrorKind, Result, StructureError};

/// gzip member magic (RFC 1952 section 2.3.1: ID1 ID2).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// xz stream header magic (xz file format section 2.1.1.1: `\xFD7zXZ\0`).
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
/// The usual first bytes of an "lzma_alone" header: properties byte 0x5d (lc=3 lp=0 pb=2) and
/// the low bytes of a dictionary size; the kernel matches `5d 00` (lib/decompress.c), we also
/// want the third byte zero.
const LZMA_MAGIC: [u8; 3] = [0x5d, 0, 0];
/// zstd frame magic 0xFD2FB528, little-endian (RFC 8878 section 3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd skippable frames: magic 0x184D2A50 to 0x184D2A5F (RFC 8878 section 3.1.2).
const ZSTD_SKIPPABLE_MASK: u32 = 0xffff_fff0;
/// The skippable frame magic with its low 4 bits cleared.
const ZSTD_SKIPPABLE: u32 = 0x184d_2a50;
/// lz4 legacy format magic 0x184C2102, little-endian (lz4 frame format doc, "Legacy frame").
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// lz4 frame magic 0x184D2204, little-endian (lz4 frame format doc).
const LZ4_FRAME_MAGIC: u32 = 0x184d_2204;
/// bzip2 stream header: `BZh` then the block size digit.
const BZIP2_MAGIC: [u8; 3] = *b"BZh";
/// lzo (lzop) magic; the kernel knows it, we do not decode it.
const LZO_MAGIC: [u8; 4] = [0x89, b'L', b'Z', b'O'];

/// Uncompressed size of every block of the lz4 legacy format but the last (8 MiB).
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// The largest compressed block of the legacy format: LZ4_compressBound(8 MiB).
const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
/// lz4 frames reference at most the previous 64 KiB of output (linked blocks).
const LZ4_WINDOW: usize = 64 << 10;

/// A compression format of initramfs archives and kernel modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// gzip (deflate), RFC 1952.
    Gzip,
    /// xz (LZMA2 in the .xz container).
    Xz,
    /// Legacy `.lzma` ("lzma_alone": a 13-byte header and raw LZMA).
    Lzma,
    /// Zstandard, RFC 8878.
    Zstd,
    /// The legacy lz4 format (`lz4 -l`), the one the kernel's initramfs decoder reads.
    Lz4Legacy,
    /// The lz4 frame format (what `lz4` writes by default).
    Lz4Frame,
    /// bzip2.
    Bzip2,
}

impl Compression {
    /// The short name as the command-line tools spell it: `gzip`, `xz`, `lzma`, `zstd`,
    /// `lz4-legacy`, `lz4`, `bzip2`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
            Compression::Lz4Legacy => "lz4-legacy",
            Compression::Lz4Frame => "lz4",
            Compression::Bzip2 => "bzip2",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The compression whose magic number starts `head`, if any.
pub fn detect(head: &[u8]) -> Option<Compression> {
    let le32 = head
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if head.starts_with(&GZIP_MAGIC) {
        Some(Compression::Gzip)
    } else if head.starts_with(&XZ_MAGIC) {
        Some(Compression::Xz)
    } else if head.starts_with(&ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else if le32 == Some(LZ4_LEGACY_MAGIC) {
        Some(Compression::Lz4Legacy)
    } else if le32 == Some(LZ4_FRAME_MAGIC) {
        Some(Compression::Lz4Frame)
    } else if head.starts_with(&BZIP2_MAGIC) {
        Some(Compression::Bzip2)
    } else if head.starts_with(&LZMA_MAGIC) {
        Some(Compression::Lzma)
    } else {
        None
    }
}

/// Whether `head` starts with the magic of a compression the kernel knows and we do not decode
/// (lzo); its name.
pub fn detect_unsupported(head: &[u8]) -> Option<&'static str> {
    head.starts_with(&LZO_MAGIC).then_some("lzo")
}

/// One decoded stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The decompressed bytes.
    pub data: Vec<u8>,
    /// How many input bytes the stream used, from the start of the slice.
    pub consumed: usize,
}

/// Decodes the one `kind` stream at the start of `input`, whose first byte lies at `offset`
/// (for messages), into at most `cap` bytes. What follows the stream in `input` is left alone
/// and [`Decoded::consumed`] says where it starts.
///
/// Errors: a stream that is not `kind`, is truncated or corrupt, or fails its checksum is
/// [`ErrorKind::Corrupt`] / [`ErrorKind::InvalidFormat`] naming the format and the offset; one
/// that decompresses to more than `cap` bytes is [`ErrorKind::Unsupported`] naming the cap.
pub fn decompress(kind: Compression, input: &[u8], offset: u64, cap: u64) -> Result<Decoded> {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    match kind {
        Compression::Gzip => gzip(input, offset, cap),
        Compression::Xz => lzma_rs_stream(kind, input, offset, cap),
        Compression::Lzma => lzma_rs_stream(kind, input, offset, cap),
        Compression::Zstd => zstd(input, offset, cap),
        Compression::Lz4Legacy => lz4_legacy(input, offset, cap),
        Compression::Lz4Frame => lz4_frame(input, offset, cap),
        Compression::Bzip2 => bzip2(input, offset, cap),
    }
}

/// [`detect`]s the compression of `input` and [`decompress`]es its first stream; `None` when
/// `input` starts with no known magic.
pub fn decompress_detected(input: &[u8], offset: u64, cap: u64) -> Result<Option<Decoded>> {
    match detect(input) {
        Some(kind) => decompress(kind, input, offset, cap).map(Some),
        None => Ok(None),
    }
}

/// The module name of a kernel module file name (`virtio_blk.ko`, `virtio-blk.ko.xz`,
/// `nvme.ko.zst`, `e1000.ko.gz`, or a path ending in one): the name without its suffix, `-`
/// written `_` as the kernel does (`modprobe` treats them as the same). `None` for other names.
pub fn module_name(file_name: &str) -> Option<String> {
    let base = file_name.rsplit('/').next().unwrap_or(file_name);
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| base.strip_suffix(suffix))?;
    if stem.is_empty() {
        return None;
    }
    Some(stem.replace('-', "_"))
}

/// The compression of a module file by its name: `Some(None)` for a plain `.ko`, `None` for a
/// name that is not a module file.
pub fn module_compression(file_name: &str) -> Option<Option<Compression>> {
    module_name(file_name)?;
    Some(if file_name.ends_with(".ko.xz") {
        Some(Compression::Xz)
    } else if file_name.ends_with(".ko.zst") {
        Some(Compression::Zstd)
    } else if file_name.ends_with(".ko.gz") {
        Some(Compression::Gzip)
    } else {
        None
    })
}

/// A structure error of `kind`'s stream.
fn bad(kind: Compression, what: &str, offset: u64, detail: impl Into<String>) -> Error {
    Error::typed(
        ErrorKind::Corrupt,
        StructureError::corrupt(kind.name(), what, offset, detail),
    )
}

/// The error of a stream that decompresses to more than `cap` bytes.
fn over_cap(kind: Compression, offset: u64, cap: usize) -> Error {
    Error::typed(
        ErrorKind::Unsupported,
        StructureError {
            kind: ErrorKind::Unsupported,
            format: kind.name(),
            what: "stream".into(),
            offset,
            detail: format!("decompresses to more than the cap of {cap} bytes"),
        },
    )
}

/// `off + delta`, saturating (offsets are for messages only).
fn at(off: u64, delta: usize) -> u64 {
    off.saturating_add(delta as u64)
}

/// Reads a little-endian u32 at `pos`, if the bytes are there.
fn le32(b: &[u8], pos: usize) -> Option<u32> {
    let s = b.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Output chunk by which the streaming decoders grow their buffer.
const CHUNK: usize = 1 << 20;

/// Room for the next chunk of output: at most `cap + 1` bytes in all, so that a stream one
/// byte over the cap is seen.
fn reserve(out: &mut Vec<u8>, cap: usize) -> bool {
    let room = cap.saturating_add(1).saturating_sub(out.len()).min(CHUNK);
    if room == 0 {
        return false;
    }
    out.reserve(room);
    true
}

// ---------------------------------------------------------------------------------------------
// gzip

/// gzip FLG bits (RFC 1952 section 2.3.1).
const FHCRC: u8 = 0x02;
/// FLG: extra field present.
const FEXTRA: u8 = 0x04;
/// FLG: original file name present.
const FNAME: u8 = 0x08;
/// FLG: comment present.
const FCOMMENT: u8 = 0x10;

/// One gzip member: header, raw deflate, CRC-32 and ISIZE trailer.
fn gzip(input: &[u8], offset: u64, cap: usize) -> Result<Decoded> {
    let k = Compression::Gzip;
    let short = |pos: usize, what: &str| {
        bad(
            k,
            "header",
            at(offset, pos),
            format!("the stream ends inside the {what}"),
        )
    };
    if input.len() < 10 {
        return Err(short(input.len(), "10-byte header"));
    }
    if input[..2] != GZIP_MAGIC {
        return Err(bad(
            k,
            "header",
            offset,
            format!(
                "expected magic 1f 8b, found {:02x} {:02x}",
                input[0], input[1]
            ),
        ));
    }
    if input[2] != 8 {
        return Err(bad(
            k,
            "header",
            at(offset, 2),
            format!(
                "expected compression method 8 (deflate), found {}",
                input[2]
            ),
        ));
    }
    let flags = input[3];
    if flags & 0xe0 != 0 {
        return Err(bad(
            k,
            "header",
            at(offset, 3),
            format!("reserved flag bits set: {flags:#04x}"),
        ));
    }
    let mut pos = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = input
            .get(pos..pos + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| short(pos, "extra field length"))?;
        pos = pos
            .checked_add(2 + xlen)
            .filter(|&p| p <= input.len())
            .ok_or_else(|| short(pos, "extra field"))?;
    }
    for (bit, what) in [(FNAME, "file name"), (FCOMMENT, "comment")] {
        if flags & bit != 0 {
            let nul = input[pos..]
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| short(pos, what))?;
            pos += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos = pos
            .checked_add(2)
            .filter(|&p| p <= input.len())
            .ok_or_else(|| short(pos, "header CRC"))?;
    }
    let mut inflate = flate2::Decompress::new(false);
    let mut out = Vec::new();
    let data_start = pos;
    loop {
        if !reserve(&mut out, cap) {
            return Err(over_cap(k, offset, cap));
        }
        let before_in = inflate.total_in();
        let before_out = inflate.total_out();
        let used = usize::try_from(inflate.total_in()).unwrap_or(usize::MAX);
        let rest = input.get(data_start.saturating_add(used)..).unwrap_or(&[]);
        let status = inflate
            .decompress_vec(rest, &mut out, flate2::FlushDecompress::None)
            .map_err(|e| {
                bad(
                    k,
                    "deflate data",
                    at(offset, data_start + used),
                    format!("undecodable: {e}"),
                )
            })?;
        if status == flate2::Status::StreamEnd {
            break;
        }
        if out.len() > cap {
            return Err(over_cap(k, offset, cap));
        }
        if inflate.total_in() == before_in && inflate.total_out() == before_out {
            return Err(bad(
                k,
                "deflate data",
                at(offset, input.len()),
                "the stream ends before its last block",
            ));
        }
    }
    if out.len() > cap {
        return Err(over_cap(k, offset, cap));
    }
    let end = data_start.saturating_add(usize::try_from(inflate.total_in()).unwrap_or(usize::MAX));
    let (crc, isize) = match (le32(input, end), le32(input, end.saturating_add(4))) {
        (Some(c), Some(s)) => (c, s),
        _ => {
            return Err(bad(
                k,
                "trailer",
                at(offset, end),
                "the stream ends inside the 8-byte CRC-32 and size trailer",
            ));
        }
    };
    let mut actual = flate2::Crc::new();
    actual.update(&out);
    if actual.sum() != crc {
        return Err(bad(
            k,
            "trailer",
            at(offset, end),
            format!(
                "CRC-32 of the data is {:#010x}, the trailer says {crc:#010x}",
                actual.sum()
            ),
        ));
    }
    if out.len() as u32 != isize {
        return Err(bad(
            k,
            "trailer",
            at(offset, end + 4),
            format!(
                "the data is {} bytes (mod 2^32), the trailer says {isize}",
                out.len() as u32
            ),
        ));
    }
    Ok(Decoded {
        data: out,
        consumed: end + 8,
    })
}

// ---------------------------------------------------------------------------------------------
// xz and lzma (lzma-rs)

/// A `BufRead` over a slice that counts what the decoder consumed.
struct Counted<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl BufRead for Counted<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.data[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = self.pos.saturating_add(amt).min(self.data.len());
    }
}

/// A `Write` into a vector that refuses to grow past a cap.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.cap {
            self.over = true;
            return Err(io::Error::other("output cap reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs lzma-rs on `input` for `kind` (xz or lzma): the output and the bytes consumed.
fn lzma_rs_run(
    kind: Compression,
    input: &[u8],
    cap: usize,
) -> (
    std::result::Result<(), lzma_rs::error::Error>,
    Capped,
    usize,
) {
    let mut reader = Counted {
        data: input,
        pos: 0,
    };
    let mut out = Capped {
        out: Vec::new(),
        cap,
        over: false,
    };
    let r = match kind {
        Compression::Xz => lzma_rs::xz_decompress(&mut reader, &mut out),
        _ => lzma_rs::lzma_decompress(&mut reader, &mut out),
    };
    (r, out, reader.pos)
}

/// One xz or lzma stream. lzma-rs wants the stream to end where its input ends (it reports
/// "more bytes are available" otherwise); when it stops there, the bytes it had consumed are
/// the stream, which is then decoded once more on its own to confirm it.
fn lzma_rs_stream(kind: Compression, input: &[u8], offset: u64, cap: usize) -> Result<Decoded> {
    let (r, out, consumed) = lzma_rs_run(kind, input, cap);
    if out.over {
        return Err(over_cap(kind, offset, cap));
    }
    let first = match r {
        Ok(()) => {
            return Ok(Decoded {
                data: out.out,
                consumed,
            });
        }
        Err(e) => e,
    };
    if consumed > 0 && consumed < input.len() {
        let (r, out, used) = lzma_rs_run(kind, &input[..consumed], cap);
        if r.is_ok() && used == consumed {
            return Ok(Decoded {
                data: out.out,
                consumed,
            });
        }
    }
    Err(bad(
        kind,
        "stream",
        offset,
        format!("undecodable near byte {:#x}: {first}", at(offset, consumed)),
    ))
}

// ---------------------------------------------------------------------------------------------
// zstd

/// The zstd frames (and skippable frames) that follow one another from the start of `input`.
fn zstd(input: &[u8], offset: u64, cap: usize) -> Result<Decoded> {
    let k = Compression::Zstd;
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    while let Some(magic) = le32(input, pos) {
        let is_frame = magic == u32::from_le_bytes(ZSTD_MAGIC);
        let skippable = magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE;
        if !is_frame && !skippable {
            break;
        }
        let frame = &input[pos..];
        let len = zstd::zstd_safe::find_frame_compressed_size(frame).map_err(|code| {
            bad(
                k,
                "frame",
                at(offset, pos),
                format!(
                    "cannot find its end: {}",
                    zstd::zstd_safe::get_error_name(code)
                ),
            )
        })?;
        let frame = frame.get(..len).filter(|f| f.len() >= 4).ok_or_else(|| {
            bad(
                k,
                "frame",
                at(offset, pos),
                format!("{len} bytes long, past the end of the input"),
            )
        })?;
        if is_frame {
            let mut dec = zstd::stream::read::Decoder::with_buffer(frame)
                .map_err(|e| bad(k, "frame", at(offset, pos), e.to_string()))?
                .single_frame();
            let room = cap.saturating_add(1).saturating_sub(out.len()) as u64;
            (&mut dec)
                .take(room)
                .read_to_end(&mut out)
                .map_err(|e| bad(k, "frame", at(offset, pos), format!("undecodable: {e}")))?;
            if out.len() > cap {
                return Err(over_cap(k, offset, cap));
            }
        }
        pos += len;
    }
    if pos == 0 {
        return Err(bad(
            k,
            "frame",
            offset,
            "expected the zstd magic 28 b5 2f fd",
        ));
    }
    Ok(Decoded {
        data: out,
        consumed: pos,
    })
}

// ---------------------------------------------------------------------------------------------
// lz4

/// The legacy lz4 format: the magic, then blocks of up to 8 MiB output, each after its 4-byte
/// little-endian compressed size. As in the kernel's `unlz4`, a repeated magic is skipped, and
/// the stream ends at the end of the input or at a size that cannot be a block (zero, or larger
/// than an 8 MiB block can compress to: zero padding or the `0707` of a cpio header).
fn lz4_legacy(input: &[u8], offset: u64, cap: usize) -> Result<Decoded> {
    let k = Compression::Lz4Legacy;
    if le32(input, 0) != Some(LZ4_LEGACY_MAGIC) {
        return Err(bad(k, "stream", offset, "expected the magic 02 21 4c 18"));
    }
    let mut pos = 4usize;
    let mut out = Vec::new();
    let mut scratch = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some(size) = le32(input, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let size = size as usize;
        if size == 0 || size > LZ4_LEGACY_MAX_COMPRESSED {
            break;
        }
        let block = input.get(pos + 4..pos + 4 + size).ok_or_else(|| {
            bad(
                k,
                "block",
                at(offset, pos),
                format!(
                    "{size} bytes long, but the input ends {} bytes after its size",
                    input.len() - pos - 4
                ),
            )
        })?;
        let n = lz4_flex::block::decompress_into(block, &mut scratch)
            .map_err(|e| bad(k, "block", at(offset, pos), format!("undecodable: {e}")))?;
        if out.len().saturating_add(n) > cap {
            return Err(over_cap(k, offset, cap));
        }
        out.extend_from_slice(&scratch[..n]);
        pos += 4 + size;
    }
    Ok(Decoded {
        data: out,
        consumed: pos,
    })
}

/// One lz4 frame (lz4 frame format 1.6.x): descriptor, blocks (linked or independent), end
/// mark, optional content checksum. Dictionary frames are not supported.
fn lz4_frame(input: &[u8], offset: u64, cap: usize) -> Result<Decoded> {
    let k = Compression::Lz4Frame;
    if le32(input, 0) != Some(LZ4_FRAME_MAGIC) {
        return Err(bad(k, "frame", offset, "expected the magic 04 22 4d 18"));
    }
    let (flg, bd) = match (input.get(4), input.get(5)) {
        (Some(&f), Some(&b)) => (f, b),
        _ => return Err(bad(k, "frame descriptor", at(offset, 4), "truncated")),
    };
    if flg >> 6 != 1 || flg & 0x02 != 0 || bd & 0x8f != 0 {
        return Err(bad(
            k,
            "frame descriptor",
            at(offset, 4),
            format!(
                "expected version 01 and zero reserved bits, found FLG {flg:#04x} BD {bd:#04x}"
            ),
        ));
    }
    let independent = flg & 0x20 != 0;
    let block_checksum = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    if flg & 0x01 != 0 {
        return Err(Error::typed(
            ErrorKind::Unsupported,
            StructureError {
                kind: ErrorKind::Unsupported,
                format: k.name(),
                what: "frame descriptor".into(),
                offset: at(offset, 4),
                detail: "the frame needs a dictionary (dictID flag set)".into(),
            },
        ));
    }
    let max_block = match (bd >> 4) & 7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        other => {
            return Err(bad(
                k,
                "frame descriptor",
                at(offset, 5),
                format!("block maximum size code {other}, expected 4 to 7"),
            ));
        }
    };
    let hc_pos = 6 + if content_size { 8 } else { 0 };
    let hc = *input
        .get(hc_pos)
        .ok_or_else(|| bad(k, "frame descriptor", at(offset, 4), "truncated"))?;
    let want = (xxhash_rust::xxh32::xxh32(&input[4..hc_pos], 0) >> 8) as u8;
    if hc != want {
        return Err(bad(
            k,
            "frame descriptor",
            at(offset, hc_pos),
            format!("header checksum is {hc:#04x}, expected {want:#04x}"),
        ));
    }
    let mut pos = hc_pos + 1;
    let mut out: Vec<u8> = Vec::new();
    let mut scratch = vec![0u8; max_block];
    loop {
        let word = le32(input, pos).ok_or_else(|| {
            bad(
                k,
                "block",
                at(offset, pos),
                "the frame ends before its end mark",
            )
        })?;
        pos += 4;
        if word == 0 {
            break;
        }
        let stored = word & 0x8000_0000 != 0;
        let size = (word & 0x7fff_ffff) as usize;
        if size > max_block {
            return Err(bad(
                k,
                "block",
                at(offset, pos - 4),
                format!("{size} bytes, larger than the frame's block size {max_block}"),
            ));
        }
        let block = input.get(pos..pos + size).ok_or_else(|| {
            bad(
                k,
                "block",
                at(offset, pos - 4),
                format!("{size} bytes long, past the end of the input"),
            )
        })?;
        if block_checksum {
            let sum = le32(input, pos + size)
                .ok_or_else(|| bad(k, "block", at(offset, pos + size), "truncated checksum"))?;
            if sum != xxhash_rust::xxh32::xxh32(block, 0) {
                return Err(bad(
                    k,
                    "block",
                    at(offset, pos - 4),
                    "block checksum mismatch",
                ));
            }
        }
        let n = if stored {
            scratch[..size].copy_from_slice(block);
            size
        } else if independent {
            lz4_flex::block::decompress_into(block, &mut scratch)
                .map_err(|e| bad(k, "block", at(offset, pos - 4), format!("undecodable: {e}")))?
        } else {
            let dict = &out[out.len().saturating_sub(LZ4_WINDOW)..];
            lz4_flex::block::decompress_into_with_dict(block, &mut scratch, dict)
                .map_err(|e| bad(k, "block", at(offset, pos - 4), format!("undecodable: {e}")))?
        };
        if out.len().saturating_add(n) > cap {
            return Err(over_cap(k, offset, cap));
        }
        out.extend_from_slice(&scratch[..n]);
        pos += size + if block_checksum { 4 } else { 0 };
    }
    if content_checksum {
        let sum = le32(input, pos)
            .ok_or_else(|| bad(k, "frame", at(offset, pos), "truncated content checksum"))?;
        let actual = xxhash_rust::xxh32::xxh32(&out, 0);
        if sum != actual {
            return Err(bad(
                k,
                "frame",
                at(offset, pos),
                format!("content checksum is {sum:#010x}, the data hashes to {actual:#010x}"),
            ));
        }
        pos += 4;
    }
    if content_size {
        let mut b = [0u8; 8];
        b.copy_from_slice(&input[6..14]);
        let declared = u64::from_le_bytes(b);
        if declared != out.len() as u64 {
            return Err(bad(
                k,
                "frame descriptor",
                at(offset, 6),
                format!(
                    "content size says {declared} bytes, the frame holds {}",
                    out.len()
                ),
            ));
        }
    }
    Ok(Decoded {
        data: out,
        consumed: pos,
    })
}

// ---------------------------------------------------------------------------------------------
// bzip2

/// One bzip2 stream (up to its end-of-stream marker).
fn bzip2(input: &[u8], offset: u64, cap: usize) -> Result<Decoded> {
    let k = Compression::Bzip2;
    if !input.starts_with(&BZIP2_MAGIC) {
        return Err(bad(k, "stream", offset, "expected the magic BZh"));
    }
    let mut dec = bzip2::Decompress::new(false);
    let mut out = Vec::new();
    loop {
        if !reserve(&mut out, cap) {
            return Err(over_cap(k, offset, cap));
        }
        let used = usize::try_from(dec.total_in()).unwrap_or(usize::MAX);
        let before_out = dec.total_out();
        let rest = input.get(used..).unwrap_or(&[]);
        let status = dec
            .decompress_vec(rest, &mut out)
            .map_err(|e| bad(k, "stream", at(offset, used), format!("undecodable: {e}")))?;
        if status == bzip2::Status::StreamEnd {
            break;
        }
        if out.len() > cap {
            return Err(over_cap(k, offset, cap));
        }
        let now = usize::try_from(dec.total_in()).unwrap_or(usize::MAX);
        if now == used && dec.total_out() == before_out {
            return Err(bad(
                k,
                "stream",
                at(offset, input.len()),
                "the stream ends before its end-of-stream marker",
            ));
        }
    }
    if out.len() > cap {
        return Err(over_cap(k, offset, cap));
    }
    Ok(Decoded {
        data: out,
        consumed: usize::try_from(dec.total_in()).unwrap_or(usize::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip member made by flate2's encoder (an independent writer of the format).
    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn detects_the_magics() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Some(Compression::Gzip));
        assert_eq!(detect(b"\xfd7zXZ\0\0"), Some(Compression::Xz));
        assert_eq!(detect(&[0x5d, 0, 0, 0x80]), Some(Compression::Lzma));
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Some(Compression::Zstd));
        assert_eq!(
            detect(&[0x02, 0x21, 0x4c, 0x18]),
            Some(Compression::Lz4Legacy)
        );
        assert_eq!(
            detect(&[0x04, 0x22, 0x4d, 0x18]),
            Some(Compression::Lz4Frame)
        );
        assert_eq!(detect(b"BZh9"), Some(Compression::Bzip2));
        assert_eq!(detect(b"070701"), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect_unsupported(b"\x89LZO\0"), Some("lzo"));
    }

    #[test]
    fn gzip_reports_where_the_member_ends() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut input = gz(&data);
        let len = input.len();
        input.extend_from_slice(b"070701 after");
        let d = decompress(Compression::Gzip, &input, 0, 1 << 20).unwrap();
        assert_eq!(d.data, data);
        assert_eq!(d.consumed, len);
    }

    #[test]
    fn gzip_cap_truncation_and_bad_crc_are_errors() {
        let data = vec![7u8; 10_000];
        let input = gz(&data);
        // Exactly the cap is fine; one byte less is an error naming the cap.
        assert!(decompress(Compression::Gzip, &input, 0, 10_000).is_ok());
        let e = decompress(Compression::Gzip, &input, 0x200, 9_999).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("cap of 9999 bytes"), "{e}");
        assert!(e.to_string().contains("0x200"), "{e}");
        for cut in [0, 5, 11, input.len() / 2, input.len() - 3] {
            let e = decompress(Compression::Gzip, &input[..cut], 0, 1 << 20).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "cut {cut}: {e}");
        }
        let mut bad_crc = input.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        let e = decompress(Compression::Gzip, &bad_crc, 0, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("CRC-32"), "{e}");
    }

    #[test]
    fn lz4_legacy_blocks_end_at_a_non_block() {
        // magic, then one block whose compressed form comes from lz4_flex's encoder.
        let data: Vec<u8> = (0..50_000u32).map(|i| (i / 7) as u8).collect();
        let block = lz4_flex::block::compress(&data);
        let mut input = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        input.extend_from_slice(&(block.len() as u32).to_le_bytes());
        input.extend_from_slice(&block);
        let end = input.len();
        // A second magic is skipped (concatenated legacy streams), then a second block.
        input.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
        input.extend_from_slice(&(block.len() as u32).to_le_bytes());
        input.extend_from_slice(&block);
        let end2 = input.len();
        input.extend_from_slice(b"070701");
        let d = decompress(Compression::Lz4Legacy, &input, 0, 1 << 20).unwrap();
        assert_eq!(d.data.len(), 100_000);
        assert_eq!(&d.data[50_000..], &data[..]);
        assert_eq!(d.consumed, end2);
        // A size that runs past the end is a truncation, named.
        let e = decompress(Compression::Lz4Legacy, &input[..end - 1], 0, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("block at 0x4"), "{e}");
        assert!(decompress(Compression::Lz4Legacy, &input, 0, 60_000).is_err());
    }

    #[test]
    fn zero_length_and_garbage_inputs_are_errors_not_panics() {
        for kind in [
            Compression::Gzip,
            Compression::Xz,
            Compression::Lzma,
            Compression::Zstd,
            Compression::Lz4Legacy,
            Compression::Lz4Frame,
            Compression::Bzip2,
        ] {
            assert!(decompress(kind, &[], 0, 100).is_err(), "{kind}");
            let mut junk = match kind {
                Compression::Gzip => vec![0x1f, 0x8b, 8, 0],
                Compression::Xz => XZ_MAGIC.to_vec(),
                Compression::Lzma => LZMA_MAGIC.to_vec(),
                Compression::Zstd => ZSTD_MAGIC.to_vec(),
                Compression::Lz4Legacy => LZ4_LEGACY_MAGIC.to_le_bytes().to_vec(),
                Compression::Lz4Frame => LZ4_FRAME_MAGIC.to_le_bytes().to_vec(),
                Compression::Bzip2 => b"BZh9".to_vec(),
            };
            junk.extend((0..200u32).map(|i| (i * 37 + 11) as u8));
            let _ = decompress(kind, &junk, 0, 1000);
        }
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("virtio_blk.ko").as_deref(), Some("virtio_blk"));
        assert_eq!(
            module_name("virtio-blk.ko.xz").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme.ko.zst").as_deref(),
            Some("nvme")
        );
        assert_eq!(module_name("e1000.ko.gz").as_deref(), Some("e1000"));
        assert_eq!(module_name("modules.dep"), None);
        assert_eq!(module_name(".ko"), None);
        assert_eq!(module_name("x.ko.bz2"), None);
        assert_eq!(
            module_compression("a.ko.zst"),
            Some(Some(Compression::Zstd))
        );
        assert_eq!(module_compression("a.ko"), Some(None));
        assert_eq!(module_compression("a.txt"), None);
    }
}
