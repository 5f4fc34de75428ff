//! The configuration of a Linux guest that breaks when it moves to another platform, read from
//! its file systems ([`read_config`]), and the file changes that fix it ([`plan_fixes`]).
//!
//! What is read (all read-only, through [`GuestFs`]):
//!
//! - `/etc/fstab`: each entry and whether it names its device in a way that survives the move
//!   (`UUID=`, `LABEL=`, LVM names...) or not (`/dev/sda1`, `/dev/xvda1`, `/dev/nvme0n1p1`,
//!   `/dev/disk/by-path/...`): [`Fstab`].
//! - the boot loader: GRUB 2 (`grub.cfg` under `/boot/grub`, `/boot/grub2` and the EFI system
//!   partition), GRUB legacy (`menu.lst`, `grub.conf`), Boot Loader Specification entries,
//!   `/etc/default/grub`, `/etc/kernel/cmdline`, `grubenv` and `device.map`: every `root=` and
//!   `resume=` and every device.map disk ([`BootFile`]).
//! - the network configuration bound to MAC addresses: udev persistent-net rules, ifcfg files
//!   (Red Hat and SUSE), netplan, NetworkManager keyfiles, systemd-networkd `.network` and
//!   `.link` files, Debian's `/etc/network/interfaces` ([`NetConfig`]).
//! - the guest tools of each platform, installed and enabled ([`GuestTool`]), and from them a
//!   guess of the platform the guest comes from.
//! - cloud-init and SELinux ([`CloudInit`], [`Selinux`]).
//!
//! The plan is a list of [`FileChange`]s, each on one file of one file system ([`FsRole`]):
//! the whole text before and after (so that the writer can check nothing changed in between),
//! lines that are not fixed kept byte for byte. Planning again on the fixed files gives no
//! change.
//!
//! ```
//! use diskconv::guest::linuxcfg::{ApplyChanges, FixOptions, FsRole, MemFs, VolumeMap, plan_fixes, read_config};
//! let mut fs = MemFs::new();
//! fs.file("/etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n");
//! let cfg = read_config(&fs, None)?;
//! let mut volumes = VolumeMap::new();
//! volumes.add_partition(0, 1, "0b3a6a0e-4b1c-4f7e-9d62-3a0f4b1d2c11");
//! let plan = plan_fixes(&cfg, &volumes, "kvm", &FixOptions::default())?;
//! fs.apply(FsRole::Root, &plan.changes)?;
//! assert_eq!(
//!     fs.read_text("/etc/fstab", 4096)?.unwrap(),
//!     "UUID=0b3a6a0e-4b1c-4f7e-9d62-3a0f4b1d2c11 / ext4 defaults 0 1\n"
//! );
//! # use diskconv::guest::fs::GuestFs;
//! # Ok::<(), diskconv::Error>(())
//! ```

mod device;
mod fstab;
mod grub;
mod memfs;
mod misc;
mod network;
mod tools;

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::guest::fs::{FileKind, GuestFs};

pub use crate::guest::fs::MemFs;
pub use device::{Naming, VolumeMap, classify};
pub use fstab::{Fstab, FstabComment, FstabEntry};
pub use grub::{BootFile, BootFileKind, BootParam, DeviceMapEntry};
pub use memfs::ApplyChanges;
pub use misc::{CloudInit, Selinux};
pub use network::{AddrMethod, NetConfig, NetSource};
pub use tools::{GuestTool, ToolDecision};

/// The largest configuration file read; larger ones are noted and skipped.
const MAX_CONFIG: u64 = 1 << 20;
/// The most entries of one folder looked at.
const MAX_DIR: usize = 4096;

/// Which of the guest's file systems a path is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsRole {
    /// The root file system (`/`).
    Root,
    /// A separate `/boot` file system: paths are relative to it (`/grub/grub.cfg`).
    Boot,
    /// The EFI system partition mounted at `/boot/efi`: paths relative to it (`/EFI/...`).
    Esp,
}

