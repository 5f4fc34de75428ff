//! Format detection from content, never from the file name: each format's probe, run in the
//! order of the format registry ([`crate::formats::registry`]).

pub use crate::formats::registry::detect;
pub use crate::formats::vdi::header::SIGNATURE as VDI_SIGNATURE;
