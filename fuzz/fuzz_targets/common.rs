//! Shared by the image fuzz targets: run the structural check (`diskconv check`, deep) on the
//! bytes as an image of a forced format, then open them, map and read a bounded number of
//! extents (plus an unaligned read across each extent's end). Any panic is a bug; errors are
//! fine.

use std::sync::Arc;

use diskconv::storage::MemStorage;
use diskconv::{Format, OpenOptions};

/// Checks `data` as `format`, then opens it from memory (files it names are refused: it has no
/// folder) and walks it.
pub fn open_and_walk(data: &[u8], format: Format) {
    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    let check = diskconv::check::CheckOptions {
        deep: true,
        ..Default::default()
    };
    let _ = diskconv::check::check_storage(storage.clone(), Some(format), &check);
    let opts = OpenOptions::new().format(format);
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
        let m = (e.len + 1000).min(size - pos).min(buf.len() as u64) as usize;
        let _ = img.read_at(&mut buf[..m], pos + (e.len / 3).min(size - pos - m as u64));
        pos = pos.saturating_add(e.len);
    }
}
