//! `diskconv verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use diskconv::{ReferencePolicy, Result};

/// `diskconv verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The source image.
    pub src: PathBuf,
    /// The target image.
    pub dst: PathBuf,
}

/// Runs `diskconv verify`.
pub fn run(args: VerifyArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let _ = (args, policy);
    Err(diskconv::Error::Unsupported(
        "diskconv verify is not implemented yet".into(),
    ))
}
