//! Adapting an installed Linux offline so it boots on another platform, without running any
//! of the guest's programs: the target's storage (and network) modules are made available at
//! early boot by appending a cpio archive to the default kernel's initramfs (module files,
//! their dependencies, the kernel's module indexes and the list that loads them), a
//! configuration is left behind so that the guest's next initramfs rebuild keeps them,
//! `/etc/fstab` and the boot loader stop naming disks by device path, network configuration
//! stops pinning the old MAC addresses, and the old platform's guest tools stop starting.
//!
//! Everything is planned first, read-only ([`LinuxInjectReport`], printed by `--dry-run`),
//! then written through one transaction ([`ImageTx`]): all or nothing, the image
//! byte-identical on any failure. Files are written by the ext2/3/4 writer
//! ([`Ext4Writer`](crate::guest::extfs::Ext4Writer)); a plan that must change an XFS or btrfs
//! file system is refused with the exact changes and the commands to run on the source.

use std::path::Path;

use crate::error::{Error, Result};
use crate::guest::disk::{DiskIo, ImageTx};
use crate::guest::extfs::Ext4Writer;
use crate::guest::initramfs::{Initramfs, NewcFile, write_newc};
use crate::guest::kmod::{
    InitramfsFlavour, MissingModule, ModuleTarget, boot_drivers, plan_early_modules,
};
use crate::guest::linuxcfg::{
    ChangeAction, FixOptions, FsRole, ToolDecision, VolumeMap, plan_fixes, read_config,
};
use crate::guest::partition::find_volumes;
use crate::inspect::boot::{BootFs, KernelFiles, kernel_files};
use crate::inspect::linux::{
    LinuxVolume, boot_volume_of, existing_initramfs, find_linux, open_volume,
};
use crate::open::OpenOptions;

/// The largest initramfs read and rewritten: 1 GiB.
const MAX_INITRAMFS: u64 = 1 << 30;

/// What to do.
#[derive(Debug, Clone)]
pub struct LinuxInjectOptions {
    /// The target platform: `kvm`, `openstack`, `aws`, `azure`, `gcp`, `alibaba`, `huawei`,
    /// `vsphere`, `hyperv`.
    pub target: String,
    /// Network and guest-tool choices.
    pub fix: FixOptions,
    /// The kernel whose initramfs to extend (default: the newest with an initramfs).
    pub kernel: Option<String>,
    /// Plan only; write nothing.
    pub dry_run: bool,
    /// How to open the image.
    pub open: OpenOptions,
}

/// One planned change of a guest file, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedChange {
    /// The path as the running guest sees it.
    pub path: String,
    /// The volume it is on (`partition 1`, `LV vg0/root (on partition 2)`).
    pub volume: String,
    /// `replace`, `add`, `remove`, `remove-link` or `append`.
    pub action: &'static str,
    /// The text before (for text files).
    pub before: Option<String>,
    /// The text after (for text files).
    pub after: Option<String>,
    /// Bytes added (`append`) or written.
    pub bytes: u64,
    /// Why.
    pub reason: String,
}

/// The plan, and after a real run what was done.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinuxInjectReport {
    /// The target platform.
    pub target: String,
    /// The Linux found.
    pub root: String,
    /// The volume of its root file system.
    pub root_volume: String,
    /// The volume of its separate `/boot`, if any.
    pub boot_volume: Option<String>,
    /// The kernel whose initramfs is extended.
    pub kernel: Option<String>,
    /// That initramfs.
    pub initramfs: Option<String>,
    /// Which tool built it.
    pub initramfs_builder: Option<InitramfsFlavour>,
    /// Modules added to the initramfs (the closure), in load order.
    pub modules_added: Vec<String>,
    /// Needed modules the kernel has built in.
    pub modules_builtin: Vec<String>,
    /// Needed modules that cannot be provided, why, and the command for the source.
    pub missing: Vec<MissingModule>,
    /// The file changes.
    pub changes: Vec<PlannedChange>,
    /// What was decided for each guest tool found.
    pub tools: Vec<ToolDecision>,
    /// What needs fixing but was not fixed.
    pub unresolved: Vec<String>,
    /// Remarks.
    pub notes: Vec<String>,
    /// Whether anything was written (false for a dry run).
    pub written: bool,
}

/// A file operation on one file system.
enum Op {
    Replace(String, Vec<u8>),
    Add(String, Vec<u8>),
    Mkdir(String),
    Remove(String),
}

