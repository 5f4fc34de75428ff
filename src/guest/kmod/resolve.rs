//! A kernel's module index as the guest holds it (`/lib/modules/<version>/`), and kmod's
//! resolution on it: a name to modules (by module name, alias glob or built-in), and the
//! modules `modprobe` would load for a name, soft dependencies included, in load order (kmod's
//! `kmod_module_new_from_lookup` and `__kmod_module_get_probe_list`, libkmod-module.c).

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::guest::fs::{FileKind, GuestFs};

use super::index::{
    Alias, BuiltinModinfo, ModuleList, ModulesDep, SoftDep, glob_match, normalize_alias,
    normalize_name, parse_modules_alias, parse_modules_builtin, parse_modules_builtin_modinfo,
    parse_modules_dep, parse_modules_order, parse_modules_softdep,
};

/// Largest index file read from a guest (a distribution kernel's `modules.alias` is about
/// 1.5 MiB).
pub const MAX_INDEX_FILE: u64 = 64 << 20;

/// What a name resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolved {
    /// A loadable module: its normalized name and its path relative to the modules folder.
    Module {
        /// Module name.
        name: String,
        /// Path as `modules.dep` lists it.
        path: String,
    },
    /// A module compiled into the kernel.
    Builtin(String),
}

/// The modules `modprobe NAME` would load, in load order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeList {
    /// Loadable modules (name, path), each once, dependencies first.
    pub modules: Vec<(String, String)>,
    /// Names met on the way that are built into the kernel.
    pub builtin: Vec<String>,
    /// Soft-dependency names that resolve to nothing (kmod skips them too).
    pub unresolved: Vec<String>,
    /// Whether a chain of soft dependencies deeper than [`MAX_SOFTDEP_DEPTH`] was cut (a
    /// hostile or broken index; real chains are two or three deep).
    pub truncated: bool,
}

/// Deepest chain of soft dependencies followed (each link recurses).
pub const MAX_SOFTDEP_DEPTH: usize = 32;

/// A kernel's module index, parsed.
#[derive(Debug, Clone, Default)]
pub struct KernelModules {
    /// The kernel version (`6.1.0-18-amd64`).
    pub version: String,
    /// The folder on the guest holding it (`/lib/modules/6.1.0-18-amd64`).
    pub dir: String,
    /// `modules.dep` (empty when the guest has none: depmod has not run).
    pub dep: ModulesDep,
    /// Whether `modules.dep` was there.
    pub has_dep: bool,
    /// `modules.builtin`.
    pub builtin: ModuleList,
    /// `modules.builtin.modinfo` (its `alias=` entries resolve aliases to built-ins).
    pub builtin_modinfo: BuiltinModinfo,
    /// `modules.alias`.
    pub aliases: Vec<Alias>,
    /// `modules.softdep`.
    pub softdeps: Vec<SoftDep>,
    /// `modules.order`.
    pub order: ModuleList,
}

/// Checks a kernel version used in a path: not empty, no `/`, not `.` or `..`.
pub(crate) fn check_version(version: &str) -> Result<()> {
    if version.is_empty()
        || version.contains('/')
        || version.contains('\0')
        || version == "."
        || version == ".."
    {
        return Err(Error::InvalidArgument(format!(
            "kernel version {version:?} cannot name a folder under /lib/modules"
        )));
    }
    Ok(())
}

