//! Which kernel modules a Linux guest needs at early boot on each target.
//!
//! Sources: REFERENCE.md section 7 (the initramfs must hold the new storage driver:
//! virtio_blk / virtio_scsi / nvme / hv_storvsc / xen-blkfront); virt-v2v's
//! `convert_linux.ml` (virtio_blk, virtio_scsi, virtio_pci, virtio_net, virtio_ring, virtio for
//! KVM guests); Huawei Cloud IMS "Installing native Xen and KVM drivers" (the same six virtio
//! modules plus xen-blkfront/xen-netfront into `add_drivers` or `/etc/initramfs-tools/modules`);
//! Alibaba Cloud ECS "Install virtio drivers" (virtio_blk, virtio_pci, virtio_ring, virtio_net in
//! the initramfs); AWS "Amazon EBS and NVMe" and "Enhanced networking with ENA" (nvme, ena on
//! Nitro instances; xen-blkfront on the older Xen instance types); Azure "Prepare a Linux VHD"
//! (`add_drivers+=" hv_vmbus hv_netvsc hv_storvsc "`); Google "Operating system details /
//! import requirements" (virtio_scsi, virtio_net, nvme on NVMe machine types, gve for gVNIC);
//! VMware KB 1001805 / open-vm-tools docs (vmw_pvscsi for the paravirtual SCSI controller,
//! mptspi for LSI Logic Parallel, vmxnet3).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A platform whose early-boot drivers a Linux guest needs (the names are those of
/// `--target`; the cloud layer maps its targets onto these by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleTarget {
    /// Plain KVM / QEMU: virtio.
    Kvm,
    /// OpenStack on KVM: virtio.
    Openstack,
    /// Alibaba Cloud ECS (KVM): virtio.
    Alibaba,
    /// Huawei Cloud (KVM): virtio.
    Huawei,
    /// Amazon EC2: NVMe and ENA on Nitro; Xen front ends on older instance types.
    Aws,
    /// Microsoft Azure: Hyper-V VMBus, storvsc, netvsc.
    Azure,
    /// Microsoft Hyper-V: the same drivers as Azure.
    Hyperv,
    /// Google Compute Engine: virtio-scsi or NVMe, virtio-net or gVNIC.
    Gcp,
    /// VMware vSphere: PVSCSI or LSI Logic, VMXNET3.
    Vsphere,
}

impl ModuleTarget {
    /// Every target.
    pub const ALL: [ModuleTarget; 9] = [
        ModuleTarget::Aws,
        ModuleTarget::Azure,
        ModuleTarget::Gcp,
        ModuleTarget::Alibaba,
        ModuleTarget::Huawei,
        ModuleTarget::Openstack,
        ModuleTarget::Vsphere,
        ModuleTarget::Hyperv,
        ModuleTarget::Kvm,
    ];

    /// The name as `--target` spells it.
    pub fn name(self) -> &'static str {
        match self {
            ModuleTarget::Kvm => "kvm",
            ModuleTarget::Openstack => "openstack",
            ModuleTarget::Alibaba => "alibaba",
            ModuleTarget::Huawei => "huawei",
            ModuleTarget::Aws => "aws",
            ModuleTarget::Azure => "azure",
            ModuleTarget::Hyperv => "hyperv",
            ModuleTarget::Gcp => "gcp",
            ModuleTarget::Vsphere => "vsphere",
        }
    }
}

impl fmt::Display for ModuleTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModuleTarget {
    type Err = Error;
    fn from_str(s: &str) -> Result<ModuleTarget> {
        let l = s.to_ascii_lowercase();
        ModuleTarget::ALL
            .iter()
            .copied()
            .find(|t| t.name() == l || (l == "hyper-v" && *t == ModuleTarget::Hyperv))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown target '{s}': expected one of {}",
                    ModuleTarget::ALL.map(|t| t.name()).join(", ")
                ))
            })
    }
}

