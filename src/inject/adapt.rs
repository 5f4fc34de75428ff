//! Adapting an installed Windows offline so it boots on another platform: find the Windows
//! volume in an image, replay its hives' logs, copy and stage drivers on NTFS, edit SYSTEM and
//! SOFTWARE, and commit everything in one transaction.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::guest::disk::{DiskIo, ImageTx, TxDisk};
use crate::guest::hive::{Hive, RegData};
use crate::guest::ntfs::{NtfsError, NtfsOpenOptions, NtfsVolume};
use crate::guest::partition::{FsKind, Volume, find_volumes};
use crate::guest::volume::open_ntfs;
use crate::inject::drivers::{DriverSet, DriverSource};
use crate::inject::windows::{
    BootStorageDriver, EditPlan, FirstBoot, InboxDriver, STAGING_DIR_ENV, apply_plan,
    first_boot_script, plan_boot_storage_driver, plan_crash_auto_reboot, plan_device_path,
    plan_first_boot, plan_inbox_driver,
};
use crate::inspect::windows::{WinArch, WindowsInfo, windows_info};
use crate::inspect::{describe_volume, read_hive, windows_root};
use crate::open::OpenOptions;

/// The boot storage driver to install from virtio-win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockDriver {
    /// virtio-blk.
    #[default]
    Viostor,
    /// virtio-scsi.
    Vioscsi,
}

/// A cloud whose inbox storage drivers must be enabled for boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudTarget {
    /// AWS Nitro instances: NVMe (`stornvme`).
    AwsNitro,
    /// Google Compute Engine: NVMe (`stornvme`) (and virtio-scsi from a driver package).
    Gcp,
    /// Azure: `vmbus` + `storvsc`.
    Azure,
}

/// What to do.
#[derive(Debug, Clone, Default)]
pub struct InjectOptions {
    /// virtio-win folder or ISO; `None` when only `target` inbox drivers are enabled.
    pub drivers: Option<PathBuf>,
    /// Boot storage driver from `drivers`.
    pub block_driver: BlockDriver,
    /// Cloud whose inbox drivers to enable.
    pub target: Option<CloudTarget>,
    /// Compute and return the plan; write nothing.
    pub dry_run: bool,
    /// How to open the image.
    pub open: OpenOptions,
}

/// One file the plan writes on the Windows volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedFile {
    /// Path on the volume, e.g. `Windows\System32\drivers\viostor.sys`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it comes from (driver source path, or "generated").
    pub source: String,
    /// Whether a file already exists there (it is replaced).
    pub replaces: bool,
}

/// One registry value the plan sets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedValue {
    /// "SYSTEM" or "SOFTWARE".
    pub hive: String,
    /// Key path inside the hive.
    pub key: String,
    /// Value name ("" for the default value).
    pub name: String,
    /// Type name, e.g. "REG_DWORD".
    pub kind: String,
    /// The data as text (numbers in decimal, strings as is, binary as hex).
    pub data: String,
}

/// The plan (and, after a real run, what was done).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InjectReport {
    /// The Windows found.
    pub windows: crate::inspect::windows::WindowsInfo,
    /// Partition number of the Windows volume (`None`: whole disk).
    pub partition: Option<u32>,
    /// Hives whose transaction logs were replayed first.
    pub replayed_hives: Vec<String>,
    /// Files written.
    pub files: Vec<PlannedFile>,
    /// Registry values set.
    pub values: Vec<PlannedValue>,
    /// How the staged drivers get installed at first boot.
    pub first_boot: String,
    /// Whether anything was written (false for a dry run).
    pub written: bool,
}

impl BlockDriver {
    /// The service (and driver package) name: `viostor` or `vioscsi`.
    pub fn service(self) -> &'static str {
        match self {
            BlockDriver::Viostor => "viostor",
            BlockDriver::Vioscsi => "vioscsi",
        }
    }

    fn boot_driver(self, arch: WinArch) -> BootStorageDriver {
        let mut d = match self {
            BlockDriver::Viostor => BootStorageDriver::viostor(),
            BlockDriver::Vioscsi => BootStorageDriver::vioscsi(),
        };
        // The driver-store label names the architecture the package is for.
        d.arch = match arch {
            WinArch::X86 => "x86",
            WinArch::Amd64 => "amd64",
            WinArch::Arm64 => "arm64",
        }
        .to_string();
        d
    }
}

