//! Fuzzes a VMDK held in memory (sparse header, embedded descriptor, grain tables,
//! streamOptimized markers and grains): open with the format forced, map and read a bounded
//! number of extents. Any panic is a bug; errors are fine. Extent files named by a text
//! descriptor are refused (the image has no folder), so descriptor parsing is covered too.
#![no_main]

use std::sync::Arc;

use diskconv::storage::MemStorage;
use diskconv::{Format, OpenOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    let opts = OpenOptions::new().format(Format::Vmdk);
    let Ok(img) = diskconv::open_storage(storage, &opts) else {
        return;
    };
    let _ = img.info();
    let size = img.virtual_size();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
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
        // An unaligned read across the extent's end too.
        let m = (e.len + 1000).min(size - pos).min(buf.len() as u64) as usize;
        let _ = img.read_at(&mut buf[..m], pos + (e.len / 3).min(size - pos - m as u64));
        pos = pos.saturating_add(e.len);
    }
});
