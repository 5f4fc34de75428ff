//! Kernel modules for early boot (`diskconv::guest::kmod`) on the real modules of a Debian
//! kernel: the `linux-image-*-amd64` package (`apt-get download`, `dpkg-deb -x`, indexed by
//! kmod's own `depmod`) is put into an ext4 root with `mke2fs -d` and read through
//! `Ext4Volume`. The dependency closure of every planned module is checked against kmod's own
//! resolution (`modprobe --show-depends`), the vermagic check against `modinfo -F vermagic`,
//! and xz- and zstd-compressed modules (compressed with the xz and zstd tools, re-indexed by
//! depmod) are read through a decompressor that runs those tools.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use diskconv::guest::ext4::Ext4Volume;
use diskconv::guest::kmod::{
    DriverGroup, DriverNeed, DriverRole, ExistingInitramfs, InitramfsFlavour, MissingReason,
    ModuleState, ModuleTarget, Need, VermagicCheck, boot_drivers, guest_status, plan_early_modules,
};
use diskconv::storage::MemStorage;

use crate::util::{self, run};

/// The folder of an extracted kernel package and its version.
struct Kernel {
    root: PathBuf,
    version: String,
}

/// Skips (or fails in CI) with `why`.
fn unavailable(why: &str) -> Option<&'static Kernel> {
    if util::in_ci() {
        panic!("the Debian kernel package is required in CI (CI=true): {why}");
    }
    eprintln!("skipping: no Debian kernel modules: {why}");
    None
}

/// A Debian kernel's modules, extracted once into the target folder and indexed by depmod:
/// `$DISKCONV_TEST_KERNEL_ROOT` (a folder holding `lib/modules/<version>/modules.dep`) when set,
/// else the cached extraction, else `apt-get download` of the package `linux-image-amd64`
/// depends on.
fn kernel() -> Option<&'static Kernel> {
    static K: OnceLock<Result<Kernel, String>> = OnceLock::new();
    let k = K.get_or_init(|| {
        if !(util::require("depmod") && util::require("modprobe") && util::require("modinfo")) {
            return Err("kmod's tools are missing".into());
        }
        if let Some(root) = std::env::var_os("DISKCONV_TEST_KERNEL_ROOT") {
            return found(Path::new(&root)).ok_or_else(|| {
                format!(
                    "{} has no lib/modules/<version>/modules.dep",
                    root.to_string_lossy()
                )
            });
        }
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kmod-debian-kernel");
        if let Some(k) = found(&cache) {
            return Ok(k);
        }
        if !(util::require("apt-get") && util::require("dpkg-deb")) {
            return Err("apt-get or dpkg-deb is missing".into());
        }
        let work = cache.with_extension("part");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let download = |pkg: &str| -> Result<PathBuf, String> {
            let dl = Command::new("apt-get")
                .args(["download", pkg])
                .current_dir(&work)
                .output()
                .map_err(|e| format!("apt-get: {e}"))?;
            if !dl.status.success() {
                return Err(format!(
                    "apt-get download {pkg} failed: {}",
                    String::from_utf8_lossy(&dl.stderr)
                ));
            }
            std::fs::read_dir(&work)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.extension().is_some_and(|x| x == "deb")
                        && p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with(&format!("{pkg}_"))
                })
                .ok_or_else(|| format!("apt-get download {pkg} left no .deb"))
        };
        // The metapackage names the kernel package of the day in its Depends.
        let meta = download("linux-image-amd64")?;
        let depends = run(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&meta)
            .arg("Depends"));
        let text = String::from_utf8_lossy(&depends.stdout).into_owned();
        let pkg = text
            .split(',')
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|p| p.starts_with("linux-image-"))
            .ok_or_else(|| format!("linux-image-amd64 depends on no kernel: {text}"))?
            .to_string();
        let deb = download(&pkg)?;
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(work.join("root")));
        let modules = work.join("root/lib/modules");
        let version = std::fs::read_dir(&modules)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or("the package holds no lib/modules/<version>")?;
        run(Command::new("depmod")
            .arg("-b")
            .arg(work.join("root"))
            .arg(&version));
        std::fs::remove_file(&deb).unwrap();
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::rename(work.join("root"), &cache).unwrap();
        let _ = std::fs::remove_dir_all(&work);
        found(&cache).ok_or_else(|| "depmod wrote no modules.dep".into())
    });
    match k {
        Ok(k) => Some(k),
        Err(why) => unavailable(why),
    }
}