impl std::str::FromStr for BlockDriver {
    type Err = Error;
    fn from_str(s: &str) -> Result<BlockDriver> {
        match s.to_ascii_lowercase().as_str() {
            "viostor" => Ok(BlockDriver::Viostor),
            "vioscsi" => Ok(BlockDriver::Vioscsi),
            _ => Err(Error::InvalidArgument(format!(
                "unknown block driver '{s}': expected viostor (virtio-blk) or vioscsi \
                 (virtio-scsi)"
            ))),
        }
    }
}

impl CloudTarget {
    /// The name as the command line spells it (`aws-nitro`, `gcp`, `azure`).
    pub fn name(self) -> &'static str {
        match self {
            CloudTarget::AwsNitro => "aws-nitro",
            CloudTarget::Gcp => "gcp",
            CloudTarget::Azure => "azure",
        }
    }
}

impl std::str::FromStr for CloudTarget {
    type Err = Error;
    fn from_str(s: &str) -> Result<CloudTarget> {
        match s.to_ascii_lowercase().as_str() {
            "aws-nitro" | "aws" => Ok(CloudTarget::AwsNitro),
            "gcp" | "gce" => Ok(CloudTarget::Gcp),
            "azure" => Ok(CloudTarget::Azure),
            _ => Err(Error::InvalidArgument(format!(
                "unknown target '{s}': expected aws-nitro, gcp or azure"
            ))),
        }
    }
}

/// The inbox storage drivers each cloud boots from.
///
/// - AWS Nitro: NVMe (`stornvme`); EBS volumes are PCI `1D0F:8061` and instance-store volumes
///   `1D0F:CD01` (AWS, "Amazon EBS and NVMe on Windows instances": EBS volumes are NVMe devices
///   on Nitro instances, served by the standard NVMe driver or AWS's own).
/// - Google Compute Engine (third generation and later machine types): NVMe persistent disks,
///   PCI `1AE0:001F` (Google's vendor id).
/// - Azure: VMBus and its synthetic SCSI controller (`vmbus` + `storvsc`).
pub fn cloud_inbox_drivers(target: CloudTarget) -> Vec<InboxDriver> {
    match target {
        CloudTarget::AwsNitro => vec![InboxDriver::stornvme(&[
            "PCI\\VEN_1D0F&DEV_8061",
            "PCI\\VEN_1D0F&DEV_CD01",
        ])],
        CloudTarget::Gcp => vec![InboxDriver::stornvme(&["PCI\\VEN_1AE0&DEV_001F"])],
        CloudTarget::Azure => vec![InboxDriver::vmbus(), InboxDriver::storvsc()],
    }
}

/// The staging folder below the Windows folder: every driver package goes into its own
/// subfolder, `Drivers\VirtIO\<driver>\` (so two packages' files of the same name never clash).
const STAGING_DIR: &str = "Drivers\\VirtIO";

/// The first-boot script's name in the staging folder.
const FIRST_BOOT_SCRIPT: &str = "firstboot.cmd";

/// The text [`InjectReport::first_boot`] carries when the script is scheduled.
fn first_boot_scheduled(script: &str) -> String {
    format!(
        "SYSTEM\\Setup: CmdLine = \"cmd.exe /c {script}\" and SetupType = 2: at the next boot \
         Winlogon runs the script as SYSTEM before the logon screen (the hook Windows setup \
         itself uses, no extra executable or service); it runs pnputil -i -a on each staged \
         INF, logs to firstboot.log beside it, then sets SetupType back to 0 and CmdLine to \"\""
    )
}

/// The text [`InjectReport::first_boot`] carries when a rerun finds the hook of an earlier run.
fn first_boot_earlier_run(script: &str, setup_type: u32) -> String {
    format!(
        "diskconv's first-boot hook from an earlier run is already in place (SYSTEM\\Setup: \
         CmdLine = \"cmd.exe /c {script}\", SetupType = {setup_type}); the registry is left as \
         it is and the script lists this run's drivers"
    )
}