impl FsRole {
    /// Where the file system is mounted in the guest: `/`, `/boot`, `/boot/efi`.
    pub fn mount_point(self) -> &'static str {
        match self {
            FsRole::Root => "/",
            FsRole::Boot => "/boot",
            FsRole::Esp => "/boot/efi",
        }
    }

    /// `path` (on this file system) as the guest sees it.
    pub fn guest_path(self, path: &str) -> String {
        match self {
            FsRole::Root => path.to_string(),
            r => format!("{}{path}", r.mount_point()),
        }
    }
}

/// The file systems a configuration is read from: the root, and `/boot` and the EFI system
/// partition when they are separate file systems the caller could open.
#[derive(Clone, Copy)]
pub struct GuestRoots<'a> {
    /// The root file system.
    pub root: &'a dyn GuestFs,
    /// The separate `/boot` file system, if any.
    pub boot: Option<&'a dyn GuestFs>,
    /// The EFI system partition (`/boot/efi`), if it could be opened.
    pub esp: Option<&'a dyn GuestFs>,
}

impl std::fmt::Debug for GuestRoots<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRoots")
            .field("root", &self.root.fs_name())
            .field("boot", &self.boot.map(|b| b.fs_name()))
            .field("esp", &self.esp.map(|b| b.fs_name()))
            .finish()
    }
}

/// A platform a guest runs on, or is moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// VMware vSphere / ESXi / Workstation.
    Vmware,
    /// Microsoft Hyper-V.
    HyperV,
    /// Oracle VirtualBox.
    VirtualBox,
    /// Xen (XenServer, XCP-ng, older EC2 instances).
    Xen,
    /// KVM / QEMU (libvirt, OpenStack, Proxmox).
    Kvm,
    /// Amazon EC2 (Nitro: NVMe disks).
    Aws,
    /// Microsoft Azure (Hyper-V underneath).
    Azure,
    /// Google Compute Engine.
    Gcp,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Platform; 8] = [
        Platform::Vmware,
        Platform::HyperV,
        Platform::VirtualBox,
        Platform::Xen,
        Platform::Kvm,
        Platform::Aws,
        Platform::Azure,
        Platform::Gcp,
    ];

    /// The platform a target name means: `vmware` (`vsphere`, `esxi`), `hyperv`
    /// (`hyper-v`), `virtualbox` (`vbox`), `xen`, `kvm` (`qemu`, `libvirt`, `openstack`,
    /// `proxmox`), `aws` (`ec2`), `azure`, `gcp` (`gce`, `google`); case-insensitive.
    pub fn parse(name: &str) -> Result<Platform> {
        let n = name.trim().to_ascii_lowercase();
        Ok(match n.as_str() {
            "vmware" | "vsphere" | "esxi" => Platform::Vmware,
            "hyperv" | "hyper-v" => Platform::HyperV,
            "virtualbox" | "vbox" => Platform::VirtualBox,
            "xen" => Platform::Xen,
            "kvm" | "qemu" | "libvirt" | "openstack" | "proxmox" => Platform::Kvm,
            "aws" | "ec2" => Platform::Aws,
            "azure" => Platform::Azure,
            "gcp" | "gce" | "google" => Platform::Gcp,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown target platform {name:?}: expected one of vmware, hyperv, \
                     virtualbox, xen, kvm, aws, azure, gcp"
                )));
            }
        })
    }

    /// Its short name, as [`Platform::parse`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Vmware => "vmware",
            Platform::HyperV => "hyperv",
            Platform::VirtualBox => "virtualbox",
            Platform::Xen => "xen",
            Platform::Kvm => "kvm",
            Platform::Aws => "aws",
            Platform::Azure => "azure",
            Platform::Gcp => "gcp",
        }
    }

    /// The kernel name prefix of its disks: `sd` (SCSI, SATA, Hyper-V storvsc), `vd`
    /// (virtio-blk), `xvd` (Xen), `nvme` (EC2 Nitro).
    pub fn disk_prefix(self) -> &'static str {
        match self {
            Platform::Kvm => "vd",
            Platform::Xen => "xvd",
            Platform::Aws => "nvme",
            _ => "sd",
        }
    }
}

