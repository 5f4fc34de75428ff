//! The boot loader's files: GRUB 2 and GRUB legacy configurations, Boot Loader Specification
//! entries, `/etc/default/grub`, `/etc/kernel/cmdline`, `grubenv` and `device.map`. The
//! kernel parameters `root=` and `resume=` that name devices by platform-dependent paths
//! become `UUID=`; device.map entries for disks the target will not have are removed.

use crate::error::Result;
use crate::guest::linuxcfg::device::{Naming, classify};
use crate::guest::linuxcfg::{FsRole, LineEdit, Planner, Reader, edit_lines, lines, scan_params};

/// The size of a GRUB environment block (`grub-editenv` keeps it at exactly this size).
const GRUBENV_SIZE: usize = 1024;
/// The first line of a GRUB environment block.
const GRUBENV_HEADER: &str = "# GRUB Environment Block";

/// What kind of boot loader file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootFileKind {
    /// A GRUB 2 configuration (`grub.cfg`).
    GrubCfg,
    /// A GRUB legacy configuration (`menu.lst`, `grub.conf`).
    GrubLegacy,
    /// A Boot Loader Specification entry (`/boot/loader/entries/*.conf`).
    Bls,
    /// `/etc/default/grub`, what `grub-mkconfig` builds grub.cfg from.
    DefaultGrub,
    /// `/etc/kernel/cmdline`, what `kernel-install` builds entries from.
    KernelCmdline,
    /// A GRUB environment block (`grubenv`; `kernelopts=` on RHEL 8).
    Grubenv,
    /// GRUB's BIOS disk to device map (`device.map`).
    DeviceMap,
}

/// A `root=` or `resume=` kernel parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootParam {
    /// Its line (1-based).
    pub line: usize,
    /// `root` or `resume`.
    pub name: String,
    /// Its value (`/dev/sda1`, `UUID=...`, `/dev/mapper/rhel-root`).
    pub value: String,
    /// How the value names its device.
    pub naming: Naming,
    /// Whether that name survives a move to another platform.
    pub stable: Option<bool>,
}

/// A line of device.map: a BIOS disk and the device it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMapEntry {
    /// Its line (1-based).
    pub line: usize,
    /// GRUB's name (`(hd0)`).
    pub bios: String,
    /// The device (`/dev/sda`).
    pub device: String,
    /// How it names the device.
    pub naming: Naming,
}

/// A boot loader file found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootFile {
    /// The file system it is on.
    pub fs: FsRole,
    /// Its path on that file system.
    pub path: String,
    /// What it is.
    pub kind: BootFileKind,
    /// The `root=` and `resume=` parameters in it.
    pub params: Vec<BootParam>,
    /// For device.map: its entries.
    pub device_map: Vec<DeviceMapEntry>,
    /// Settings worth knowing (`GRUB_DISABLE_LINUX_UUID=true`, `GRUB_DEVICE=...`).
    pub notes: Vec<String>,
}

/// The byte of `line` where the kernel command line starts, for a file of `kind`; `None`
/// when the line holds none.
fn cmdline_start(kind: BootFileKind, line: &str) -> Option<usize> {
    let t = line.trim_start();
    let lead = line.len() - t.len();
    if t.starts_with('#') {
        return None;
    }
    let word_end = t.find(char::is_whitespace).unwrap_or(t.len());
    let word = &t[..word_end];
    let after_eq = || line.find('=').map(|i| i + 1);
    match kind {
        BootFileKind::GrubCfg | BootFileKind::GrubLegacy => {
            if [
                "linux",
                "linux16",
                "linuxefi",
                "kernel",
                "module",
                "module2",
                "multiboot",
                "multiboot2",
            ]
            .contains(&word)
            {
                Some(lead + word_end)
            } else if word == "set" {
                let rest = t[word_end..].trim_start();
                (rest.starts_with("default_kernelopts=") || rest.starts_with("kernelopts="))
                    .then(after_eq)
                    .flatten()
            } else {
                None
            }
        }
        BootFileKind::Bls => (word == "options").then_some(lead + word_end),
        BootFileKind::DefaultGrub => {
            let t = t.strip_prefix("export ").unwrap_or(t);
            t.starts_with("GRUB_CMDLINE_LINUX").then(after_eq).flatten()
        }
        BootFileKind::KernelCmdline => Some(0),
        BootFileKind::Grubenv => t.starts_with("kernelopts=").then(after_eq).flatten(),
        BootFileKind::DeviceMap => None,
    }
}

