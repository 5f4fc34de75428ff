//! Finding the right Windows drivers in a virtio-win folder or ISO.
//!
//! Layouts understood: the ISO's `<driver>/<os>/<arch>/` (e.g. `viostor/2k19/amd64/`), its
//! flattened `<arch>/<os>/` folders, and the installed tree `drivers/<amd64|i386>/<Win10|
//! Win2019|...>/` (`/usr/share/virtio-win`), whose `drivers/by-driver/<driver>/<os>/<arch>/`
//! and `drivers/by-os/<arch>/<os>/` views are the same two layouts again.
//!
//! In the per-driver layout a package is every file of the `<driver>/<os>/<arch>/` folder. In
//! the flattened layouts one folder holds every driver: a package is an `.inf` file and the
//! files whose names start with its stem (`netkvm.inf`: `netkvm.sys`, `netkvm.cat`,
//! `netkvmco.dll`, ...) plus the files its `[SourceDisksFiles]` sections name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::guest::iso9660::Iso9660;
use crate::inspect::windows::WinArch;

/// One file of a driver package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFile {
    /// File name, e.g. "viostor.sys".
    pub name: String,
    /// Where it came from inside the source, for reports, e.g. "viostor/2k19/amd64/viostor.sys".
    pub source: String,
    /// Its content.
    pub data: Vec<u8>,
}

/// The files of one driver for one Windows version and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverPackage {
    /// Driver name (lower case), e.g. "viostor", "netkvm".
    pub name: String,
    /// Its files (.inf, .sys, .cat, ...).
    pub files: Vec<DriverFile>,
}

impl DriverPackage {
    /// The file with this name (case-insensitive).
    pub fn file(&self, name: &str) -> Option<&DriverFile> {
        self.files
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// The drivers chosen for one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSet {
    /// The virtio-win os folder used, e.g. "2k19".
    pub os_dir: String,
    /// The architecture.
    pub arch: WinArch,
    /// Every driver package found for them, by name.
    pub packages: Vec<DriverPackage>,
}

impl DriverSet {
    /// The package with this driver name (case-insensitive).
    pub fn package(&self, name: &str) -> Option<&DriverPackage> {
        self.packages
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

/// Largest driver file read.
pub const MAX_FILE: u64 = 64 << 20;
/// Largest total of one [`DriverSet`].
pub const MAX_SET: u64 = 512 << 20;
/// Most entries listed in one folder of a source.
const MAX_ENTRIES: usize = 100_000;

/// The virtio-win os folder names (ISO spelling) and the installed tree's names for them.
const OS_NAMES: &[(&str, &str)] = &[
    ("xp", "WinXP"),
    ("2k3", "Win2003"),
    ("2k8", "Win2008"),
    ("w7", "Win7"),
    ("2k8R2", "Win2008R2"),
    ("w8", "Win8"),
    ("2k12", "Win2012"),
    ("w8.1", "Win8.1"),
    ("2k12R2", "Win2012R2"),
    ("w10", "Win10"),
    ("2k16", "Win2016"),
    ("2k19", "Win2019"),
    ("2k22", "Win2022"),
    ("w11", "Win11"),
    ("2k25", "Win2025"),
];

/// The folder names an architecture goes by.
fn arch_names(arch: WinArch) -> &'static [&'static str] {
    match arch {
        WinArch::X86 => &["x86", "i386"],
        WinArch::Amd64 => &["amd64"],
        WinArch::Arm64 => &["ARM64", "aarch64"],
    }
}

/// The installed tree's name for an ISO os folder name.
fn installed_name(os: &str) -> Option<&'static str> {
    OS_NAMES
        .iter()
        .find(|(iso, _)| iso.eq_ignore_ascii_case(os))
        .map(|(_, w)| *w)
}

fn is_os_name(name: &str) -> bool {
    OS_NAMES
        .iter()
        .any(|(i, w)| i.eq_ignore_ascii_case(name) || w.eq_ignore_ascii_case(name))
}

fn is_arch_name(name: &str) -> bool {
    [WinArch::X86, WinArch::Amd64, WinArch::Arm64]
        .iter()
        .any(|&a| arch_names(a).iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// An entry of a source folder.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    is_dir: bool,
    size: u64,
}

enum Backend {
    Dir(PathBuf),
    Iso(Box<Iso9660>),
}

/// A virtio-win folder or ISO.
pub struct DriverSource {
    root: PathBuf,
    backend: Backend,
}

impl std::fmt::Debug for DriverSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverSource")
            .field("root", &self.root)
            .field("iso", &matches!(self.backend, Backend::Iso(_)))
            .finish()
    }
}

/// A folder layout found in a source: where, and how it is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `<driver>/<os>/<arch>/`.
    PerDriver,
    /// `<arch>/<os>/` (ISO names or installed names).
    Flat,
}

