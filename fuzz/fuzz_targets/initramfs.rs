//! Fuzzes the initramfs reader on arbitrary bytes: parse (with small caps, so that hostile
//! sizes stay cheap), then every query over the result. Any panic is a bug; errors are fine.
#![no_main]

use diskconv::guest::initramfs::{Initramfs, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 64 << 20,
        max_entries: 100_000,
        max_name_len: 4095,
    };
    let Ok(ir) = Initramfs::parse_with_limits(data, &limits) else {
        return;
    };
    let _ = ir.segments();
    for e in ir.entries().iter().take(10_000) {
        let _ = ir.data(e);
        let _ = ir.resolve(&e.path);
        let _ = ir.file(&e.path);
    }
    let _ = ir.kernel_modules();
    let _ = ir.resolve("lib/modules/../../x/./y");
});
