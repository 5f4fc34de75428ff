//! Target profiles: what each cloud or hypervisor imports, and the output a `--target` makes.
//!
//! Every rule carries the documentation page it comes from ([`Rule::source`]); the README's
//! targets table lists the same rules. A profile names formats by their registry name
//! (`"vpc"`, `"gcp"`), so a format that another build adds (the GCP tarball) is found when it
//! is there and reported as an unknown format when it is not.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::image::{Extent, ExtentKind, ImageInfo, ImageReader};
use crate::output::OutputOptions;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// A platform an image is prepared for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Amazon EC2 through VM Import/Export.
    Aws,
    /// Microsoft Azure (managed disk or page blob).
    Azure,
    /// Google Compute Engine image import.
    Gcp,
    /// Alibaba Cloud ECS image import.
    Alibaba,
    /// Huawei Cloud Image Management Service.
    Huawei,
    /// OpenStack (Glance images booted by Nova on KVM).
    Openstack,
    /// VMware vSphere.
    Vsphere,
    /// Microsoft Hyper-V.
    Hyperv,
    /// Plain KVM / QEMU (libvirt, Proxmox).
    Kvm,
}

impl Target {
    /// Every target, in the order the documentation lists them.
    pub const ALL: [Target; 9] = [
        Target::Aws,
        Target::Azure,
        Target::Gcp,
        Target::Alibaba,
        Target::Huawei,
        Target::Openstack,
        Target::Vsphere,
        Target::Hyperv,
        Target::Kvm,
    ];

    /// The name as `--target` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Target::Aws => "aws",
            Target::Azure => "azure",
            Target::Gcp => "gcp",
            Target::Alibaba => "alibaba",
            Target::Huawei => "huawei",
            Target::Openstack => "openstack",
            Target::Vsphere => "vsphere",
            Target::Hyperv => "hyperv",
            Target::Kvm => "kvm",
        }
    }

    /// The profile of this target.
    pub fn profile(self) -> &'static Profile {
        profile(self)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Target> {
        let l = s.to_ascii_lowercase();
        Target::ALL
            .iter()
            .copied()
            .find(|t| t.name() == l || (l == "hyper-v" && *t == Target::Hyperv))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown target '{s}': expected one of {}",
                    Target::ALL.map(|t| t.name()).join(", ")
                ))
            })
    }
}

/// The firmware a virtual machine boots its disk with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// Legacy BIOS: an MBR with an active partition (or GPT with a BIOS boot partition).
    Bios,
    /// UEFI: an EFI System Partition, normally on GPT.
    Uefi,
}

impl BootMode {
    /// `bios` or `uefi`.
    pub fn name(self) -> &'static str {
        match self {
            BootMode::Bios => "bios",
            BootMode::Uefi => "uefi",
        }
    }
}

impl FromStr for BootMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<BootMode> {
        match s.to_ascii_lowercase().as_str() {
            "bios" | "legacy" | "legacy-bios" | "gen1" => Ok(BootMode::Bios),
            "uefi" | "efi" | "gen2" => Ok(BootMode::Uefi),
            _ => Err(Error::InvalidArgument(format!(
                "unknown boot mode '{s}': expected bios or uefi"
            ))),
        }
    }
}

/// A rule of a target and where it is written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    /// The rule, in a sentence.
    pub text: &'static str,
    /// The documentation page that states it.
    pub source: &'static str,
}

/// How a target treats a disk with 4096-byte logical sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sector4k {
    /// The platform presents 512-byte logical sectors: a 4Kn guest's partition table is not
    /// found.
    Refused,
    /// The platform can present 4096-byte sectors when the virtual disk is configured so.
    Configurable,
    /// The artifact records the sector size and the platform honours it (VHDX on Hyper-V).
    Supported,
}

/// An artifact format a target imports, with the options a `--target` output gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Artifact {
    /// Registry name of the format (`vmdk`, `vpc`, `gcp`, ...).
    pub format: &'static str,
    /// `-o` options the profile sets for it (empty: the format's defaults).
    pub options: &'static str,
}

