//! `diskconv hive`: the registry hive commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use diskconv::Result;

/// `diskconv hive`.
#[derive(Debug, Args)]
pub struct HiveArgs {
    /// The hive command.
    #[command(subcommand)]
    pub command: HiveCommand,
}

/// The hive subcommands.
#[derive(Debug, Subcommand)]
pub enum HiveCommand {
    /// List the subkeys and values of a key.
    Ls {
        /// The hive file.
        hive: PathBuf,
        /// The key (backslash-separated, case-insensitive; default: the root).
        #[arg(default_value = "")]
        key: String,
    },
}

/// Runs a hive command.
pub fn run(args: HiveArgs) -> Result<ExitCode> {
    match args.command {
        HiveCommand::Ls { hive, key } => {
            let _ = (hive, key);
            Err(diskconv::Error::Unsupported(
                "hive ls is not implemented yet".into(),
            ))
        }
    }
}
