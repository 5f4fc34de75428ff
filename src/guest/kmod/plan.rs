//! The extra initramfs archive that makes a target's drivers available at early boot: the
//! module files with their dependency closure, the guest's index files, the list that loads
//! them, and the guest configuration that keeps them across the next initramfs rebuild.
//!
//! The archive is appended after the guest's initramfs; the kernel unpacks the concatenated
//! archives in order and a later entry replaces an earlier one (`init/initramfs.c`), so the
//! guest's full `modules.dep` and `modules.alias` replace the initramfs's subset and the
//! initramfs's `modprobe` and udev find the new modules. An entry whose type differs from the
//! existing path's is not merged but replaces it (`clean_path` unlinks the old one): a
//! directory entry `lib` would remove a `lib -> usr/lib` link, so paths are written through
//! the links the existing initramfs has ([`ExistingInitramfs::symlinks`]).

use std::collections::{BTreeSet, HashSet};

use crate::error::Result;
use crate::guest::fs::{FileKind, GuestFs};

use super::index::normalize_name;
use super::need::{DriverGroup, DriverNeed, DriverRole, Need};
use super::resolve::{KernelModules, MAX_INDEX_FILE, Resolved, check_version};
use super::status::{Decompress, MAX_MODULE_FILE, VermagicCheck, check_vermagic};

/// The index files copied from the guest's modules folder when it has them (depmod's
/// outputs and the kernel build's lists).
pub const INDEX_FILES: [&str; 14] = [
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.builtin.modinfo",
    "modules.softdep",
    "modules.devname",
    "modules.order",
    "modules.weakdep",
];

/// `S_IFDIR | 0755`.
pub const DIR_MODE: u32 = 0o040_755;
/// `S_IFREG | 0644`.
pub const FILE_MODE: u32 = 0o100_644;

/// The tool that builds the guest's initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsFlavour {
    /// Debian's and Ubuntu's initramfs-tools (`/conf/modules` is loaded by its init script).
    InitramfsTools,
    /// dracut (Fedora, RHEL, SUSE, ...).
    Dracut,
    /// Not recognised.
    #[default]
    Unknown,
}

/// What the guest's current initramfs holds, as the initramfs reader found it.
#[derive(Debug, Clone, Default)]
pub struct ExistingInitramfs {
    /// The module names it holds (any spelling: they are normalized).
    pub module_names: Vec<String>,
    /// Its `conf/modules` (initramfs-tools), when it has one.
    pub conf_modules: Option<String>,
    /// Whether it loads `etc/modules-load.d/*.conf` (systemd-modules-load is in it).
    pub has_modules_load_d: bool,
    /// Which tool built it.
    pub flavour: InitramfsFlavour,
    /// Its symbolic links (path without leading `/`, target as stored), e.g. `("lib",
    /// "usr/lib")` in a merged-/usr initramfs: the plan writes its paths through them.
    pub symlinks: Vec<(String, String)>,
}

/// One entry of the archive to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// Path inside the initramfs, without a leading `/`.
    pub path: String,
    /// `st_mode` with the file type bits ([`DIR_MODE`], [`FILE_MODE`]).
    pub mode: u32,
    /// The content (empty for a directory).
    pub data: Vec<u8>,
}

impl ArchiveFile {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170_000 == 0o040_000
    }
}

/// Why a module cannot be made available.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum MissingReason {
    /// The guest has no `/lib/modules/<version>`.
    NoModulesFolder,
    /// Neither built in nor listed in `modules.dep` (nor found through an alias).
    Absent,
    /// Its file, or the file of a module it needs, names another kernel in its vermagic.
    OtherKernel {
        /// The module whose file it is.
        module: String,
        /// That file's vermagic.
        vermagic: String,
    },
    /// `modules.dep` lists a file the guest lacks.
    FileMissing {
        /// The module whose file is missing.
        module: String,
        /// The path, relative to the modules folder.
        path: String,
    },
}

