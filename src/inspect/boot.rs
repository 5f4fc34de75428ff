//! The kernels of a Linux guest and the files that belong to each: the kernel image under
//! `/boot`, its initramfs (named as Debian/Ubuntu, RHEL/Fedora or SUSE name it) and its
//! module tree under `/lib/modules/<version>` (or `/usr/lib/modules`), whether `/boot` is a
//! folder of the root file system or a file system of its own.

use std::cmp::Ordering;

use crate::error::Result;
use crate::guest::fs::{FileKind, GuestFs};

/// Most entries of `/boot` looked at.
const MAX_BOOT_ENTRIES: usize = 4096;

/// The root file system of a guest and, when `/boot` is a separate file system, that one.
#[derive(Clone, Copy)]
pub struct BootFs<'a> {
    /// The root file system.
    pub root: &'a dyn GuestFs,
    /// The file system mounted on `/boot`, when it is separate.
    pub boot: Option<&'a dyn GuestFs>,
}

impl<'a> BootFs<'a> {
    /// The file system holding `path` (a path as the running guest sees it) and the path
    /// inside it: `/boot/x` is `/x` on a separate boot file system.
    pub fn locate(&self, path: &str) -> (&'a dyn GuestFs, String) {
        if let Some(b) = self.boot {
            if path == "/boot" {
                return (b, "/".into());
            }
            if let Some(rest) = path.strip_prefix("/boot/") {
                return (b, format!("/{rest}"));
            }
        }
        (self.root, path.to_string())
    }

    /// What `path` (as the guest sees it) names, links followed.
    pub fn stat(&self, path: &str) -> Result<Option<FileKind>> {
        let (fs, p) = self.locate(path);
        fs.stat(&p)
    }
}

/// One installed kernel and its files (paths as the running guest sees them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelFiles {
    /// The version (`6.1.0-18-amd64`, `5.14.0-362.8.1.el9_3.x86_64`).
    pub version: String,
    /// The kernel image (`/boot/vmlinuz-<version>`).
    pub kernel: String,
    /// Its initramfs, when one of the usual names exists.
    pub initramfs: Option<String>,
    /// Its module tree (`/lib/modules/<version>`), when it exists.
    pub modules_dir: Option<String>,
}

/// The initramfs names each distribution family uses for kernel `v`, in the order tried:
/// Debian/Ubuntu (initramfs-tools), RHEL/Fedora (dracut), SUSE, and the rest.
pub fn initramfs_names(v: &str) -> [String; 5] {
    [
        format!("initrd.img-{v}"),
        format!("initramfs-{v}.img"),
        format!("initrd-{v}"),
        format!("initrd-{v}.img"),
        format!("initramfs-{v}"),
    ]
}

/// The kernels under `/boot`, oldest first ([`compare_versions`]), each with its initramfs
/// and module tree.
pub fn kernel_files(fs: &BootFs) -> Result<Vec<KernelFiles>> {
    let (bfs, dir) = fs.locate("/boot");
    let Some(names) = bfs.list_dir(&dir, MAX_BOOT_ENTRIES)? else {
        return Ok(Vec::new());
    };
    let mut out: Vec<KernelFiles> = Vec::new();
    for n in &names {
        let Some(v) = n
            .strip_prefix("vmlinuz-")
            .or_else(|| n.strip_prefix("vmlinux-"))
        else {
            continue;
        };
        if v.is_empty() || out.iter().any(|k| k.version == v) {
            continue;
        }
        let kernel = format!("/boot/{n}");
        if !matches!(fs.stat(&kernel)?, Some(FileKind::File(_))) {
            continue;
        }
        let mut initramfs = None;
        for cand in initramfs_names(v) {
            let p = format!("/boot/{cand}");
            if matches!(fs.stat(&p)?, Some(FileKind::File(_))) {
                initramfs = Some(p);
                break;
            }
        }
        let mut modules_dir = None;
        for base in ["/lib/modules", "/usr/lib/modules"] {
            let p = format!("{base}/{v}");
            if fs.root.stat(&p)? == Some(FileKind::Dir) {
                modules_dir = Some(p);
                break;
            }
        }
        out.push(KernelFiles {
            version: v.to_string(),
            kernel,
            initramfs,
            modules_dir,
        });
    }
    out.sort_by(|a, b| compare_versions(&a.version, &b.version));
    Ok(out)
}