/// What planning may do beyond the fixes that are always made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FixOptions {
    /// Make the first network interface use DHCP (off by default): the first interface's
    /// static addresses are replaced, or a DHCP configuration is added when none is found.
    pub dhcp_first_interface: bool,
    /// Disable the guest tools of other platforms (on by default).
    pub disable_foreign_tools: bool,
}

impl Default for FixOptions {
    fn default() -> FixOptions {
        FixOptions {
            dhcp_first_interface: false,
            disable_foreign_tools: true,
        }
    }
}

/// What a [`FileChange`] does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ChangeAction {
    /// The regular file's whole text `before` becomes `after`.
    Replace {
        /// The text read.
        before: String,
        /// The text to write.
        after: String,
    },
    /// The regular file (holding `before`) is removed.
    Remove {
        /// The text read.
        before: String,
    },
    /// The symbolic link (pointing at `target`) is removed.
    RemoveLink {
        /// Its target, as read.
        target: String,
    },
    /// A new regular file holding `content` is created (its folder exists).
    Add {
        /// The text to write.
        content: String,
    },
}

/// One change to one file of the guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileChange {
    /// The file system it is on.
    pub fs: FsRole,
    /// Its absolute path on that file system (symbolic links on the way are the writer's to
    /// follow: the configuration was read through them).
    pub path: String,
    /// What to do.
    pub action: ChangeAction,
    /// Why, for the report (several reasons joined with `; `).
    pub reason: String,
}

impl FileChange {
    /// The path as the running guest sees it (`/boot/grub/grub.cfg` for `/grub/grub.cfg` on
    /// a separate `/boot`).
    pub fn guest_path(&self) -> String {
        self.fs.guest_path(&self.path)
    }
}

/// The fixes planned for one guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FixPlan {
    /// The platform the guest moves to.
    pub target: Platform,
    /// The platform it probably comes from (see [`LinuxConfig::source_platform`]).
    pub source_platform: Option<Platform>,
    /// The changes, one per file, in the order they were planned.
    pub changes: Vec<FileChange>,
    /// What needs fixing but could not be fixed, and why (a device name the volume map does
    /// not know, a grubenv that would outgrow its block).
    pub unresolved: Vec<String>,
    /// What was decided for each guest tool found.
    pub tools: Vec<ToolDecision>,
}

/// What [`read_config`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinuxConfig {
    /// `/etc/fstab`, when there is one.
    pub fstab: Option<Fstab>,
    /// The boot loader files found, with their kernel parameters.
    pub boot: Vec<BootFile>,
    /// The network configuration files, one entry per interface they configure.
    pub network: Vec<NetConfig>,
    /// The guest tools found (installed, or with start links).
    pub tools: Vec<GuestTool>,
    /// The platform the guest probably comes from: the one whose tools are installed (the
    /// hypervisors' before the clouds' agents), else the maker of the MAC addresses in its
    /// network configuration.
    pub source_platform: Option<Platform>,
    /// cloud-init.
    pub cloud_init: CloudInit,
    /// SELinux, when `/etc/selinux/config` exists.
    pub selinux: Option<Selinux>,
    /// What could not be read, and other remarks.
    pub notes: Vec<String>,
    /// The texts read, by file system and path: what the plan edits.
    #[serde(skip)]
    sources: BTreeMap<(FsRole, String), String>,
    /// Symbolic links read (start links of services), by file system and path: their target.
    #[serde(skip)]
    links: BTreeMap<(FsRole, String), String>,
}

/// Reads the configuration of the Linux guest whose root file system is `root` (and whose
/// `/boot`, when it is a separate file system, is `boot`). A configuration file that is too
/// large (over 1 MiB) is noted and skipped; errors of the file systems are returned.
pub fn read_config(root: &dyn GuestFs, boot: Option<&dyn GuestFs>) -> Result<LinuxConfig> {
    read_config_from(&GuestRoots {
        root,
        boot,
        esp: None,
    })
}

