//! The preflight report: will this image import into a target, and boot there?
//!
//! [`preflight`] reads an image (read-only) and checks it against a [`Target`]'s profile:
//! the artifact format, the files the image names, the virtual size, the sector size, the
//! partition table and boot mode, the operating system found, and for Windows the NTFS state,
//! the boot storage driver the target needs, and the free space an injection needs. Each check
//! passes, warns or fails with its reason and, for a failure, what fixes it (a `diskconv`
//! command where one exists). Nothing is written to the image.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::cloud::profile::{BootMode, Profile, Sector4k, Target, boot_modes_for, profile};
use crate::error::{Error, Result};
use crate::guest::disk::DiskRead;
use crate::guest::hive::{Hive, RegData};
use crate::guest::kmod::{DriverRole, ModuleState, ModuleTarget, Need, boot_drivers};
use crate::guest::ntfs::{NtfsOpenOptions, NtfsVolume, VolumeState};
use crate::guest::partition::{
    self, FsKind, PartitionTable, PartitionType, Scheme, Volume, find_volumes,
};
use crate::guest::volume::open_ntfs;
use crate::image::{Format, ImageReader};
use crate::inject::adapt::{CloudTarget, cloud_inbox_drivers};
use crate::inject::windows::{
    BootStorageDriver, EditPlan, InboxDriver, SERVICE_BOOT_START, plan_inbox_driver,
};
use crate::inspect::linux::{LinuxRoot, LinuxVolume, find_linux};
use crate::inspect::windows::{WindowsInfo, current_control_set, windows_info};
use crate::inspect::{describe_volume, read_hive, windows_root};
use crate::open::OpenOptions;
use crate::util::human_bytes;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing stands in the way.
    Pass,
    /// Worth knowing or doing, but the import can go ahead.
    Warn,
    /// The import would fail, or the guest would not boot.
    Fail,
}

impl Status {
    /// `pass`, `warn` or `fail`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name of the check: `format`, `references`, `size`, `sector-size`,
    /// `partition-table`, `boot-mode`, `os`, `ntfs`, `boot-driver`, `network-driver`,
    /// `free-space`, `linux-config`.
    pub id: &'static str,
    /// Pass, warn or fail.
    pub status: Status,
    /// Why, in a sentence or two.
    pub reason: String,
    /// What fixes it (a failure or a warning), a `diskconv` command where one exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The documentation page of the target's rule that decided it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
}

impl Check {
    fn new(id: &'static str, status: Status, reason: impl Into<String>) -> Check {
        Check {
            id,
            status,
            reason: reason.into(),
            fix: None,
            source: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    fn source(mut self, url: &'static str) -> Check {
        self.source = Some(url);
        self
    }
}

/// What kind of operating system was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OsKind {
    /// Windows (from its SYSTEM and SOFTWARE hives).
    Windows,
    /// Linux.
    Linux,
}

/// An operating system found on a volume of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundOs {
    /// Windows or Linux.
    pub kind: OsKind,
    /// Partition number of its volume (`None`: the whole disk, or a logical volume).
    pub partition: Option<u32>,
    /// A logical volume it is on (`LV vg0/root (on partition 2)`), when it is on one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_volume: Option<String>,
    /// One line: product (or distribution), version, build, architecture.
    pub description: String,
    /// The Windows details, for Windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowsInfo>,
}

/// The output a conversion will write, when the preflight runs before one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedOutput {
    /// Registry name of the output format.
    pub format: String,
    /// The output's virtual size.
    pub virtual_size: u64,
    /// Its logical sector size (4096 only for a VHDX written so).
    pub logical_sector_size: u32,
    /// Where the output departs from the target's rules because `-O`/`-o` said so.
    pub conflicts: Vec<String>,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct PreflightOptions {
    /// The platform.
    pub target: Target,
    /// The boot mode the VM will use, when known (`--boot-mode`); `None`: any the target has.
    pub boot_mode: Option<BootMode>,
    /// The output of the conversion the preflight precedes; `None`: the image itself is the
    /// artifact.
    pub output: Option<PlannedOutput>,
    /// How to open the image.
    pub open: OpenOptions,
}

impl PreflightOptions {
    /// Checks for `target`, the image itself being the artifact.
    pub fn new(target: Target) -> PreflightOptions {
        PreflightOptions {
            target,
            boot_mode: None,
            output: None,
            open: OpenOptions::default(),
        }
    }
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreflightReport {
    /// The image.
    pub image: PathBuf,
    /// The target.
    pub target: Target,
    /// The target's name in messages.
    pub target_title: &'static str,
    /// The image's format.
    pub format: Format,
    /// Its virtual size.
    pub virtual_size: u64,
    /// The output of the conversion, when the preflight precedes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PlannedOutput>,
    /// The operating systems found.
    pub operating_systems: Vec<FoundOs>,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// The worst status of the checks.
    pub status: Status,
}

impl PreflightReport {
    /// Whether a check failed.
    pub fn failed(&self) -> bool {
        self.status == Status::Fail
    }

    /// The checks with this status.
    pub fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// The report as text: a summary line, then one line per check (`PASS`, `WARN`, `FAIL`),
    /// its fix and source indented below it.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "preflight of {} for {} ({}): {} failed, {} warning(s), {} passed",
            self.image.display(),
            self.target,
            self.target_title,
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.count(Status::Pass)
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  {:<4}  {:<15} {}",
                c.status.name().to_ascii_uppercase(),
                c.id,
                c.reason
            );
            if let Some(f) = &c.fix {
                let _ = writeln!(s, "        {:<15} fix: {f}", "");
            }
            if let Some(u) = c.source {
                let _ = writeln!(s, "        {:<15} rule: {u}", "");
            }
        }
        s
    }
}

/// Opens the image at `path` read-only and checks it for `opts.target`.
pub fn preflight(path: &Path, opts: &PreflightOptions) -> Result<PreflightReport> {
    let reader: Arc<dyn ImageReader> = Arc::from(crate::open(path, &opts.open)?);
    preflight_reader(&reader, path, opts)
}

