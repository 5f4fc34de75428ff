//! `diskconv inspect`: partitions, file systems and the installed Windows and Linux of an image.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use diskconv::inspect::{InspectReport, inspect_image};
use diskconv::util::human_bytes;
use diskconv::{Error, OpenOptions, ReferencePolicy, Result};

/// `diskconv inspect IMG [--json] [-f FMT]`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image (raw, qcow2, VMDK, VHD, VHDX).
    pub image: PathBuf,
    /// Image format (detected from the content when omitted).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub refs: crate::args::RefArgs,
    #[command(flatten)]
    pub nbd_tls: crate::args::NbdTlsArgs,
}

/// Runs the command.
pub fn run(args: InspectArgs, policy: ReferencePolicy) -> Result<ExitCode> {
    let mut opts = OpenOptions::new().references(policy);
    if let Some(f) = &args.format {
        opts = opts.format(f.parse()?);
    }
    let report = inspect_image(&args.image, &opts)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::InvalidArgument(format!("writing JSON: {e}")))?;
        outln!("{text}")?;
    } else {
        out!("{}", human(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn human(r: &InspectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "image:      {}", r.path.display());
    let _ = writeln!(s, "format:     {}", r.format);
    let _ = writeln!(
        s,
        "size:       {} ({} bytes)",
        human_bytes(r.virtual_size),
        r.virtual_size
    );
    let t = &r.partition_table;
    let _ = writeln!(
        s,
        "partitions: {} ({} partitions, {}-byte sectors)",
        serde_json::to_value(t.scheme)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        t.partitions.len(),
        t.sector_size
    );
    for v in &r.volumes {
        let what = match &v.volume.partition {
            Some(p) => format!("partition {}", p.number),
            None => "whole disk".to_string(),
        };
        let fs = serde_json::to_value(v.volume.fs)
            .ok()
            .and_then(|x| x.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "volume:     {what}: {fs}, at {:#x}, {}",
            v.volume.start,
            human_bytes(v.volume.len)
        );
        if let Some(n) = &v.ntfs {
            let _ = writeln!(
                s,
                "  ntfs:     version {}.{}, label \"{}\", {}-byte clusters, {} free of {}",
                n.version.0,
                n.version.1,
                n.label,
                n.cluster_size,
                human_bytes(n.free_clusters.saturating_mul(u64::from(n.cluster_size))),
                human_bytes(n.total_clusters.saturating_mul(u64::from(n.cluster_size)))
            );
            let state = match &v.not_writable {
                Some(why) => format!("not writable: {why}"),
                None => "clean (writable)".to_string(),
            };
            let _ = writeln!(s, "  state:    {state}");
        }
        if let Some(w) = &v.windows {
            let i = &w.info;
            let _ = writeln!(s, "  windows:  {}", i.describe());
            let _ = writeln!(
                s,
                "            edition {}, installation type {}, {}",
                i.edition,
                if i.installation_type.is_empty() {
                    "?"
                } else {
                    &i.installation_type
                },
                if i.server { "server" } else { "client" }
            );
            let _ = writeln!(
                s,
                "            control set {}, {}, virtio-win folders: {}",
                i.current_control_set,
                if i.driver_database {
                    "DriverDatabase"
                } else {
                    "CriticalDeviceDatabase"
                },
                match i.virtio_os_dirs() {
                    d if d.is_empty() => "none (too old)".to_string(),
                    d => d.join(", "),
                }
            );
            for h in &w.replayed_hives {
                let _ = writeln!(s, "            replayed the logs of {h} (in memory)");
            }
        }
        if let Some(e) = &v.error {
            let _ = writeln!(s, "  error:    {e}");
        }
    }
    if r.windows().next().is_none() {
        let _ = writeln!(s, "windows:    none found");
    }
    linux(&mut s, r);
    s
}

/// A Linux root's /boot, kernels with their initramfs and drivers, and configuration.
fn linux_details(s: &mut String, root: &diskconv::inspect::linux::LinuxRoot) {
    use diskconv::guest::kmod::ModuleState;
    use std::fmt::Write;
    if let Some(b) = &root.boot_volume {
        let _ = writeln!(s, "  /boot:    {b}");
    }
    for k in &root.kernel_files {
        let _ = writeln!(
            s,
            "  kernel:   {} ({}{})",
            k.version,
            k.initramfs.as_deref().unwrap_or("no initramfs"),
            if k.initramfs_segments.is_empty() {
                String::new()
            } else {
                format!(": {}", k.initramfs_segments.join(" + "))
            }
        );
        let group = |want: fn(&ModuleState) -> bool| -> String {
            k.drivers
                .iter()
                .filter(|d| want(&d.state))
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (label, names) in [
            ("built in", group(|m| matches!(m, ModuleState::BuiltIn))),
            (
                "initramfs",
                group(|m| matches!(m, ModuleState::InInitramfs)),
            ),
            (
                "disk only",
                group(|m| matches!(m, ModuleState::OnDisk { .. })),
            ),
            (
                "other kernel",
                group(|m| matches!(m, ModuleState::OtherKernel { .. })),
            ),
            ("absent", group(|m| matches!(m, ModuleState::Absent))),
        ] {
            if !names.is_empty() {
                let _ = writeln!(s, "            {label}: {names}");
            }
        }
        if let Some(n) = &k.note {
            let _ = writeln!(s, "            note: {n}");
        }
    }
    if let Some(c) = &root.config {
        if let Some(f) = &c.fstab {
            for e in &f.entries {
                if e.stable == Some(false) {
                    let _ = writeln!(
                        s,
                        "  fstab:    line {}: {} on {} names its device by a path that changes",
                        e.line, e.spec, e.mount_point
                    );
                }
            }
        }
        for b in &c.boot {
            for p in &b.params {
                let _ = writeln!(
                    s,
                    "  boot:     {}: {}={}{}",
                    b.path,
                    p.name,
                    p.value,
                    if p.stable == Some(false) {
                        " (a device path that changes)"
                    } else {
                        ""
                    }
                );
            }
        }
        for n in &c.network {
            if !n.macs.is_empty() {
                let _ = writeln!(
                    s,
                    "  network:  {} bound to MAC {}",
                    n.path,
                    n.macs.join(", ")
                );
            }
        }
        for t in &c.tools {
            let _ = writeln!(s, "  tools:    {} ({})", t.name, t.id);
        }
        if !c.cloud_init.installed.is_empty() {
            let _ = writeln!(
                s,
                "  cloud-init: installed{}",
                if c.cloud_init.disabled {
                    ", disabled"
                } else {
                    ""
                }
            );
        }
        if let Some(se) = &c.selinux {
            let _ = writeln!(
                s,
                "  selinux:  {}",
                se.mode.as_deref().unwrap_or("mode not set")
            );
        }
    }
    for n in &root.notes {
        let _ = writeln!(s, "  note:     {n}");
    }
}

fn linux(s: &mut String, r: &InspectReport) {
    use std::fmt::Write;
    if r.linux.volumes.is_empty() {
        let _ = writeln!(s, "linux:      none found");
        return;
    }
    for v in &r.linux.volumes {
        let mut what = match &v.fs {
            Some(f) => f.kind.name().to_string(),
            None => "?".to_string(),
        };
        if let Some(f) = &v.fs {
            if let Some(l) = &f.label {
                let _ = write!(what, ", label \"{l}\"");
            }
            if let Some(u) = &f.uuid {
                let _ = write!(what, ", UUID {u}");
            }
            if f.needs_recovery {
                what.push_str(", journal needs recovery");
            }
        }
        if let (Some(vg), None) = (&v.vg, &v.lv) {
            let _ = write!(what, ", volume group {vg}");
        }
        let _ = writeln!(
            s,
            "linux:      {}: {what}, {}",
            v.location,
            human_bytes(v.size)
        );
        if let Some(root) = &v.root {
            let d = &root.distribution;
            let _ = writeln!(s, "  root:     {}", d.describe());
            let _ = writeln!(
                s,
                "            id {}, version {}, from {}",
                d.id,
                d.version.as_deref().unwrap_or("?"),
                d.source
            );
            let _ = writeln!(
                s,
                "            architecture {}, kernels: {}",
                root.arch.as_deref().unwrap_or("unknown"),
                if root.kernels.is_empty() {
                    "none in /boot".to_string()
                } else {
                    root.kernels.join(", ")
                }
            );
        }
        if let Some(root) = &v.root {
            linux_details(s, root);
        }
        if !v.boot_kernels.is_empty() {
            let _ = writeln!(s, "  kernels:  {}", v.boot_kernels.join(", "));
        }
        if let Some(n) = &v.note {
            let _ = writeln!(s, "  note:     {n}");
        }
    }
}