/// What a group of modules is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverRole {
    /// The disk controller: without it the root file system is not found (boot fails).
    Storage,
    /// The bus or transport the storage and network drivers sit on.
    Bus,
    /// The network card: without it the guest boots but is unreachable.
    Network,
}

/// How many members of a group must be usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// At least one member (`virtio_blk` or `virtio_scsi`); all usable ones are added.
    AnyOf,
    /// Every member.
    Each,
    /// Added when the kernel has it; its absence is not a problem (a module that only some
    /// kernels split out, or a driver of older instance types).
    Optional,
}

/// A group of modules with one purpose.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriverGroup {
    /// What it is for.
    pub role: DriverRole,
    /// How many members must be usable.
    pub need: Need,
    /// Module names (normalized: `_`, never `-`).
    pub modules: Vec<&'static str>,
    /// Why the target needs it, for messages.
    pub why: &'static str,
}

impl DriverGroup {
    /// Whether a missing member of this group makes the guest unbootable: storage and bus
    /// groups that are not optional.
    pub fn boot_critical(&self) -> bool {
        self.need != Need::Optional && self.role != DriverRole::Network
    }
}

/// The modules a target needs at early boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriverNeed {
    /// The target.
    pub target: ModuleTarget,
    /// Its groups: storage first, then bus, then network.
    pub groups: Vec<DriverGroup>,
}