/// What a target accepts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Profile {
    /// The target.
    pub target: Target,
    /// What it is called in messages.
    pub title: &'static str,
    /// The formats it imports; the first is what `--target` writes without `-O`.
    pub artifacts: &'static [Artifact],
    /// Smallest virtual size accepted (the output is padded with zeros up to it).
    pub min_size: u64,
    /// Largest virtual size accepted.
    pub max_size: Option<u64>,
    /// The virtual size must be a multiple of this (the output is rounded up to it).
    pub size_unit: u64,
    /// 4096-byte logical sectors.
    pub sector_4k: Sector4k,
    /// Boot modes it can boot; both for every target, narrowed by the format or the VM
    /// generation (see [`boot_modes_for`]).
    pub boot_modes: &'static [BootMode],
    /// What to declare at import for a UEFI disk (empty: nothing).
    pub uefi_note: &'static str,
    /// Every rule, with its source.
    pub rules: &'static [Rule],
}

const AWS_IMPORT: &str =
    "https://docs.aws.amazon.com/vm-import/latest/userguide/prerequisites.html";
const AZURE_PREPARE: &str =
    "https://learn.microsoft.com/en-us/azure/virtual-machines/windows/prepare-for-upload-vhd-image";
const AZURE_UPLOAD_SIZE: &str = "https://learn.microsoft.com/en-us/dotnet/api/azure.resourcemanager.compute.models.diskcreationdata.uploadsizebytes";
const GCP_IMPORT: &str = "https://cloud.google.com/compute/docs/import/import-existing-image";
const ALIBABA_IMPORT: &str =
    "https://www.alibabacloud.com/help/en/ecs/user-guide/import-a-custom-image";
const HUAWEI_PREPARE: &str =
    "https://support.huaweicloud.com/en-us/usermanual-ims/ims_01_0204.html";
const GLANCE_FORMATS: &str = "https://docs.openstack.org/glance/latest/user/formats.html";
const HYPERV_GENERATIONS: &str = "https://learn.microsoft.com/en-us/windows-server/virtualization/hyper-v/plan/should-i-create-a-generation-1-or-2-virtual-machine-in-hyper-v";

