//! `diskconv inject windows` and `diskconv inject linux`: offline adaptation of a Windows or
//! Linux guest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use diskconv::guest::linuxcfg::FixOptions;
use diskconv::inject::adapt::{
    BlockDriver, CloudTarget, InjectOptions, InjectReport, inject_windows,
};
use diskconv::inject::linux::{LinuxInjectOptions, LinuxInjectReport, inject_linux};
use diskconv::{Error, Format, OpenOptions, ReferencePolicy, Result};

/// `diskconv inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// What to inject into.
    #[command(subcommand)]
    pub command: InjectCommand,
}

/// The guest kinds.
#[derive(Debug, Subcommand)]
pub enum InjectCommand {
    /// Make a Windows guest boot on KVM (virtio-win drivers) or a cloud's inbox drivers.
    Windows(WindowsArgs),
    /// Make a Linux guest boot on a target: early-boot storage modules, fstab and boot loader
    /// by UUID, MAC bindings and other platforms' guest tools removed.
    Linux(LinuxArgs),
}

/// `diskconv inject windows IMG ...`.
#[derive(Debug, Args)]
pub struct WindowsArgs {
    /// The image to edit in place (raw, qcow2, VHD, VHDX, sparse VMDK).
    pub image: PathBuf,
    /// A virtio-win folder or ISO (optional with --target).
    #[arg(long, value_name = "DIR_OR_ISO")]
    pub drivers: Option<PathBuf>,
    /// The boot storage driver from the --drivers package: viostor (virtio-blk, the default)
    /// or vioscsi (virtio-scsi).
    #[arg(long, value_name = "DRIVER")]
    pub block_driver: Option<String>,
    /// Also enable the inbox storage drivers of a cloud: aws-nitro, gcp or azure.
    #[arg(long, value_name = "CLOUD")]
    pub target: Option<String>,
    /// Print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Image format (detected from the content when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub refs: crate::args::RefArgs,
    #[command(flatten)]
    pub nbd_tls: crate::args::NbdTlsArgs,
}

/// How to open the image: the reference policy and the `-f` format, if given.
fn open_options(format: Option<&str>, policy: ReferencePolicy) -> Result<OpenOptions> {
    let open = OpenOptions::new().references(policy);
    Ok(match format {
        Some(f) => open.format(f.parse()?),
        None => open,
    })
}

/// Prints a report as JSON or as the text `human` makes.
fn print_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    human: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| Error::InvalidArgument(format!("writing JSON: {e}")))?;
        outln!("{text}")?;
    } else {
        out!("{}", human())?;
    }
    Ok(())
}

/// Runs the command.
pub fn run(args: InjectArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    match args.command {
        InjectCommand::Windows(a) => windows(a, policy),
        InjectCommand::Linux(a) => linux(a, policy),
    }
}

/// `diskconv inject linux IMG --target T ...`.
#[derive(Debug, Args)]
pub struct LinuxArgs {
    /// The image to edit in place (raw, qcow2, VHD, VHDX, sparse VMDK).
    pub image: PathBuf,
    /// The platform the guest moves to: kvm, openstack, alibaba, huawei, aws, azure, gcp,
    /// vsphere, hyperv.
    #[arg(long, value_name = "TARGET")]
    pub target: String,
    /// The kernel whose initramfs to extend (default: the newest with an initramfs).
    #[arg(long, value_name = "VERSION")]
    pub kernel: Option<String>,
    /// Make the first network interface use DHCP (replacing its static addresses).
    #[arg(long)]
    pub dhcp: bool,
    /// Leave other platforms' guest tools enabled.
    #[arg(long)]
    pub keep_tools: bool,
    /// Print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Image format (detected from the content when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub refs: crate::args::RefArgs,
    #[command(flatten)]
    pub nbd_tls: crate::args::NbdTlsArgs,
}