/// The old platform's device names of every partition with a file system, and the
/// logical volumes' names, mapped to the file system's UUID.
fn volume_map(volumes: &[LinuxVolume]) -> VolumeMap {
    let mut m = VolumeMap::new();
    for v in volumes {
        let Some(uuid) = v.fs.as_ref().and_then(|f| f.uuid.clone()) else {
            continue;
        };
        m.add_uuid(&uuid);
        if let Some(n) = v.partition.filter(|n| *n > 0) {
            m.add_partition(0, n, &uuid);
        }
        if let Some((vg, name)) = v.lv.as_ref().and_then(|l| l.split_once('/')) {
            m.insert(&format!("/dev/{vg}/{name}"), &uuid);
            m.insert(
                &format!(
                    "/dev/mapper/{}-{}",
                    vg.replace('-', "--"),
                    name.replace('-', "--")
                ),
                &uuid,
            );
        }
    }
    m
}

/// The initramfs with `archive` appended: the old bytes, zero padding to a multiple of 4
/// (the kernel's unpacker looks for the next archive's magic at 4-byte boundaries and skips
/// zero bytes), then the archive.
pub fn append_archive(old: &[u8], archive: &[u8]) -> Vec<u8> {
    let pad = (4 - old.len() % 4) % 4;
    let mut out = Vec::with_capacity(old.len() + pad + archive.len());
    out.extend_from_slice(old);
    out.resize(old.len() + pad, 0);
    out.extend_from_slice(archive);
    out
}