/// [`read_config`] with the EFI system partition too.
pub fn read_config_from(roots: &GuestRoots<'_>) -> Result<LinuxConfig> {
    let mut r = Reader {
        roots: *roots,
        cfg: LinuxConfig::default(),
    };
    fstab::read(&mut r)?;
    grub::read(&mut r)?;
    network::read(&mut r)?;
    tools::read(&mut r)?;
    misc::read(&mut r)?;
    let mut cfg = r.cfg;
    cfg.source_platform = tools::guess_platform(&cfg);
    Ok(cfg)
}

/// Plans the changes that let the guest of `cfg` boot and reach the network on `target` (a
/// [`Platform::parse`] name): device paths in `/etc/fstab` and in the boot loader's `root=`
/// and `resume=` replaced by `UUID=` of the file system `volumes` says they named,
/// device.map entries for disks the target will not have removed, MAC address bindings
/// removed from the network configuration, the start links of other platforms' guest tools
/// removed (see [`FixOptions`]).
pub fn plan_fixes(
    cfg: &LinuxConfig,
    volumes: &VolumeMap,
    target: &str,
    opts: &FixOptions,
) -> Result<FixPlan> {
    let target = Platform::parse(target)?;
    let mut p = Planner {
        cfg,
        volumes,
        target,
        opts,
        edits: Vec::new(),
        unresolved: Vec::new(),
        tools: Vec::new(),
    };
    fstab::plan(&mut p);
    grub::plan(&mut p);
    network::plan(&mut p);
    tools::plan(&mut p);
    let changes = p
        .edits
        .into_iter()
        .filter_map(|e| {
            let action = match e.state {
                EditState::Text(after) if after == e.before => return None,
                EditState::Text(after) => ChangeAction::Replace {
                    before: e.before,
                    after,
                },
                EditState::Removed => ChangeAction::Remove { before: e.before },
                EditState::LinkRemoved => ChangeAction::RemoveLink { target: e.before },
                EditState::Added(content) => ChangeAction::Add { content },
            };
            Some(FileChange {
                fs: e.fs,
                path: e.path,
                action,
                reason: e.reasons.join("; "),
            })
        })
        .collect();
    Ok(FixPlan {
        target,
        source_platform: cfg.source_platform,
        changes,
        unresolved: p.unresolved,
        tools: p.tools,
    })
}

/// Reading state: the file systems and what was found so far.
pub(crate) struct Reader<'a> {
    roots: GuestRoots<'a>,
    pub(crate) cfg: LinuxConfig,
}

