//! Fuzzes the ISO 9660 reader on arbitrary bytes written to a scratch file: open, then a
//! bounded walk of the folders reading every file (size-capped). Any panic is a bug; errors are
//! fine.
#![no_main]

use diskconv::guest::iso9660::Iso9660;
use libfuzzer_sys::fuzz_target;

/// Folders visited per input.
const MAX_DIRS: usize = 200;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("diskconv-fuzz-iso-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(iso) = Iso9660::open(&path) else {
        return;
    };
    let mut stack = vec![String::new()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > MAX_DIRS {
            break;
        }
        let Ok(entries) = iso.read_dir(&dir) else {
            continue;
        };
        for e in entries.iter().take(256) {
            let p = format!("{dir}/{}", e.name);
            if e.is_dir {
                stack.push(p);
            } else {
                let _ = iso.read_file(&p, 1 << 20);
            }
        }
    }
});
