//! `diskconv preflight IMG --target T [--json]`, and the preflight `convert --target` runs
//! first.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use diskconv::cloud::{
    BootMode, PreflightOptions, PreflightReport, Target, TargetOutput, preflight_image,
    preflight_reader,
};
use diskconv::{Error, ImageReader, OpenOptions, ReferencePolicy, Result};

use crate::exit::PREFLIGHT_FAILED;

/// `diskconv preflight`.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The image (any readable format).
    pub image: PathBuf,
    /// The platform: aws, azure, gcp, alibaba, huawei, openstack, vsphere, hyperv or kvm.
    #[arg(long, value_name = "TARGET")]
    pub target: String,
    /// The boot mode the VM will use, bios or uefi (Azure, Hyper-V: generation 1 or 2).
    /// Default: any the target has.
    #[arg(long = "boot-mode", value_name = "MODE")]
    pub boot_mode: Option<String>,
    /// Image format (detected from the content when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub refs: crate::args::RefArgs,
    #[command(flatten)]
    pub nbd_tls: crate::args::NbdTlsArgs,
}

/// Checks what the command line alone says.
pub fn check_usage(a: &PreflightArgs) -> Result<()> {
    a.target.parse::<Target>()?;
    if let Some(m) = &a.boot_mode {
        m.parse::<BootMode>()?;
    }
    Ok(())
}

/// Runs the command: exit 0 when nothing fails, 3 when a check fails.
pub fn run(a: PreflightArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let mut open = OpenOptions::new().references(policy);
    if let Some(f) = &a.format {
        open = open.format(f.parse()?);
    }
    let opts = PreflightOptions {
        target: a.target.parse()?,
        boot_mode: a.boot_mode.as_deref().map(str::parse).transpose()?,
        output: None,
        open,
    };
    let report = preflight_image(&a.image, &opts)?;
    if a.json {
        outln!("{}", json(&report)?)?;
    } else {
        out!("{}", report.to_text())?;
    }
    Ok(code(&report))
}

fn json(r: &PreflightReport) -> Result<String> {
    serde_json::to_string_pretty(r)
        .map_err(|e| Error::InvalidArgument(format!("writing JSON: {e}")))
}

fn code(r: &PreflightReport) -> ExitCode {
    if r.failed() {
        ExitCode::from(PREFLIGHT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The preflight of `convert --target`: checks the source as the output will be written,
/// prints the report on stderr, and returns the exit code to stop with when a check fails
/// (unless `--no-preflight`).
pub fn before_convert(
    a: &crate::args::ConvertArgs,
    target: Target,
    to: &TargetOutput,
    src: &std::sync::Arc<dyn ImageReader>,
    policy: ReferencePolicy,
) -> Result<Option<ExitCode>> {
    let opts = PreflightOptions {
        target,
        boot_mode: a.boot_mode.as_deref().map(str::parse).transpose()?,
        output: Some(to.planned(src.virtual_size())),
        open: OpenOptions::new().references(policy),
    };
    let report = preflight_reader(src, &a.src, &opts)?;
    errln!("{}", report.to_text().trim_end());
    if !report.failed() {
        return Ok(None);
    }
    if a.no_preflight {
        errln!(
            "diskconv: warning: the preflight for {target} failed; converting anyway \
             (--no-preflight)"
        );
        return Ok(None);
    }
    errln!(
        "diskconv: the preflight for {target} failed: nothing was written (fix what it lists, \
         or convert anyway with --no-preflight)"
    );
    Ok(Some(code(&report)))
}