static PROFILES: [Profile; 9] = [
    Profile {
        target: Target::Aws,
        title: "AWS VM Import",
        artifacts: &[
            Artifact {
                format: "vmdk",
                options: "subformat=streamOptimized,adapter_type=lsilogic",
            },
            Artifact {
                format: "ova",
                options: "",
            },
            Artifact {
                format: "vpc",
                options: "",
            },
            Artifact {
                format: "vhdx",
                options: "",
            },
            Artifact {
                format: "raw",
                options: "",
            },
        ],
        min_size: 512,
        max_size: Some(16 * TIB),
        size_unit: 512,
        sector_4k: Sector4k::Refused,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "import it with `aws ec2 import-image --boot-mode uefi`",
        rules: &[
            Rule {
                text: "VM Import takes stream-optimized ESX VMDK, OVA, VHD/VHDX and raw images",
                source: AWS_IMPORT,
            },
            Rule {
                text: "imported volumes are limited to 16 TiB",
                source: AWS_IMPORT,
            },
            Rule {
                text: "boot mode legacy-bios or uefi (uefi-preferred is not accepted for imports)",
                source: "https://docs.aws.amazon.com/vm-import/latest/userguide/prerequisites.html#vmimport-boot-modes",
            },
            Rule {
                text: "Nitro instances attach EBS volumes as NVMe devices (PCI 1D0F:8061): Windows \
                       boots through stornvme (or AWS's NVMe driver); networking needs ENA",
                source: "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/nvme-ebs-volumes.html",
            },
            Rule {
                text: "the ENA network driver (service ena) for Nitro instances",
                source: "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/enhanced-networking-ena.html",
            },
        ],
    },
    Profile {
        target: Target::Azure,
        title: "Azure",
        artifacts: &[Artifact {
            format: "vpc",
            options: "subformat=fixed,round_to_mib=on",
        }],
        min_size: 20 * MIB,
        max_size: Some(32 * TIB),
        size_unit: MIB,
        sector_4k: Sector4k::Refused,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "create the disk or image as Hyper-V generation 2 (`--hyper-v-generation V2`); \
                    generation 1 boots BIOS/MBR only",
        rules: &[
            Rule {
                text: "a fixed VHD whose virtual size is a whole number of MiB (file = N MiB + \
                       512 bytes)",
                source: AZURE_PREPARE,
            },
            Rule {
                text: "upload size between 20 MiB + 512 and 32 TiB + 512 bytes",
                source: AZURE_UPLOAD_SIZE,
            },
            Rule {
                text: "generation 1 VMs boot BIOS/MBR, generation 2 VMs boot UEFI/GPT",
                source: "https://learn.microsoft.com/en-us/azure/virtual-machines/generation-2",
            },
            Rule {
                text: "Windows boots from the VMBus synthetic storage controller (vmbus + storvsc)",
                source: AZURE_PREPARE,
            },
            Rule {
                text: "VHD sectors are 512 bytes (the format has no other sector size)",
                source: "https://learn.microsoft.com/en-us/windows/win32/vstor/about-vhd",
            },
        ],
    },
    Profile {
        target: Target::Gcp,
        title: "Google Compute Engine",
        artifacts: &[Artifact {
            format: "gcp",
            options: "",
        }],
        min_size: GIB,
        max_size: None,
        size_unit: GIB,
        sector_4k: Sector4k::Refused,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "create the image with `--guest-os-features=UEFI_COMPATIBLE`",
        rules: &[
            Rule {
                text: "a gzip-compressed tar (oldgnu) holding one file, disk.raw",
                source: GCP_IMPORT,
            },
            Rule {
                text: "the raw disk's size is a whole number of GiB (Compute Engine sizes disks \
                       in GiB)",
                source: GCP_IMPORT,
            },
            Rule {
                text: "UEFI images declare the UEFI_COMPATIBLE guest OS feature",
                source: "https://cloud.google.com/compute/docs/images/create-custom#guest-os-features",
            },
            Rule {
                text: "Windows boots from virtio-scsi (first and second generation machine types) \
                       or NVMe (third generation and later: PCI 1AE0:001F)",
                source: "https://cloud.google.com/compute/docs/disks/set-persistent-device-name-in-linux-vm",
            },
        ],
    },
    Profile {
        target: Target::Alibaba,
        title: "Alibaba Cloud ECS",
        artifacts: &[
            Artifact {
                format: "qcow2",
                options: "",
            },
            Artifact {
                format: "vpc",
                options: "",
            },
            Artifact {
                format: "raw",
                options: "",
            },
            Artifact {
                format: "vmdk",
                options: "",
            },
        ],
        min_size: 512,
        max_size: None,
        size_unit: 512,
        sector_4k: Sector4k::Refused,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "set the image's boot mode to UEFI when importing it (BootMode=UEFI)",
        rules: &[
            Rule {
                text: "ECS imports QCOW2, VHD, RAW and VMDK image files; qcow2 is written because \
                       it holds only the data",
                source: ALIBABA_IMPORT,
            },
            Rule {
                text: "the virtio driver must be installed, or the instance may not start",
                source: "https://www.alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-importimage",
            },
            Rule {
                text: "images boot UEFI or legacy BIOS, as the image declares",
                source: "https://www.alibabacloud.com/help/doc-detail/324257.htm",
            },
        ],
    },
    Profile {
        target: Target::Huawei,
        title: "Huawei Cloud IMS",
        artifacts: &[
            Artifact {
                format: "qcow2",
                options: "",
            },
            Artifact {
                format: "vmdk",
                options: "",
            },
            Artifact {
                format: "vpc",
                options: "",
            },
            Artifact {
                format: "vhdx",
                options: "",
            },
            Artifact {
                format: "vdi",
                options: "",
            },
            Artifact {
                format: "raw",
                options: "",
            },
        ],
        min_size: 512,
        max_size: Some(TIB),
        size_unit: 512,
        sector_4k: Sector4k::Refused,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "choose the UEFI boot mode when registering the image",
        rules: &[
            Rule {
                text: "IMS imports VMDK, VHD, QCOW2, RAW, VHDX, QED, VDI, QCOW, ZVHD2 and ZVHD; \
                       qcow2 is written because it holds only the data",
                source: HUAWEI_PREPARE,
            },
            Rule {
                text: "an image file of at most 128 GB; 128 GB to 1 TB only through fast import \
                       (RAW with a bitmap, or ZVHD2)",
                source: "https://support.huaweicloud.com/en-us/usermanual-ims/ims_01_0339.html",
            },
            Rule {
                text: "the guest needs the KVM (virtio) drivers",
                source: HUAWEI_PREPARE,
            },
        ],
    },
    Profile {
        target: Target::Openstack,
        title: "OpenStack",
        artifacts: &[
            Artifact {
                format: "qcow2",
                options: "",
            },
            Artifact {
                format: "raw",
                options: "",
            },
            Artifact {
                format: "vmdk",
                options: "subformat=streamOptimized",
            },
            Artifact {
                format: "vpc",
                options: "",
            },
            Artifact {
                format: "vhdx",
                options: "",
            },
            Artifact {
                format: "vdi",
                options: "",
            },
        ],
        min_size: 512,
        max_size: None,
        size_unit: 512,
        sector_4k: Sector4k::Refused,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "set the image property hw_firmware_type=uefi",
        rules: &[
            Rule {
                text: "Glance takes raw, qcow2, vmdk (streamOptimized or monolithicSparse), vhd, \
                       vhdx and vdi; the content must match the declared format",
                source: GLANCE_FORMATS,
            },
            Rule {
                text: "a qcow2 naming a backing file or an external data file is refused (the \
                       file would be read on the compute host)",
                source: "https://security.openstack.org/ossa/OSSA-2024-001.html",
            },
            Rule {
                text: "UEFI guests need hw_firmware_type=uefi",
                source: "https://docs.openstack.org/glance/latest/admin/useful-image-properties.html",
            },
            Rule {
                text: "Nova on KVM attaches disks as virtio-blk (hw_disk_bus=virtio) by default",
                source: "https://docs.openstack.org/glance/latest/admin/useful-image-properties.html",
            },
        ],
    },
    Profile {
        target: Target::Vsphere,
        title: "VMware vSphere",
        artifacts: &[
            Artifact {
                format: "vmdk",
                options: "subformat=streamOptimized,adapter_type=lsilogic",
            },
            Artifact {
                format: "ova",
                options: "",
            },
        ],
        min_size: 512,
        max_size: Some(62 * TIB),
        size_unit: 512,
        sector_4k: Sector4k::Refused,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "set the VM's firmware to EFI (an OVA: `-o firmware=efi`)",
        rules: &[
            Rule {
                text: "vSphere deploys a streamOptimized VMDK inside an OVF/OVA",
                source: "https://www.vmware.com/app/vmdk/?src=vmdk",
            },
            Rule {
                text: "a virtual disk is at most 62 TB",
                source: "https://configmax.broadcom.com/",
            },
            Rule {
                text: "virtual disks are presented with 512-byte logical sectors (512e), not 4Kn",
                source: "https://kb.vmware.com/s/article/2091600",
            },
            Rule {
                text: "Windows boots from the LSI Logic SAS (lsi_sas) or VMware Paravirtual \
                       (pvscsi) controller",
                source: "https://kb.vmware.com/s/article/1010398",
            },
        ],
    },
    Profile {
        target: Target::Hyperv,
        title: "Hyper-V",
        artifacts: &[
            Artifact {
                format: "vhdx",
                options: "",
            },
            Artifact {
                format: "vpc",
                options: "",
            },
        ],
        min_size: 512,
        max_size: Some(64 * TIB),
        size_unit: 512,
        sector_4k: Sector4k::Supported,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "create the VM as generation 2",
        rules: &[
            Rule {
                text: "generation 2 VMs boot UEFI from a SCSI VHDX only; generation 1 VMs boot \
                       BIOS from IDE (VHD or VHDX)",
                source: HYPERV_GENERATIONS,
            },
            Rule {
                text: "a VHDX holds up to 64 TB and records its logical sector size (512 or 4096)",
                source: "https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-vhdx/83e061f8-f6e2-4de1-91bd-5d518a43d477",
            },
            Rule {
                text: "generation 2 Windows boots from the synthetic SCSI controller (vmbus + \
                       storvsc)",
                source: HYPERV_GENERATIONS,
            },
        ],
    },
    Profile {
        target: Target::Kvm,
        title: "KVM",
        artifacts: &[
            Artifact {
                format: "qcow2",
                options: "",
            },
            Artifact {
                format: "raw",
                options: "",
            },
        ],
        min_size: 512,
        max_size: None,
        size_unit: 512,
        sector_4k: Sector4k::Configurable,
        boot_modes: &[BootMode::Bios, BootMode::Uefi],
        uefi_note: "boot it with UEFI firmware (OVMF)",
        rules: &[
            Rule {
                text: "QEMU's native format is qcow2",
                source: "https://www.qemu.org/docs/master/system/images.html",
            },
            Rule {
                text: "Windows boots from virtio-blk (viostor) or virtio-scsi (vioscsi) from \
                       virtio-win",
                source: "https://github.com/virtio-win/virtio-win-pkg-scripts",
            },
            Rule {
                text: "4096-byte logical sectors need logical_block_size=4096 on the virtual disk",
                source: "https://www.qemu.org/docs/master/system/qemu-block-drivers.html",
            },
        ],
    },
];

