//! `diskconv inject windows`: offline driver injection into a Windows guest.

use std::process::ExitCode;

use clap::Args;
use diskconv::{ReferencePolicy, Result};

/// Arguments (placeholder until implemented).
#[derive(Debug, Args)]
pub struct InjectArgs {}

/// Runs the command.
pub fn run(args: InjectArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let _ = (args, policy);
    unimplemented!("inject command")
}
