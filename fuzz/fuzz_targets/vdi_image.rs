//! Fuzzes the VDI header and block map parsers on arbitrary bytes, then the whole reader on the
//! same bytes held in memory (check, open, map, read), then the updater: a few writes and
//! zeroes derived from the input, a flush, and the result must open again and read back what
//! was written. Any panic is a bug; errors are fine.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use diskconv::formats::vdi::{VdiHeader, VdiUpdater, blockmap};
use diskconv::storage::MemStorage;
use diskconv::{Format, ImageReader, ImageUpdater, OpenOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = VdiHeader::parse(data, 0) {
        // A header that parses must serialise and size itself without panicking.
        let _ = VdiHeader::parse(&h.to_bytes(512), 0);
        let _ = (h.virtual_size(), h.data_end());
        let at = h.blocks_offset as usize;
        if let Some(map) = data.get(at..at.saturating_add(h.map_len() as usize)) {
            let entries = blockmap::decode(map);
            let _ = blockmap::validate(&entries, &h, data.len() as u64, 16);
        }
    }

    common::open_and_walk(data, Format::Vdi);

    // The updater, on images whose blocks are small enough to copy quickly.
    let Ok(h) = VdiHeader::parse(data, 0) else {
        return;
    };
    if h.block_stride() > 64 << 10 {
        return;
    }
    let mem = Arc::new(MemStorage::from_vec(data.to_vec()));
    let Ok(mut up) = VdiUpdater::open_storage(mem.clone()) else {
        return;
    };
    let size = ImageReader::virtual_size(&up);
    if size == 0 {
        return;
    }
    let pick = |i: usize| -> u64 {
        let b = data.get(i..i + 8).unwrap_or(&[7; 8]);
        u64::from_le_bytes(b.try_into().unwrap_or([7; 8]))
    };
    let off = pick(data.len() / 3) % size;
    let len = (pick(data.len() / 2) % 70_000).clamp(1, size - off);
    let zoff = pick(data.len() / 5) % size;
    let zlen = (pick(data.len() / 7) % (3 * u64::from(h.block_size))).clamp(1, size - zoff);
    let buf: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
    if up.write_zeroes(zoff, zlen).is_err()
        || up.write_at(&buf, off).is_err()
        || up.flush().is_err()
    {
        return;
    }
    drop(up);
    // What the updater leaves is a valid image that reads back the last write.
    let img = diskconv::open_storage(mem, &OpenOptions::new().format(Format::Vdi))
        .expect("the updated image opens again");
    let mut got = vec![0u8; len as usize];
    img.read_at(&mut got, off).expect("the written range reads");
    assert_eq!(got, buf, "the updated image reads back the write");
});