impl Reader<'_> {
    fn fs(&self, role: FsRole) -> Option<&dyn GuestFs> {
        match role {
            FsRole::Root => Some(self.roots.root),
            FsRole::Boot => self.roots.boot,
            FsRole::Esp => self.roots.esp,
        }
    }

    /// Where `/boot/<rel>` is: on the separate `/boot` when there is one.
    pub(crate) fn boot_path(&self, rel: &str) -> (FsRole, String) {
        match self.roots.boot {
            Some(_) => (FsRole::Boot, format!("/{rel}")),
            None => (FsRole::Root, format!("/boot/{rel}")),
        }
    }

    /// Where `/boot/efi/<rel>` is: on the EFI system partition when it was given, else on
    /// `/boot` or the root (an ESP that is a folder, or was copied there).
    pub(crate) fn esp_path(&self, rel: &str) -> (FsRole, String) {
        match self.roots.esp {
            Some(_) => (FsRole::Esp, format!("/{rel}")),
            None => self.boot_path(&format!("efi/{rel}")),
        }
    }

    /// The text of the regular file `path` on `role`, remembered for the plan; `None` when it
    /// does not exist or is not a regular file (a note when it is too large).
    pub(crate) fn text(&mut self, role: FsRole, path: &str) -> Result<Option<String>> {
        let Some(fs) = self.fs(role) else {
            return Ok(None);
        };
        match fs.stat(path)? {
            Some(FileKind::File(len)) if len > MAX_CONFIG => {
                self.cfg.notes.push(format!(
                    "{}: {len} bytes, larger than the {MAX_CONFIG} bytes read: not looked at",
                    role.guest_path(path)
                ));
                Ok(None)
            }
            Some(FileKind::File(_)) => {
                let Some(b) = fs.read_file(path, MAX_CONFIG)? else {
                    return Ok(None);
                };
                match String::from_utf8(b) {
                    Ok(t) => {
                        self.cfg.sources.insert((role, path.to_string()), t.clone());
                        Ok(Some(t))
                    }
                    Err(e) => {
                        // Read for the report; never rewritten (the text would not be the
                        // bytes read).
                        self.cfg.notes.push(format!(
                            "{}: not UTF-8 text (at byte {}): reported, not changed",
                            role.guest_path(path),
                            e.utf8_error().valid_up_to()
                        ));
                        Ok(Some(String::from_utf8_lossy(e.as_bytes()).into_owned()))
                    }
                }
            }
            _ => Ok(None),
        }
    }

    /// Whether `path` exists on `role` (links followed).
    pub(crate) fn exists(&self, role: FsRole, path: &str) -> Result<bool> {
        match self.fs(role) {
            Some(fs) => Ok(fs.stat(path)?.is_some()),
            None => Ok(false),
        }
    }

    /// Whether `path` exists on `role` (a final link not followed: a dangling link counts).
    pub(crate) fn exists_l(&self, role: FsRole, path: &str) -> Result<bool> {
        match self.fs(role) {
            Some(fs) => Ok(fs.lstat(path)?.is_some()),
            None => Ok(false),
        }
    }

    /// The names in the folder `dir` on `role`, sorted; empty when it does not exist.
    pub(crate) fn list(&mut self, role: FsRole, dir: &str) -> Result<Vec<String>> {
        let Some(fs) = self.fs(role) else {
            return Ok(Vec::new());
        };
        let mut names = fs.list_dir(dir, MAX_DIR)?.unwrap_or_default();
        if names.len() >= MAX_DIR {
            self.cfg.notes.push(format!(
                "{}: more than {MAX_DIR} entries, only the first looked at",
                role.guest_path(dir)
            ));
        }
        names.sort();
        Ok(names)
    }

    /// The target of the symbolic link `path` on `role`, remembered for the plan.
    pub(crate) fn link(&mut self, role: FsRole, path: &str) -> Result<Option<String>> {
        let Some(fs) = self.fs(role) else {
            return Ok(None);
        };
        let t = fs.read_link(path)?;
        if let Some(t) = &t {
            self.cfg.links.insert((role, path.to_string()), t.clone());
        }
        Ok(t)
    }
}

/// The state of one file in a plan.
enum EditState {
    Text(String),
    Removed,
    LinkRemoved,
    Added(String),
}

struct Edit {
    fs: FsRole,
    path: String,
    before: String,
    state: EditState,
    reasons: Vec<String>,
}

/// Planning state: the edits so far, one per file, composed in order.
pub(crate) struct Planner<'a> {
    pub(crate) cfg: &'a LinuxConfig,
    pub(crate) volumes: &'a VolumeMap,
    pub(crate) target: Platform,
    pub(crate) opts: &'a FixOptions,
    edits: Vec<Edit>,
    pub(crate) unresolved: Vec<String>,
    pub(crate) tools: Vec<ToolDecision>,
}

