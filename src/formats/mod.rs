//! Image formats, one module each. A format module knows nothing of the convert engine; it
//! implements [`ImageReader`](crate::image::ImageReader) and
//! [`ImageWriter`](crate::image::ImageWriter).

pub mod check;
pub mod error;
pub mod ova;
pub mod qcow2;
pub mod raw;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