impl KernelModules {
    /// Reads `/lib/modules/<version>/` (or `/usr/lib/modules/<version>/`) of `guest`; `None`
    /// when the guest has neither folder. Index files that are absent are empty.
    pub fn load(guest: &dyn GuestFs, version: &str) -> Result<Option<KernelModules>> {
        check_version(version)?;
        let mut dir = None;
        for base in ["/lib/modules", "/usr/lib/modules"] {
            let d = format!("{base}/{version}");
            if guest.stat(&d)? == Some(FileKind::Dir) {
                dir = Some(d);
                break;
            }
        }
        let Some(dir) = dir else {
            return Ok(None);
        };
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            let p = format!("{dir}/{name}");
            guest
                .read_file(&p, MAX_INDEX_FILE)
                .map_err(|e| e.in_file(format!("{}:{p}", guest.fs_name())))
        };
        let ctx = |name: &str| format!("{}:{dir}/{name}", guest.fs_name());
        let mut k = KernelModules {
            version: version.to_string(),
            ..KernelModules::default()
        };
        if let Some(b) = read("modules.dep")? {
            k.dep = parse_modules_dep(&b, 0).map_err(|e| e.in_file(ctx("modules.dep")))?;
            k.has_dep = true;
        }
        if let Some(b) = read("modules.builtin")? {
            k.builtin =
                parse_modules_builtin(&b, 0).map_err(|e| e.in_file(ctx("modules.builtin")))?;
        }
        if let Some(b) = read("modules.builtin.modinfo")? {
            k.builtin_modinfo = parse_modules_builtin_modinfo(&b, 0)
                .map_err(|e| e.in_file(ctx("modules.builtin.modinfo")))?;
        }
        if let Some(b) = read("modules.alias")? {
            k.aliases = parse_modules_alias(&b, 0).map_err(|e| e.in_file(ctx("modules.alias")))?;
        }
        if let Some(b) = read("modules.softdep")? {
            k.softdeps =
                parse_modules_softdep(&b, 0).map_err(|e| e.in_file(ctx("modules.softdep")))?;
        }
        if let Some(b) = read("modules.order")? {
            k.order = parse_modules_order(&b, 0).map_err(|e| e.in_file(ctx("modules.order")))?;
        }
        k.dir = dir;
        Ok(Some(k))
    }

    /// Whether the module `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(name) || self.builtin_modinfo.modules.contains_key(name)
    }

    /// What `name` (a module name or an alias) resolves to, in kmod's order: a module of
    /// `modules.dep` by name, else the aliases of `modules.alias` whose pattern matches, else
    /// a built-in module by name, else a built-in module's alias. Empty when nothing matches.
    pub fn lookup(&self, name: &str) -> Vec<Resolved> {
        let alias = normalize_alias(name);
        if let Some(e) = self.dep.get(&alias) {
            return vec![Resolved::Module {
                name: normalize_name(&alias),
                path: e.path.clone(),
            }];
        }
        let mut out: Vec<Resolved> = Vec::new();
        for a in &self.aliases {
            if glob_match(&a.pattern, &alias) {
                let r = match self.dep.get(&a.module) {
                    Some(e) => Resolved::Module {
                        name: a.module.clone(),
                        path: e.path.clone(),
                    },
                    None if self.is_builtin(&a.module) => Resolved::Builtin(a.module.clone()),
                    None => continue,
                };
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        if !out.is_empty() {
            return out;
        }
        let plain = normalize_name(&alias);
        if self.builtin.contains(&plain) {
            return vec![Resolved::Builtin(plain)];
        }
        for (m, entries) in &self.builtin_modinfo.modules {
            let hit = entries
                .iter()
                .any(|(k, v)| k == "alias" && glob_match(&normalize_alias(v), &alias));
            if hit && !out.contains(&Resolved::Builtin(m.clone())) {
                out.push(Resolved::Builtin(m.clone()));
            }
        }
        out
    }

    /// The soft dependencies of module `name`: (pre, post) names.
    fn softdeps_of(&self, name: &str) -> (Vec<&str>, Vec<&str>) {
        let mut pre = Vec::new();
        let mut post = Vec::new();
        for s in self.softdeps.iter().filter(|s| s.module == name) {
            pre.extend(s.pre.iter().map(String::as_str));
            post.extend(s.post.iter().map(String::as_str));
        }
        (pre, post)
    }

    /// The modules `modprobe` loads for the module `name` with path `path`: its `modules.dep`
    /// dependencies, each with its soft dependencies, then itself with its own.
    pub fn probe_list(&self, name: &str, path: &str) -> ProbeList {
        let mut st = Probe {
            k: self,
            visited: HashSet::new(),
            seen: HashSet::new(),
            depth: 0,
            out: ProbeList::default(),
        };
        st.probe(&normalize_name(name), path);
        st.out
    }
}

/// The walk of [`KernelModules::probe_list`].
struct Probe<'a> {
    k: &'a KernelModules,
    /// Modules whose dependencies were walked (kmod's `visited` flag).
    visited: HashSet<String>,
    /// Modules already in the output.
    seen: HashSet<String>,
    /// Soft dependencies being followed.
    depth: usize,
    out: ProbeList,
}