fn first_boot_pending(setup_type: u32, cmd_line: &str) -> String {
    format!(
        "not scheduled: Windows setup is already pending (SYSTEM\\Setup SetupType = \
         {setup_type}, CmdLine = \"{cmd_line}\", e.g. a sysprepped image), so Setup is left \
         alone; setup finds the staged drivers through DevicePath ({STAGING_DIR_ENV})"
    )
}

/// Registry data as report text: numbers in decimal, strings as is, several strings joined by
/// `; `, binary as lower-case hex.
fn data_text(d: &RegData) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    match d {
        RegData::Sz(s) | RegData::ExpandSz(s) | RegData::Link(s) => s.clone(),
        RegData::MultiSz(v) => v.join("; "),
        RegData::Dword(n) | RegData::DwordBigEndian(n) => n.to_string(),
        RegData::Qword(n) => n.to_string(),
        RegData::Binary(b) | RegData::None(b) | RegData::Other(_, b) => hex(b),
    }
}

fn plan_values(hive: &str, plan: &EditPlan, out: &mut Vec<PlannedValue>) {
    for k in &plan.keys {
        for (name, data) in &k.values {
            out.push(PlannedValue {
                hive: hive.to_string(),
                key: k.path.clone(),
                name: name.clone(),
                kind: data.kind().name(),
                data: data_text(data),
            });
        }
    }
}

/// A file the plan writes, with its content.
struct FileOp {
    path: String,
    data: Vec<u8>,
    source: String,
}

/// Looks for the Windows volume: the first NTFS volume with `Windows\System32\config\SYSTEM`.
fn locate_windows(disk: &TxDisk, volumes: &[Volume]) -> Result<(Volume, String)> {
    let mut looked = Vec::new();
    let mut locked = Vec::new();
    for v in volumes {
        let name = describe_volume(v);
        match v.fs {
            FsKind::Ntfs => {}
            FsKind::BitLocker => {
                locked.push(name.clone());
                looked.push(format!("{name}: BitLocker-encrypted, cannot be read"));
                continue;
            }
            _ => {
                looked.push(format!("{name}: not NTFS"));
                continue;
            }
        }
        let res = (|| -> Result<Option<String>> {
            let vol = open_ntfs(&*disk, v, &NtfsOpenOptions { read_only: true })?;
            windows_root(&vol)
        })();
        match res {
            Ok(Some(root)) => return Ok((v.clone(), root)),
            Ok(None) => looked.push(format!("{name}: no {}", crate::inspect::SYSTEM_HIVE)),
            Err(e) => looked.push(format!("{name}: {}", e.chain())),
        }
    }
    if !locked.is_empty() {
        return Err(NtfsError::NotWritable {
            reason: format!(
                "no readable Windows volume, and {} BitLocker-encrypted (offline edits need the \
                 plain volume: decrypt it in Windows with manage-bde -off first); volumes looked at: {}",
                locked.join(", "),
                looked.join("; ")
            ),
        }
        .into());
    }
    Err(Error::InvalidArgument(format!(
        "no Windows found (no NTFS volume holds {}); volumes looked at: {}",
        crate::inspect::SYSTEM_HIVE,
        if looked.is_empty() {
            "none (the disk has no volume)".to_string()
        } else {
            looked.join("; ")
        }
    )))
}