/// Parses the text of a boot loader file of `kind`.
pub fn parse(kind: BootFileKind, fs: FsRole, path: &str, text: &str) -> BootFile {
    let mut out = BootFile {
        fs,
        path: path.to_string(),
        kind,
        params: Vec::new(),
        device_map: Vec::new(),
        notes: Vec::new(),
    };
    for (i, (l, _)) in lines(text).enumerate() {
        if kind == BootFileKind::DeviceMap {
            let t = l.trim();
            if t.starts_with('(') {
                if let Some(close) = t.find(')') {
                    let device = t[close + 1..].trim().to_string();
                    if !device.is_empty() {
                        out.device_map.push(DeviceMapEntry {
                            line: i + 1,
                            bios: t[..=close].to_string(),
                            naming: classify(&device),
                            device,
                        });
                    }
                }
            }
            continue;
        }
        if kind == BootFileKind::DefaultGrub {
            let t = l.trim();
            for key in [
                "GRUB_DISABLE_LINUX_UUID=",
                "GRUB_DISABLE_LINUX_PARTUUID=",
                "GRUB_DEVICE=",
                "GRUB_DEVICE_BOOT=",
            ] {
                if t.starts_with(key) {
                    out.notes.push(format!("line {}: {t}", i + 1));
                }
            }
        }
        let Some(from) = cmdline_start(kind, l) else {
            continue;
        };
        for h in scan_params(l, from) {
            let value = &l[h.start..h.end];
            let naming = classify(value);
            out.params.push(BootParam {
                line: i + 1,
                name: h.name.to_string(),
                value: value.to_string(),
                naming,
                stable: naming.stable(),
            });
        }
    }
    out
}

/// Reads `path` on `fs` as a boot file of `kind`, when it exists.
fn read_one(r: &mut Reader<'_>, kind: BootFileKind, (fs, path): (FsRole, String)) -> Result<()> {
    if r.cfg.boot.iter().any(|b| b.fs == fs && b.path == path) {
        return Ok(());
    }
    if let Some(t) = r.text(fs, &path)? {
        let f = parse(kind, fs, &path, &t);
        r.cfg.boot.push(f);
    }
    Ok(())
}

pub(crate) fn read(r: &mut Reader<'_>) -> Result<()> {
    for dir in ["grub", "grub2"] {
        let p = r.boot_path(&format!("{dir}/grub.cfg"));
        read_one(r, BootFileKind::GrubCfg, p)?;
    }
    let (efs, edir) = r.esp_path("EFI");
    for vendor in r.list(efs, &edir)? {
        for (name, kind) in [
            ("grub.cfg", BootFileKind::GrubCfg),
            ("grubenv", BootFileKind::Grubenv),
        ] {
            read_one(r, kind, (efs, format!("{edir}/{vendor}/{name}")))?;
        }
    }
    for name in ["grub/menu.lst", "grub/grub.conf"] {
        let p = r.boot_path(name);
        read_one(r, BootFileKind::GrubLegacy, p)?;
    }
    for (fs, dir) in [r.boot_path("loader/entries"), r.esp_path("loader/entries")] {
        for name in r.list(fs, &dir)? {
            if name.ends_with(".conf") {
                read_one(r, BootFileKind::Bls, (fs, format!("{dir}/{name}")))?;
            }
        }
    }
    read_one(
        r,
        BootFileKind::DefaultGrub,
        (FsRole::Root, "/etc/default/grub".into()),
    )?;
    read_one(
        r,
        BootFileKind::KernelCmdline,
        (FsRole::Root, "/etc/kernel/cmdline".into()),
    )?;
    for dir in ["grub", "grub2"] {
        let p = r.boot_path(&format!("{dir}/grubenv"));
        read_one(r, BootFileKind::Grubenv, p)?;
        let p = r.boot_path(&format!("{dir}/device.map"));
        read_one(r, BootFileKind::DeviceMap, p)?;
    }
    Ok(())
}

