//! VHDX (Hyper-V) images. Errors use [`FormatError`](crate::formats::error::FormatError).

pub mod bat;
pub mod header;
pub mod log;
pub mod metadata;
pub mod reader;
pub mod region;
pub mod writer;

pub use reader::VhdxReader;
pub use writer::{VhdxSubformat, VhdxWriteOptions};