/// The files of the driver set: the boot driver into `System32\drivers`, every package into
/// the staging folder.
fn driver_files(
    root: &str,
    set: &DriverSet,
    block: BlockDriver,
    info: &WindowsInfo,
) -> Result<(Vec<FileOp>, Vec<String>)> {
    let name = block.service();
    let have = || {
        set.packages
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pkg = set.package(name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "the driver source has no {name} driver for {} in its {}/{} folders (it has: {})",
            info.describe(),
            set.os_dir,
            set.arch.virtio_dir(),
            have()
        ))
    })?;
    let sys_name = format!("{name}.sys");
    let sys = pkg.file(&sys_name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "the {name} driver package for {}/{} has no {sys_name} (files: {})",
            set.os_dir,
            set.arch.virtio_dir(),
            pkg.files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let mut files = vec![FileOp {
        path: format!("{root}\\System32\\drivers\\{sys_name}"),
        data: sys.data.clone(),
        source: sys.source.clone(),
    }];
    let mut infs = Vec::new();
    for p in &set.packages {
        for f in &p.files {
            if f.name.is_empty() || f.name.contains(['\\', '/']) || p.name.contains(['\\', '/']) {
                return Err(Error::InvalidArgument(format!(
                    "driver file name '{}' of package '{}' cannot be a file name on NTFS",
                    f.name, p.name
                )));
            }
            files.push(FileOp {
                path: format!("{root}\\{STAGING_DIR}\\{}\\{}", p.name, f.name),
                data: f.data.clone(),
                source: f.source.clone(),
            });
            if f.name.to_ascii_lowercase().ends_with(".inf") {
                infs.push(format!("{}\\{}", p.name, f.name));
            }
        }
    }
    Ok((files, infs))
}

/// The parent folder of a volume path (`a\b\c` -> `a\b`).
fn parent(path: &str) -> &str {
    path.rsplit_once('\\').map(|(p, _)| p).unwrap_or("")
}

/// Plans and (unless `opts.dry_run`) applies the adaptation to the image at `image`.
///
/// Steps: open the image in a transaction ([`ImageTx`]), find the NTFS volume holding
/// `Windows\System32\config\SYSTEM`, open it for writing (a dirty, hibernated or
/// not-cleanly-logged volume is refused here), read SYSTEM and SOFTWARE (replaying dirty ones
/// from their logs in memory), tell the Windows version, pick its drivers from the source, then
/// plan: the boot driver `.sys` into `System32\drivers`, every package of the set into
/// `Windows\Drivers\VirtIO\<driver>\`, the boot driver's service and device binding
/// (CriticalDeviceDatabase or DriverDatabase, per the hive), the target cloud's inbox drivers,
/// `DevicePath`, the first-boot installer and `CrashControl\AutoReboot` = 0. Unless it is a
/// dry run, the files and hives are written and the transaction committed; any error before
/// the commit leaves the image byte-identical. Files whose content is already the planned one
/// and hives the plan does not change are not rewritten, so a rerun writes nothing.
pub fn inject_windows(image: &Path, opts: &InjectOptions) -> Result<InjectReport> {
    if opts.drivers.is_none() && opts.target.is_none() {
        return Err(Error::InvalidArgument(
            "nothing to inject: give a virtio-win folder or ISO (drivers) and/or a cloud \
             target whose inbox drivers to enable (target)"
                .into(),
        ));
    }
    let source = match &opts.drivers {
        Some(p) => Some(DriverSource::open(p).map_err(|e| e.in_file(p))?),
        None => None,
    };
    let mut tx = ImageTx::open(image, &opts.open)?;
    let volumes = find_volumes(&tx.disk).map_err(|e| e.in_file(image))?;
    let (volume, root) = locate_windows(&tx.disk, &volumes)?;
    let report = edit_volume(&mut tx.disk, &volume, &root, source.as_ref(), opts)
        .map_err(|e| e.in_file(image))?;
    if opts.dry_run {
        return Ok(report);
    }
    let stats = tx.commit().map_err(|e| e.in_file(image))?;
    Ok(InjectReport {
        written: stats.bytes_written > 0,
        ..report
    })
}

/// Writes the planned files: folders first, then content (files that already hold the
/// planned content are left alone).
fn write_files<D: DiskIo>(vol: &mut NtfsVolume<D>, files: &[FileOp]) -> Result<()> {
    for f in files {
        let dir = parent(&f.path);
        if !dir.is_empty() {
            vol.create_dir_all(dir).map_err(|e| e.in_file(dir))?;
        }
        if let Some(e) = vol.stat(&f.path)? {
            if e.is_dir {
                return Err(Error::InvalidArgument(format!(
                    "{} is a folder on the Windows volume; a file is to be written there",
                    f.path
                )));
            }
            if e.size == f.data.len() as u64 && vol.read_file(&f.path, e.size)? == f.data.as_slice()
            {
                continue;
            }
        }
        vol.write_file(&f.path, &f.data)
            .map_err(|e| e.in_file(&f.path))?;
    }
    Ok(())
}

