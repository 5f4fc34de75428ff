//! `/etc/fstab`: its entries, how each names its device, and replacing platform-dependent
//! device paths by `UUID=`.

use crate::error::Result;
use crate::guest::linuxcfg::device::{Naming, classify};
use crate::guest::linuxcfg::{FsRole, LineEdit, Planner, Reader, edit_lines, lines};

/// Where fstab is.
const PATH: &str = "/etc/fstab";

/// One mount of `/etc/fstab`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FstabEntry {
    /// Its line number (1-based).
    pub line: usize,
    /// What is mounted (`UUID=...`, `/dev/sda1`, `proc`).
    pub spec: String,
    /// Where (`/`, `/boot`, `none` for swap).
    pub mount_point: String,
    /// The file system type (`ext4`, `swap`), when given.
    pub fs_type: Option<String>,
    /// The mount options, when given.
    pub options: Option<String>,
    /// How `spec` names its device.
    pub naming: Naming,
    /// Whether that name survives a move to another platform (see [`Naming::stable`]).
    pub stable: Option<bool>,
}

/// A comment line of `/etc/fstab` (kept as it is by every fix).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FstabComment {
    /// Its line number (1-based).
    pub line: usize,
    /// Its text.
    pub text: String,
}

/// `/etc/fstab` as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fstab {
    /// The mounts, in order.
    pub entries: Vec<FstabEntry>,
    /// The comment lines.
    pub comments: Vec<FstabComment>,
    /// The numbers of lines with a single field (not an entry; left alone).
    pub malformed: Vec<usize>,
}

/// Parses fstab text.
pub fn parse(text: &str) -> Fstab {
    let mut out = Fstab::default();
    for (i, (l, _)) in lines(text).enumerate() {
        let t = l.trim();
        if t.is_empty() {
            continue;
        }
        if t.starts_with('#') {
            out.comments.push(FstabComment {
                line: i + 1,
                text: l.to_string(),
            });
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        if f.len() < 2 {
            out.malformed.push(i + 1);
            continue;
        }
        let naming = classify(f[0]);
        out.entries.push(FstabEntry {
            line: i + 1,
            spec: f[0].to_string(),
            mount_point: f[1].to_string(),
            fs_type: f.get(2).map(|s| s.to_string()),
            options: f.get(3).map(|s| s.to_string()),
            naming,
            stable: naming.stable(),
        });
    }
    out
}

pub(crate) fn read(r: &mut Reader<'_>) -> Result<()> {
    if let Some(t) = r.text(FsRole::Root, PATH)? {
        r.cfg.fstab = Some(parse(&t));
    }
    Ok(())
}

pub(crate) fn plan(p: &mut Planner<'_>) {
    let Some(text) = p.text(FsRole::Root, PATH) else {
        return;
    };
    let mut fixed: Vec<String> = Vec::new();
    let after = edit_lines(&text, |i, l| {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            return LineEdit::Keep;
        }
        let spec = t.split_whitespace().next().unwrap_or("");
        if t.split_whitespace().nth(1).is_none() || classify(spec).stable() != Some(false) {
            return LineEdit::Keep;
        }
        let Some(uuid) = p.resolve(spec, &format!("{PATH} line {}", i + 1)) else {
            return LineEdit::Keep;
        };
        fixed.push(format!("{spec} -> UUID={uuid}"));
        let at = l.len() - t.len();
        LineEdit::Replace(format!("{}UUID={uuid}{}", &l[..at], &t[spec.len()..]))
    });
    if !fixed.is_empty() {
        let reason = format!(
            "fstab names devices by paths that change on another platform: {}",
            fixed.join(", ")
        );
        p.replace(FsRole::Root, PATH, after, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::linuxcfg::ApplyChanges;
    use crate::guest::linuxcfg::{
        ChangeAction, FixOptions, MemFs, VolumeMap, plan_fixes, read_config,
    };

    /// A RHEL 6 style fstab (device paths, tabs, comments, a CD-ROM).
    const RHEL6: &str = "\n#\n# /etc/fstab\n# Created by anaconda on Tue Mar  3 10:11:12 2015\n#\n\
/dev/mapper/vg_web-lv_root /                       ext4    defaults        1 1\n\
/dev/sda1               /boot                   ext4    defaults        1 2\n\
/dev/sda3\t\tswap\tswap\tdefaults\t0 0\n\
tmpfs                   /dev/shm                tmpfs   defaults        0 0\n\
proc                    /proc                   proc    defaults        0 0\n\
/dev/sdb1  /data  xfs  noatime,nofail  0 2\n\
/dev/sr0 /media/cdrom auto noauto,ro 0 0\n\
/dev/sdc1 /backup ext4 defaults 0 2\n";

    #[test]
    fn parses_and_classifies() {
        let f = parse(RHEL6);
        assert_eq!(f.entries.len(), 8);
        assert_eq!(f.comments.len(), 4);
        let e = &f.entries[1];
        assert_eq!(
            (e.line, e.spec.as_str(), e.mount_point.as_str()),
            (7, "/dev/sda1", "/boot")
        );
        assert_eq!(e.fs_type.as_deref(), Some("ext4"));
        assert_eq!(e.stable, Some(false));
        assert_eq!(f.entries[0].naming, Naming::Mapper);
        assert_eq!(f.entries[0].stable, Some(true));
        assert_eq!(f.entries[3].stable, None);
        assert_eq!(f.entries[6].naming, Naming::Removable);
        assert!(parse("junk\n").malformed == vec![1]);
    }

    #[test]
    fn fixes_resolved_device_paths_only_and_is_idempotent() {
        let mut fs = MemFs::new();
        fs.file("/etc/fstab", RHEL6);
        let cfg = read_config(&fs, None).unwrap();
        let mut v = VolumeMap::new();
        v.add_partition(0, 1, "11111111-2222-3333-4444-555555555555");
        v.add_partition(0, 3, "aaaaaaaa-2222-3333-4444-555555555555");
        v.add_partition(1, 1, "bbbbbbbb-2222-3333-4444-555555555555");
        let plan = plan_fixes(&cfg, &v, "kvm", &FixOptions::default()).unwrap();
        assert_eq!(plan.changes.len(), 1);
        let ChangeAction::Replace { before, after } = &plan.changes[0].action else {
            panic!("{:?}", plan.changes[0]);
        };
        assert_eq!(before, RHEL6);
        let want = RHEL6
            .replace(
                "/dev/sda1               /boot",
                "UUID=11111111-2222-3333-4444-555555555555               /boot",
            )
            .replace("/dev/sda3\t", "UUID=aaaaaaaa-2222-3333-4444-555555555555\t")
            .replace(
                "/dev/sdb1  /data",
                "UUID=bbbbbbbb-2222-3333-4444-555555555555  /data",
            );
        assert_eq!(after, &want);
        // /dev/sdc1 is not known: reported, left.
        assert_eq!(plan.unresolved.len(), 1);
        assert!(
            plan.unresolved[0].contains("/dev/sdc1"),
            "{:?}",
            plan.unresolved
        );
        fs.apply(FsRole::Root, &plan.changes).unwrap();
        let again = plan_fixes(
            &read_config(&fs, None).unwrap(),
            &v,
            "kvm",
            &Default::default(),
        )
        .unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }
}