/// Checks the open image `reader` (opened from `path`, which the report and the fixes name)
/// for `opts.target`. Errors are only for an image that cannot be read at all; everything
/// else is a check.
pub fn preflight_reader(
    reader: &Arc<dyn ImageReader>,
    path: &Path,
    opts: &PreflightOptions,
) -> Result<PreflightReport> {
    let p = profile(opts.target);
    let info = reader.info();
    let size = reader.virtual_size();
    let img = shell_word(path);
    let t = opts.target.name();
    let convert_fix = format!("diskconv convert --target {t} {img} OUTPUT");
    let mut checks = Vec::new();

    // The artifact: the output of the conversion, or the image as it is.
    let (art_format, art_subformat) = match &opts.output {
        Some(o) => (o.format.clone(), None),
        None => (info.format.name().to_string(), info.subformat.clone()),
    };
    checks.push(format_check(
        p,
        &art_format,
        art_subformat.as_deref(),
        opts.output.as_ref(),
        &convert_fix,
    ));
    checks.push(references_check(
        p,
        &info,
        opts.output.is_some(),
        &convert_fix,
    ));
    checks.push(size_check(p, size, opts.output.as_ref(), &convert_fix));

    let disk: &dyn ImageReader = reader.as_ref();
    if size == 0 {
        return Err(Error::InvalidArgument(format!(
            "the {} image is empty (0 bytes): nothing to check",
            info.format
        ))
        .in_file(path));
    }
    let table = partition::read_partition_table(&disk).map_err(|e| e.in_file(path))?;
    let volumes = find_volumes(&disk).map_err(|e| e.in_file(path))?;
    let container_sector = info
        .flags
        .iter()
        .find_map(|f| f.strip_prefix("logical_sector_size="))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(512);
    let art_sector = match &opts.output {
        Some(o) => o.logical_sector_size,
        None => container_sector,
    };
    checks.push(sector_check(
        p,
        &table,
        container_sector,
        art_sector,
        &art_format,
    ));
    checks.push(partition_check(&table, size));
    let boot = BootLayout::of(&table);
    checks.push(boot_check(p, &boot, &art_format, opts.boot_mode));

    // Windows: each NTFS volume holding Windows\System32\config\SYSTEM.
    let mut found = Vec::new();
    let mut scans = Vec::new();
    let mut ntfs_notes: Vec<(Status, String)> = Vec::new();
    let mut os_errors = Vec::new();
    for v in &volumes {
        match v.fs {
            FsKind::BitLocker => ntfs_notes.push((
                Status::Fail,
                format!(
                    "{} is BitLocker-encrypted: it cannot be checked or adapted offline, and \
                     its key (sealed to the old platform's TPM) is not there after the move",
                    describe_volume(v)
                ),
            )),
            FsKind::Ntfs => match scan_volume(disk, v, opts.target, &boot) {
                Ok((state, scan)) => {
                    let windows = scan.is_some();
                    if let Some(reason) = state.not_writable_reason() {
                        ntfs_notes.push((
                            if windows { Status::Fail } else { Status::Warn },
                            format!("{}: {reason}", describe_volume(v)),
                        ));
                    }
                    if let Some(s) = scan {
                        found.push(FoundOs {
                            kind: OsKind::Windows,
                            partition: v.partition.as_ref().map(|p| p.number),
                            logical_volume: None,
                            description: s.info.describe(),
                            windows: Some(s.info.clone()),
                        });
                        scans.push(s);
                    }
                }
                Err(e) => os_errors.push(format!("{}: {}", describe_volume(v), e.chain())),
            },
            _ => {}
        }
    }
    // Linux: each root the read-only detection finds (ext2/3/4 read; XFS, btrfs, LVM layouts
    // it cannot read are left to `os_check`'s list of Linux volumes).
    let linux = find_linux(reader.clone(), &volumes);
    for (v, r) in linux.roots() {
        found.push(FoundOs {
            kind: OsKind::Linux,
            partition: v.partition.filter(|&n| n > 0),
            logical_volume: v.lv.as_ref().map(|_| v.location.clone()),
            description: r.describe(),
            windows: None,
        });
    }
    for v in linux.volumes.iter().filter(|v| v.root.is_none()) {
        if let Some(note) = &v.note {
            os_errors.push(format!("{}: {note}", v.location));
        }
    }
    checks.push(os_check(&found, &volumes, &os_errors));
    for (v, r) in linux.roots() {
        checks.extend(linux_checks(p, v, r, &img));
    }
    if !ntfs_notes.is_empty() || !scans.is_empty() {
        checks.push(ntfs_check(&ntfs_notes));
    }
    for s in &scans {
        checks.extend(windows_checks(p, s, &img));
    }
    let status = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass);
    Ok(PreflightReport {
        image: path.to_path_buf(),
        target: opts.target,
        target_title: p.title,
        format: info.format,
        virtual_size: size,
        output: opts.output.clone(),
        operating_systems: found,
        checks,
        status,
    })
}

/// A path as a shell word for the fix commands (quoted when it holds anything but plain
/// characters).
fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn format_check(
    p: &Profile,
    format: &str,
    subformat: Option<&str>,
    output: Option<&PlannedOutput>,
    convert_fix: &str,
) -> Check {
    let src = p.rules[0].source;
    let Some(artifact) = p.artifact(format) else {
        let c = Check::new(
            "format",
            Status::Warn,
            format!(
                "{} {format}: {} imports {}",
                if output.is_some() {
                    "the output is"
                } else {
                    "the image is"
                },
                p.title,
                p.format_names()
            ),
        )
        .source(src);
        return match output {
            Some(_) => c.fix(format!(
                "leave out -O to write {}",
                p.default_artifact().format
            )),
            None => c.fix(convert_fix),
        };
    };
    if let Some(o) = output {
        if !o.conflicts.is_empty() {
            return Check::new("format", Status::Warn, o.conflicts.join("; "))
                .fix("leave out the -O/-o options that override the target's")
                .source(src);
        }
        return Check::new(
            "format",
            Status::Pass,
            format!(
                "the output is {format}{}, which {} imports",
                if artifact.options.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", artifact.options)
                },
                p.title
            ),
        )
        .source(src);
    }
    // The image itself: the subformat the target's options ask for.
    let wanted = artifact
        .options
        .split(',')
        .find_map(|o| o.strip_prefix("subformat="));
    match (wanted, subformat) {
        (Some(w), Some(s)) if !w.eq_ignore_ascii_case(s) => Check::new(
            "format",
            Status::Warn,
            format!(
                "the image is a {s} {format}; {} imports {format} as {w} only",
                p.title
            ),
        )
        .fix(convert_fix)
        .source(src),
        _ => Check::new(
            "format",
            Status::Pass,
            format!("the image is {format}, which {} imports", p.title),
        )
        .source(src),
    }
}

