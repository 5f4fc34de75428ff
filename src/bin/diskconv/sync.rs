//! `diskconv sync`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use diskconv::{ReferencePolicy, Result};

/// `diskconv sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The source image.
    pub src: PathBuf,
    /// The target image.
    pub dst: PathBuf,
}

/// Runs `diskconv sync`.
pub fn run(args: SyncArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let _ = (args, policy);
    Err(diskconv::Error::Unsupported(
        "diskconv sync is not implemented yet".into(),
    ))
}
