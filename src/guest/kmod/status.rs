//! Where each needed driver stands for one kernel: built in, in the initramfs, on disk only,
//! absent, or built for another kernel (its `vermagic`).

use crate::error::Result;
use crate::guest::fs::GuestFs;

use super::elf;
use super::index::{ModuleList, ModulesDep, normalize_name};
use super::resolve::KernelModules;

/// Largest module file read from a guest (the biggest distribution modules, GPU drivers, are
/// tens of MiB).
pub const MAX_MODULE_FILE: u64 = 256 << 20;

/// Turns compressed module bytes (`.ko.xz`, `.ko.zst`, `.ko.gz`) into the ELF object.
pub type Decompress<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>>;

/// The compression of module bytes, from their magic: `None` for an ELF object (or unknown
/// bytes), else `xz`, `zstd` or `gzip`.
pub fn compression(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\xfd7zXZ\0") {
        Some("xz")
    } else if bytes.starts_with(b"\x28\xb5\x2f\xfd") {
        Some("zstd")
    } else if bytes.starts_with(b"\x1f\x8b") {
        Some("gzip")
    } else {
        None
    }
}

/// What a module's `vermagic` says about the kernel it was built for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum VermagicCheck {
    /// It names the kernel version.
    Matches,
    /// It names another kernel.
    OtherKernel {
        /// The whole vermagic string.
        vermagic: String,
    },
    /// It could not be checked (compressed without a decompressor, no `.modinfo`).
    Unchecked {
        /// Why.
        reason: String,
    },
}

/// Checks the module file `bytes` (compressed or not) against kernel `version`.
/// Undecodable or malformed bytes are an error.
pub fn check_vermagic(
    bytes: &[u8],
    version: &str,
    decompress: Option<Decompress<'_>>,
) -> Result<VermagicCheck> {
    let owned;
    let elf_bytes = match (compression(bytes), decompress) {
        (None, _) => bytes,
        (Some(c), None) => {
            return Ok(VermagicCheck::Unchecked {
                reason: format!("the module is {c}-compressed and no decompressor was given"),
            });
        }
        (Some(_), Some(d)) => {
            owned = d(bytes)?;
            &owned
        }
    };
    Ok(match elf::vermagic(elf_bytes)? {
        None => VermagicCheck::Unchecked {
            reason: "the module has no vermagic in its .modinfo section".into(),
        },
        Some(v) if elf::vermagic_release(&v) == version => VermagicCheck::Matches,
        Some(v) => VermagicCheck::OtherKernel {
            vermagic: v.trim().to_string(),
        },
    })
}

/// Where one module stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ModuleState {
    /// Compiled into the kernel (`modules.builtin`).
    BuiltIn,
    /// Already in the initramfs.
    InInitramfs,
    /// A module file of this kernel (`modules.dep`) that the initramfs lacks.
    OnDisk {
        /// Its path relative to the modules folder.
        path: String,
    },
    /// A module file whose vermagic names another kernel.
    OtherKernel {
        /// Its path relative to the modules folder.
        path: String,
        /// The vermagic it carries.
        vermagic: String,
    },
    /// Neither built in nor a module of this kernel.
    Absent,
}

/// One module's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleStatus {
    /// The module name (normalized).
    pub name: String,
    /// Where it stands.
    pub state: ModuleState,
    /// The vermagic check of its file, when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vermagic: Option<VermagicCheck>,
}

/// The state of each of `modules` from `modules.builtin`, `modules.dep` and the module names
/// an initramfs holds (no file is read: see [`guest_status`] for the vermagic check).
pub fn driver_status(
    builtin: &ModuleList,
    dep: &ModulesDep,
    initramfs_modules: &[String],
    modules: &[&str],
) -> Vec<ModuleStatus> {
    let inram: Vec<String> = initramfs_modules
        .iter()
        .map(|n| normalize_name(n))
        .collect();
    modules
        .iter()
        .map(|m| {
            let name = normalize_name(m);
            let state = if builtin.contains(&name) {
                ModuleState::BuiltIn
            } else if inram.contains(&name) {
                ModuleState::InInitramfs
            } else if let Some(e) = dep.get(&name) {
                ModuleState::OnDisk {
                    path: e.path.clone(),
                }
            } else {
                ModuleState::Absent
            };
            ModuleStatus {
                name,
                state,
                vermagic: None,
            }
        })
        .collect()
}