impl MissingReason {
    /// One sentence for a person.
    pub fn describe(&self, version: &str) -> String {
        match self {
            MissingReason::NoModulesFolder => {
                format!("the guest has no /lib/modules/{version}")
            }
            MissingReason::Absent => format!(
                "kernel {version} neither has it built in nor as a module: install a kernel \
                 (or the extra-modules package of this one) that ships it"
            ),
            MissingReason::OtherKernel { module, vermagic } => format!(
                "the file of {module} was built for another kernel (vermagic {vermagic:?}, \
                 not {version})"
            ),
            MissingReason::FileMissing { module, path } => format!(
                "modules.dep lists {path} for {module} but the file is not there (rerun \
                 depmod {version} or reinstall the kernel)"
            ),
        }
    }
}

/// A needed module the plan cannot provide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MissingModule {
    /// The module name.
    pub name: String,
    /// What it is for.
    pub role: DriverRole,
    /// Whether the guest will not boot on the target without it (no other member of its
    /// storage or bus group is usable).
    pub required: bool,
    /// Why it is missing.
    pub reason: MissingReason,
    /// The sentence for a person.
    pub message: String,
    /// The command to run on the source machine to put it into its initramfs.
    pub fix: String,
}

/// What [`plan_early_modules`] found and would write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EarlyModulesPlan {
    /// The kernel version.
    pub version: String,
    /// The archive entries, directories before their contents; empty when nothing needs to
    /// be added.
    pub files: Vec<ArchiveFile>,
    /// Module names whose files the archive adds (the closure), in load order.
    pub added: Vec<String>,
    /// The needed modules the archive loads explicitly (usable, not built in), in order.
    pub load: Vec<String>,
    /// Needed modules built into the kernel.
    pub builtin: Vec<String>,
    /// Files of the guest to replace (path, new content) so that the next initramfs rebuild
    /// keeps the modules.
    pub guest_config: Vec<(String, String)>,
    /// Needed modules that cannot be provided.
    pub missing: Vec<MissingModule>,
    /// Remarks for a person (nothing loads the modules explicitly, no modules.dep, ...).
    pub notes: Vec<String>,
}

impl EarlyModulesPlan {
    /// Whether a boot-critical module is missing.
    pub fn blocks_boot(&self) -> bool {
        self.missing.iter().any(|m| m.required)
    }
}

/// The guest's initramfs builder, from its configuration folders; the existing initramfs's
/// flavour when the guest shows neither or both.
fn guest_builder(guest: &dyn GuestFs, existing: InitramfsFlavour) -> Result<InitramfsFlavour> {
    let tools = guest.stat("/etc/initramfs-tools")? == Some(FileKind::Dir)
        || guest.stat("/usr/share/initramfs-tools")? == Some(FileKind::Dir);
    let dracut = guest.stat("/etc/dracut.conf.d")? == Some(FileKind::Dir)
        || guest.stat("/usr/lib/dracut")? == Some(FileKind::Dir);
    Ok(match (tools, dracut) {
        (true, false) => InitramfsFlavour::InitramfsTools,
        (false, true) => InitramfsFlavour::Dracut,
        _ => existing,
    })
}

/// The source-side command that adds `names` to the initramfs of kernel `version`.
fn fix_command(flavour: InitramfsFlavour, names: &[String], version: &str) -> String {
    let tools = || {
        format!(
            "{} && update-initramfs -u -k {version}",
            names
                .iter()
                .map(|n| format!("echo {n} >> /etc/initramfs-tools/modules"))
                .collect::<Vec<_>>()
                .join(" && ")
        )
    };
    let dracut = || {
        format!(
            "dracut -f --add-drivers \"{}\" /boot/initramfs-{version}.img {version}",
            names.join(" ")
        )
    };
    match flavour {
        InitramfsFlavour::InitramfsTools => tools(),
        InitramfsFlavour::Dracut => dracut(),
        InitramfsFlavour::Unknown => {
            format!("{} (Debian, Ubuntu) or {} (dracut)", tools(), dracut())
        }
    }
}

