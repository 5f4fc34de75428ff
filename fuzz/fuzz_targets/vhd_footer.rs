//! Fuzzes the VHD footer and dynamic-header parsers on arbitrary bytes, then the whole reader
//! on the same bytes held in memory (open, map, read). Any panic is a bug; errors are fine.
#![no_main]

#[path = "common.rs"]
mod common;

use diskconv::Format;
use diskconv::formats::vhd::dynamic::VhdDynamicHeader;
use diskconv::formats::vhd::footer::VhdFooter;
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

    common::open_and_walk(data, Format::Vhd);
});
