//! Helpers shared by the benchmarks: the source image, child-process measurement, and where
//! results and work files go.

pub mod measure;
pub mod source;

use std::path::{Path, PathBuf};

/// Cargo's target folder (`CARGO_TARGET_DIR`, else `target/` of the project): the default
/// place of every benchmark's work folder and JSON results.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// An I/O error carrying a message (a benchmark's own failure).
#[allow(dead_code)] // not every benchmark reports its own errors this way
pub fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