impl Planner<'_> {
    fn find(&self, fs: FsRole, path: &str) -> Option<usize> {
        self.edits.iter().position(|e| e.fs == fs && e.path == path)
    }

    /// The text of `path` as planned so far (`None`: not read, or removed).
    pub(crate) fn text(&self, fs: FsRole, path: &str) -> Option<String> {
        match self.find(fs, path) {
            Some(i) => match &self.edits[i].state {
                EditState::Text(t) | EditState::Added(t) => Some(t.clone()),
                _ => None,
            },
            None => self.cfg.sources.get(&(fs, path.to_string())).cloned(),
        }
    }

    fn entry(&mut self, fs: FsRole, path: &str, before: String) -> &mut Edit {
        let i = match self.find(fs, path) {
            Some(i) => i,
            None => {
                self.edits.push(Edit {
                    fs,
                    path: path.to_string(),
                    state: EditState::Text(before.clone()),
                    before,
                    reasons: Vec::new(),
                });
                self.edits.len() - 1
            }
        };
        &mut self.edits[i]
    }

    /// Plans the new text of a file read; nothing when it is unchanged.
    pub(crate) fn replace(&mut self, fs: FsRole, path: &str, after: String, reason: String) {
        let Some(cur) = self.text(fs, path) else {
            return;
        };
        if cur == after {
            return;
        }
        let before = self
            .cfg
            .sources
            .get(&(fs, path.to_string()))
            .cloned()
            .unwrap_or_default();
        let e = self.entry(fs, path, before);
        e.state = match e.state {
            EditState::Added(_) => EditState::Added(after),
            _ => EditState::Text(after),
        };
        e.reasons.push(reason);
    }

    /// Plans the removal of a regular file read.
    pub(crate) fn remove(&mut self, fs: FsRole, path: &str, reason: String) {
        let Some(before) = self.cfg.sources.get(&(fs, path.to_string())).cloned() else {
            return;
        };
        let e = self.entry(fs, path, before);
        e.state = EditState::Removed;
        e.reasons.push(reason);
    }

    /// Plans the removal of a symbolic link read.
    pub(crate) fn remove_link(&mut self, fs: FsRole, path: &str, reason: String) {
        let Some(target) = self.cfg.links.get(&(fs, path.to_string())).cloned() else {
            return;
        };
        if self.find(fs, path).is_some() {
            return;
        }
        let e = self.entry(fs, path, target);
        e.state = EditState::LinkRemoved;
        e.reasons.push(reason);
    }

    /// Plans a new file.
    pub(crate) fn add(&mut self, fs: FsRole, path: &str, content: String, reason: String) {
        if self.find(fs, path).is_some() || self.cfg.sources.contains_key(&(fs, path.to_string())) {
            return;
        }
        let e = self.entry(fs, path, String::new());
        e.state = EditState::Added(content);
        e.reasons.push(reason);
    }

    /// The UUID `spec` (a platform-dependent device name) should become, or why not (then
    /// noted as unresolved, `what` saying where it was found).
    pub(crate) fn resolve(&mut self, spec: &str, what: &str) -> Option<String> {
        match self.volumes.resolve(spec) {
            Some(u) => Some(u.to_string()),
            None => {
                self.unresolved.push(format!(
                    "{what}: {spec} names its device by a path that changes on another \
                     platform, and no file system is known for it: left as it is"
                ));
                None
            }
        }
    }
}

/// What to do with one line of a text.
pub(crate) enum LineEdit {
    Keep,
    Replace(String),
    Drop,
}

/// The lines of `text` without their endings (`\n`, `\r\n`), with their endings.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_inclusive('\n').map(|l| {
        let body = l.strip_suffix('\n').unwrap_or(l);
        let body = body.strip_suffix('\r').unwrap_or(body);
        (body, &l[body.len()..])
    })
}

/// `text` with each line (0-based index, without its ending) kept, replaced (its ending
/// kept) or dropped (with its ending).
pub(crate) fn edit_lines(text: &str, mut f: impl FnMut(usize, &str) -> LineEdit) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, (body, end)) in lines(text).enumerate() {
        match f(i, body) {
            LineEdit::Keep => {
                out.push_str(body);
                out.push_str(end);
            }
            LineEdit::Replace(s) => {
                out.push_str(&s);
                out.push_str(end);
            }
            LineEdit::Drop => {}
        }
    }
    out
}

/// A kernel parameter (`root=`, `resume=`) found in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParamHit {
    pub(crate) name: &'static str,
    /// Byte range of the value in the line.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The `root=` and `resume=` parameters in `line` from byte `from` on: a parameter starts at
