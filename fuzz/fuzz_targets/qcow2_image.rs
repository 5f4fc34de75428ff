//! Fuzzes a whole qcow2 image held in memory: open, map every extent, read every extent,
//! and run the structural check. Any panic is a bug; errors are fine.
#![no_main]

use std::sync::Arc;

use diskconv::formats::qcow2;
use diskconv::storage::MemStorage;
use diskconv::{Format, OpenOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    let _ = qcow2::check(storage.as_ref());
    let opts = OpenOptions::new().format(Format::Qcow2);
    let Ok(img) = diskconv::open_storage(storage, &opts) else {
        return;
    };
    let _ = img.info();
    let size = img.virtual_size();
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    // Bound the work per input: a header can claim an enormous disk.
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