fn linux(a: LinuxArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let open = open_options(a.format.as_deref(), policy)?;
    let opts = LinuxInjectOptions {
        target: a.target.clone(),
        fix: FixOptions {
            dhcp_first_interface: a.dhcp,
            disable_foreign_tools: !a.keep_tools,
        },
        kernel: a.kernel.clone(),
        dry_run: a.dry_run,
        open,
    };
    let report = inject_linux(&a.image, &opts)?;
    print_report(&report, a.json, || human_linux(&report, a.dry_run))?;
    // A boot-critical module that cannot be provided: the guest will not boot on the target.
    if report.missing.iter().any(|m| m.required) {
        return Ok(ExitCode::from(crate::exit::PREFLIGHT_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

fn human_linux(r: &LinuxInjectReport, dry_run: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "linux:      {} on {}", r.root, r.root_volume);
    if let Some(b) = &r.boot_volume {
        let _ = writeln!(s, "/boot:      {b}");
    }
    if let Some(k) = &r.kernel {
        let _ = writeln!(
            s,
            "kernel:     {k}{}",
            r.initramfs
                .as_deref()
                .map(|i| format!(", initramfs {i}"))
                .unwrap_or_default()
        );
    }
    if !r.modules_builtin.is_empty() {
        let _ = writeln!(s, "built in:   {}", r.modules_builtin.join(" "));
    }
    if !r.modules_added.is_empty() {
        let _ = writeln!(s, "adds:       {}", r.modules_added.join(" "));
    }
    for m in &r.missing {
        let _ = writeln!(
            s,
            "missing:    {}{}: {}\n            fix on the source: {}",
            m.name,
            if m.required { " (needed to boot)" } else { "" },
            m.message,
            m.fix
        );
    }
    let verb = if dry_run { "would change" } else { "changes" };
    let _ = writeln!(s, "{verb}:");
    for c in &r.changes {
        let _ = writeln!(s, "  {} {} ({}): {}", c.action, c.path, c.volume, c.reason);
        if let (Some(b), Some(a)) = (&c.before, &c.after) {
            for l in diff_lines(b, a) {
                let _ = writeln!(s, "      {l}");
            }
        }
    }
    for t in &r.tools {
        let _ = writeln!(
            s,
            "tool:       {}: {} ({})",
            t.id,
            if t.disabled {
                "disabled"
            } else {
                "left enabled"
            },
            t.reason
        );
    }
    for u in &r.unresolved {
        let _ = writeln!(s, "unresolved: {u}");
    }
    for n in &r.notes {
        let _ = writeln!(s, "note:       {n}");
    }
    let _ = writeln!(
        s,
        "{}",
        if dry_run {
            "dry run: nothing written"
        } else if r.written {
            "written"
        } else {
            "nothing to write: the guest already holds this plan"
        }
    );
    s
}

/// The lines that differ between two texts: `- old` and `+ new`, in order (a plain
/// line-by-line comparison; the changes are small edits of configuration files).
fn diff_lines(before: &str, after: &str) -> Vec<String> {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let mut out = Vec::new();
    for l in &b {
        if !a.contains(l) {
            out.push(format!("- {l}"));
        }
    }
    for l in &a {
        if !b.contains(l) {
            out.push(format!("+ {l}"));
        }
    }
    out
}

fn windows(a: WindowsArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let open = open_options(a.format.as_deref(), policy)?;
    let opts = InjectOptions {
        drivers: a.drivers.clone(),
        block_driver: a.block_driver.as_deref().unwrap_or("viostor").parse()?,
        target: a.target.as_deref().map(str::parse).transpose()?,
        dry_run: a.dry_run,
        open,
    };
    let report = inject_windows(&a.image, &opts)?;
    print_report(&report, a.json, || human(&report, a.dry_run))?;
    Ok(ExitCode::SUCCESS)
}

fn human(r: &InjectReport, dry_run: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let part = match r.partition {
        Some(n) => format!("partition {n}"),
        None => "the whole disk".to_string(),
    };
    let _ = writeln!(s, "windows:    {} on {part}", r.windows.describe());
    for h in &r.replayed_hives {
        let _ = writeln!(s, "replayed:   {h} (from its transaction logs)");
    }
    let verb = if dry_run { "would write" } else { "files" };
    let _ = writeln!(s, "{verb}:");
    for f in &r.files {
        let _ = writeln!(
            s,
            "  {}{}  ({} bytes, from {})",
            f.path,
            if f.replaces { " (replaces)" } else { "" },
            f.size,
            f.source
        );
    }
    let _ = writeln!(s, "registry values:");
    for v in &r.values {
        let name = if v.name.is_empty() { "@" } else { &v.name };
        let _ = writeln!(
            s,
            "  {}\\{} : {name} = {} ({})",
            v.hive, v.key, v.data, v.kind
        );
    }
    let _ = writeln!(s, "first boot: {}", r.first_boot);
    let _ = writeln!(
        s,
        "{}",
        if dry_run {
            "dry run: nothing written"
        } else if r.written {
            "written"
        } else {
            "nothing to write: the image already holds this plan"
        }
    );
    s
}

/// Checks what the command line alone says: the names given, and options that mean nothing
/// with the others (`--block-driver` without `--drivers`).
pub fn check_usage(a: &WindowsArgs) -> Result<()> {
    if let Some(f) = &a.format {
        f.parse::<Format>()?;
    }
    if let Some(t) = &a.target {
        t.parse::<CloudTarget>()?;
    }
    if let Some(b) = &a.block_driver {
        b.parse::<BlockDriver>()?;
        if a.drivers.is_none() {
            return Err(Error::InvalidArgument(format!(
                "--block-driver {b} means nothing without --drivers: it picks the boot driver \
                 from a virtio-win package, and --target alone enables drivers Windows already \
                 has"
            )));
        }
    }
    if a.drivers.is_none() && a.target.is_none() {
        return Err(Error::InvalidArgument(
            "nothing to inject: give a virtio-win folder or ISO (--drivers) and/or a cloud \
             whose inbox drivers to enable (--target aws-nitro|gcp|azure)"
                .into(),
        ));
    }
    Ok(())
}