/// The kernel under `root/lib/modules` that has a modules.dep.
fn found(root: &Path) -> Option<Kernel> {
    let dir = root.join("lib/modules");
    for e in std::fs::read_dir(&dir).ok()? {
        let e = e.ok()?;
        if e.path().join("modules.dep").is_file() {
            return Some(Kernel {
                root: root.to_path_buf(),
                version: e.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    None
}

/// kmod's resolution: the module paths (relative to the modules folder) `modprobe` would
/// insert for `name`, and the built-in names it reports; `None` when modprobe finds nothing.
fn modprobe_depends(
    root: &Path,
    version: &str,
    name: &str,
) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    // An empty configuration folder: the host's /etc/modprobe.d must not count.
    let conf = root.join("../kmod-empty-conf");
    std::fs::create_dir_all(&conf).unwrap();
    let out = Command::new("modprobe")
        .arg("--show-depends")
        .arg("-S")
        .arg(version)
        .arg("-d")
        .arg(root)
        .arg("-C")
        .arg(&conf)
        .arg(name)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let dir = root.join("lib/modules").join(version);
    let prefix = format!("insmod {}/", dir.display());
    let (mut files, mut builtin) = (BTreeSet::new(), BTreeSet::new());
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rest) = l.strip_prefix(&prefix) {
            // `insmod PATH [options]`
            files.insert(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(b) = l.strip_prefix("builtin ") {
            builtin.insert(b.trim().replace('-', "_"));
        } else {
            panic!("unexpected modprobe output line {l:?}");
        }
    }
    Some((files, builtin))
}

/// `modinfo -F vermagic` of the module file `path`.
fn modinfo_vermagic(path: &Path) -> String {
    let out = run(Command::new("modinfo").args(["-F", "vermagic"]).arg(path));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every module of every target, plus `ext4` (soft dependencies through an alias), the
/// built-in `xenbus` and a name no kernel has.
fn all_needs() -> Vec<DriverNeed> {
    let mut out: Vec<DriverNeed> = ModuleTarget::ALL.iter().map(|&t| boot_drivers(t)).collect();
    let mut extra = boot_drivers(ModuleTarget::Kvm);
    extra.groups = vec![DriverGroup {
        role: DriverRole::Storage,
        need: Need::AnyOf,
        modules: vec!["ext4", "xenbus", "no_such_driver"],
        why: "test",
    }];
    out.push(extra);
    out
}

/// A guest root under `dir`: `lib/modules/<version>` with the index files of `kernel` and the
/// module files `files` (relative paths) copied from it; the same again under `fake` when
/// given (a folder named for another kernel); `etc/initramfs-tools`. Returns the root.
fn guest_tree(
    dir: &Path,
    kernel: &Kernel,
    files: &BTreeSet<String>,
    fake: Option<&str>,
) -> PathBuf {
    let root = dir.join("guest");
    let src = kernel.root.join("lib/modules").join(&kernel.version);
    let mut versions = vec![kernel.version.clone()];
    versions.extend(fake.map(str::to_string));
    for v in versions {
        let dst = root.join("lib/modules").join(v);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
            }
        }
        for f in files {
            let to = dst.join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(src.join(f), to).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("etc/initramfs-tools")).unwrap();
    std::fs::write(root.join("etc/initramfs-tools/modules"), "# modules\n").unwrap();
    root
}

/// `mke2fs -d TREE` into an image, opened through `Ext4Volume`.
fn ext4_of(tree: &Path, img: &Path) -> Ext4Volume {
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(tree)
        .arg(img)
        .arg("256M"));
    let bytes = std::fs::read(img).unwrap();
    Ext4Volume::open(MemStorage::from_vec(bytes)).unwrap()
}

/// The union of modprobe's closures of every module of every need.
fn oracle_files(k: &Kernel) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for need in all_needs() {
        for m in need.modules() {
            if let Some((f, _)) = modprobe_depends(&k.root, &k.version, m) {
                all.extend(f);
            }
        }
    }
    all
}

fn existing_tools() -> ExistingInitramfs {
    ExistingInitramfs {
        module_names: Vec::new(),
        conf_modules: Some("# initramfs-tools\n".into()),
        has_modules_load_d: false,
        flavour: InitramfsFlavour::InitramfsTools,
        symlinks: Vec::new(),
    }
}

#[test]
fn closures_match_modprobe_for_every_target() {
    if !util::require("mke2fs") {
        return;
    }
    let Some(k) = kernel() else { return };
    let tmp = util::tmpdir();
    let files = oracle_files(k);
    let tree = guest_tree(tmp.path(), k, &files, None);
    let fs = ext4_of(&tree, &tmp.path().join("root.ext4"));
    let moddir = format!("lib/modules/{}", k.version);
    for need in all_needs() {
        let plan = plan_early_modules(&k.version, &need, &fs, &existing_tools(), None).unwrap();
        // What kmod loads for every module the plan loads, and what it calls built in.
        let mut want_files = BTreeSet::new();
        let mut want_builtin = BTreeSet::new();
        for m in need.modules() {
            match modprobe_depends(&k.root, &k.version, m) {
                Some((f, b)) => {
                    if f.is_empty() {
                        assert!(b.contains(m), "{m}: modprobe lists nothing, not built in");
                        assert!(plan.builtin.iter().any(|x| x == m), "{m} built in");
                    } else {
                        assert!(
                            plan.load.iter().any(|x| x == m),
                            "{}: {m} not loaded",
                            need.target
                        );
                    }
                    want_files.extend(f);
                    want_builtin.extend(b);
                }
                None => {
                    // kmod does not know it: the plan says so (unless it is optional).
                    let g = need.group_of(m).unwrap();
                    if g.need != Need::Optional {
                        let miss = plan.missing.iter().find(|x| x.name == m);
                        assert!(
                            miss.is_some_and(|x| x.reason == MissingReason::Absent),
                            "{m}: {:?}",
                            plan.missing
                        );
                    }
                }
            }
        }
        let got: BTreeSet<String> = plan
            .files
            .iter()
            .filter(|f| !f.is_dir())
            .filter_map(|f| f.path.strip_prefix(&format!("{moddir}/")))
            .filter(|p| p.contains('/'))
            .map(str::to_string)
            .collect();
        assert_eq!(
            got, want_files,
            "{}: closure differs from modprobe's",
            need.target
        );
        // Every module of the lists is in Debian's kernel: the comparison is never empty.
        assert!(!want_files.is_empty(), "{}", need.target);
        if need.modules().contains(&"ext4") {
            // ext4's soft dependency `crypto-crc32c` is an alias: kmod and the plan both
            // resolve it to the crc32c modules; xenbus is built into Debian's kernel.
            assert!(
                got.iter().any(|p| p.ends_with("/crc32c_generic.ko")),
                "{got:?}"
            );
            assert_eq!(plan.builtin, ["xenbus"]);
            assert!(want_builtin.contains("xenbus"));
            let m = plan
                .missing
                .iter()
                .find(|m| m.name == "no_such_driver")
                .unwrap();
            assert!(!m.required);
        }
        for b in &want_builtin {
            assert!(
                need.modules().contains(&b.as_str()) == plan.builtin.contains(b),
                "{}: built-in {b}",
                need.target
            );
        }
        // Files are the guest's bytes; the index files come along.
        for f in plan.files.iter().filter(|f| !f.is_dir()) {
            if let Some(rel) = f.path.strip_prefix(&format!("{moddir}/")) {
                let host = k.root.join(&moddir).join(rel);
                assert_eq!(f.data, std::fs::read(&host).unwrap(), "{}", f.path);
            }
        }
        if !want_files.is_empty() {
            for idx in [
                "modules.dep",
                "modules.dep.bin",
                "modules.alias.bin",
                "modules.softdep",
            ] {
                assert!(
                    plan.files
                        .iter()
                        .any(|f| f.path == format!("{moddir}/{idx}")),
                    "{idx}"
                );
            }
            let conf = plan
                .files
                .iter()
                .find(|f| f.path == "conf/modules")
                .unwrap();
            let text = String::from_utf8_lossy(&conf.data);
            for m in &plan.load {
                assert!(text.lines().any(|l| l == m), "{m} not in conf/modules");
            }
            assert_eq!(plan.guest_config[0].0, "/etc/initramfs-tools/modules");
        }
        if need.target == ModuleTarget::Kvm && need.groups.len() > 1 {
            assert!(plan.missing.is_empty(), "{:?}", plan.missing);
            assert!(plan.load.contains(&"virtio_blk".to_string()));
        }
    }
}

/// Modules the initramfs already holds are left out of the archive, their dependencies not.
#[test]
fn modules_already_in_the_initramfs_are_not_added() {
    if !util::require("mke2fs") {
        return;
    }
    let Some(k) = kernel() else { return };
    let tmp = util::tmpdir();
    let need = boot_drivers(ModuleTarget::Kvm);
    let mut want = BTreeSet::new();
    for m in need.modules() {
        want.extend(modprobe_depends(&k.root, &k.version, m).unwrap().0);
    }
    let tree = guest_tree(tmp.path(), k, &want, None);
    let fs = ext4_of(&tree, &tmp.path().join("root.ext4"));
    let mut ex = existing_tools();
    ex.module_names = vec!["virtio".into(), "scsi-mod".into(), "virtio_blk".into()];
    let plan = plan_early_modules(&k.version, &need, &fs, &ex, None).unwrap();
    let moddir = format!("lib/modules/{}/", k.version);
    let got: BTreeSet<String> = plan
        .files
        .iter()
        .filter(|f| !f.is_dir())
        .filter_map(|f| f.path.strip_prefix(&moddir))
        .filter(|p| p.contains('/'))
        .map(str::to_string)
        .collect();
    let left_out = ["/virtio.ko", "/scsi_mod.ko", "/virtio_blk.ko"];
    let expected: BTreeSet<String> = want
        .iter()
        .filter(|p| !left_out.iter().any(|l| p.ends_with(l)))
        .cloned()
        .collect();
    assert_eq!(want.len(), expected.len() + 3, "{want:?}");
    assert_eq!(got, expected);
    // virtio_blk is in the initramfs: still loaded and kept across rebuilds.
    assert!(plan.load.contains(&"virtio_blk".to_string()));
    assert!(plan.guest_config[0].1.lines().any(|l| l == "virtio_blk"));
    assert!(plan.missing.is_empty(), "{:?}", plan.missing);
}

#[test]
fn status_and_vermagic_match_modinfo() {
    if !util::require("mke2fs") {
        return;
    }
    let Some(k) = kernel() else { return };
    let tmp = util::tmpdir();
    let files = oracle_files(k);
    let fake = "6.1.0-0-other";
    let tree = guest_tree(tmp.path(), k, &files, Some(fake));
    let fs = ext4_of(&tree, &tmp.path().join("root.ext4"));
    let names: Vec<&str> = all_needs()
        .iter()
        .flat_map(|n| n.modules())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let initramfs = vec!["virtio-ring".to_string()];
    let kidx = diskconv::guest::kmod::KernelModules::load(&fs, &k.version)
        .unwrap()
        .unwrap();
    let st = guest_status(&fs, &kidx, &initramfs, &names, None).unwrap();
    let dir = k.root.join("lib/modules").join(&k.version);
    for s in &st {
        match &s.state {
            ModuleState::OnDisk { path } => {
                let magic = modinfo_vermagic(&dir.join(path));
                assert_eq!(magic.split_whitespace().next(), Some(k.version.as_str()));
                assert_eq!(s.vermagic, Some(VermagicCheck::Matches), "{}", s.name);
            }
            ModuleState::InInitramfs => assert_eq!(s.name, "virtio_ring"),
            ModuleState::BuiltIn => assert_eq!(s.name, "xenbus"),
            ModuleState::Absent => assert_eq!(s.name, "no_such_driver"),
            ModuleState::OtherKernel { .. } => panic!("{s:?}"),
        }
    }
    // The same files under a folder named for another kernel: built for another kernel.
    let kidx = diskconv::guest::kmod::KernelModules::load(&fs, fake)
        .unwrap()
        .unwrap();
    let st = guest_status(&fs, &kidx, &[], &["virtio_blk", "nvme"], None).unwrap();
    for s in &st {
        let ModuleState::OtherKernel { path, vermagic } = &s.state else {
            panic!("{s:?}")
        };
        assert_eq!(vermagic, &modinfo_vermagic(&dir.join(path)));
    }
    let plan = plan_early_modules(
        fake,
        &boot_drivers(ModuleTarget::Kvm),
        &fs,
        &existing_tools(),
        None,
    )
    .unwrap();
    assert!(plan.blocks_boot());
    assert!(plan.files.is_empty());
    let blk = plan
        .missing
        .iter()
        .find(|m| m.name == "virtio_blk")
        .unwrap();
    assert!(
        matches!(blk.reason, MissingReason::OtherKernel { .. }),
        "{blk:?}"
    );
    assert!(
        blk.fix.contains("update-initramfs -u -k 6.1.0-0-other"),
        "{}",
        blk.fix
    );
}

/// Decompresses with the xz or zstd tool, chosen by the magic.
fn decompress_cli(b: &[u8]) -> diskconv::Result<Vec<u8>> {
    let tool = match diskconv::guest::kmod::compression(b) {
        Some("xz") => "xz",
        Some("zstd") => "zstd",
        other => panic!("unexpected compression {other:?}"),
    };
    let mut child = Command::new(tool)
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = b.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    Ok(out.stdout)
}

#[test]
fn compressed_modules_through_a_decompressor() {
    if !(util::require("mke2fs") && util::require("xz") && util::require("zstd")) {
        return;
    }
    let Some(k) = kernel() else { return };
    let tmp = util::tmpdir();
    // The KVM closure, every other file xz-compressed (as the kernel's build does:
    // CRC32 check), the rest zstd; depmod indexes the compressed tree.
    let mut files = BTreeSet::new();
    for m in boot_drivers(ModuleTarget::Kvm).modules() {
        files.extend(modprobe_depends(&k.root, &k.version, m).unwrap().0);
    }
    let root = tmp.path().join("guest");
    let dir = root.join("lib/modules").join(&k.version);
    let src = k.root.join("lib/modules").join(&k.version);
    let mut kinds = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let to = dir.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(f), &to).unwrap();
        if i % 2 == 0 {
            run(Command::new("xz").args(["--check=crc32", "-q"]).arg(&to));
            kinds.insert(format!("{f}.xz"), "xz");
        } else {
            run(Command::new("zstd").args(["-q", "--rm"]).arg(&to));
            kinds.insert(format!("{f}.zst"), "zstd");
        }
    }
    for idx in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        std::fs::copy(src.join(idx), dir.join(idx)).unwrap();
    }
    run(Command::new("depmod").arg("-b").arg(&root).arg(&k.version));
    let fs = ext4_of(&root, &tmp.path().join("root.ext4"));
    let ex = ExistingInitramfs {
        flavour: InitramfsFlavour::Dracut,
        has_modules_load_d: true,
        ..ExistingInitramfs::default()
    };
    let need = boot_drivers(ModuleTarget::Kvm);
    let plan = plan_early_modules(&k.version, &need, &fs, &ex, Some(&decompress_cli)).unwrap();
    assert!(plan.missing.is_empty(), "{:?}", plan.missing);
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    let moddir = format!("lib/modules/{}/", k.version);
    let got: BTreeSet<String> = plan
        .files
        .iter()
        .filter(|f| !f.is_dir())
        .filter_map(|f| f.path.strip_prefix(&moddir))
        .filter(|p| p.contains('/'))
        .map(str::to_string)
        .collect();
    let mut want = BTreeSet::new();
    for m in need.modules() {
        if let Some((f, _)) = modprobe_depends(&root, &k.version, m) {
            want.extend(f);
        }
    }
    assert_eq!(got, want);
    assert_eq!(got.len(), kinds.len());
    for f in plan
        .files
        .iter()
        .filter(|f| f.path.ends_with(".xz") || f.path.ends_with(".zst"))
    {
        let rel = f.path.strip_prefix(&moddir).unwrap();
        assert_eq!(
            diskconv::guest::kmod::compression(&f.data),
            Some(kinds[rel])
        );
        // modinfo reads the compressed file itself.
        assert_eq!(
            modinfo_vermagic(&dir.join(rel)).split_whitespace().next(),
            Some(k.version.as_str())
        );
    }
    assert!(
        plan.files
            .iter()
            .any(|f| f.path == "etc/modules-load.d/diskconv.conf")
    );
    // Without a decompressor the modules are still added, with a note.
    let plan = plan_early_modules(&k.version, &need, &fs, &ex, None).unwrap();
    assert!(plan.missing.is_empty());
    assert!(
        plan.notes.iter().any(|n| n.contains("not checked")),
        "{:?}",
        plan.notes
    );
}