impl DriverSource {
    /// Opens a folder or an ISO 9660 image (detected by content).
    pub fn open(path: &Path) -> Result<DriverSource> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io("opening the driver source", e).in_file(path))?;
        let backend = if meta.is_dir() {
            Backend::Dir(path.to_path_buf())
        } else {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(path)
                .map_err(|e| Error::io("opening the driver source", e).in_file(path))?;
            let mut magic = [0u8; 5];
            let is_iso = meta.len() >= 32769 + 5
                && f.read_exact_at(&mut magic, 32769).is_ok()
                && &magic == b"CD001";
            if !is_iso {
                return Err(Error::InvalidArgument(
                    "the driver source is neither a folder nor an ISO 9660 image (no 'CD001' at \
                     byte 32769)"
                        .into(),
                )
                .in_file(path));
            }
            Backend::Iso(Box::new(Iso9660::open(path)?))
        };
        Ok(DriverSource {
            root: path.to_path_buf(),
            backend,
        })
    }

    /// Lists a folder (`/`-separated path from the source's root); a missing path or a file is
    /// `None`. Names are matched case-insensitively.
    fn list(&self, path: &str) -> Result<Option<Vec<Entry>>> {
        match &self.backend {
            Backend::Iso(iso) => {
                let parent_ok = match iso.read_dir(path) {
                    Ok(v) => v,
                    Err(e) if matches!(e.kind(), crate::error::ErrorKind::InvalidArgument) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                if parent_ok.len() > MAX_ENTRIES {
                    return Err(self.too_many(path));
                }
                Ok(Some(
                    parent_ok
                        .into_iter()
                        .map(|e| Entry {
                            name: e.name,
                            is_dir: e.is_dir,
                            size: e.size,
                        })
                        .collect(),
                ))
            }
            Backend::Dir(root) => {
                let Some(dir) = self.resolve_dir(root, path)? else {
                    return Ok(None);
                };
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(_) => return Ok(None),
                };
                let mut out = Vec::new();
                for e in rd {
                    let e = e.map_err(|e| Error::io("listing a folder", e).in_file(&dir))?;
                    // Follows symbolic links (the installed tree's views are made of them).
                    let Ok(m) = std::fs::metadata(e.path()) else {
                        continue;
                    };
                    out.push(Entry {
                        name: e.file_name().to_string_lossy().into_owned(),
                        is_dir: m.is_dir(),
                        size: m.len(),
                    });
                    if out.len() > MAX_ENTRIES {
                        return Err(self.too_many(path));
                    }
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Some(out))
            }
        }
    }

    fn too_many(&self, path: &str) -> Error {
        Error::InvalidArgument(format!(
            "folder '{path}' of the driver source has more than {MAX_ENTRIES} entries"
        ))
        .in_file(&self.root)
    }

    /// The real folder for a case-insensitive path under a folder source.
    fn resolve_dir(&self, root: &Path, path: &str) -> Result<Option<PathBuf>> {
        let mut cur = root.to_path_buf();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let exact = cur.join(part);
            if exact.is_dir() {
                cur = exact;
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&cur) else {
                return Ok(None);
            };
            let found = rd
                .filter_map(|e| e.ok())
                .take(MAX_ENTRIES)
                .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(part));
            match found {
                Some(e) if e.path().is_dir() => cur = e.path(),
                _ => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    fn read(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        match &self.backend {
            Backend::Iso(iso) => iso.read_file(path, max),
            Backend::Dir(root) => {
                let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
                let d = self.resolve_dir(root, dir)?.ok_or_else(|| {
                    Error::InvalidArgument(format!("'{dir}' is not in the driver source"))
                        .in_file(&self.root)
                })?;
                let p = d.join(name);
                let meta = std::fs::metadata(&p)
                    .map_err(|e| Error::io("reading a driver file", e).in_file(&p))?;
                if meta.len() > max {
                    return Err(Error::InvalidArgument(format!(
                        "driver file '{path}' is {} bytes, more than the {max} allowed",
                        meta.len()
                    ))
                    .in_file(&self.root));
                }
                std::fs::read(&p).map_err(|e| Error::io("reading a driver file", e).in_file(&p))
            }
        }
    }

    /// The child folder of `entries` named like any of `names` (case-insensitive).
    fn child<'a>(entries: &'a [Entry], names: &[&str]) -> Option<&'a Entry> {
        entries
            .iter()
            .find(|e| e.is_dir && names.iter().any(|n| n.eq_ignore_ascii_case(&e.name)))
    }

    /// Roots to look in: the source itself, and the installed tree's folders.
    fn roots(&self) -> Vec<(String, Layout)> {
        vec![
            (String::new(), Layout::PerDriver),
            ("drivers/by-driver".into(), Layout::PerDriver),
            (String::new(), Layout::Flat),
            ("drivers".into(), Layout::Flat),
            ("drivers/by-os".into(), Layout::Flat),
        ]
    }

    /// The drivers for the first of `os_dirs` (virtio-win names, best first) that the source
    /// has for `arch`. No match is an error listing what the source does have.
    pub fn select(&self, os_dirs: &[&str], arch: WinArch) -> Result<DriverSet> {
        let roots = self.roots();
        let mut listed = Vec::new();
        for (root, _) in &roots {
            listed.push(self.list(root)?.unwrap_or_default());
        }
        for &os in os_dirs {
            let mut os_names = vec![os];
            if let Some(w) = installed_name(os) {
                os_names.push(w);
            }
            for ((root, layout), top) in roots.iter().zip(&listed) {
                let packages = match layout {
                    Layout::PerDriver => self.per_driver(root, top, &os_names, arch)?,
                    Layout::Flat => self.flat(root, top, &os_names, arch)?,
                };
                if !packages.is_empty() {
                    let total: u64 = packages
                        .iter()
                        .flat_map(|p| &p.files)
                        .map(|f| f.data.len() as u64)
                        .sum();
                    if total > MAX_SET {
                        return Err(Error::InvalidArgument(format!(
                            "the drivers for {os}/{} add up to {total} bytes, more than the \
                             {MAX_SET} allowed",
                            arch.virtio_dir()
                        ))
                        .in_file(&self.root));
                    }
                    return Ok(DriverSet {
                        os_dir: os.to_string(),
                        arch,
                        packages,
                    });
                }
            }
        }
        let have = self.inventory(&roots, &listed)?;
        Err(Error::InvalidArgument(format!(
            "no drivers for {} ({}) in the driver source; it has {}",
            if os_dirs.is_empty() {
                "no Windows version".to_string()
            } else {
                os_dirs.join(" or ")
            },
            arch.virtio_dir(),
            if have.is_empty() {
                "no virtio-win os/arch folders at all".to_string()
            } else {
                format!(
                    "these os/arch folders: {}",
                    have.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        ))
        .in_file(&self.root))
    }

    /// Every os/arch pair the source has, for the error message.
    fn inventory(
        &self,
        roots: &[(String, Layout)],
        listed: &[Vec<Entry>],
    ) -> Result<BTreeSet<String>> {
        let mut have = BTreeSet::new();
        for ((root, layout), top) in roots.iter().zip(listed) {
            match layout {
                Layout::PerDriver => {
                    for d in top.iter().filter(|e| e.is_dir && !is_arch_name(&e.name)) {
                        let dpath = join(root, &d.name);
                        for o in self.list(&dpath)?.unwrap_or_default() {
                            if !o.is_dir || !is_os_name(&o.name) {
                                continue;
                            }
                            for a in self.list(&join(&dpath, &o.name))?.unwrap_or_default() {
                                if a.is_dir && is_arch_name(&a.name) {
                                    have.insert(format!("{}/{}", o.name, a.name));
                                }
                            }
                        }
                    }
                }
                Layout::Flat => {
                    for a in top.iter().filter(|e| e.is_dir && is_arch_name(&e.name)) {
                        for o in self.list(&join(root, &a.name))?.unwrap_or_default() {
                            if o.is_dir && is_os_name(&o.name) {
                                have.insert(format!("{}/{}", o.name, a.name));
                            }
                        }
                    }
                }
            }
        }
        Ok(have)
    }

    /// `<driver>/<os>/<arch>/` under `root`: one package per driver folder.
    fn per_driver(
        &self,
        root: &str,
        top: &[Entry],
        os: &[&str],
        arch: WinArch,
    ) -> Result<Vec<DriverPackage>> {
        let mut out = Vec::new();
        for d in top.iter().filter(|e| e.is_dir && !is_arch_name(&e.name)) {
            let dpath = join(root, &d.name);
            let Some(os_list) = self.list(&dpath)? else {
                continue;
            };
            let Some(o) = Self::child(&os_list, os) else {
                continue;
            };
            let opath = join(&dpath, &o.name);
            let Some(arch_list) = self.list(&opath)? else {
                continue;
            };
            let Some(a) = Self::child(&arch_list, arch_names(arch)) else {
                continue;
            };
            let apath = join(&opath, &a.name);
            let files = self.list(&apath)?.unwrap_or_default();
            let mut pkg = DriverPackage {
                name: d.name.to_lowercase(),
                files: Vec::new(),
            };
            for f in files.iter().filter(|f| !f.is_dir) {
                pkg.files.push(self.file(&apath, f)?);
            }
            if !pkg.files.is_empty() {
                out.push(pkg);
            }
        }
        Ok(out)
    }

    /// `<arch>/<os>/` under `root`: one package per `.inf` file.
    fn flat(
        &self,
        root: &str,
        top: &[Entry],
        os: &[&str],
        arch: WinArch,
    ) -> Result<Vec<DriverPackage>> {
        let Some(a) = Self::child(top, arch_names(arch)) else {
            return Ok(Vec::new());
        };
        let apath = join(root, &a.name);
        let Some(os_list) = self.list(&apath)? else {
            return Ok(Vec::new());
        };
        let Some(o) = Self::child(&os_list, os) else {
            return Ok(Vec::new());
        };
        let opath = join(&apath, &o.name);
        let files: Vec<Entry> = self
            .list(&opath)?
            .unwrap_or_default()
            .into_iter()
            .filter(|f| !f.is_dir)
            .collect();
        let mut out = Vec::new();
        let stems: Vec<String> = files
            .iter()
            .filter(|f| has_ext(&f.name, "inf"))
            .map(|f| f.name[..f.name.len() - 4].to_lowercase())
            .collect();
        // A file goes to the package with the longest stem it starts with (`qxldod.sys` to
        // `qxldod`, not `qxl`).
        let owner = |name: &str| -> Option<&String> {
            let lower = name.to_lowercase();
            stems
                .iter()
                .filter(|s| lower.starts_with(s.as_str()))
                .max_by_key(|s| s.len())
        };
        for inf in files.iter().filter(|f| has_ext(&f.name, "inf")) {
            let stem = inf.name[..inf.name.len() - 4].to_lowercase();
            let inf_file = self.file(&opath, inf)?;
            let named = source_disks_files(&inf_file.data);
            let mut pkg = DriverPackage {
                name: stem.clone(),
                files: Vec::new(),
            };
            for f in files.iter().filter(|f| !has_ext(&f.name, "inf")) {
                let mine = owner(&f.name) == Some(&stem)
                    || named.iter().any(|n| n.eq_ignore_ascii_case(&f.name));
                if mine {
                    pkg.files.push(self.file(&opath, f)?);
                }
            }
            pkg.files.push(inf_file);
            pkg.files.sort_by(|a, b| a.name.cmp(&b.name));
            out.push(pkg);
        }
        Ok(out)
    }

    fn file(&self, dir: &str, e: &Entry) -> Result<DriverFile> {
        let source = join(dir, &e.name);
        if e.size > MAX_FILE {
            return Err(Error::InvalidArgument(format!(
                "driver file '{source}' is {} bytes, more than the {MAX_FILE} allowed",
                e.size
            ))
            .in_file(&self.root));
        }
        let data = self.read(&source, MAX_FILE)?;
        Ok(DriverFile {
            name: e.name.clone(),
            source,
            data,
        })
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

fn has_ext(name: &str, ext: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, e)| e.eq_ignore_ascii_case(ext))
}

/// The file names listed in an INF's `[SourceDisksFiles]` / `[SourceDisksFiles.<arch>]`
/// sections (UTF-16 with a BOM, or 8-bit text). Anything unparsable lists nothing.
fn source_disks_files(inf: &[u8]) -> Vec<String> {
    let text = if inf.starts_with(&[0xFF, 0xFE]) {
        let units: Vec<u16> = inf[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(inf).into_owned()
    };
    let mut out = Vec::new();
    let mut in_section = false;
    for line in text.lines().take(100_000) {
        let line = line.split(';').next().unwrap_or("").trim();
        if line.starts_with('[') {
            let name = line.trim_start_matches('[').trim_end_matches(']').trim();
            in_section = name.to_ascii_lowercase().starts_with("sourcedisksfiles");
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((file, _)) = line.split_once('=') {
            let f = file.trim().trim_matches('"');
            if !f.is_empty() && !f.contains(['/', '\\']) {
                out.push(f.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inf_source_files_are_found() {
        let inf = b"[Version]\nSignature=\"$WINDOWS NT$\"\n[SourceDisksFiles]\nblnsvr.exe = 1,,\n\
                    balloon.sys = 1,, ; the driver\n[SourceDisksFiles.amd64]\n\"x.dll\"=1\n[Other]\na=b\n";
        assert_eq!(
            source_disks_files(inf),
            vec!["blnsvr.exe", "balloon.sys", "x.dll"]
        );
        let u16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(
                "[SourceDisksFiles]\r\nviostor.sys=1\r\n"
                    .encode_utf16()
                    .flat_map(|u| u.to_le_bytes()),
            )
            .collect();
        assert_eq!(source_disks_files(&u16), vec!["viostor.sys"]);
    }

    #[test]
    fn os_names_map_to_the_installed_tree() {
        assert_eq!(installed_name("2k12R2"), Some("Win2012R2"));
        assert_eq!(installed_name("w8.1"), Some("Win8.1"));
        assert_eq!(installed_name("nope"), None);
        assert!(is_arch_name("i386") && is_arch_name("ARM64") && !is_arch_name("w10"));
    }
}
