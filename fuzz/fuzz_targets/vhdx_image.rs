//! Fuzzes the VHDX parsers on bytes: the first byte picks the parser (header, region table,
//! metadata region, log replay, parent locator, or a whole image from memory); bit 7 of it
//! makes the input's checksum valid first so the fuzzer gets past the CRC-32C. Any panic is a
//! bug; errors are fine. Mode 5 patches a valid image made by our writer (headers, region
//! table, metadata, BAT, log) and fixes the checksums, so the fuzzer reaches the deep checks.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, OnceLock};

use diskconv::Format;
use diskconv::ImageWriter;
use diskconv::formats::vhdx::writer::{VhdxWriteOptions, VhdxWriter};
use diskconv::formats::vhdx::{self, header, log, metadata, region};
use diskconv::storage::MemStorage;
use libfuzzer_sys::fuzz_target;

fn padded(data: &[u8], len: usize) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.len() < len {
        v.resize(len, 0);
    }
    v
}

/// A valid 2 MiB dynamic VHDX (1 MiB blocks, the first block written).
fn skeleton() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        let mem = Arc::new(MemStorage::new());
        let opts = VhdxWriteOptions {
            block_size: 1 << 20,
            ..Default::default()
        };
        let mut w = Box::new(VhdxWriter::new(mem.clone(), 2 << 20, &opts).unwrap());
        w.write_at(&[0x5a; 4096], 0).unwrap();
        w.finish().unwrap();
        mem.to_vec()
    })
}

/// Applies patches `[area, offset lo, offset hi, len, bytes...]*` to a copy of the skeleton.
fn patched(mut rest: &[u8], fix: bool) -> Vec<u8> {
    let mut b = skeleton().to_vec();
    const AREAS: [usize; 6] = [0x10000, 0x20000, 0x30000, 0x100000, 0x200000, 0x300000];
    while rest.len() >= 4 {
        let base = AREAS[rest[0] as usize % AREAS.len()];
        let off = base + u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let len = (rest[3] as usize).min(rest.len() - 4);
        let end = (off + len).min(b.len());
        b[off..end].copy_from_slice(&rest[4..4 + (end - off)]);
        if rest[0] >= 0x80 {
            // Point both headers at the log with a guid, so replay runs.
            for h in [0x10000, 0x20000] {
                b[h + 48..h + 64].copy_from_slice(&[0x11; 16]);
            }
        }
        rest = &rest[4 + len..];
    }
    if fix {
        // The first log entry, over its stated length.
        let elen =
            u32::from_le_bytes([b[0x100008], b[0x100009], b[0x10000a], b[0x10000b]]) as usize;
        if (8..=1 << 20).contains(&elen) {
            vhdx::set_checksum(&mut b[0x100000..0x100000 + elen], 4);
        }
        for (at, len) in [
            (0x10000, 4096),
            (0x20000, 4096),
            (0x30000, 65536),
            (0x40000, 65536),
        ] {
            vhdx::set_checksum(&mut b[at..at + len], 4);
        }
    }
    b
}

fn exercise(bytes: Vec<u8>) {
    common::open_and_walk(&bytes, Format::Vhdx);
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let fix = sel & 0x80 != 0;
    match sel & 0x7f {
        0 => {
            let mut b = padded(rest, header::HEADER_SIZE);
            if fix {
                vhdx::set_checksum(&mut b[..header::HEADER_SIZE], 4);
            }
            if let Ok(h) = header::VhdxHeader::parse(&b, 0x10000) {
                assert_eq!(header::VhdxHeader::parse(&h.to_bytes(), 0).ok(), Some(h));
            }
        }
        1 => {
            let mut b = padded(rest, region::REGION_TABLE_SIZE);
            if fix {
                vhdx::set_checksum(&mut b[..region::REGION_TABLE_SIZE], 4);
            }
            let _ = region::parse(&b, 0x30000);
        }
        2 => {
            let b = padded(rest, metadata::TABLE_SIZE + 4096);
            let _ = metadata::parse(&b, 0x200000);
        }
        3 => {
            if rest.len() < 16 {
                return;
            }
            let guid = vhdx::Guid::read(rest, 0);
            let mut b = rest[16..].to_vec();
            b.resize(b.len().next_multiple_of(4096).min(1 << 20), 0);
            if fix && b.len() >= 4096 {
                // Make the first entry's checksum valid over its stated length.
                let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
                if len >= 8 && len <= b.len() {
                    vhdx::set_checksum(&mut b[..len], 4);
                }
            }
            let _ = log::replay(&b, 0x100000, &guid);
        }
        4 => {
            let _ = metadata::parse_parent_locator(rest, 0);
        }
        5 => exercise(patched(rest, fix)),
        _ => exercise(rest.to_vec()),
    }
});