impl DriverNeed {
    /// Every module name of every group, in group order, each once.
    pub fn modules(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for g in &self.groups {
            for m in &g.modules {
                if !out.contains(m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// The group a module belongs to (the first, when several list it).
    pub fn group_of(&self, module: &str) -> Option<&DriverGroup> {
        let m = super::normalize_name(module);
        self.groups.iter().find(|g| g.modules.contains(&m.as_str()))
    }
}

fn group(role: DriverRole, need: Need, modules: &[&'static str], why: &'static str) -> DriverGroup {
    DriverGroup {
        role,
        need,
        modules: modules.to_vec(),
        why,
    }
}

/// The virtio groups of the KVM clouds (virt-v2v's list; Huawei's and Alibaba's import
/// guides name the same modules).
fn virtio(storage_why: &'static str) -> Vec<DriverGroup> {
    vec![
        group(
            DriverRole::Storage,
            Need::AnyOf,
            &["virtio_blk", "virtio_scsi"],
            storage_why,
        ),
        group(
            DriverRole::Bus,
            Need::Each,
            &["virtio_pci", "virtio_ring", "virtio"],
            "virtio devices are PCI devices driven through virtio_pci and the virtio core",
        ),
        group(
            DriverRole::Bus,
            Need::Optional,
            &["virtio_pci_modern_dev", "virtio_pci_legacy_dev"],
            "Linux 5.16 and later split virtio_pci's transport into these modules",
        ),
        group(
            DriverRole::Network,
            Need::Each,
            &["virtio_net"],
            "the network card is virtio-net",
        ),
    ]
}

/// The modules `target` needs at early boot.
pub fn boot_drivers(target: ModuleTarget) -> DriverNeed {
    let groups = match target {
        ModuleTarget::Kvm | ModuleTarget::Openstack | ModuleTarget::Alibaba => {
            virtio("the disk is virtio-blk (or virtio-scsi when the VM is set up so)")
        }
        ModuleTarget::Huawei => {
            let mut g = virtio("the disk is virtio-blk (or virtio-scsi when the VM is set up so)");
            g.push(group(
                DriverRole::Storage,
                Need::Optional,
                &["xen_blkfront"],
                "Huawei's import guide adds the Xen disk front end for its older Xen flavours",
            ));
            g.push(group(
                DriverRole::Network,
                Need::Optional,
                &["xen_netfront"],
                "Huawei's import guide adds the Xen network front end for its older Xen flavours",
            ));
            g
        }
        ModuleTarget::Aws => vec![
            group(
                DriverRole::Storage,
                Need::Each,
                &["nvme", "nvme_core"],
                "EBS volumes are NVMe devices on Nitro instances",
            ),
            group(
                DriverRole::Storage,
                Need::Optional,
                &["xen_blkfront"],
                "older Xen instance types (t2, m4, c4, ...) attach EBS through xen-blkfront",
            ),
            group(
                DriverRole::Network,
                Need::Each,
                &["ena"],
                "Nitro instances' network card is the Elastic Network Adapter",
            ),
            group(
                DriverRole::Network,
                Need::Optional,
                &["xen_netfront"],
                "older Xen instance types' network card",
            ),
        ],
        ModuleTarget::Azure | ModuleTarget::Hyperv => vec![
            group(
                DriverRole::Storage,
                Need::Each,
                &["hv_storvsc"],
                "disks are Hyper-V synthetic SCSI (storvsc)",
            ),
            group(
                DriverRole::Bus,
                Need::Each,
                &["hv_vmbus"],
                "every synthetic device sits on the VMBus",
            ),
            group(
                DriverRole::Bus,
                Need::Optional,
                &["scsi_transport_fc"],
                "a modules.dep dependency of hv_storvsc where the kernel has FC transport",
            ),
            group(
                DriverRole::Network,
                Need::Each,
                &["hv_netvsc"],
                "the network card is Hyper-V synthetic networking (netvsc)",
            ),
        ],
        ModuleTarget::Gcp => vec![
            group(
                DriverRole::Storage,
                Need::AnyOf,
                &["virtio_scsi", "nvme"],
                "disks are virtio-scsi, or NVMe on the machine types that use it",
            ),
            group(
                DriverRole::Bus,
                Need::Each,
                &["virtio_pci", "virtio_ring", "virtio"],
                "virtio devices are PCI devices driven through virtio_pci and the virtio core",
            ),
            group(
                DriverRole::Bus,
                Need::Optional,
                &["virtio_pci_modern_dev", "virtio_pci_legacy_dev"],
                "Linux 5.16 and later split virtio_pci's transport into these modules",
            ),
            group(
                DriverRole::Network,
                Need::Each,
                &["virtio_net"],
                "the default network card is virtio-net",
            ),
            group(
                DriverRole::Network,
                Need::Optional,
                &["gve"],
                "gVNIC (Google Virtual NIC) on the machine types that use it",
            ),
        ],
        ModuleTarget::Vsphere => vec![
            group(
                DriverRole::Storage,
                Need::AnyOf,
                &["vmw_pvscsi", "mptspi"],
                "the disk controller is VMware Paravirtual SCSI or LSI Logic Parallel",
            ),
            group(
                DriverRole::Network,
                Need::Each,
                &["vmxnet3"],
                "the network card is VMXNET3",
            ),
        ],
    };
    DriverNeed { target, groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_required_storage_group() {
        for t in ModuleTarget::ALL {
            let n = boot_drivers(t);
            assert!(
                n.groups
                    .iter()
                    .any(|g| g.role == DriverRole::Storage && g.need != Need::Optional),
                "{t}"
            );
            for m in n.modules() {
                assert!(!m.contains('-'), "{m} is not normalized");
            }
            assert_eq!(t.name().parse::<ModuleTarget>().unwrap(), t);
        }
        assert_eq!(
            boot_drivers(ModuleTarget::Hyperv).groups,
            boot_drivers(ModuleTarget::Azure).groups
        );
        let kvm = boot_drivers(ModuleTarget::Kvm);
        assert_eq!(kvm.group_of("virtio-scsi").unwrap().need, Need::AnyOf);
        assert!(!kvm.group_of("virtio_net").unwrap().boot_critical());
        assert!(kvm.group_of("virtio_pci").unwrap().boot_critical());
        assert!("nope".parse::<ModuleTarget>().is_err());
        assert_eq!(
            "Hyper-V".parse::<ModuleTarget>().unwrap(),
            ModuleTarget::Hyperv
        );
    }
}