fn references_check(
    p: &Profile,
    info: &crate::image::ImageInfo,
    converting: bool,
    convert_fix: &str,
) -> Check {
    let mut named = Vec::new();
    if let Some(b) = &info.backing_file {
        named.push(format!("backing file {b}"));
    }
    if let Some(d) = &info.data_file {
        named.push(format!("data file {d}"));
    }
    if info.format == Format::Vmdk {
        if let Some(s) = &info.subformat {
            let l = s.to_ascii_lowercase();
            if l != "streamoptimized" && l != "monolithicsparse" {
                named.push(format!("extent files (a {s} VMDK descriptor)"));
            }
        }
    }
    let openstack = p.target == Target::Openstack;
    let src = if openstack {
        Some(p.rules[1].source)
    } else {
        None
    };
    let c = if named.is_empty() {
        Check::new(
            "references",
            Status::Pass,
            "the image names no other file (no backing, parent or data file)",
        )
    } else if converting {
        Check::new(
            "references",
            Status::Pass,
            format!(
                "the image names {}; the conversion reads through them and writes one \
                 self-contained image",
                named.join(", ")
            ),
        )
    } else {
        Check::new(
            "references",
            Status::Fail,
            format!(
                "the image names {}, which {} would not have{}",
                named.join(", "),
                p.title,
                if openstack {
                    " (Glance refuses such a qcow2)"
                } else {
                    ""
                }
            ),
        )
        .fix(format!("{convert_fix} (writes one self-contained image)"))
    };
    match src {
        Some(u) => c.source(u),
        None => c,
    }
}

fn size_check(p: &Profile, size: u64, output: Option<&PlannedOutput>, convert_fix: &str) -> Check {
    let src = p
        .rules
        .iter()
        .find(|r| r.text.contains("size") || r.text.contains("TiB") || r.text.contains("TB"))
        .map(|r| r.source)
        .unwrap_or(p.rules[0].source);
    let out = match output {
        Some(o) => o.virtual_size,
        None => p.artifact_size(size),
    };
    if let Some(max) = p.max_size {
        if out > max {
            return Check::new(
                "size",
                Status::Fail,
                format!(
                    "the disk is {} ({size} bytes); {} takes at most {}",
                    human_bytes(out),
                    p.title,
                    human_bytes(max)
                ),
            )
            .fix("shrink the file systems and the partitions in the guest, then the disk")
            .source(src);
        }
    }
    if p.target == Target::Huawei && size > 128 << 30 {
        return Check::new(
            "size",
            Status::Warn,
            format!(
                "the disk is {}: an image file over 128 GB is imported only through fast import \
                 (raw with a bitmap, or ZVHD2)",
                human_bytes(size)
            ),
        )
        .fix(format!("{convert_fix} -O raw, then fast import"))
        .source(p.rules[1].source);
    }
    if out != size {
        let why = if size < p.min_size {
            format!("at least {}", human_bytes(p.min_size))
        } else {
            format!("a whole number of {}", human_bytes(p.size_unit))
        };
        let c = Check::new(
            "size",
            Status::Warn,
            format!(
                "the virtual size {size} bytes ({}) is not {why}: the {} output is {out} \
                 bytes ({}), the extra {} bytes read as zeros",
                human_bytes(size),
                output
                    .map(|o| o.format.as_str())
                    .unwrap_or(p.default_artifact().format),
                human_bytes(out),
                out - size
            ),
        )
        .source(src);
        return if output.is_some() {
            c
        } else {
            c.fix(format!("{convert_fix} (rounds the size)"))
        };
    }
    Check::new(
        "size",
        Status::Pass,
        format!(
            "{} ({size} bytes), within {}'s limits{}",
            human_bytes(size),
            p.title,
            if p.size_unit > 512 {
                format!(" and a whole number of {}", human_bytes(p.size_unit))
            } else {
                String::new()
            }
        ),
    )
    .source(src)
}

fn sector_check(
    p: &Profile,
    table: &PartitionTable,
    container: u32,
    artifact: u32,
    format: &str,
) -> Check {
    let guest = container.max(table.sector_size);
    let src = p
        .rules
        .iter()
        .find(|r| r.text.contains("sector"))
        .map(|r| r.source);
    let done = |c: Check| match src {
        Some(u) => c.source(u),
        None => c,
    };
    if guest <= 512 {
        return done(Check::new(
            "sector-size",
            Status::Pass,
            "512-byte logical sectors",
        ));
    }
    let what = format!(
        "the disk has {guest}-byte logical sectors ({})",
        if table.sector_size == guest {
            "its partition table is laid out for them"
        } else {
            "its container says so"
        }
    );
    done(match p.sector_4k {
        Sector4k::Refused => Check::new(
            "sector-size",
            Status::Fail,
            format!(
                "{what}; {} presents 512-byte sectors, where the partition table and boot code \
                 are not found",
                p.title
            ),
        )
        .fix(
            "move the guest to a 512-byte-sector disk first (a file-level copy or a backup \
             restore); the sector size cannot be converted block by block",
        ),
        Sector4k::Configurable => Check::new(
            "sector-size",
            Status::Warn,
            format!(
                "{what}; {} presents them only when the virtual disk is configured for \
                 4096-byte sectors",
                p.title
            ),
        )
        .fix("attach the disk with logical_block_size=4096 (QEMU) / <blockio logical_block_size='4096'/> (libvirt)"),
        Sector4k::Supported => {
            if format == "vhdx" && artifact == guest {
                Check::new(
                    "sector-size",
                    Status::Pass,
                    format!("{what}; the VHDX records them"),
                )
            } else {
                Check::new(
                    "sector-size",
                    Status::Fail,
                    format!(
                        "{what}; the {format} artifact records 512-byte sectors, so the guest \
                         would not find its partition table"
                    ),
                )
                .fix(format!("-O vhdx -o logical_sector_size={guest}"))
            }
        }
    })
}

fn partition_check(table: &PartitionTable, size: u64) -> Check {
    let n = table.partitions.len();
    match table.scheme {
        Scheme::None => Check::new(
            "partition-table",
            Status::Warn,
            "no partition table: a disk without one does not boot (fine for a data disk)",
        ),
        Scheme::Mbr if size > 2 * TIB => Check::new(
            "partition-table",
            Status::Warn,
            format!(
                "MBR with {n} partition(s) on a {} disk: MBR addresses 2 TiB of 512-byte \
                 sectors, the rest is unusable",
                human_bytes(size)
            ),
        )
        .fix("convert the disk to GPT in the guest (mbr2gpt on Windows) and boot UEFI"),
        Scheme::Mbr => Check::new(
            "partition-table",
            Status::Pass,
            format!("MBR with {n} partition(s)"),
        ),
        Scheme::Gpt => Check::new(
            "partition-table",
            Status::Pass,
            format!("GPT with {n} partition(s)"),
        ),
    }
}

/// EFI System Partition type GUID (UEFI 2.10, 5.3.3).
const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// BIOS boot partition type GUID (GRUB's core image on GPT).
const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
/// MBR partition type of an EFI System Partition.
const MBR_ESP: u8 = 0xEF;