/// Plans the driver packages of `src` for this Windows: their files (the boot driver and the
/// staging folder), the boot driver's service and binding, `DevicePath` and the first-boot
/// installer; returns what the report says about the first-boot installer.
#[allow(clippy::too_many_arguments)]
fn plan_driver_source(
    src: &DriverSource,
    root: &str,
    info: &WindowsInfo,
    block_driver: BlockDriver,
    system_hive: &Hive,
    software_hive: &Hive,
    files: &mut Vec<FileOp>,
    plans: &mut Vec<(&'static str, EditPlan)>,
) -> Result<String> {
    let dirs = info.virtio_os_dirs();
    if dirs.is_empty() {
        return Err(Error::Unsupported(format!(
            "no driver for {}: virtio-win has drivers for Windows 7 / Server 2008 R2 \
             (version 6.1) and later only",
            info.describe()
        )));
    }
    let set = src.select(&dirs, info.arch).map_err(|e| {
        Error::InvalidArgument(format!(
            "no driver for {} (virtio-win folders {}, {}): {}",
            info.describe(),
            dirs.join(" or "),
            info.arch.virtio_dir(),
            e.chain()
        ))
    })?;
    let (driver_files, infs) = driver_files(root, &set, block_driver, info)?;
    files.extend(driver_files);
    let boot = block_driver.boot_driver(info.arch);
    plans.push(("SYSTEM", plan_boot_storage_driver(system_hive, &boot)?));
    plans.push((
        "SOFTWARE",
        plan_device_path(software_hive, STAGING_DIR_ENV)?,
    ));
    let script = format!("{STAGING_DIR_ENV}\\{FIRST_BOOT_SCRIPT}");
    Ok(match plan_first_boot(system_hive, &script)? {
        FirstBoot::Scheduled(plan) => {
            plans.push(("SYSTEM", plan));
            files.push(FileOp {
                path: format!("{root}\\{STAGING_DIR}\\{FIRST_BOOT_SCRIPT}"),
                data: first_boot_script(STAGING_DIR_ENV, &infs).into_bytes(),
                source: "generated".into(),
            });
            first_boot_scheduled(&script)
        }
        FirstBoot::EarlierRun { setup_type } => {
            files.push(FileOp {
                path: format!("{root}\\{STAGING_DIR}\\{FIRST_BOOT_SCRIPT}"),
                data: first_boot_script(STAGING_DIR_ENV, &infs).into_bytes(),
                source: "generated".into(),
            });
            first_boot_earlier_run(&script, setup_type)
        }
        FirstBoot::SetupPending {
            setup_type,
            cmd_line,
        } => first_boot_pending(setup_type, &cmd_line),
    })
}

fn edit_volume(
    disk: &mut TxDisk,
    volume: &Volume,
    root: &str,
    source: Option<&DriverSource>,
    opts: &InjectOptions,
) -> Result<InjectReport> {
    // Opened for writing even for a dry run, so the plan meets the same refusals.
    let mut vol = open_ntfs(disk, volume, &NtfsOpenOptions { read_only: false })?;
    let system = read_hive(&vol, root, "SYSTEM")?;
    let software = read_hive(&vol, root, "SOFTWARE")?;
    let info = windows_info(&system.hive, &software.hive, root)?;
    let replayed_hives: Vec<String> = [&system, &software]
        .iter()
        .filter(|h| h.replayed)
        .map(|h| h.path.clone())
        .collect();
    let (system_path, mut system_hive) = (system.path, system.hive);
    let (software_path, mut software_hive) = (software.path, software.hive);
    let replayed_system = replayed_hives.contains(&system_path);
    let replayed_software = replayed_hives.contains(&software_path);

    let mut files: Vec<FileOp> = Vec::new();
    let mut plans: Vec<(&'static str, EditPlan)> = Vec::new();
    let mut first_boot = "not needed: no driver package is staged (a target platform alone \
                          enables drivers Windows already has)"
        .to_string();
    if let Some(src) = source {
        first_boot = plan_driver_source(
            src,
            root,
            &info,
            opts.block_driver,
            &system_hive,
            &software_hive,
            &mut files,
            &mut plans,
        )?;
    }
    if let Some(t) = opts.target {
        for d in cloud_inbox_drivers(t) {
            let plan = plan_inbox_driver(&system_hive, &d).map_err(|e| {
                Error::InvalidArgument(format!(
                    "target platform {}: {} ({})",
                    t.name(),
                    e.chain(),
                    info.describe()
                ))
            })?;
            plans.push(("SYSTEM", plan));
        }
    }
    plans.push(("SYSTEM", plan_crash_auto_reboot(&system_hive, false)?));

    let mut values = Vec::new();
    for (hive, plan) in &plans {
        plan_values(hive, plan, &mut values);
    }
    let mut planned_files = Vec::new();
    for f in &files {
        let existing = vol.stat(&f.path)?;
        planned_files.push(PlannedFile {
            path: f.path.clone(),
            size: f.data.len() as u64,
            source: f.source.clone(),
            replaces: existing.is_some(),
        });
    }
    let mut report = InjectReport {
        windows: info,
        partition: volume.partition.as_ref().map(|p| p.number),
        replayed_hives,
        files: planned_files,
        values,
        first_boot,
        written: false,
    };
    if opts.dry_run {
        return Ok(report);
    }

    write_files(&mut vol, &files)?;
    // Hives: apply every plan, write back the ones that changed (or were replayed: the file
    // must hold the recovered state before the edit makes sense to Windows).
    let mut system_changed = replayed_system;
    let mut software_changed = replayed_software;
    for (hive, plan) in &plans {
        let (h, changed): (&mut Hive, &mut bool) = if *hive == "SYSTEM" {
            (&mut system_hive, &mut system_changed)
        } else {
            (&mut software_hive, &mut software_changed)
        };
        let r = apply_plan(h, plan).map_err(|e| {
            e.in_file(if *hive == "SYSTEM" {
                &system_path
            } else {
                &software_path
            })
        })?;
        *changed |= r.changed();
    }
    for (changed, path, hive) in [
        (system_changed, &system_path, &system_hive),
        (software_changed, &software_path, &software_hive),
    ] {
        if changed {
            vol.write_file(path, &hive.to_bytes())
                .map_err(|e| e.in_file(path))?;
        }
    }
    vol.flush()?;
    report.written = true;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            "viostor".parse::<BlockDriver>().unwrap(),
            BlockDriver::Viostor
        );
        assert_eq!(
            "VIOSCSI".parse::<BlockDriver>().unwrap(),
            BlockDriver::Vioscsi
        );
        assert!("virtio".parse::<BlockDriver>().is_err());
        for t in [CloudTarget::AwsNitro, CloudTarget::Gcp, CloudTarget::Azure] {
            assert_eq!(t.name().parse::<CloudTarget>().unwrap(), t);
        }
        let e = "ec2".parse::<CloudTarget>().unwrap_err().to_string();
        assert!(e.contains("aws-nitro, gcp or azure"), "{e}");
    }

    #[test]
    fn data_as_text() {
        assert_eq!(data_text(&RegData::Dword(10)), "10");
        assert_eq!(data_text(&RegData::Binary(vec![1, 0xff])), "01ff");
        assert_eq!(
            data_text(&RegData::MultiSz(vec!["a".into(), "b".into()])),
            "a; b"
        );
        assert_eq!(data_text(&RegData::ExpandSz("%x%".into())), "%x%");
    }

    #[test]
    fn boot_driver_arch() {
        assert_eq!(BlockDriver::Viostor.boot_driver(WinArch::X86).arch, "x86");
        assert!(
            BlockDriver::Vioscsi
                .boot_driver(WinArch::Amd64)
                .package_label()
                .starts_with("vioscsi.inf_amd64_")
        );
        assert_eq!(parent("a\\b\\c"), "a\\b");
        assert_eq!(parent("c"), "");
    }

    #[test]
    fn nothing_to_do_is_an_error() {
        let e = inject_windows(Path::new("/nonexistent.img"), &InjectOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to inject"), "{e}");
    }
}
