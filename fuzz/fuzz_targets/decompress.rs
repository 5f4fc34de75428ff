//! Fuzzes each decoder of `guest::compress` on arbitrary bytes: the first byte picks the
//! format, the rest is the stream (the magic is forced in front so the decoder goes past it).
//! Any panic is a bug; errors are fine. The consumed length must lie within the input.
#![no_main]

use diskconv::guest::compress::{self, Compression};
use libfuzzer_sys::fuzz_target;

/// The formats, indexed by the first input byte.
const KINDS: [Compression; 7] = [
    Compression::Gzip,
    Compression::Xz,
    Compression::Lzma,
    Compression::Zstd,
    Compression::Lz4Legacy,
    Compression::Lz4Frame,
    Compression::Bzip2,
];

/// The magic of each format, put in front of the fuzzed bytes.
fn magic(kind: Compression) -> &'static [u8] {
    match kind {
        Compression::Gzip => &[0x1f, 0x8b, 8],
        Compression::Xz => &[0xfd, b'7', b'z', b'X', b'Z', 0],
        Compression::Lzma => &[0x5d, 0, 0],
        Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
        Compression::Lz4Legacy => &[0x02, 0x21, 0x4c, 0x18],
        Compression::Lz4Frame => &[0x04, 0x22, 0x4d, 0x18],
        Compression::Bzip2 => b"BZh",
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[pick as usize % KINDS.len()];
    let raw = pick >= 128;
    let input: Vec<u8> = if raw {
        rest.to_vec()
    } else {
        [magic(kind), rest].concat()
    };
    if let Ok(d) = compress::decompress(kind, &input, 0, 16 << 20) {
        assert!(d.consumed <= input.len());
        assert!(d.data.len() <= 16 << 20);
    }
    let _ = compress::detect(rest);
    if let Ok(s) = std::str::from_utf8(rest) {
        let _ = compress::module_name(s);
    }
});