/// How a disk's partitioning lets it boot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BootLayout {
    scheme: Scheme,
    /// The EFI System Partition's number.
    esp: Option<u32>,
    /// The active MBR partition, or the GPT BIOS boot partition.
    bios: Option<u32>,
}

impl BootLayout {
    fn of(t: &PartitionTable) -> BootLayout {
        let mut b = BootLayout {
            scheme: t.scheme,
            esp: None,
            bios: None,
        };
        for p in &t.partitions {
            match &p.kind {
                PartitionType::Gpt(g) if g.eq_ignore_ascii_case(ESP_GUID) => {
                    b.esp = b.esp.or(Some(p.number))
                }
                PartitionType::Gpt(g) if g.eq_ignore_ascii_case(BIOS_BOOT_GUID) => {
                    b.bios = b.bios.or(Some(p.number))
                }
                PartitionType::Mbr(MBR_ESP) => b.esp = b.esp.or(Some(p.number)),
                PartitionType::Mbr(_) if p.bootable => b.bios = b.bios.or(Some(p.number)),
                _ => {}
            }
        }
        b
    }

    fn modes(&self) -> Vec<BootMode> {
        let mut m = Vec::new();
        if self.bios.is_some() {
            m.push(BootMode::Bios);
        }
        if self.esp.is_some() {
            m.push(BootMode::Uefi);
        }
        m
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (self.scheme, self.bios) {
            (Scheme::Mbr, Some(n)) => parts.push(format!("MBR with active partition {n} (BIOS)")),
            (Scheme::Mbr, None) => parts.push("MBR without an active partition".to_string()),
            (Scheme::Gpt, Some(n)) => parts.push(format!("GPT with BIOS boot partition {n}")),
            (Scheme::Gpt, None) => parts.push("GPT without a BIOS boot partition".to_string()),
            (Scheme::None, _) => parts.push("no partition table".to_string()),
        }
        match self.esp {
            Some(n) => parts.push(format!("EFI System Partition {n} (UEFI)")),
            None => parts.push("no EFI System Partition".to_string()),
        }
        parts.join(", ")
    }
}