/// `text` (a grubenv that was a full block) padded with `#` to [`GRUBENV_SIZE`] again;
/// `None` when it no longer fits.
fn repad_grubenv(text: &str) -> Option<String> {
    let body_end = text.rfind('\n').map_or(0, |i| i + 1);
    let tail = &text[body_end..];
    let body = if tail.bytes().all(|c| c == b'#') {
        &text[..body_end]
    } else {
        text
    };
    if body.len() > GRUBENV_SIZE {
        return None;
    }
    Some(format!("{body}{}", "#".repeat(GRUBENV_SIZE - body.len())))
}

pub(crate) fn plan(p: &mut Planner<'_>) {
    let files: Vec<(FsRole, String, BootFileKind)> = p
        .cfg
        .boot
        .iter()
        .map(|b| (b.fs, b.path.clone(), b.kind))
        .collect();
    for (fs, path, kind) in files {
        let Some(text) = p.text(fs, &path) else {
            continue;
        };
        let where_ = fs.guest_path(&path);
        if kind == BootFileKind::DeviceMap {
            plan_device_map(p, fs, &path, &text);
            continue;
        }
        let mut fixed: Vec<String> = Vec::new();
        let after = edit_lines(&text, |i, l| {
            let Some(from) = cmdline_start(kind, l) else {
                return LineEdit::Keep;
            };
            let mut line = l.to_string();
            let mut changed = false;
            // From the end, so that earlier byte ranges stay valid.
            for h in scan_params(l, from).into_iter().rev() {
                let value = &l[h.start..h.end];
                if classify(value).stable() != Some(false) {
                    continue;
                }
                let what = format!("{where_} line {} ({}=)", i + 1, h.name);
                if let Some(uuid) = p.resolve(value, &what) {
                    fixed.push(format!("{}={value} -> {}=UUID={uuid}", h.name, h.name));
                    line.replace_range(h.start..h.end, &format!("UUID={uuid}"));
                    changed = true;
                }
            }
            if changed {
                LineEdit::Replace(line)
            } else {
                LineEdit::Keep
            }
        });
        if fixed.is_empty() {
            continue;
        }
        let after = if kind == BootFileKind::Grubenv
            && text.len() == GRUBENV_SIZE
            && text.starts_with(GRUBENV_HEADER)
        {
            match repad_grubenv(&after) {
                Some(a) => a,
                None => {
                    p.unresolved.push(format!(
                        "{where_}: the fixed kernel options do not fit in the \
                         {GRUBENV_SIZE}-byte GRUB environment block: left as it is"
                    ));
                    continue;
                }
            }
        } else {
            after
        };
        let reason = format!(
            "the kernel command line names devices by paths that change on another \
             platform: {}",
            fixed.join(", ")
        );
        p.replace(fs, &path, after, reason);
    }
}

