//! Fuzzes the qcow2 header and extension parser on arbitrary bytes.
#![no_main]

use diskconv::formats::qcow2::Qcow2Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Qcow2Header::parse(data, data.len() as u64) {
        // A header that parses must serialise without panicking.
        let _ = h.to_bytes();
    }
});