/// Resolves `path` (no leading `/`) through the initramfs's symbolic links.
fn through_links(path: &str, links: &[(String, String)]) -> String {
    let mut cur = path.trim_start_matches('/').to_string();
    // Bounded, as the kernel bounds link resolution.
    for _ in 0..40 {
        let parts: Vec<&str> = cur.split('/').collect();
        let mut replaced = None;
        for i in 1..=parts.len() {
            let prefix = parts[..i].join("/");
            if let Some((_, target)) = links
                .iter()
                .find(|(l, _)| l.trim_start_matches('/').trim_end_matches('/') == prefix)
            {
                let base = if target.starts_with('/') {
                    String::new()
                } else {
                    parts[..i - 1].join("/")
                };
                let mut joined: Vec<String> = Vec::new();
                for c in base.split('/').chain(target.split('/')) {
                    match c {
                        "" | "." => {}
                        ".." => {
                            joined.pop();
                        }
                        c => joined.push(c.to_string()),
                    }
                }
                joined.extend(parts[i..].iter().map(|s| s.to_string()));
                replaced = Some(joined.join("/"));
                break;
            }
        }
        match replaced {
            Some(r) if r != cur => cur = r,
            _ => break,
        }
    }
    cur
}

/// Collects archive entries: directories are made for every parent.
#[derive(Default)]
struct Archive {
    dirs: BTreeSet<String>,
    files: Vec<ArchiveFile>,
    paths: HashSet<String>,
}

impl Archive {
    fn add(&mut self, path: &str, data: Vec<u8>, links: &[(String, String)]) {
        let path = through_links(path, links);
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.dirs.insert(parent.clone());
        }
        if self.paths.insert(path.clone()) {
            self.files.push(ArchiveFile {
                path,
                mode: FILE_MODE,
                data,
            });
        }
    }

    fn finish(self) -> Vec<ArchiveFile> {
        // BTreeSet order puts a parent before its children.
        let mut out: Vec<ArchiveFile> = self
            .dirs
            .into_iter()
            .map(|d| ArchiveFile {
                path: d,
                mode: DIR_MODE,
                data: Vec::new(),
            })
            .collect();
        out.extend(self.files);
        out
    }
}

/// The outcome of trying to provide one module.
enum Usable {
    /// Built into the kernel.
    Builtin,
    /// Provided: the (name, path) of the modules to add (those not in the initramfs yet).
    Files(Vec<(String, String)>),
    /// Not provided.
    Missing(MissingReason),
}

