//! VHD (Virtual PC / Hyper-V, qemu's vpc) images. Errors use [`FormatError`](crate::formats::error::FormatError).

pub mod check;
pub mod dynamic;
pub mod footer;
mod options;
pub mod reader;
pub mod update;
pub mod writer;

pub use reader::VhdReader;
pub use writer::{VhdSubformat, VhdWriteOptions};

/// Whether the first sector (`head`) is a VHD footer copy (a dynamic VHD starts with one).
pub fn probe(head: &[u8], _len: u64) -> bool {
    head.starts_with(&footer::COOKIE)
}

/// Whether the last sector is a VHD footer: a fixed VHD (older tools wrote a 511-byte footer).
pub fn probe_tail(tail: &[u8; 512]) -> bool {
    tail.starts_with(&footer::COOKIE) || tail[1..].starts_with(&footer::COOKIE)
}