/// Plans (and unless `opts.dry_run`, makes) the changes that let the Linux guest in `image`
/// boot on `opts.target`. See the module documentation.
pub fn inject_linux(image: &Path, opts: &LinuxInjectOptions) -> Result<LinuxInjectReport> {
    let target: ModuleTarget = opts.target.parse()?;
    let mut tx = ImageTx::open(image, &opts.open)?;
    let disk = tx.disk.original();
    let volumes = find_volumes(&tx.disk).map_err(|e| e.in_file(image))?;
    let found = find_linux(disk.clone(), &volumes);
    let Some((root_vol, root)) = found.roots().next() else {
        // A root that could not be read because its journal needs replaying: say that first.
        if let Some(v) = found
            .volumes
            .iter()
            .find(|v| v.fs.as_ref().is_some_and(|f| f.needs_recovery))
        {
            return Err(Error::Unsupported(format!(
                "the {} file system on {}: its journal needs recovery (it was not cleanly \
                 unmounted); mount and unmount it on the source, or run e2fsck, then sync \
                 again; nothing was written",
                v.fs.as_ref().map(|f| f.kind.name()).unwrap_or("Linux"),
                v.location
            ))
            .in_file(image));
        }
        return Err(Error::InvalidArgument(match found.describe() {
            Some(d) => format!("no Linux root file system could be read: {d}"),
            None => "no Linux installation found in the image".into(),
        })
        .in_file(image));
    };
    let root_fs = open_volume(&disk, root_vol)?;
    let boot_vol = boot_volume_of(
        &found.volumes,
        root_vol,
        &read_config(root_fs.as_ref(), None)?,
    );
    let boot_fs = match boot_vol {
        Some(v) => Some(open_volume(&disk, v)?),
        None => None,
    };
    let cfg = read_config(root_fs.as_ref(), boot_fs.as_deref())?;
    let map = volume_map(&found.volumes);
    let fixes = plan_fixes(&cfg, &map, &opts.target, &opts.fix)?;
    let bootfs = BootFs {
        root: root_fs.as_ref(),
        boot: boot_fs.as_deref(),
    };
    let kernels = kernel_files(&bootfs)?;
    let kernel: Option<&KernelFiles> = match &opts.kernel {
        Some(v) => Some(kernels.iter().find(|k| &k.version == v).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "kernel {v} is not installed in the guest (it has {})",
                kernels
                    .iter()
                    .map(|k| k.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
        None => kernels
            .iter()
            .rev()
            .find(|k| k.initramfs.is_some())
            .or(kernels.last()),
    };
    let mut report = LinuxInjectReport {
        target: opts.target.clone(),
        root: root.describe(),
        root_volume: root_vol.location.clone(),
        boot_volume: boot_vol.map(|v| v.location.clone()),
        kernel: kernel.map(|k| k.version.clone()),
        initramfs: kernel.and_then(|k| k.initramfs.clone()),
        initramfs_builder: None,
        modules_added: Vec::new(),
        modules_builtin: Vec::new(),
        missing: Vec::new(),
        changes: Vec::new(),
        tools: fixes.tools.clone(),
        unresolved: fixes.unresolved.clone(),
        notes: cfg.notes.clone(),
        written: false,
    };
    // Operations per file system: root, boot.
    let mut root_ops: Vec<Op> = Vec::new();
    let mut boot_ops: Vec<Op> = Vec::new();
    let vol_name = |role: FsRole| match (role, boot_vol) {
        (FsRole::Boot, Some(b)) => b.location.clone(),
        _ => root_vol.location.clone(),
    };
    for c in &fixes.changes {
        let (action, before, after, op) = match &c.action {
            ChangeAction::Replace { before, after } => (
                "replace",
                Some(before.clone()),
                Some(after.clone()),
                Op::Replace(c.path.clone(), after.clone().into_bytes()),
            ),
            ChangeAction::Add { content } => (
                "add",
                None,
                Some(content.clone()),
                Op::Add(c.path.clone(), content.clone().into_bytes()),
            ),
            ChangeAction::Remove { before } => (
                "remove",
                Some(before.clone()),
                None,
                Op::Remove(c.path.clone()),
            ),
            ChangeAction::RemoveLink { target } => (
                "remove-link",
                Some(target.clone()),
                None,
                Op::Remove(c.path.clone()),
            ),
        };
        report.changes.push(PlannedChange {
            path: c.guest_path(),
            volume: vol_name(c.fs),
            action,
            bytes: after.as_ref().map(|a| a.len() as u64).unwrap_or(0),
            before,
            after,
            reason: c.reason.clone(),
        });
        match c.fs {
            FsRole::Root => root_ops.push(op),
            FsRole::Boot => boot_ops.push(op),
            FsRole::Esp => {
                return Err(Error::Unsupported(format!(
                    "{}: changes on the EFI system partition are not written",
                    c.guest_path()
                )));
            }
        }
    }
    // The early-boot modules.
    if let Some(k) = kernel {
        plan_modules(
            k,
            target,
            &bootfs,
            &mut report,
            &mut root_ops,
            &mut boot_ops,
        )?;
    } else {
        report
            .notes
            .push("no kernel found under /boot: the initramfs is not changed".into());
    }
    if opts.dry_run {
        return Ok(report);
    }
    // Refuse before writing anything when a file system to change cannot be written.
    let writable = |v: &LinuxVolume| v.fs.as_ref().is_some_and(|f| f.kind.is_ext());
    for (ops, v) in [(&root_ops, Some(root_vol)), (&boot_ops, boot_vol)] {
        let Some(v) = v else { continue };
        if !ops.is_empty() && !writable(v) {
            return Err(Error::Unsupported(format!(
                "the guest's {} file system on {} cannot be written yet (only ext2/3/4 is); \
                 `diskconv inject linux --dry-run` prints the changes to make on the source \
                 before the final sync{}",
                v.fs.as_ref().map(|f| f.kind.name()).unwrap_or("unknown"),
                v.location,
                source_commands(&report)
            ))
            .in_file(image));
        }
    }
    drop(boot_fs);
    drop(root_fs);
    for (ops, v) in [(root_ops, Some(root_vol)), (boot_ops, boot_vol)] {
        let Some(v) = v else { continue };
        if ops.is_empty() {
            continue;
        }
        let layout = v
            .layout
            .as_ref()
            .ok_or_else(|| Error::Internal(format!("{}: its layout is unknown", v.location)))?;
        let mut w = Ext4Writer::open(layout.on(&mut tx.disk)).map_err(|e| e.in_file(image))?;
        apply(&mut w, &ops).map_err(|e| e.in_file(image))?;
    }
    let stats = tx.commit().map_err(|e| e.in_file(image))?;
    report.written = stats.bytes_written > 0;
    Ok(report)
}

/// Plans the archive appended to `k`'s initramfs and the guest configuration that keeps its
/// modules across rebuilds.
fn plan_modules(
    k: &KernelFiles,
    target: ModuleTarget,
    fs: &BootFs,
    report: &mut LinuxInjectReport,
    root_ops: &mut Vec<Op>,
    boot_ops: &mut Vec<Op>,
) -> Result<()> {
    let Some(path) = &k.initramfs else {
        report.notes.push(format!(
            "kernel {} has no initramfs under /boot: nothing to extend",
            k.version
        ));
        return Ok(());
    };
    let (ifs, ipath) = fs.locate(path);
    let old = ifs
        .read_file(&ipath, MAX_INITRAMFS)?
        .ok_or_else(|| Error::Internal(format!("{path} vanished while planning")))?;
    let ird = Initramfs::parse(&old).map_err(|e| e.in_file(path))?;
    let existing = existing_initramfs(&ird);
    report.initramfs_builder = Some(existing.flavour);
    let decompress = |b: &[u8]| -> Result<Vec<u8>> {
        match crate::guest::compress::decompress_detected(b, 0, 64 << 20)? {
            Some(d) => Ok(d.data),
            None => Ok(b.to_vec()),
        }
    };
    let plan = plan_early_modules(
        &k.version,
        &boot_drivers(target),
        fs.root,
        &existing,
        Some(&decompress),
    )?;
    report.modules_added = plan.added.clone();
    report.modules_builtin = plan.builtin.clone();
    report.missing = plan.missing.clone();
    report.notes.extend(plan.notes.iter().cloned());
    if !plan.files.is_empty() {
        let files: Vec<NewcFile> = plan
            .files
            .iter()
            .map(|f| {
                if f.is_dir() {
                    NewcFile::dir(f.path.clone(), f.mode & 0o7777)
                } else {
                    NewcFile::file(f.path.clone(), f.mode & 0o7777, f.data.clone())
                }
            })
            .collect();
        let archive = write_newc(&files)?;
        let new = append_archive(&old, &archive);
        report.changes.push(PlannedChange {
            path: path.clone(),
            volume: report
                .boot_volume
                .clone()
                .filter(|_| fs.boot.is_some())
                .unwrap_or_else(|| report.root_volume.clone()),
            action: "append",
            before: None,
            after: None,
            bytes: (new.len() - old.len()) as u64,
            reason: format!(
                "the {} modules for {} at early boot: {}",
                plan.added.len(),
                report.target,
                plan.added.join(" ")
            ),
        });
        let op = Op::Replace(ipath.clone(), new);
        if fs.boot.is_some() && path.starts_with("/boot/") {
            boot_ops.push(op);
        } else {
            root_ops.push(op);
        }
    }
    for (p, content) in &plan.guest_config {
        let before = fs.root.read_text(p, 1 << 20)?;
        let exists = before.is_some();
        report.changes.push(PlannedChange {
            path: p.clone(),
            volume: report.root_volume.clone(),
            action: if exists { "replace" } else { "add" },
            bytes: content.len() as u64,
            before,
            after: Some(content.clone()),
            reason: "keeps the modules in the initramfs the guest builds next".into(),
        });
        if exists {
            root_ops.push(Op::Replace(p.clone(), content.clone().into_bytes()));
        } else {
            // Its folders first (`/etc/dracut.conf.d` may not exist yet).
            let mut dir = String::new();
            let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            for part in &parts[..parts.len().saturating_sub(1)] {
                dir.push('/');
                dir.push_str(part);
                if fs.root.stat(&dir)?.is_none() {
                    root_ops.push(Op::Mkdir(dir.clone()));
                }
            }
            root_ops.push(Op::Add(p.clone(), content.clone().into_bytes()));
        }
    }
    Ok(())
}

/// The operations on one ext2/3/4 file system, in order; folders of added files are made.
fn apply<D: DiskIo>(w: &mut Ext4Writer<D>, ops: &[Op]) -> Result<()> {
    for op in ops {
        match op {
            Op::Replace(p, data) => w.replace_file(p, data)?,
            Op::Add(p, data) => w.create_file(p, data, 0o644, 0, 0)?,
            Op::Mkdir(p) => w.mkdir(p, 0o755)?,
            Op::Remove(p) => w.unlink(p)?,
        }
    }
    Ok(())
}

/// The commands that make the planned module changes on the source machine, for a guest
/// whose file system diskconv cannot write.
fn source_commands(r: &LinuxInjectReport) -> String {
    let (Some(k), false) = (&r.kernel, r.modules_added.is_empty()) else {
        return String::new();
    };
    let names = r.modules_added.join(" ");
    match r.initramfs_builder {
        Some(InitramfsFlavour::Dracut) => format!(
            "; for the initramfs: dracut -f --add-drivers \"{names}\" {} {k}",
            r.initramfs.as_deref().unwrap_or("")
        ),
        _ => format!(
            "; for the initramfs: printf '%s\\n' {names} >> /etc/initramfs-tools/modules && \
             update-initramfs -u -k {k}"
        ),
    }
}