impl Probe<'_> {
    fn probe(&mut self, name: &str, path: &str) {
        if !self.visited.insert(name.to_string()) {
            return;
        }
        // kmod loads the dependency list of modules.dep from its end (the deepest first).
        let deps: Vec<String> = self
            .k
            .dep
            .get(name)
            .map(|e| e.deps.iter().rev().cloned().collect())
            .unwrap_or_default();
        for d in deps {
            let n = super::index::module_name(&d);
            self.fill_softdep(&n, &d);
        }
        self.fill_softdep(name, path);
    }

    fn fill_softdep(&mut self, name: &str, path: &str) {
        let (pre, post) = self.k.softdeps_of(name);
        for s in pre {
            self.soft(s);
        }
        if self.seen.insert(name.to_string()) {
            self.out.modules.push((name.to_string(), path.to_string()));
        }
        for s in post {
            self.soft(s);
        }
    }

    fn soft(&mut self, soft: &str) {
        if self.depth >= MAX_SOFTDEP_DEPTH {
            self.out.truncated = true;
            return;
        }
        let found = self.k.lookup(soft);
        if found.is_empty() && !self.out.unresolved.iter().any(|u| u == soft) {
            self.out.unresolved.push(soft.to_string());
        }
        for r in found {
            match r {
                Resolved::Module { name, path } => {
                    self.depth += 1;
                    self.probe(&name, &path);
                    self.depth -= 1;
                }
                Resolved::Builtin(b) => {
                    if !self.out.builtin.contains(&b) {
                        self.out.builtin.push(b);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small index: virtio_blk → virtio, virtio_ring; nvme → nvme_core → crc_t10dif with
    /// a softdep on the alias `crct10dif` (two modules) and virtio_pci built in.
    pub(crate) fn sample() -> KernelModules {
        let dep = b"kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n\
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz\n\
kernel/drivers/virtio/virtio_ring.ko.xz:\n\
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz kernel/lib/crc-t10dif.ko.xz\n\
kernel/drivers/nvme/host/nvme-core.ko.xz: kernel/lib/crc-t10dif.ko.xz\n\
kernel/lib/crc-t10dif.ko.xz:\n\
kernel/crypto/crct10dif_generic.ko.xz:\n\
kernel/arch/x86/crypto/crct10dif-pclmul.ko.xz:\n\
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n\
kernel/drivers/net/net_failover.ko.xz:\n";
        KernelModules {
            version: "6.1.0-test".into(),
            dir: "/lib/modules/6.1.0-test".into(),
            dep: parse_modules_dep(dep, 0).unwrap(),
            has_dep: true,
            builtin: parse_modules_builtin(b"kernel/drivers/virtio/virtio_pci.ko\n", 0).unwrap(),
            builtin_modinfo: parse_modules_builtin_modinfo(
                b"virtio_pci.alias=pci:v00001AF4d*sv*sd*bc*sc*i*\0",
                0,
            )
            .unwrap(),
            aliases: parse_modules_alias(
                b"alias crct10dif crct10dif_pclmul\nalias crct10dif crct10dif_generic\n\
alias crypto-crct10dif crct10dif_generic\nalias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk\n",
                0,
            )
            .unwrap(),
            softdeps: parse_modules_softdep(
                b"softdep crc_t10dif pre: crct10dif\nsoftdep net_failover post: nosuchthing\n",
                0,
            )
            .unwrap(),
            order: ModuleList::default(),
        }
    }

    #[test]
    fn lookup_in_kmods_order() {
        let k = sample();
        assert_eq!(
            k.lookup("virtio-blk"),
            vec![Resolved::Module {
                name: "virtio_blk".into(),
                path: "kernel/drivers/block/virtio_blk.ko.xz".into()
            }]
        );
        assert_eq!(k.lookup("crct10dif").len(), 2);
        assert_eq!(k.lookup("crypto-crct10dif").len(), 1);
        assert_eq!(
            k.lookup("virtio_pci"),
            vec![Resolved::Builtin("virtio_pci".into())]
        );
        assert_eq!(
            k.lookup("pci:v00001AF4d00001041sv0sd0bc0sc0i0"),
            vec![Resolved::Builtin("virtio_pci".into())]
        );
        assert_eq!(
            k.lookup("pci:v00001AF4d00001001sv1sd2bc01sc00i00")[0],
            Resolved::Module {
                name: "virtio_blk".into(),
                path: "kernel/drivers/block/virtio_blk.ko.xz".into()
            }
        );
        assert!(k.lookup("nothing").is_empty());
    }

    #[test]
    fn probe_lists_follow_deps_and_softdeps() {
        let k = sample();
        let p = k.probe_list("virtio_blk", "kernel/drivers/block/virtio_blk.ko.xz");
        let names: Vec<&str> = p.modules.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["virtio_ring", "virtio", "virtio_blk"]);
        let p = k.probe_list("nvme", "kernel/drivers/nvme/host/nvme.ko.xz");
        let names: Vec<&str> = p.modules.iter().map(|(n, _)| n.as_str()).collect();
        // crc_t10dif's pre softdep `crct10dif` is an alias of two modules, loaded before it.
        assert_eq!(
            names,
            [
                "crct10dif_pclmul",
                "crct10dif_generic",
                "crc_t10dif",
                "nvme_core",
                "nvme"
            ]
        );
        let p = k.probe_list("virtio_net", "kernel/drivers/net/virtio_net.ko.xz");
        assert_eq!(p.unresolved, ["nosuchthing"]);
        assert_eq!(p.modules.len(), 4);
        assert!(!p.truncated);
    }

    #[test]
    fn a_long_softdep_chain_is_cut_not_a_stack_overflow() {
        // m0 pre: m1, m1 pre: m2, ... 100000 deep.
        let n = 100_000;
        let mut dep = String::new();
        let mut soft = String::new();
        for i in 0..n {
            dep.push_str(&format!("m{i}.ko:\n"));
            soft.push_str(&format!("softdep m{i} pre: m{}\n", i + 1));
        }
        let k = KernelModules {
            dep: parse_modules_dep(dep.as_bytes(), 0).unwrap(),
            softdeps: parse_modules_softdep(soft.as_bytes(), 0).unwrap(),
            ..KernelModules::default()
        };
        let p = k.probe_list("m0", "m0.ko");
        assert!(p.truncated);
        assert_eq!(p.modules.len(), MAX_SOFTDEP_DEPTH + 1);
    }
}
