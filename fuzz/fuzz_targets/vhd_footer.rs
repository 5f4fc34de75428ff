//! Fuzzes the VHD footer and dynamic-header parsers on arbitrary bytes, then the whole reader
//! on the same bytes held in memory (open, map, read). Any panic is a bug; errors are fine.
#![no_main]

use std::sync::Arc;

use diskconv::formats::vhd::dynamic::VhdDynamicHeader;
use diskconv::formats::vhd::footer::VhdFooter;
use diskconv::storage::MemStorage;
use diskconv::{Format, OpenOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for len in [512usize, 511] {
        if let Some(b) = data.get(..len)
            && let Ok(f) = VhdFooter::parse(b, 0)
        {
            // A footer that parses must serialise and size itself without panicking.
            let _ = f.to_bytes();
            let _ = f.virtual_size();
        }
    }
    if let Some(b) = data.get(512..1536)
        && let Ok(h) = VhdDynamicHeader::parse(b, 512)
    {
        let _ = h.to_bytes();
        let _ = h.bitmap_size();
    }

    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    let opts = OpenOptions::new().format(Format::Vhd);
    let Ok(img) = diskconv::open_storage(storage, &opts) else {
        return;
    };
    let _ = img.info();
    let size = img.virtual_size();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    // Bound the work per input: a footer can claim an enormous disk.
    for _ in 0..256 {
        if pos >= size {
            break;
        }
        let Ok(e) = img.map(pos, size - pos) else {
            break;
        };
        if e.len == 0 {
            break;
        }
        let n = e.len.min(buf.len() as u64) as usize;
        let _ = img.read_at(&mut buf[..n], pos);
        pos = pos.saturating_add(e.len);
    }
});