/// `from` or after white space or a quote; its value ends at white space or a quote.
pub(crate) fn scan_params(line: &str, from: usize) -> Vec<ParamHit> {
    let b = line.as_bytes();
    let sep = |c: u8| c.is_ascii_whitespace() || c == b'"' || c == b'\'';
    let mut out = Vec::new();
    let mut i = from;
    while i < b.len() {
        if i == from || sep(b[i - 1]) {
            for name in ["root", "resume"] {
                let n = name.len();
                if b.len() > i + n && &b[i..i + n] == name.as_bytes() && b[i + n] == b'=' {
                    let start = i + n + 1;
                    let end = b[start..]
                        .iter()
                        .position(|&c| sep(c))
                        .map_or(b.len(), |k| start + k);
                    out.push(ParamHit { name, start, end });
                    i = end;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// Lower-case MAC address `aa:bb:cc:dd:ee:ff` from `s` (colons or dashes), if it is one.
pub(crate) fn mac(s: &str) -> Option<String> {
    let s = device::unquote(s.trim());
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        Some(parts.join(":").to_ascii_lowercase())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::linuxcfg::ApplyChanges;

    #[test]
    fn params_at_word_starts_only() {
        let l = "\tlinux /vmlinuz-6.1 root=/dev/sda1 ro resume=UUID=ab quiet";
        let hits = scan_params(l, 0);
        assert_eq!(hits.len(), 2);
        assert_eq!(&l[hits[0].start..hits[0].end], "/dev/sda1");
        assert_eq!(hits[1].name, "resume");
        assert_eq!(&l[hits[1].start..hits[1].end], "UUID=ab");
        assert!(scan_params("search --set=root abc", 0).is_empty());
        assert!(scan_params("myroot=/dev/sda1", 0).is_empty());
        let l = "GRUB_CMDLINE_LINUX=root=/dev/vda2";
        let hits = scan_params(l, 19);
        assert_eq!(&l[hits[0].start..hits[0].end], "/dev/vda2");
        let l = "GRUB_CMDLINE_LINUX=\"root=/dev/vda2\"";
        let hits = scan_params(l, 19);
        assert_eq!(&l[hits[0].start..hits[0].end], "/dev/vda2");
        assert!(scan_params("root=", 0)[0].start == 5);
    }

    #[test]
    fn edit_lines_keeps_endings() {
        let t = "a\r\nb\nc";
        let out = edit_lines(t, |i, l| match i {
            0 => LineEdit::Replace(format!("{l}{l}")),
            1 => LineEdit::Drop,
            _ => LineEdit::Keep,
        });
        assert_eq!(out, "aa\r\nc");
    }

    #[test]
    fn macs() {
        assert_eq!(
            mac("00:0C:29:AB:cd:01").as_deref(),
            Some("00:0c:29:ab:cd:01")
        );
        assert_eq!(
            mac("\"00-15-5d-01-02-03\"").as_deref(),
            Some("00:15:5d:01:02:03")
        );
        assert_eq!(mac("00:0c:29:ab:cd"), None);
        assert_eq!(mac("zz:0c:29:ab:cd:01"), None);
    }

    /// The check of the `linux_config` fuzz target: read, plan (DHCP on), apply, read, plan
    /// again: nothing to change, no panic.
    fn round_trip(data: &[u8]) {
        const PATHS: [&str; 15] = [
            "/etc/fstab",
            "/boot/grub/grub.cfg",
            "/etc/default/grub",
            "/boot/grub2/grubenv",
            "/boot/loader/entries/a.conf",
            "/boot/grub/device.map",
            "/etc/udev/rules.d/70-persistent-net.rules",
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            "/etc/netplan/01-netcfg.yaml",
            "/etc/NetworkManager/system-connections/a.nmconnection",
            "/etc/systemd/network/10-a.network",
            "/etc/systemd/network/10-a.link",
            "/etc/network/interfaces",
            "/etc/selinux/config",
            "/etc/kernel/cmdline",
        ];
        let mut fs = MemFs::new();
        for (path, text) in PATHS.iter().zip(data.split(|&b| b == 0xFF)) {
            fs.file(path, text);
        }
        let mut volumes = VolumeMap::new();
        volumes.add_partition(0, 1, "11111111-2222-3333-4444-555555555555");
        volumes.add_partition(0, 2, "66666666-7777-8888-9999-000000000000");
        let opts = FixOptions {
            dhcp_first_interface: true,
            ..Default::default()
        };
        let cfg = read_config(&fs, None).unwrap();
        let plan = plan_fixes(&cfg, &volumes, "kvm", &opts).unwrap();
        fs.apply(FsRole::Root, &plan.changes).unwrap();
        let cfg = read_config(&fs, None).unwrap();
        let again = plan_fixes(&cfg, &volumes, "kvm", &opts).unwrap();
        assert!(
            again.changes.is_empty(),
            "not idempotent on {:?}: {:?}",
            String::from_utf8_lossy(data),
            again.changes
        );
    }

    #[test]
    fn mutated_configurations_round_trip() {
        let seed: Vec<&[u8]> = vec![
            b"/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 swap swap sw 0 0\n",
            b"menuentry x {\n linux /vmlinuz root=/dev/sda1 resume=/dev/sda2 ro\n}\n",
            b"GRUB_CMDLINE_LINUX=\"root=/dev/vda2 quiet\"\n",
            b"# GRUB Environment Block\nkernelopts=root=/dev/sda1 ro\n####",
            b"options root=/dev/nvme0n1p2 ro\n",
            b"(hd0) /dev/sda\n(hd1) /dev/vda\n",
            b"SUBSYSTEM==\"net\", ATTR{address}==\"00:11:22:33:44:55\", NAME=\"eth0\"\n",
            b"DEVICE=eth0\nHWADDR=00:11:22:33:44:55\nBOOTPROTO=static\nIPADDR=10.0.0.1\n",
            b"network:\n  ethernets:\n    e0:\n      match:\n        macaddress: 00:11:22:33:44:55\n      set-name: e0\n      addresses: [10.0.0.2/24]\n    e1:\n      match: {macaddress: 00:11:22:33:44:56}\n",
            b"[ethernet]\nmac-address=00:11:22:33:44:55\n[ipv4]\nmethod=manual\naddress1=10.0.0.3/24\n",
            b"[Match]\nMACAddress=00:11:22:33:44:55\n[Network]\nAddress=10.0.0.4/24\n",
            b"[Match]\nMACAddress=00:11:22:33:44:55\n[Link]\nName=lan0\n",
            b"auto eth0\niface eth0 inet static\n address 10.0.0.5\n hwaddress ether 00:11:22:33:44:55\n",
            b"SELINUX=enforcing\n",
            b"root=/dev/sda1 ro\n",
        ];
        let base: Vec<u8> = seed.join(&0xFFu8);
        round_trip(&base);
        let tokens: [&[u8]; 14] = [
            b"root=/dev/sda1 ",
            b"resume=/dev/sdb2",
            b"macaddress: 00:11:22:33:44:55\n",
            b"\n",
            b"  ",
            b"#",
            b"{",
            b"\"",
            b":",
            b"- ",
            b"HWADDR=00:11:22:33:44:55\n",
            b"[Match]\n",
            b"MACAddress=00:11:22:33:44:55\n",
            b"\xff",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as usize) % n.max(1)
        };
        for _ in 0..1500 {
            let mut d = base.clone();
            for _ in 0..1 + next(6) {
                let at = next(d.len() + 1);
                match next(3) {
                    0 => {
                        let t = tokens[next(tokens.len())];
                        d.splice(at..at, t.iter().copied());
                    }
                    1 if at < d.len() => {
                        let end = (at + next(12)).min(d.len());
                        d.drain(at..end);
                    }
                    _ if at < d.len() => d[at] = next(256) as u8,
                    _ => {}
                }
            }
            round_trip(&d);
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(Platform::parse("EC2").unwrap(), Platform::Aws);
        assert!(Platform::parse("mainframe").is_err());
        for p in Platform::ALL {
            assert_eq!(Platform::parse(p.name()).unwrap(), p);
        }
    }
}
