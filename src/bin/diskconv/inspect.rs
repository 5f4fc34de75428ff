//! `diskconv inspect`: partitions, file systems and the installed Windows of an image.

use std::process::ExitCode;

use clap::Args;
use diskconv::{ReferencePolicy, Result};

/// Arguments (placeholder until implemented).
#[derive(Debug, Args)]
pub struct InspectArgs {}

/// Runs the command.
pub fn run(args: InspectArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let _ = (args, policy);
    unimplemented!("inspect command")
}