fn plan_device_map(p: &mut Planner<'_>, fs: FsRole, path: &str, text: &str) {
    let prefix = p.target.disk_prefix();
    let mut dropped: Vec<String> = Vec::new();
    let mut kept = 0;
    let after = edit_lines(text, |_, l| {
        let t = l.trim();
        if !t.starts_with('(') {
            return LineEdit::Keep;
        }
        let dev = t.find(')').map_or("", |c| t[c + 1..].trim());
        let gone = classify(dev) == Naming::KernelName
            && !dev
                .strip_prefix("/dev/")
                .is_some_and(|d| d.starts_with(prefix));
        if gone {
            dropped.push(t.to_string());
            LineEdit::Drop
        } else {
            kept += 1;
            LineEdit::Keep
        }
    });
    if dropped.is_empty() {
        return;
    }
    let reason = format!(
        "device.map names disks the {} target does not have ({}): {}",
        p.target.name(),
        format_args!("/dev/{}*", prefix),
        dropped.join(", ")
    );
    if kept == 0 {
        p.remove(fs, path, reason);
    } else {
        p.replace(fs, path, after, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::linuxcfg::ApplyChanges;
    use crate::guest::linuxcfg::{
        ChangeAction, FixOptions, MemFs, VolumeMap, plan_fixes, read_config,
    };

    /// Debian 7 style grub.cfg with device paths (GRUB_DISABLE_LINUX_UUID=true).
    const DEBIAN_CFG: &str = "#\n# DO NOT EDIT THIS FILE\n#\n\
set root='(hd0,msdos1)'\n\
search --no-floppy --fs-uuid --set=root 6f1d0c2e-1b9a-4a8e-9a55-0c2d5e7f9a10\n\
menuentry 'Debian GNU/Linux' --class debian {\n\
\tinsmod ext2\n\
\tset root='(hd0,msdos1)'\n\
\tlinux\t/boot/vmlinuz-3.2.0-4-amd64 root=/dev/sda1 ro resume=/dev/sda5 quiet\n\
\tinitrd\t/boot/initrd.img-3.2.0-4-amd64\n\
}\n";

    const DEFAULT_GRUB: &str = "GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n\
GRUB_CMDLINE_LINUX_DEFAULT=\"quiet resume=/dev/sda5\"\n\
GRUB_CMDLINE_LINUX=root=/dev/sda1\n\
#GRUB_CMDLINE_LINUX=\"root=/dev/sdz9\"\n\
GRUB_DISABLE_LINUX_UUID=true\n";

    /// A RHEL 8 grub environment block, padded to 1024 bytes.
    fn grubenv() -> String {
        let body = "# GRUB Environment Block\nsaved_entry=abc-4.18.0-80.el8.x86_64\n\
kernelopts=root=/dev/sda2 ro crashkernel=auto resume=/dev/sda3 rhgb quiet\nboot_success=0\n";
        format!("{body}{}", "#".repeat(GRUBENV_SIZE - body.len()))
    }

    const BLS: &str = "title Red Hat Enterprise Linux (4.18.0-80.el8.x86_64) 8.0 (Ootpa)\n\
version 4.18.0-80.el8.x86_64\nlinux /vmlinuz-4.18.0-80.el8.x86_64\n\
initrd /initramfs-4.18.0-80.el8.x86_64.img $tuned_initrd\n\
options root=/dev/sda2 ro resume=UUID=0f0e0d0c-0000-0000-0000-000000000001\n\
id rhel-20190313123456-4.18.0-80.el8.x86_64\ngrub_users $grub_users\n";

    fn volumes() -> VolumeMap {
        let mut v = VolumeMap::new();
        v.add_partition(0, 1, "11111111-1111-1111-1111-111111111111");
        v.add_partition(0, 2, "22222222-2222-2222-2222-222222222222");
        v.add_partition(0, 3, "33333333-3333-3333-3333-333333333333");
        v.add_partition(0, 5, "55555555-5555-5555-5555-555555555555");
        v
    }

    #[test]
    fn reads_params_of_every_kind() {
        let f = parse(
            BootFileKind::GrubCfg,
            FsRole::Root,
            "/boot/grub/grub.cfg",
            DEBIAN_CFG,
        );
        let got: Vec<(usize, &str, &str)> = f
            .params
            .iter()
            .map(|p| (p.line, p.name.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(9, "root", "/dev/sda1"), (9, "resume", "/dev/sda5")]
        );
        let f = parse(
            BootFileKind::DefaultGrub,
            FsRole::Root,
            "/etc/default/grub",
            DEFAULT_GRUB,
        );
        assert_eq!(f.params.len(), 2);
        assert_eq!(f.params[1].value, "/dev/sda1");
        assert_eq!(f.notes, vec!["line 6: GRUB_DISABLE_LINUX_UUID=true"]);
        let f = parse(
            BootFileKind::Grubenv,
            FsRole::Boot,
            "/grub2/grubenv",
            &grubenv(),
        );
        assert_eq!(f.params.len(), 2);
        assert_eq!(f.params[0].stable, Some(false));
        let f = parse(
            BootFileKind::Bls,
            FsRole::Root,
            "/boot/loader/entries/a.conf",
            BLS,
        );
        assert_eq!(f.params.len(), 2);
        assert_eq!(f.params[1].stable, Some(true));
        let f = parse(
            BootFileKind::DeviceMap,
            FsRole::Root,
            "/boot/grub/device.map",
            "# comment\n(hd0)\t/dev/sda\n(fd0) /dev/fd0\n(hd1) /dev/disk/by-id/ata-X\n",
        );
        assert_eq!(f.device_map.len(), 3);
        assert_eq!(f.device_map[0].bios, "(hd0)");
        assert_eq!(f.device_map[0].naming, Naming::KernelName);
    }

    #[test]
    fn grubenv_keeps_its_block_size() {
        let env = grubenv();
        let mut fs = MemFs::new();
        fs.file("/grub2/grubenv", &env);
        fs.file("/loader/entries/rhel-4.18.conf", BLS);
        let root = MemFs::new();
        let cfg = read_config(&root, Some(&fs)).unwrap();
        let plan = plan_fixes(&cfg, &volumes(), "aws", &FixOptions::default()).unwrap();
        assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
        let c = plan
            .changes
            .iter()
            .find(|c| c.path == "/grub2/grubenv")
            .unwrap();
        assert_eq!(c.fs, FsRole::Boot);
        assert_eq!(c.guest_path(), "/boot/grub2/grubenv");
        let ChangeAction::Replace { after, .. } = &c.action else {
            panic!()
        };
        assert_eq!(after.len(), GRUBENV_SIZE);
        assert!(after.contains(
            "kernelopts=root=UUID=22222222-2222-2222-2222-222222222222 ro crashkernel=auto \
             resume=UUID=33333333-3333-3333-3333-333333333333 rhgb quiet\nboot_success=0\n##"
        ));
        fs.apply(FsRole::Boot, &plan.changes).unwrap();
        let again = plan_fixes(
            &read_config(&root, Some(&fs)).unwrap(),
            &volumes(),
            "aws",
            &FixOptions::default(),
        )
        .unwrap();
        assert!(again.changes.is_empty());
        // A block that cannot hold the longer options is reported, not overflowed.
        let full = format!(
            "{GRUBENV_HEADER}\nkernelopts=root=/dev/sda2 {}\n",
            "x".repeat(GRUBENV_SIZE - 52)
        );
        assert_eq!(full.len(), GRUBENV_SIZE);
        let mut fs = MemFs::new();
        fs.file("/boot/grub2/grubenv", &full);
        let plan = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &volumes(),
            "kvm",
            &Default::default(),
        )
        .unwrap();
        assert!(plan.changes.is_empty());
        assert!(
            plan.unresolved[0].contains("environment block"),
            "{:?}",
            plan.unresolved
        );
    }

    #[test]
    fn grub_cfg_default_grub_and_device_map() {
        let mut fs = MemFs::new();
        fs.file("/boot/grub/grub.cfg", DEBIAN_CFG)
            .file("/etc/default/grub", DEFAULT_GRUB)
            .file(
                "/boot/grub/device.map",
                "(hd0)\t/dev/sda\n(hd1)\t/dev/sdb\n",
            )
            .file(
                "/boot/grub2/device.map",
                "# made by anaconda\n(hd0) /dev/vda\n(hd1) /dev/sdb\n",
            );
        let cfg = read_config(&fs, None).unwrap();
        let plan = plan_fixes(&cfg, &volumes(), "kvm", &FixOptions::default()).unwrap();
        let by = |p: &str| {
            plan.changes
                .iter()
                .find(|c| c.path == p)
                .unwrap()
                .action
                .clone()
        };
        let ChangeAction::Replace { after, .. } = by("/boot/grub/grub.cfg") else {
            panic!()
        };
        assert_eq!(
            after,
            DEBIAN_CFG.replace(
                "root=/dev/sda1 ro resume=/dev/sda5",
                "root=UUID=11111111-1111-1111-1111-111111111111 ro \
                 resume=UUID=55555555-5555-5555-5555-555555555555"
            )
        );
        let ChangeAction::Replace { after, .. } = by("/etc/default/grub") else {
            panic!()
        };
        assert_eq!(
            after,
            DEFAULT_GRUB
                .replace(
                    "resume=/dev/sda5",
                    "resume=UUID=55555555-5555-5555-5555-555555555555"
                )
                .replace(
                    "=root=/dev/sda1",
                    "=root=UUID=11111111-1111-1111-1111-111111111111"
                )
        );
        assert!(matches!(
            by("/boot/grub/device.map"),
            ChangeAction::Remove { .. }
        ));
        let ChangeAction::Replace { after, .. } = by("/boot/grub2/device.map") else {
            panic!()
        };
        assert_eq!(after, "# made by anaconda\n(hd0) /dev/vda\n");
        // The commented-out line names an unknown disk: not touched, not reported.
        assert!(plan.unresolved.is_empty(), "{:?}", plan.unresolved);
        fs.apply(FsRole::Root, &plan.changes).unwrap();
        let again = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &volumes(),
            "kvm",
            &Default::default(),
        )
        .unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }
}