fn boot_check(p: &Profile, b: &BootLayout, format: &str, asked: Option<BootMode>) -> Check {
    let src = p
        .rules
        .iter()
        .find(|r| r.text.contains("UEFI") || r.text.contains("uefi") || r.text.contains("BIOS"))
        .map(|r| r.source)
        .unwrap_or(p.rules[0].source);
    let disk = b.modes();
    let layout = b.describe();
    if b.scheme == Scheme::None {
        return Check::new(
            "boot-mode",
            Status::Warn,
            "no partition table, so no boot loader: the disk does not boot as it is (fine for a \
             data disk)",
        )
        .source(src);
    }
    if disk.is_empty() {
        return Check::new(
            "boot-mode",
            Status::Warn,
            format!("{layout}: neither BIOS nor UEFI finds a boot loader (a data disk?)"),
        )
        .source(src);
    }
    let target_modes = boot_modes_for(p, format);
    let gen1 = p.target == Target::Hyperv && format == "vpc";
    let allowed: Vec<BootMode> = match asked {
        Some(m) => target_modes.iter().copied().filter(|x| *x == m).collect(),
        None => target_modes.clone(),
    };
    let names = |v: &[BootMode]| {
        v.iter()
            .map(|m| m.name().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let usable: Vec<BootMode> = disk
        .iter()
        .copied()
        .filter(|m| allowed.contains(m))
        .collect();
    if usable.is_empty() {
        let mode_text = if gen1 {
            "Hyper-V boots a VHD only in a generation 1 VM, which boots BIOS only".to_string()
        } else if let Some(m) = asked {
            if target_modes.contains(&m) {
                format!(
                    "the VM boots {} (--boot-mode)",
                    m.name().to_ascii_uppercase()
                )
            } else {
                format!(
                    "{} does not boot {} (--boot-mode)",
                    p.title,
                    m.name().to_ascii_uppercase()
                )
            }
        } else {
            format!("{} boots {}", p.title, names(&target_modes))
        };
        let fix = if gen1 {
            "write a VHDX for a generation 2 VM: leave out -O vpc (or -O vhdx)".to_string()
        } else if disk == [BootMode::Uefi] {
            format!(
                "boot it UEFI ({}): --boot-mode uefi; or convert the guest to BIOS/MBR inside \
                 the VM first",
                p.uefi_note
            )
        } else {
            "boot it BIOS (--boot-mode bios); or convert the disk to GPT with an EFI System \
             Partition in the guest first (mbr2gpt /convert on Windows)"
                .to_string()
        };
        return Check::new(
            "boot-mode",
            Status::Fail,
            format!("{layout}: it boots {} only; {mode_text}", names(&disk)),
        )
        .fix(fix)
        .source(if gen1 { p.rules[0].source } else { src });
    }
    if usable == [BootMode::Uefi] && asked.is_none() && !p.uefi_note.is_empty() {
        return Check::new(
            "boot-mode",
            Status::Warn,
            format!(
                "{layout}: it boots UEFI only, which {} must be told at import",
                p.title
            ),
        )
        .fix(p.uefi_note)
        .source(src);
    }
    Check::new(
        "boot-mode",
        Status::Pass,
        format!(
            "{layout}: boots {}, which {} supports{}",
            names(&usable),
            p.title,
            if gen1 { " (generation 1)" } else { "" }
        ),
    )
    .source(src)
}

/// MBR partition types of Linux: native (0x83), swap (0x82), LVM (0x8E), RAID (0xFD).
const LINUX_MBR: [u8; 4] = [0x83, 0x82, 0x8E, 0xFD];
/// GPT partition type GUIDs of Linux (Discoverable Partitions Specification): file system
/// data, swap, LVM, RAID, root x86-64, root ARM64, /home.
const LINUX_GPT: [&str; 7] = [
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928",
    "A19D880F-05FC-4D3B-A006-743F0F84911E",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915",
];

/// What on a volume looks like Linux: its file system or partition type.
fn linux_hint(v: &Volume) -> Option<String> {
    let by_fs = match v.fs {
        FsKind::Ext => Some("ext2/3/4"),
        FsKind::Xfs => Some("XFS"),
        FsKind::Swap => Some("Linux swap"),
        _ => None,
    };
    let by_type = match v.partition.as_ref().map(|p| &p.kind) {
        Some(PartitionType::Mbr(t)) if LINUX_MBR.contains(t) => Some(format!("type {t:#04x}")),
        Some(PartitionType::Gpt(g)) if LINUX_GPT.iter().any(|l| l.eq_ignore_ascii_case(g)) => {
            Some(format!("type {g}"))
        }
        _ => None,
    };
    let what = match v.partition.as_ref() {
        Some(p) => format!("partition {}", p.number),
        None => "the whole disk".to_string(),
    };
    match (by_fs, by_type) {
        (Some(f), Some(t)) => Some(format!("{what} ({f}, {t})")),
        (Some(f), None) => Some(format!("{what} ({f})")),
        (None, Some(t)) => Some(format!("{what} (Linux partition {t})")),
        (None, None) => None,
    }
}

/// The operating-system check over the systems found (Windows today; the Linux detection
/// adds its own [`FoundOs`] entries). `volumes` are the disk's volumes, for what is there
/// when nothing was found; `errors` are volumes that could not be looked into.
pub fn os_check(found: &[FoundOs], volumes: &[Volume], errors: &[String]) -> Check {
    let err_text = if errors.is_empty() {
        String::new()
    } else {
        format!("; could not look into {}", errors.join("; "))
    };
    if !found.is_empty() {
        let list = found
            .iter()
            .map(|o| {
                format!(
                    "{} on {}",
                    o.description,
                    match (&o.logical_volume, o.partition) {
                        (Some(lv), _) => lv.clone(),
                        (None, Some(n)) => format!("partition {n}"),
                        (None, None) => "the whole disk".to_string(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Check::new(
            "os",
            if errors.is_empty() {
                Status::Pass
            } else {
                Status::Warn
            },
            format!("{list}{err_text}"),
        );
    }
    let linux: Vec<String> = volumes.iter().filter_map(linux_hint).collect();
    if !linux.is_empty() {
        return Check::new(
            "os",
            Status::Warn,
            format!(
                "no Windows found and no Linux root read; Linux volumes: {}. diskconv reads the \
                 distribution of ext2/3/4 roots only (not XFS, btrfs or LVM layouts it cannot \
                 map): check this guest yourself{err_text}",
                linux.join(", ")
            ),
        );
    }
    Check::new(
        "os",
        Status::Warn,
        format!(
            "no operating system found on {} volume(s) (a data disk?){err_text}",
            volumes.len()
        ),
    )
}

/// The Linux checks of one root for the target: whether the initramfs of the kernel that
/// boots (the newest with an initramfs) lets the guest find its disk (`boot-driver`) and its
/// network (`network-driver`), and whether its fstab, boot loader and network configuration
/// name things that change on another platform (`linux-config`).
fn linux_checks(p: &Profile, v: &LinuxVolume, r: &LinuxRoot, img: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let inject = format!("diskconv inject linux {img} --target {}", p.target.name());
    let Ok(mt) = p.target.name().parse::<ModuleTarget>() else {
        return out;
    };
    let kernel = r
        .kernel_files
        .iter()
        .rev()
        .find(|k| k.initramfs.is_some())
        .or(r.kernel_files.last());
    match kernel {
        None => out.push(Check::new(
            "boot-driver",
            Status::Warn,
            format!(
                "Linux on {}: no kernel found under /boot, the boot drivers were not checked",
                v.location
            ),
        )),
        Some(k) if k.drivers.is_empty() => out.push(Check::new(
            "boot-driver",
            Status::Warn,
            format!(
                "Linux on {}, kernel {}: its drivers could not be read ({})",
                v.location,
                k.version,
                k.note.as_deref().unwrap_or("no module index")
            ),
        )),
        Some(k) => {
            let state = |m: &str| k.drivers.iter().find(|d| d.name == m).map(|d| &d.state);
            let usable = |m: &str| {
                matches!(
                    state(m),
                    Some(ModuleState::BuiltIn | ModuleState::InInitramfs)
                )
            };
            let on_disk = |m: &str| matches!(state(m), Some(ModuleState::OnDisk { .. }));
            for (id, roles) in [
                ("boot-driver", &[DriverRole::Storage, DriverRole::Bus][..]),
                ("network-driver", &[DriverRole::Network][..]),
            ] {
                let mut missing = Vec::new();
                let mut fixable = true;
                for g in boot_drivers(mt)
                    .groups
                    .iter()
                    .filter(|g| roles.contains(&g.role) && g.need != Need::Optional)
                {
                    let ok = match g.need {
                        Need::Each => g.modules.iter().all(|m| usable(m)),
                        _ => g.modules.iter().any(|m| usable(m)),
                    };
                    if !ok {
                        missing.push(format!("{} ({})", g.modules.join(" or "), g.why));
                        if !g.modules.iter().any(|m| on_disk(m) || usable(m)) {
                            fixable = false;
                        }
                    }
                }
                let what = if id == "boot-driver" {
                    "find its disk"
                } else {
                    "reach the network"
                };
                out.push(if missing.is_empty() {
                    Check::new(
                        id,
                        Status::Pass,
                        format!(
                            "Linux on {}, kernel {}: built in or in the initramfs, what it needs \
                             to {what} on {}",
                            v.location, k.version, p.title
                        ),
                    )
                } else {
                    let status = if id == "boot-driver" {
                        Status::Fail
                    } else {
                        Status::Warn
                    };
                    let c = Check::new(
                        id,
                        status,
                        format!(
                            "Linux on {}, kernel {}: to {what} on {} it needs {}, which {}",
                            v.location,
                            k.version,
                            p.title,
                            missing.join("; "),
                            if fixable {
                                "are modules on its disk but not in its initramfs"
                            } else {
                                "this kernel does not have"
                            }
                        ),
                    );
                    if fixable {
                        c.fix(inject.clone())
                    } else {
                        c.fix(format!(
                            "install a kernel with these drivers on the source, then sync \
                             again (`{inject} --dry-run` names the commands)"
                        ))
                    }
                });
            }
        }
    }
    if let Some(c) = &r.config {
        let mut changing = Vec::new();
        if let Some(f) = &c.fstab {
            for e in f.entries.iter().filter(|e| e.stable == Some(false)) {
                changing.push(format!("fstab names {} by {}", e.mount_point, e.spec));
            }
        }
        for b in &c.boot {
            for bp in b.params.iter().filter(|bp| bp.stable == Some(false)) {
                changing.push(format!("{} has {}={}", b.path, bp.name, bp.value));
            }
        }
        for n in c.network.iter().filter(|n| !n.macs.is_empty()) {
            changing.push(format!("{} is bound to MAC {}", n.path, n.macs.join(", ")));
        }
        out.push(if changing.is_empty() {
            Check::new(
                "linux-config",
                Status::Pass,
                format!(
                    "Linux on {}: fstab, boot loader and network name nothing that changes on \
                     another platform",
                    v.location
                ),
            )
        } else {
            Check::new(
                "linux-config",
                Status::Warn,
                format!(
                    "Linux on {}: names that change on another platform: {}",
                    v.location,
                    changing.join("; ")
                ),
            )
            .fix(inject.clone())
        });
    }
    out
}

fn ntfs_check(notes: &[(Status, String)]) -> Check {
    let status = notes.iter().map(|n| n.0).max().unwrap_or(Status::Pass);
    if notes.is_empty() {
        return Check::new(
            "ntfs",
            Status::Pass,
            "the Windows volume is clean: not dirty, not hibernated, $LogFile clean, not \
             BitLocker-encrypted",
        )
        .source("https://learn.microsoft.com/en-us/troubleshoot/windows-client/setup-upgrade-and-drivers/disable-and-re-enable-hibernation");
    }
    let text = notes
        .iter()
        .map(|n| n.1.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut fixes = Vec::new();
    if text.contains("hibernat") {
        fixes.push("boot Windows and shut it down fully (shutdown /s /t 0, or turn Fast Startup off: powercfg /h off)");
    }
    if text.contains("dirty") || text.contains("$LogFile") {
        fixes.push("run chkdsk /f in Windows and shut it down cleanly");
    }
    if text.contains("BitLocker") {
        fixes.push("decrypt the volume in Windows (manage-bde -off C:) before the move");
    }
    Check::new("ntfs", status, text).fix(fixes.join("; "))
}

/// One Windows installation as the preflight saw it.
struct WindowsScan {
    info: WindowsInfo,
    /// The boot driver verdict for the target.
    driver: Check,
    /// AWS: the ENA network driver.
    network: Option<Check>,
    free: u64,
    /// Bytes an adaptation would write (0 when nothing is needed).
    needs: u64,
}

/// Opens an NTFS volume read-only; when it holds Windows, reads the hives and checks the
/// drivers the target needs.
fn scan_volume(
    disk: &dyn ImageReader,
    v: &Volume,
    target: Target,
    boot: &BootLayout,
) -> Result<(VolumeState, Option<WindowsScan>)> {
    let vol = open_ntfs(disk, v, &NtfsOpenOptions { read_only: true })?;
    let state = vol.state().clone();
    let Some(root) = windows_root(&vol)? else {
        return Ok((state, None));
    };
    let system = read_hive(&vol, &root, "SYSTEM")?;
    let software = read_hive(&vol, &root, "SOFTWARE")?;
    let info = windows_info(&system.hive, &software.hive, &root)?;
    let (driver, virtio) = driver_check(&vol, &root, &system.hive, target, boot)?;
    let network = if target == Target::Aws {
        Some(ena_check(&system.hive)?)
    } else {
        None
    };
    let free = state
        .free_clusters
        .saturating_mul(u64::from(state.cluster_size));
    let hive_size = |p: &str| -> Result<u64> { Ok(vol.stat(p)?.map(|e| e.size).unwrap_or(0)) };
    let needs = if driver.status == Status::Pass {
        0
    } else if virtio {
        // The drivers staged for one Windows version and architecture (virtio-win's
        // per-version folders hold a few MiB each; 32 MiB leaves room), plus both hives
        // rewritten.
        32 * MIB + hive_size(&system.path)? + hive_size(&software.path)?
    } else {
        // Only SYSTEM is rewritten.
        MIB + hive_size(&system.path)?
    };
    Ok((
        state,
        Some(WindowsScan {
            info,
            driver,
            network,
            free,
            needs,
        }),
    ))
}

/// The state of one driver service in the SYSTEM hive.
fn service_start(hive: &Hive, cs: &str, service: &str) -> Result<Option<Option<u32>>> {
    let Some(k) = hive.open_key(&format!("{cs}\\Services\\{service}"))? else {
        return Ok(None);
    };
    Ok(Some(hive.value(k, "Start")?.and_then(
        |v| match v.decoded() {
            RegData::Dword(d) => Some(d),
            _ => None,
        },
    )))
}

/// What of `plan` the hive does not hold yet: each planned value missing or different.
fn plan_missing(hive: &Hive, plan: &EditPlan) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for k in &plan.keys {
        let key = hive.open_key(&k.path)?;
        for (name, data) in &k.values {
            let have = match key {
                Some(id) => hive.value(id, name)?.map(|v| v.decoded()),
                None => None,
            };
            if have.as_ref() != Some(data) {
                let leaf = k.path.rsplit('\\').next().unwrap_or(&k.path);
                out.push(match (have, name.as_str()) {
                    (Some(RegData::Dword(d)), "Start") => {
                        format!("{leaf} starts with Start={d} (3 = on demand), not 0 (boot)")
                    }
                    _ if key.is_none() => format!("no key {}", k.path),
                    _ => format!("{}\\{name} is not set", k.path),
                });
            }
        }
    }
    Ok(out)
}

/// The verdict on an inbox driver set (all must be in place).
fn inbox_state(
    hive: &Hive,
    drivers: &[InboxDriver],
) -> Result<std::result::Result<String, String>> {
    let mut missing = Vec::new();
    for d in drivers {
        match plan_inbox_driver(hive, d) {
            Ok(plan) => missing.extend(plan_missing(hive, &plan)?),
            Err(e) => missing.push(e.to_string()),
        }
    }
    let names = drivers
        .iter()
        .map(|d| d.service.as_str())
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(if missing.is_empty() {
        Ok(format!(
            "{names}: present, boot-start (Start=0) and bound to the target's devices"
        ))
    } else {
        Err(format!("{names}: {}", missing.join("; ")))
    })
}

/// The verdict on a virtio-win driver: service, boot start, `.sys` file and a binding to one
/// of its device ids.
fn virtio_state<D: DiskRead>(
    vol: &NtfsVolume<D>,
    root: &str,
    hive: &Hive,
    drv: &BootStorageDriver,
) -> Result<std::result::Result<String, String>> {
    let cs = current_control_set(hive)?;
    let svc = &drv.service;
    let mut missing = Vec::new();
    match service_start(hive, &cs, svc)? {
        None => missing.push(format!("no service {cs}\\Services\\{svc}")),
        Some(Some(SERVICE_BOOT_START)) => {}
        Some(Some(s)) => missing.push(format!("Start={s}, not 0 (boot)")),
        Some(None) => missing.push("no Start value".to_string()),
    }
    let sys = format!("{root}\\System32\\drivers\\{svc}.sys");
    if vol.stat(&sys)?.is_none() {
        missing.push(format!("no {sys}"));
    }
    let mut bound = false;
    for id in &drv.device_ids {
        if hive.open_key("DriverDatabase")?.is_some() {
            if let Some(k) = hive.open_key(&format!("DriverDatabase\\DeviceIds\\{id}"))? {
                if hive.value(k, &drv.inf)?.is_some() {
                    bound = true;
                }
            }
        } else if let Some(k) = hive.open_key(&format!(
            "{cs}\\Control\\CriticalDeviceDatabase\\{}",
            id.replace('\\', "#")
        ))? {
            if let Some(v) = hive.value(k, "Service")? {
                if matches!(v.decoded(), RegData::Sz(s) if s.eq_ignore_ascii_case(svc)) {
                    bound = true;
                }
            }
        }
    }
    if !bound {
        missing.push(format!("not bound to {}", drv.device_ids.join(" or ")));
    }
    Ok(if missing.is_empty() {
        Ok(format!(
            "{svc}: {svc}.sys present, boot-start (Start=0), bound to {}",
            drv.device_ids.join(", ")
        ))
    } else {
        Err(format!("{svc}: {}", missing.join("; ")))
    })
}

/// A service that must be present and boot-start (vSphere's inbox SCSI drivers).
fn boot_service_state(hive: &Hive, service: &str) -> Result<std::result::Result<String, String>> {
    let cs = current_control_set(hive)?;
    Ok(match service_start(hive, &cs, service)? {
        Some(Some(SERVICE_BOOT_START)) => Ok(format!("{service}: present, boot-start (Start=0)")),
        Some(Some(s)) => Err(format!("{service}: Start={s}, not 0 (boot)")),
        Some(None) => Err(format!("{service}: no Start value")),
        None => Err(format!("{service}: not installed")),
    })
}

/// The boot storage driver check; the flag says whether fixing it stages virtio-win drivers.
fn driver_check<D: DiskRead>(
    vol: &NtfsVolume<D>,
    root: &str,
    hive: &Hive,
    target: Target,
    boot: &BootLayout,
) -> Result<(Check, bool)> {
    let p = profile(target);
    let rule = p
        .rules
        .iter()
        .find(|r| {
            r.text.contains("boots from") || r.text.contains("virtio") || r.text.contains("NVMe")
        })
        .map(|r| r.source)
        .unwrap_or(p.rules[0].source);
    let img_hint = "IMAGE";
    let (alternatives, fix, virtio): (Vec<std::result::Result<String, String>>, String, bool) =
        match target {
            Target::Kvm | Target::Openstack | Target::Alibaba | Target::Huawei => (
                vec![
                    virtio_state(vol, root, hive, &BootStorageDriver::viostor())?,
                    virtio_state(vol, root, hive, &BootStorageDriver::vioscsi())?,
                ],
                format!("diskconv inject windows {img_hint} --drivers virtio-win.iso"),
                true,
            ),
            Target::Aws => (
                vec![inbox_state(
                    hive,
                    &cloud_inbox_drivers(CloudTarget::AwsNitro),
                )?],
                format!("diskconv inject windows {img_hint} --target aws-nitro"),
                false,
            ),
            Target::Azure => (
                vec![inbox_state(hive, &cloud_inbox_drivers(CloudTarget::Azure))?],
                format!("diskconv inject windows {img_hint} --target azure"),
                false,
            ),
            Target::Hyperv => {
                if boot.esp.is_none() {
                    return Ok((
                        Check::new(
                            "boot-driver",
                            Status::Pass,
                            "a BIOS disk runs in a generation 1 VM, which boots from the \
                             emulated IDE controller (inbox atapi / intelide drivers)",
                        )
                        .source(rule),
                        false,
                    ));
                }
                (
                    vec![inbox_state(hive, &cloud_inbox_drivers(CloudTarget::Azure))?],
                    format!("diskconv inject windows {img_hint} --target azure"),
                    false,
                )
            }
            Target::Gcp => (
                vec![
                    inbox_state(hive, &cloud_inbox_drivers(CloudTarget::Gcp))?,
                    virtio_state(vol, root, hive, &BootStorageDriver::vioscsi())?,
                ],
                format!("diskconv inject windows {img_hint} --target gcp"),
                false,
            ),
            Target::Vsphere => (
                vec![
                    boot_service_state(hive, "lsi_sas")?,
                    boot_service_state(hive, "pvscsi")?,
                ],
                "boot the VM once with an LSI Logic SAS controller attached before the move, \
                 or set ControlSet00N\\Services\\lsi_sas\\Start to 0 in the SYSTEM hive"
                    .to_string(),
                false,
            ),
        };
    if let Some(ok) = alternatives.iter().find_map(|a| a.as_ref().ok()) {
        return Ok((
            Check::new("boot-driver", Status::Pass, ok.clone()).source(rule),
            virtio,
        ));
    }
    let why = alternatives
        .iter()
        .filter_map(|a| a.as_ref().err().cloned())
        .collect::<Vec<_>>()
        .join(if alternatives.len() > 1 { " | " } else { "" });
    Ok((
        Check::new(
            "boot-driver",
            Status::Fail,
            format!(
                "Windows would not find its boot disk on {} (INACCESSIBLE_BOOT_DEVICE): {why}",
                p.title
            ),
        )
        .fix(fix)
        .source(rule),
        virtio,
    ))
}

/// AWS Nitro networking: the ENA driver (service `ena`).
fn ena_check(hive: &Hive) -> Result<Check> {
    let cs = current_control_set(hive)?;
    let src = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/enhanced-networking-ena.html";
    Ok(match service_start(hive, &cs, "ena")? {
        Some(_) => Check::new(
            "network-driver",
            Status::Pass,
            "the ENA network driver (service ena) is installed",
        )
        .source(src),
        None => Check::new(
            "network-driver",
            Status::Warn,
            "no ENA network driver (service ena): a Nitro instance has no network until it is \
             installed (VM Import installs it for the Windows versions it supports)",
        )
        .fix("install AWS's ENA driver package in Windows before the move, or import through VM Import")
        .source(src),
    })
}

/// The checks of one Windows installation: boot driver, network driver, free space.
fn windows_checks(p: &Profile, s: &WindowsScan, img: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let mut driver = s.driver.clone();
    if let Some(f) = &driver.fix {
        driver.fix = Some(f.replace("IMAGE", img));
    }
    out.push(driver);
    if let Some(n) = &s.network {
        out.push(n.clone());
    }
    let _ = p;
    out.push(if s.needs == 0 {
        Check::new(
            "free-space",
            Status::Pass,
            format!(
                "{} free on the Windows volume; no adaptation needed",
                human_bytes(s.free)
            ),
        )
    } else if s.free < s.needs {
        Check::new(
            "free-space",
            Status::Fail,
            format!(
                "{} free on the Windows volume; the adaptation needs about {}",
                human_bytes(s.free),
                human_bytes(s.needs)
            ),
        )
        .fix("free space in Windows (or grow its partition and file system) first")
    } else {
        Check::new(
            "free-space",
            Status::Pass,
            format!(
                "{} free on the Windows volume; the adaptation needs about {}",
                human_bytes(s.free),
                human_bytes(s.needs)
            ),
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::partition::Partition;

    fn part(number: u32, kind: PartitionType, bootable: bool) -> Partition {
        Partition {
            number,
            start: u64::from(number) << 20,
            len: 1 << 20,
            kind,
            name: String::new(),
            bootable,
        }
    }

    fn table(scheme: Scheme, parts: Vec<Partition>) -> PartitionTable {
        PartitionTable {
            scheme,
            sector_size: 512,
            partitions: parts,
        }
    }

    fn gpt_uefi() -> BootLayout {
        BootLayout::of(&table(
            Scheme::Gpt,
            vec![
                part(1, PartitionType::Gpt(ESP_GUID.into()), false),
                part(
                    2,
                    PartitionType::Gpt("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7".into()),
                    false,
                ),
            ],
        ))
    }

    fn mbr_bios() -> BootLayout {
        BootLayout::of(&table(
            Scheme::Mbr,
            vec![part(1, PartitionType::Mbr(7), true)],
        ))
    }

    #[test]
    fn boot_layouts() {
        assert_eq!(gpt_uefi().modes(), vec![BootMode::Uefi]);
        assert_eq!(mbr_bios().modes(), vec![BootMode::Bios]);
        let hybrid = BootLayout::of(&table(
            Scheme::Gpt,
            vec![
                part(1, PartitionType::Gpt(BIOS_BOOT_GUID.to_lowercase()), false),
                part(2, PartitionType::Gpt(ESP_GUID.into()), false),
            ],
        ));
        assert_eq!(hybrid.modes(), vec![BootMode::Bios, BootMode::Uefi]);
        let none = BootLayout::of(&table(
            Scheme::Mbr,
            vec![part(1, PartitionType::Mbr(7), false)],
        ));
        assert!(none.modes().is_empty());
    }

    #[test]
    fn boot_mode_rules() {
        let hv = profile(Target::Hyperv);
        // A UEFI disk in a VHD for Hyper-V: generation 1, BIOS only.
        let c = boot_check(hv, &gpt_uefi(), "vpc", None);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.reason.contains("generation 1"), "{}", c.reason);
        assert!(c.fix.unwrap().contains("vhdx"));
        assert_eq!(
            boot_check(hv, &gpt_uefi(), "vhdx", None).status,
            Status::Warn
        );
        assert_eq!(
            boot_check(hv, &mbr_bios(), "vpc", None).status,
            Status::Pass
        );
        // Azure generation 1 (--boot-mode bios) with a UEFI disk.
        let az = profile(Target::Azure);
        let c = boot_check(az, &gpt_uefi(), "vpc", Some(BootMode::Bios));
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("--boot-mode uefi"));
        // Asked for UEFI on a BIOS disk: no ESP.
        let c = boot_check(az, &mbr_bios(), "vpc", Some(BootMode::Uefi));
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("no EFI System Partition"), "{}", c.reason);
        // Told: a pass.
        assert_eq!(
            boot_check(az, &gpt_uefi(), "vpc", Some(BootMode::Uefi)).status,
            Status::Pass
        );
        assert_eq!(
            boot_check(az, &gpt_uefi(), "vpc", None).status,
            Status::Warn
        );
    }

    #[test]
    fn size_rules() {
        let az = profile(Target::Azure);
        let c = size_check(az, (64 << 20) + 512, None, "fix");
        assert_eq!(c.status, Status::Warn);
        assert!(c.reason.contains("65 MiB"), "{}", c.reason);
        assert_eq!(size_check(az, 64 << 20, None, "fix").status, Status::Pass);
        assert_eq!(size_check(az, 1 << 20, None, "fix").status, Status::Warn);
        assert_eq!(size_check(az, 33 * TIB, None, "fix").status, Status::Fail);
        let aws = profile(Target::Aws);
        assert_eq!(size_check(aws, 16 * TIB, None, "fix").status, Status::Pass);
        assert_eq!(size_check(aws, 17 * TIB, None, "fix").status, Status::Fail);
    }

    #[test]
    fn sector_rules() {
        let mut t = table(Scheme::Gpt, vec![]);
        t.sector_size = 4096;
        assert_eq!(
            sector_check(profile(Target::Azure), &t, 4096, 4096, "vpc").status,
            Status::Fail
        );
        assert_eq!(
            sector_check(profile(Target::Kvm), &t, 4096, 4096, "qcow2").status,
            Status::Warn
        );
        assert_eq!(
            sector_check(profile(Target::Hyperv), &t, 4096, 4096, "vhdx").status,
            Status::Pass
        );
        let c = sector_check(profile(Target::Hyperv), &t, 512, 512, "vhdx");
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("logical_sector_size=4096"));
        t.sector_size = 512;
        assert_eq!(
            sector_check(profile(Target::Aws), &t, 512, 512, "vmdk").status,
            Status::Pass
        );
    }

    #[test]
    fn os_check_lists_what_is_there() {
        let vol = |n: u32, fs: FsKind, kind: PartitionType| Volume {
            partition: Some(part(n, kind, false)),
            start: u64::from(n) << 20,
            len: 1 << 20,
            fs,
        };
        let vols = vec![
            vol(1, FsKind::Ext, PartitionType::Mbr(0x83)),
            vol(2, FsKind::Swap, PartitionType::Mbr(0x82)),
        ];
        let c = os_check(&[], &vols, &[]);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.reason.contains("partition 1 (ext2/3/4, type 0x83)"),
            "{}",
            c.reason
        );
        assert!(c.reason.contains("no Linux root read"), "{}", c.reason);
        let c = os_check(&[], &[vol(1, FsKind::Fat, PartitionType::Mbr(0x0c))], &[]);
        assert!(c.reason.contains("no operating system"), "{}", c.reason);
        let linux = FoundOs {
            kind: OsKind::Linux,
            partition: Some(1),
            logical_volume: None,
            description: "Debian 12".into(),
            windows: None,
        };
        let c = os_check(&[linux], &vols, &[]);
        assert_eq!(c.status, Status::Pass);
        assert!(c.reason.contains("Debian 12 on partition 1"));
    }

    #[test]
    fn words_are_quoted() {
        assert_eq!(shell_word(Path::new("/a/b.qcow2")), "/a/b.qcow2");
        assert_eq!(shell_word(Path::new("my disk.vhd")), "'my disk.vhd'");
    }
}
