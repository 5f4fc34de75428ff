//! VHD (Virtual PC / Hyper-V, qemu's vpc) images. Errors use [`FormatError`](crate::formats::error::FormatError).

pub mod check;
pub mod dynamic;
pub mod footer;
pub mod reader;
pub mod update;
pub mod writer;

pub use reader::VhdReader;
pub use writer::{VhdSubformat, VhdWriteOptions};
