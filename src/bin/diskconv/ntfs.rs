//! `diskconv ntfs`: list, read and write files on an NTFS volume inside an image.

use std::process::ExitCode;

use clap::Args;
use diskconv::{ReferencePolicy, Result};

/// Arguments (placeholder until implemented).
#[derive(Debug, Args)]
pub struct NtfsArgs {}

/// Runs the command.
pub fn run(args: NtfsArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let _ = (args, policy);
    unimplemented!("ntfs command")
}