/// [`driver_status`] on a guest's index, with the vermagic of the file of every module that
/// is on disk but not in the initramfs checked against the kernel version (one whose file
/// names another kernel becomes [`ModuleState::OtherKernel`]; a file `modules.dep` lists but
/// the guest lacks becomes [`ModuleState::Absent`]).
pub fn guest_status(
    guest: &dyn GuestFs,
    modules_index: &KernelModules,
    initramfs_modules: &[String],
    modules: &[&str],
    decompress: Option<Decompress<'_>>,
) -> Result<Vec<ModuleStatus>> {
    let k = modules_index;
    let mut out = driver_status(&k.builtin, &k.dep, initramfs_modules, modules);
    for s in &mut out {
        let path = match &s.state {
            ModuleState::OnDisk { path } => path.clone(),
            _ => continue,
        };
        let full = format!("{}/{path}", k.dir);
        let Some(bytes) = guest.read_file(&full, MAX_MODULE_FILE)? else {
            s.state = ModuleState::Absent;
            continue;
        };
        let check = check_vermagic(&bytes, &k.version, decompress)
            .map_err(|e| e.in_file(format!("{}:{full}", guest.fs_name())))?;
        if let VermagicCheck::OtherKernel { vermagic } = &check {
            s.state = ModuleState::OtherKernel {
                path,
                vermagic: vermagic.clone(),
            };
        }
        s.vermagic = Some(check);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::kmod::elf::test_elf;
    use crate::guest::kmod::resolve::tests::sample;

    #[test]
    fn states_from_the_lists() {
        let k = sample();
        let s = driver_status(
            &k.builtin,
            &k.dep,
            &["virtio-net".to_string()],
            &["virtio_pci", "virtio_net", "virtio_blk", "hv_storvsc"],
        );
        assert_eq!(s[0].state, ModuleState::BuiltIn);
        assert_eq!(s[1].state, ModuleState::InInitramfs);
        assert_eq!(
            s[2].state,
            ModuleState::OnDisk {
                path: "kernel/drivers/block/virtio_blk.ko.xz".into()
            }
        );
        assert_eq!(s[3].state, ModuleState::Absent);
    }

    #[test]
    fn vermagic_checks() {
        let elf = test_elf(b"vermagic=6.1.0-test SMP mod_unload\0", true, false);
        assert_eq!(
            check_vermagic(&elf, "6.1.0-test", None).unwrap(),
            VermagicCheck::Matches
        );
        assert_eq!(
            check_vermagic(&elf, "6.1.0-other", None).unwrap(),
            VermagicCheck::OtherKernel {
                vermagic: "6.1.0-test SMP mod_unload".into()
            }
        );
        // A "compressed" module: the decompressor strips a fake xz magic.
        let mut xz = b"\xfd7zXZ\0".to_vec();
        xz.extend_from_slice(&elf);
        assert!(matches!(
            check_vermagic(&xz, "6.1.0-test", None).unwrap(),
            VermagicCheck::Unchecked { .. }
        ));
        let strip = |b: &[u8]| -> Result<Vec<u8>> { Ok(b[6..].to_vec()) };
        assert_eq!(
            check_vermagic(&xz, "6.1.0-test", Some(&strip)).unwrap(),
            VermagicCheck::Matches
        );
        assert!(check_vermagic(b"garbage", "6.1.0-test", None).is_err());
        assert_eq!(compression(b"\x28\xb5\x2f\xfdxx"), Some("zstd"));
        assert_eq!(compression(b"\x1f\x8bxx"), Some("gzip"));
    }
}