/// The early-boot archive for kernel `version` of `guest` that provides the modules of
/// `wanted`, given what its initramfs already holds. Module files are checked against the
/// kernel version through their vermagic; compressed ones only when `decompress` is given
/// (otherwise they are added unchecked, with a note).
pub fn plan_early_modules(
    version: &str,
    wanted: &DriverNeed,
    guest: &dyn GuestFs,
    existing: &ExistingInitramfs,
    decompress: Option<Decompress<'_>>,
) -> Result<EarlyModulesPlan> {
    check_version(version)?;
    let mut plan = EarlyModulesPlan {
        version: version.to_string(),
        ..EarlyModulesPlan::default()
    };
    let builder = guest_builder(guest, existing.flavour)?;
    let Some(k) = KernelModules::load(guest, version)? else {
        for g in &wanted.groups {
            if g.need == Need::Optional {
                continue;
            }
            for m in &g.modules {
                push_missing(
                    &mut plan,
                    g,
                    m,
                    MissingReason::NoModulesFolder,
                    true,
                    builder,
                );
            }
        }
        return Ok(plan);
    };
    if !k.has_dep {
        plan.notes.push(format!(
            "{}/modules.dep is missing (depmod has not run): no module can be resolved",
            k.dir
        ));
    }
    let in_initramfs: HashSet<String> = existing
        .module_names
        .iter()
        .map(|n| normalize_name(n))
        .collect();
    let mut bytes_of: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut unchecked = Vec::new();

    // Try every member of every group.
    let mut results: Vec<(usize, &'static str, Usable)> = Vec::new();
    for (gi, g) in wanted.groups.iter().enumerate() {
        for &m in &g.modules {
            let u = usable(
                &k,
                guest,
                m,
                &in_initramfs,
                decompress,
                &mut bytes_of,
                &mut unchecked,
            )?;
            results.push((gi, m, u));
        }
    }

    // Decide what is missing per group, collect what is added.
    let mut added: Vec<(String, String)> = Vec::new();
    for (gi, g) in wanted.groups.iter().enumerate() {
        let members: Vec<&(usize, &'static str, Usable)> =
            results.iter().filter(|r| r.0 == gi).collect();
        let any_usable = members.iter().any(|r| !matches!(r.2, Usable::Missing(_)));
        for (_, m, u) in members {
            match u {
                Usable::Builtin => {
                    if !plan.builtin.iter().any(|b| b == m) {
                        plan.builtin.push(m.to_string());
                    }
                }
                Usable::Files(files) => {
                    if !plan.load.iter().any(|l| l == m) {
                        plan.load.push(m.to_string());
                    }
                    for f in files {
                        if !added.contains(f) {
                            added.push(f.clone());
                        }
                    }
                }
                Usable::Missing(reason) => {
                    // An optional module a kernel does not have is no problem.
                    if g.need == Need::Optional && *reason == MissingReason::Absent {
                        continue;
                    }
                    let required = g.boot_critical()
                        && match g.need {
                            Need::AnyOf => !any_usable,
                            Need::Each => true,
                            Need::Optional => false,
                        };
                    push_missing(&mut plan, g, m, reason.clone(), required, builder);
                }
            }
        }
    }
    if !unchecked.is_empty() {
        plan.notes.push(format!(
            "the vermagic of {} was not checked (compressed, no decompressor given)",
            unchecked.join(", ")
        ));
    }

    // The load list in modules.order order where the kernel has one (dependencies first).
    plan.load
        .sort_by_key(|n| k.order.position(n).unwrap_or(usize::MAX));
    if added.is_empty() {
        // Everything is built in or already in the initramfs: nothing to append, but the guest
        // configuration still keeps the modules across rebuilds.
        plan.guest_config = guest_config(guest, wanted, &plan.load, builder)?;
        return Ok(plan);
    }

    let links = &existing.symlinks;
    let rel_dir = k.dir.trim_start_matches('/');
    let mut ar = Archive::default();
    for name in INDEX_FILES {
        let p = format!("{}/{name}", k.dir);
        if let Some(b) = guest
            .read_file(&p, MAX_INDEX_FILE)
            .map_err(|e| e.in_file(format!("{}:{p}", guest.fs_name())))?
        {
            ar.add(&format!("{rel_dir}/{name}"), b, links);
        }
    }
    for (name, path) in &added {
        let data = bytes_of.remove(path).unwrap_or_default();
        ar.add(&format!("{rel_dir}/{path}"), data, links);
        plan.added.push(name.clone());
    }
    let (load_files, note) = load_lists(existing, &plan.load);
    for (p, text) in load_files {
        ar.add(&p, text.into_bytes(), links);
    }
    plan.notes.extend(note);
    plan.files = ar.finish();
    plan.guest_config = guest_config(guest, wanted, &plan.load, builder)?;
    Ok(plan)
}

fn push_missing(
    plan: &mut EarlyModulesPlan,
    g: &DriverGroup,
    m: &str,
    reason: MissingReason,
    required: bool,
    builder: InitramfsFlavour,
) {
    let message = reason.describe(&plan.version);
    plan.missing.push(MissingModule {
        name: m.to_string(),
        role: g.role,
        required,
        fix: fix_command(builder, &[m.to_string()], &plan.version),
        reason,
        message,
    });
}

/// Whether module `m` can be provided, and the files it takes.
fn usable(
    k: &KernelModules,
    guest: &dyn GuestFs,
    m: &str,
    in_initramfs: &HashSet<String>,
    decompress: Option<Decompress<'_>>,
    bytes_of: &mut std::collections::HashMap<String, Vec<u8>>,
    unchecked: &mut Vec<String>,
) -> Result<Usable> {
    let found = k.lookup(m);
    let module = found.iter().find_map(|r| match r {
        Resolved::Module { name, path } => Some((name.clone(), path.clone())),
        Resolved::Builtin(_) => None,
    });
    let Some((name, path)) = module else {
        return Ok(if found.is_empty() {
            Usable::Missing(MissingReason::Absent)
        } else {
            Usable::Builtin
        });
    };
    let probe = k.probe_list(&name, &path);
    let mut files = Vec::new();
    for (n, p) in probe.modules {
        if in_initramfs.contains(&n) {
            continue;
        }
        if !bytes_of.contains_key(&p) {
            let full = format!("{}/{p}", k.dir);
            let ctx = || format!("{}:{full}", guest.fs_name());
            let Some(b) = guest
                .read_file(&full, MAX_MODULE_FILE)
                .map_err(|e| e.in_file(ctx()))?
            else {
                return Ok(Usable::Missing(MissingReason::FileMissing {
                    module: n,
                    path: p,
                }));
            };
            match check_vermagic(&b, &k.version, decompress).map_err(|e| e.in_file(ctx()))? {
                VermagicCheck::Matches => {}
                VermagicCheck::OtherKernel { vermagic } => {
                    return Ok(Usable::Missing(MissingReason::OtherKernel {
                        module: n,
                        vermagic,
                    }));
                }
                VermagicCheck::Unchecked { .. } => {
                    if !unchecked.contains(&n) {
                        unchecked.push(n.clone());
                    }
                }
            }
            bytes_of.insert(p.clone(), b);
        }
        files.push((n, p));
    }
    Ok(Usable::Files(files))
}

/// The archive files that load `load` at early boot, and a note when nothing would.
fn load_lists(
    existing: &ExistingInitramfs,
    load: &[String],
) -> (Vec<(String, String)>, Option<String>) {
    let mut out = Vec::new();
    if load.is_empty() {
        return (out, None);
    }
    let tools = existing.flavour == InitramfsFlavour::InitramfsTools
        || (existing.flavour == InitramfsFlavour::Unknown && existing.conf_modules.is_some());
    if tools {
        // initramfs-tools' init loads every module named in /conf/modules (`load_modules` in
        // scripts/functions), one per line, options after the name.
        let text = append_names(existing.conf_modules.as_deref().unwrap_or(""), load, None);
        out.push(("conf/modules".to_string(), text));
    }
    let dracut = existing.flavour == InitramfsFlavour::Dracut;
    if existing.has_modules_load_d || dracut {
        // systemd-modules-load reads /etc/modules-load.d/*.conf, one module per line.
        let mut text = String::from("# Written by diskconv: drivers of the target platform.\n");
        for n in load {
            text.push_str(n);
            text.push('\n');
        }
        out.push(("etc/modules-load.d/diskconv.conf".to_string(), text));
    }
    if dracut && !existing.has_modules_load_d {
        // dracut without systemd: its cmdline hook (90kernel-modules/parse-kernel.sh) loads
        // rd.driver.pre, and getcmdline reads /etc/cmdline.d/*.conf.
        out.push((
            "etc/cmdline.d/diskconv.conf".to_string(),
            format!("rd.driver.pre={}\n", load.join(",")),
        ));
    }
    let note = out.is_empty().then(|| {
        "the initramfs has neither conf/modules nor modules-load.d: the added modules load only \
         when udev matches their devices"
            .to_string()
    });
    (out, note)
}

/// `existing` (a module list, one name per line) with the names of `add` it lacks appended,
/// after `header` when given.
fn append_names(existing: &str, add: &[String], header: Option<&str>) -> String {
    let listed: HashSet<String> = existing
        .lines()
        .filter_map(|l| {
            let t = l.trim();
            (!t.is_empty() && !t.starts_with('#'))
                .then(|| normalize_name(t.split_ascii_whitespace().next().unwrap_or("")))
        })
        .collect();
    let new: Vec<&String> = add
        .iter()
        .filter(|n| !listed.contains(&normalize_name(n)))
        .collect();
    let mut text = existing.to_string();
    if new.is_empty() {
        return text;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if let Some(h) = header {
        text.push_str(h);
        text.push('\n');
    }
    for n in new {
        text.push_str(n);
        text.push('\n');
    }
    text
}

/// The guest files that keep `load` in the initramfs across the next rebuild.
fn guest_config(
    guest: &dyn GuestFs,
    wanted: &DriverNeed,
    load: &[String],
    builder: InitramfsFlavour,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if load.is_empty() {
        return Ok(out);
    }
    let tools = matches!(
        builder,
        InitramfsFlavour::InitramfsTools | InitramfsFlavour::Unknown
    );
    if tools && guest.stat("/etc/initramfs-tools")? == Some(FileKind::Dir) {
        let path = "/etc/initramfs-tools/modules";
        let old = guest.read_text(path, MAX_INDEX_FILE)?.unwrap_or_default();
        let header = format!("# Added by diskconv for the {} target.", wanted.target);
        let new = append_names(&old, load, Some(&header));
        if new != old {
            out.push((path.to_string(), new));
        }
    }
    let dracut = matches!(
        builder,
        InitramfsFlavour::Dracut | InitramfsFlavour::Unknown
    );
    if dracut
        && (builder == InitramfsFlavour::Dracut
            || guest.stat("/etc/dracut.conf.d")? == Some(FileKind::Dir))
    {
        // dracut.conf(5): add_drivers+=" ... " (spaces inside the quotes, so that lists
        // from several files do not run together).
        out.push((
            format!("/etc/dracut.conf.d/diskconv-{}.conf", wanted.target),
            format!(
                "# Added by diskconv for the {} target.\nadd_drivers+=\" {} \"\n",
                wanted.target,
                load.join(" ")
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::guest::kmod::elf::test_elf;
    use crate::guest::kmod::need::{ModuleTarget, boot_drivers};

    use crate::guest::fs::MemFs;

    const V: &str = "6.1.0-test";

    fn module(kver: &str) -> Vec<u8> {
        test_elf(
            format!("vermagic={kver} SMP mod_unload\0").as_bytes(),
            true,
            false,
        )
    }

    /// A Debian-like guest: virtio_blk, virtio_scsi (needs scsi_mod), virtio_net (needs
    /// net_failover), virtio and virtio_ring modules; virtio_pci built in; initramfs-tools.
    fn guest() -> MemFs {
        let d = format!("/lib/modules/{V}");
        let mut fs = MemFs::new();
        let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/scsi/scsi_mod.ko:\n\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/net/net_failover.ko:\n";
        fs.file(&format!("{d}/modules.dep"), dep.as_bytes());
        fs.file(&format!("{d}/modules.dep.bin"), b"binary index");
        fs.file(
            &format!("{d}/modules.alias"),
            b"alias virtio:d00000002v* virtio_blk\n",
        );
        fs.file(
            &format!("{d}/modules.builtin"),
            b"kernel/drivers/virtio/virtio_pci.ko\n",
        );
        fs.file(
            &format!("{d}/modules.order"),
            b"kernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio.ko\n\
kernel/drivers/scsi/scsi_mod.ko\nkernel/drivers/scsi/virtio_scsi.ko\n\
kernel/drivers/block/virtio_blk.ko\nkernel/drivers/net/virtio_net.ko\n",
        );
        for l in dep.lines() {
            let p = l.split(':').next().unwrap();
            fs.file(&format!("{d}/{p}"), module(V));
        }
        fs.file("/etc/initramfs-tools/modules", b"# List of modules\nloop\n");
        fs.file("/etc/initramfs-tools/initramfs.conf", b"MODULES=dep\n");
        fs
    }

    fn existing() -> ExistingInitramfs {
        ExistingInitramfs {
            module_names: vec!["scsi-mod".into()],
            conf_modules: Some("loop\n".into()),
            has_modules_load_d: false,
            flavour: InitramfsFlavour::InitramfsTools,
            symlinks: Vec::new(),
        }
    }

    fn paths(p: &EarlyModulesPlan) -> Vec<&str> {
        p.files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn kvm_plan_on_an_initramfs_tools_guest() {
        let g = guest();
        let p =
            plan_early_modules(V, &boot_drivers(ModuleTarget::Kvm), &g, &existing(), None).unwrap();
        assert!(!p.blocks_boot(), "{:?}", p.missing);
        assert!(p.missing.is_empty(), "{:?}", p.missing);
        assert_eq!(p.builtin, ["virtio_pci"]);
        // modules.order order.
        assert_eq!(
            p.load,
            [
                "virtio_ring",
                "virtio",
                "virtio_scsi",
                "virtio_blk",
                "virtio_net"
            ]
        );
        // scsi_mod is in the initramfs already.
        assert!(!p.added.contains(&"scsi_mod".to_string()));
        assert_eq!(p.added.len(), 6);
        let ps = paths(&p);
        let d = format!("lib/modules/{V}");
        for want in [
            "lib".to_string(),
            "lib/modules".into(),
            d.clone(),
            format!("{d}/kernel/drivers/block"),
            format!("{d}/modules.dep"),
            format!("{d}/modules.dep.bin"),
            format!("{d}/kernel/drivers/block/virtio_blk.ko"),
            "conf/modules".into(),
        ] {
            assert!(ps.contains(&want.as_str()), "{want} not in {ps:?}");
        }
        // Every directory comes before what it holds.
        for (i, f) in p.files.iter().enumerate() {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                let at = ps.iter().position(|q| *q == parent).unwrap();
                assert!(at < i && p.files[at].is_dir());
            }
        }
        let conf = p.files.iter().find(|f| f.path == "conf/modules").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&conf.data),
            "loop\nvirtio_ring\nvirtio\nvirtio_scsi\nvirtio_blk\nvirtio_net\n"
        );
        let blk = p
            .files
            .iter()
            .find(|f| f.path.ends_with("virtio_blk.ko"))
            .unwrap();
        assert_eq!(blk.data, module(V));
        assert_eq!(blk.mode, FILE_MODE);
        assert_eq!(p.guest_config.len(), 1);
        assert_eq!(p.guest_config[0].0, "/etc/initramfs-tools/modules");
        assert!(
            p.guest_config[0].1.starts_with(
                "# List of modules\nloop\n# Added by diskconv for the kvm target.\nvirtio_ring\n"
            ),
            "{}",
            p.guest_config[0].1
        );
    }

    #[test]
    fn missing_and_foreign_modules() {
        let mut g = guest();
        // virtio_blk built for another kernel; virtio_scsi's dependency file gone.
        g.file(
            &format!("/lib/modules/{V}/kernel/drivers/block/virtio_blk.ko"),
            module("5.10.0-old"),
        );
        g.remove(&format!("/lib/modules/{V}/kernel/drivers/scsi/scsi_mod.ko"));
        let mut ex = existing();
        ex.module_names.clear();
        let p = plan_early_modules(V, &boot_drivers(ModuleTarget::Kvm), &g, &ex, None).unwrap();
        assert!(p.blocks_boot());
        let blk = p.missing.iter().find(|m| m.name == "virtio_blk").unwrap();
        assert!(blk.required);
        assert_eq!(
            blk.reason,
            MissingReason::OtherKernel {
                module: "virtio_blk".into(),
                vermagic: "5.10.0-old SMP mod_unload".into()
            }
        );
        assert_eq!(
            blk.fix,
            format!(
                "echo virtio_blk >> /etc/initramfs-tools/modules && update-initramfs -u -k {V}"
            )
        );
        let scsi = p.missing.iter().find(|m| m.name == "virtio_scsi").unwrap();
        assert!(matches!(scsi.reason, MissingReason::FileMissing { .. }));
        // The network card still gets its module.
        assert!(p.load.contains(&"virtio_net".to_string()));

        // Azure on this guest: nothing is there; the dracut command when the guest uses dracut.
        let mut g = guest();
        g.remove("/etc/initramfs-tools");
        g.file("/etc/dracut.conf.d/01-dist.conf", b"");
        let p = plan_early_modules(V, &boot_drivers(ModuleTarget::Azure), &g, &ex, None).unwrap();
        assert!(p.files.is_empty());
        let st = p.missing.iter().find(|m| m.name == "hv_storvsc").unwrap();
        assert!(st.required && st.reason == MissingReason::Absent);
        assert_eq!(
            st.fix,
            format!("dracut -f --add-drivers \"hv_storvsc\" /boot/initramfs-{V}.img {V}")
        );
        let net = p.missing.iter().find(|m| m.name == "hv_netvsc").unwrap();
        assert!(!net.required);
        // The optional scsi_transport_fc is not reported.
        assert!(p.missing.iter().all(|m| m.name != "scsi_transport_fc"));

        // No modules folder at all.
        let p =
            plan_early_modules("9.9.9", &boot_drivers(ModuleTarget::Kvm), &g, &ex, None).unwrap();
        assert!(p.blocks_boot());
        assert!(
            p.missing
                .iter()
                .all(|m| m.reason == MissingReason::NoModulesFolder)
        );
        assert!(
            plan_early_modules("../x", &boot_drivers(ModuleTarget::Kvm), &g, &ex, None).is_err()
        );
    }

    #[test]
    fn dracut_merged_usr_initramfs() {
        let mut g = guest();
        g.remove("/etc/initramfs-tools");
        g.file("/usr/lib/dracut/dracut-version.sh", b"");
        let ex = ExistingInitramfs {
            module_names: vec![],
            conf_modules: None,
            has_modules_load_d: true,
            flavour: InitramfsFlavour::Dracut,
            symlinks: vec![("lib".into(), "usr/lib".into())],
        };
        let p = plan_early_modules(V, &boot_drivers(ModuleTarget::Kvm), &g, &ex, None).unwrap();
        let ps = paths(&p);
        assert!(!ps.contains(&"lib"), "{ps:?}");
        assert!(ps.contains(&"usr/lib"));
        assert!(ps.contains(&format!("usr/lib/modules/{V}/modules.dep").as_str()));
        let conf = p
            .files
            .iter()
            .find(|f| f.path == "etc/modules-load.d/diskconv.conf")
            .unwrap();
        assert!(String::from_utf8_lossy(&conf.data).ends_with("virtio_blk\nvirtio_net\n"));
        assert!(!ps.contains(&"etc/cmdline.d/diskconv.conf"));
        assert_eq!(
            p.guest_config,
            [(
                "/etc/dracut.conf.d/diskconv-kvm.conf".to_string(),
                "# Added by diskconv for the kvm target.\nadd_drivers+=\" virtio_ring virtio \
                 virtio_scsi virtio_blk virtio_net \"\n"
                    .to_string()
            )]
        );
    }

    #[test]
    fn links_are_followed() {
        let l = vec![
            ("lib".to_string(), "usr/lib".to_string()),
            ("usr/lib/x".to_string(), "../share/y".to_string()),
            ("abs".to_string(), "/opt".to_string()),
        ];
        assert_eq!(through_links("lib/modules/a", &l), "usr/lib/modules/a");
        assert_eq!(through_links("lib/x/z", &l), "usr/share/y/z");
        assert_eq!(through_links("abs/q", &l), "opt/q");
        let lp = vec![("a".to_string(), "a/b".to_string())];
        // A link into itself stops after the bound, never loops forever.
        assert!(through_links("a/c", &lp).ends_with("/c"));
    }

    #[test]
    fn append_keeps_existing_lines() {
        assert_eq!(
            append_names("loop", &["loop".into(), "virtio-blk".into()], None),
            "loop\nvirtio-blk\n"
        );
        assert_eq!(
            append_names("virtio_blk opt=1\n", &["virtio-blk".into()], None),
            "virtio_blk opt=1\n"
        );
    }
}