/// Orders kernel versions as package managers do, closely enough to tell the newest: runs
/// of digits compare as numbers, other runs as text, `~` sorts before anything (as in dpkg
/// and rpm), and a longer version with the same start is newer.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return Ordering::Equal,
            (Some(b'~'), Some(b'~')) => {
                x = &x[1..];
                y = &y[1..];
                continue;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            _ => {}
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let (dx, dy) = (digits(x), digits(y));
        if dx > 0 && dy > 0 {
            let nx = trim_zeros(&x[..dx]);
            let ny = trim_zeros(&y[..dy]);
            let o = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
            if o != Ordering::Equal {
                return o;
            }
            x = &x[dx..];
            y = &y[dy..];
            continue;
        }
        if dx > 0 || dy > 0 {
            // A number against text: the number is newer (`1.10` after `1.rc`).
            return if dx > 0 {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let text = |s: &[u8]| {
            s.iter()
                .take_while(|c| !c.is_ascii_digit() && **c != b'~')
                .count()
        };
        let (tx, ty) = (text(x), text(y));
        let o = x[..tx].cmp(&y[..ty]);
        if o != Ordering::Equal {
            return o;
        }
        x = &x[tx..];
        y = &y[ty..];
    }
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| **c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::fs::MemFs;

    #[test]
    fn versions_order_like_package_managers() {
        let mut v = vec![
            "6.1.0-18-amd64",
            "6.1.0-9-amd64",
            "5.10.0-28-amd64",
            "6.1.0-18-amd64~rc1",
            "4.18.0-513.5.1.el8_9.x86_64",
            "4.18.0-80.el8.x86_64",
            "6.10.0",
            "6.9.12",
        ];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            v,
            [
                "4.18.0-80.el8.x86_64",
                "4.18.0-513.5.1.el8_9.x86_64",
                "5.10.0-28-amd64",
                "6.1.0-9-amd64",
                "6.1.0-18-amd64~rc1",
                "6.1.0-18-amd64",
                "6.9.12",
                "6.10.0",
            ]
        );
        assert_eq!(compare_versions("1.010", "1.10"), Ordering::Equal);
    }

    #[test]
    fn kernels_with_their_initramfs_on_root_or_on_a_separate_boot() {
        let mut root = MemFs::new();
        root.dir("/boot")
            .file("/boot/vmlinuz-6.1.0-9-amd64", "k")
            .file("/boot/initrd.img-6.1.0-9-amd64", "i")
            .file("/boot/vmlinuz-6.1.0-18-amd64", "k")
            .file("/boot/config-6.1.0-18-amd64", "c")
            .dir("/usr/lib/modules/6.1.0-18-amd64")
            .symlink("/lib", "usr/lib");
        let k = kernel_files(&BootFs {
            root: &root,
            boot: None,
        })
        .unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].version, "6.1.0-9-amd64");
        assert_eq!(
            k[0].initramfs.as_deref(),
            Some("/boot/initrd.img-6.1.0-9-amd64")
        );
        assert_eq!(k[0].modules_dir, None);
        assert_eq!(k[1].initramfs, None);
        assert_eq!(
            k[1].modules_dir.as_deref(),
            Some("/lib/modules/6.1.0-18-amd64")
        );

        // RHEL-style names on a separate /boot; the root's empty /boot folder is not read.
        let mut boot = MemFs::new();
        boot.file("/vmlinuz-5.14.0-362.el9.x86_64", "k")
            .file("/initramfs-5.14.0-362.el9.x86_64.img", "i")
            .file("/initramfs-5.14.0-362.el9.x86_64kdump.img", "i");
        let k = kernel_files(&BootFs {
            root: &root,
            boot: Some(&boot),
        })
        .unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].kernel, "/boot/vmlinuz-5.14.0-362.el9.x86_64");
        assert_eq!(
            k[0].initramfs.as_deref(),
            Some("/boot/initramfs-5.14.0-362.el9.x86_64.img")
        );
    }
}