/// The profile of `target`.
pub fn profile(target: Target) -> &'static Profile {
    // PROFILES is in Target::ALL order.
    &PROFILES[Target::ALL
        .iter()
        .position(|t| *t == target)
        .unwrap_or_default()]
}

impl Profile {
    /// The artifact the target takes in `format` (registry name), if it takes that format.
    pub fn artifact(&self, format: &str) -> Option<&'static Artifact> {
        self.artifacts.iter().find(|a| a.format == format)
    }

    /// The default artifact (what `--target` writes without `-O`).
    pub fn default_artifact(&self) -> &'static Artifact {
        &self.artifacts[0]
    }

    /// The names of the formats it imports, for messages (`vpc` shown as `vpc (VHD)`).
    pub fn format_names(&self) -> String {
        self.artifacts
            .iter()
            .map(|a| match a.format {
                "vpc" => "vpc (VHD)",
                f => f,
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The virtual size the target's artifact has for a source of `size` bytes: at least
    /// [`Profile::min_size`], rounded up to [`Profile::size_unit`].
    pub fn artifact_size(&self, size: u64) -> u64 {
        let s = size.max(self.min_size);
        s.div_ceil(self.size_unit).saturating_mul(self.size_unit)
    }
}

/// The boot modes the target boots from an artifact in `format`: Hyper-V boots a VHD only in a
/// generation 1 VM, which boots BIOS only (generation 2 needs VHDX).
pub fn boot_modes_for(profile: &Profile, format: &str) -> Vec<BootMode> {
    if profile.target == Target::Hyperv && format == "vpc" {
        return vec![BootMode::Bios];
    }
    profile.boot_modes.to_vec()
}

/// What `--target` chose for an output.
#[derive(Debug, Clone)]
pub struct TargetOutput {
    /// The format and options to write.
    pub options: OutputOptions,
    /// Where the choice departs from the target's rules because `-O` or `-o` said so (each a
    /// sentence; printed as warnings, and the preflight's format check warns with them).
    pub conflicts: Vec<String>,
    /// The target, when the output is in a format it imports: its size rules apply
    /// ([`TargetOutput::output_size`]).
    pub sized_for: Option<Target>,
}

impl TargetOutput {
    /// The virtual size the output gets for a source of `size` bytes: padded with zeros to the
    /// target's smallest disk and rounded up to its unit when the output is in a format the
    /// target imports, else `size`.
    pub fn output_size(&self, size: u64) -> u64 {
        match self.sized_for {
            Some(t) => profile(t).artifact_size(size),
            None => size,
        }
    }
}

/// The output options for `target`: the explicit format (`-O`) if given, else the target's
/// default format; the target's options for that format, then the explicit `-o` lists (which
/// win), then `-c`. A format the target does not import, and an explicit option that changes
/// one the target sets, are written as asked and reported in
/// [`TargetOutput::conflicts`].
pub fn target_output(
    target: Target,
    explicit: Option<&str>,
    lists: &[String],
    compress: bool,
) -> Result<TargetOutput> {
    let p = profile(target);
    let (format_name, artifact) = match explicit {
        Some(f) => {
            let format: crate::image::Format = f.parse()?;
            (format.name(), p.artifact(format.name()))
        }
        None => {
            let a = p.default_artifact();
            (a.format, Some(a))
        }
    };
    let format: crate::image::Format = format_name.parse().map_err(|e: Error| {
        Error::InvalidArgument(format!(
            "--target {target} writes the '{format_name}' format, which this build does not \
             have ({}); choose another format with -O",
            e
        ))
    })?;
    let mut conflicts = Vec::new();
    let mut out = OutputOptions::new(format).compressed(compress);
    match artifact {
        Some(a) => {
            out = out.with_options(a.options)?;
        }
        None => conflicts.push(format!(
            "-O {format_name}: {} does not import {format_name} images (it takes {}); writing \
             {format_name} as asked",
            p.title,
            p.format_names()
        )),
    }
    for l in lists {
        out = out.with_options(l)?;
    }
    if let Some(a) = artifact {
        for (k, v) in option_pairs(a.options) {
            for l in lists {
                for (uk, uv) in option_pairs(l) {
                    if uk == k && !uv.eq_ignore_ascii_case(v) {
                        conflicts.push(format!(
                            "-o {uk}={uv} overrides --target {target}'s {k}={v}: {} expects \
                             {k}={v}; writing {uk}={uv} as asked",
                            p.title
                        ));
                    }
                }
            }
        }
    }
    out.validate()?;
    Ok(TargetOutput {
        options: out,
        conflicts,
        sized_for: artifact.map(|_| target),
    })
}

impl TargetOutput {
    /// The output the conversion of a source of `size` bytes writes, for
    /// [`PreflightOptions::output`](crate::cloud::PreflightOptions::output).
    pub fn planned(&self, size: u64) -> crate::cloud::PlannedOutput {
        let o = &self.options;
        crate::cloud::PlannedOutput {
            format: o.format.name().to_string(),
            virtual_size: self.output_size(size),
            logical_sector_size: if o.format.name() == "vhdx" {
                o.vhdx.logical_sector_size
            } else {
                512
            },
            conflicts: self.conflicts.clone(),
        }
    }
}

/// Converts `src` into a new file (or device) at `dst` as `to` says: the source padded with
/// zeros to the target's size ([`TargetOutput::output_size`]: Azure's 20 MiB minimum, whole
/// MiB or GiB), then written as [`convert_file`](crate::output::convert_file) writes it. The
/// statistics' `virtual_size` is the source's, `output_size` the output's.
pub fn convert_for_target(
    src: &dyn ImageReader,
    dst: &std::path::Path,
    to: &TargetOutput,
    convert_opts: &crate::convert::ConvertOptions,
    progress: Option<&mut crate::convert::ProgressFn<'_>>,
) -> Result<crate::convert::ConvertStats> {
    let size = src.virtual_size();
    let padded = PaddedReader::new(src, to.output_size(size));
    let mut stats = crate::output::convert_file(&padded, dst, &to.options, convert_opts, progress)?;
    stats.virtual_size = size;
    Ok(stats)
}

fn option_pairs(list: &str) -> Vec<(&str, &str)> {
    list.split(',')
        .filter_map(|i| i.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// A reader that shows `inner` followed by zeros up to `size` bytes: a source smaller than the
/// target's smallest disk (Azure's 20 MiB) is written as the larger disk.
pub struct PaddedReader<'a> {
    inner: &'a dyn ImageReader,
    size: u64,
}

impl<'a> PaddedReader<'a> {
    /// `inner` shown as `size` bytes (never smaller than it is).
    pub fn new(inner: &'a dyn ImageReader, size: u64) -> Self {
        PaddedReader {
            size: size.max(inner.virtual_size()),
            inner,
        }
    }
}

impl ImageReader for PaddedReader<'_> {
    fn format(&self) -> crate::image::Format {
        self.inner.format()
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        let inner = self.inner.virtual_size();
        if offset < inner {
            return self.inner.map(offset, max_len.min(inner - offset));
        }
        let len = max_len.min(self.size.saturating_sub(offset));
        Ok(Extent::new(offset, len, ExtentKind::Zero))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::image::check_read_range(offset, buf.len(), self.size)?;
        let inner = self.inner.virtual_size();
        let split = inner.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(split);
        if !head.is_empty() {
            self.inner.read_at(head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn info(&self) -> ImageInfo {
        let mut i = self.inner.info();
        i.virtual_size = self.size;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Format;

    #[test]
    fn names_parse() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>().unwrap(), t);
            assert_eq!(profile(t).target, t);
            assert!(!profile(t).rules.is_empty());
            for r in profile(t).rules {
                assert!(r.source.starts_with("https://"), "{t}: {}", r.source);
            }
        }
        let e = "ec2".parse::<Target>().unwrap_err().to_string();
        assert!(e.contains("aws, azure, gcp"), "{e}");
        assert_eq!("UEFI".parse::<BootMode>().unwrap(), BootMode::Uefi);
        assert!("coreboot".parse::<BootMode>().is_err());
    }

    #[test]
    fn sizes_round_and_pad() {
        let az = profile(Target::Azure);
        assert_eq!(az.artifact_size(1), 20 * MIB);
        assert_eq!(az.artifact_size(20 * MIB + 1), 21 * MIB);
        assert_eq!(az.artifact_size(64 * MIB), 64 * MIB);
        assert_eq!(profile(Target::Gcp).artifact_size(GIB + 512), 2 * GIB);
        assert_eq!(
            profile(Target::Kvm).artifact_size(3 * MIB + 512),
            3 * MIB + 512
        );
    }

    #[test]
    fn target_formats_and_conflicts() {
        let o = target_output(Target::Azure, None, &[], false).unwrap();
        assert_eq!(o.options.format, Format::Vhd);
        assert_eq!(
            o.options.vhd.subformat,
            crate::formats::vhd::VhdSubformat::Fixed
        );
        assert!(o.conflicts.is_empty());
        let o = target_output(Target::Aws, None, &[], false).unwrap();
        assert_eq!(o.options.format, Format::Vmdk);
        assert_eq!(
            o.options.vmdk.subformat,
            crate::formats::vmdk::VmdkSubformat::StreamOptimized
        );
        let o = target_output(Target::Aws, Some("ova"), &[], false).unwrap();
        assert_eq!(o.options.format, Format::Ova);
        assert!(o.conflicts.is_empty());
        for (t, f) in [
            (Target::Openstack, Format::Qcow2),
            (Target::Kvm, Format::Qcow2),
            (Target::Hyperv, Format::Vhdx),
            (Target::Vsphere, Format::Vmdk),
            (Target::Alibaba, Format::Qcow2),
            (Target::Huawei, Format::Qcow2),
        ] {
            assert_eq!(
                target_output(t, None, &[], false).unwrap().options.format,
                f
            );
        }
        // Explicit -O and -o win, and say what they break.
        let o = target_output(Target::Azure, Some("qcow2"), &[], false).unwrap();
        assert_eq!(o.options.format, Format::Qcow2);
        assert!(
            o.conflicts[0].contains("does not import qcow2"),
            "{:?}",
            o.conflicts
        );
        let o = target_output(Target::Azure, None, &["subformat=dynamic".into()], false).unwrap();
        assert_eq!(
            o.options.vhd.subformat,
            crate::formats::vhd::VhdSubformat::Dynamic
        );
        assert!(
            o.conflicts[0].contains("overrides --target azure's subformat=fixed"),
            "{:?}",
            o.conflicts
        );
        // The same value is no conflict.
        let o = target_output(Target::Azure, None, &["subformat=fixed".into()], false).unwrap();
        assert!(o.conflicts.is_empty());
        // A bad -o is an error as without --target.
        assert!(target_output(Target::Kvm, None, &["bogus=1".into()], false).is_err());
        // Hyper-V with a VHD: generation 1, BIOS only.
        assert_eq!(
            boot_modes_for(profile(Target::Hyperv), "vpc"),
            vec![BootMode::Bios]
        );
    }

    #[test]
    fn gcp_is_looked_up_by_name() {
        match target_output(Target::Gcp, None, &[], false) {
            Ok(o) => assert_eq!(o.options.format.name(), "gcp"),
            Err(e) => assert!(e.to_string().contains("'gcp' format"), "{e}"),
        }
    }

    #[test]
    fn padded_reader_reads_zeros_past_the_source() {
        let mem = crate::storage::MemStorage::from_vec(vec![7u8; 4096]);
        let src = crate::open_storage(
            std::sync::Arc::new(mem),
            &crate::OpenOptions::default().format(Format::Raw),
        )
        .unwrap();
        let p = PaddedReader::new(src.as_ref(), 8192);
        assert_eq!(p.virtual_size(), 8192);
        let mut b = vec![1u8; 1024];
        p.read_at(&mut b, 4096 - 512).unwrap();
        assert!(b[..512].iter().all(|&x| x == 7));
        assert!(b[512..].iter().all(|&x| x == 0));
        let e = p.map(4096, 1 << 20).unwrap();
        assert_eq!((e.offset, e.len, e.kind), (4096, 4096, ExtentKind::Zero));
        assert!(p.map(0, 1 << 20).unwrap().end() <= 4096);
        assert!(p.read_at(&mut b, 8192 - 512).is_err());
    }
}
