//! Output options (`-O FMT -o key=value,... -c`): the format of an output and the typed write
//! options of every format. Each format parses and checks its own options (`set` and
//! `validate` of its options type, in its folder); [`OutputOptions::set`] and
//! [`OutputOptions::validate`] hand a key to the output format's row in the
//! [registry](crate::formats::registry), which knows which options type it uses.

use crate::formats::Format;
use crate::formats::gcp::GcpWriteOptions;
use crate::formats::ova::OvaOptions;
use crate::formats::qcow2::Qcow2WriteOptions;
use crate::formats::raw::RawWriteOptions;
use crate::formats::vdi::VdiWriteOptions;
use crate::formats::vhd::VhdWriteOptions;
use crate::formats::vhdx::VhdxWriteOptions;
use crate::formats::vmdk::VmdkWriteOptions;

/// What to write: the format and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputOptions {
    /// Output format.
    pub format: Format,
    /// Raw options.
    pub raw: RawWriteOptions,
    /// qcow2 options (with `-c`, [`OutputOptions::compressed`]).
    pub qcow2: Qcow2WriteOptions,
    /// VMDK options (also used for the disk inside an OVA).
    pub vmdk: VmdkWriteOptions,
    /// OVA options (the virtual machine the OVF describes).
    pub ova: OvaOptions,
    /// VHD options.
    pub vhd: VhdWriteOptions,
    /// VHDX options.
    pub vhdx: VhdxWriteOptions,
    /// VDI options.
    pub vdi: VdiWriteOptions,
    /// GCP tarball options.
    pub gcp: GcpWriteOptions,
    /// The keys given through [`OutputOptions::set`], so [`OutputOptions::validate`] can refuse
    /// one that means nothing with the others (`block_size` of a fixed VHD).
    pub(crate) given: Vec<String>,
}

impl OutputOptions {
    /// Defaults for `format`.
    pub fn new(format: Format) -> Self {
        OutputOptions {
            format,
            raw: RawWriteOptions::default(),
            qcow2: Qcow2WriteOptions::default(),
            vmdk: VmdkWriteOptions::default(),
            ova: OvaOptions::default(),
            vhd: VhdWriteOptions::default(),
            vhdx: VhdxWriteOptions::default(),
            vdi: VdiWriteOptions::default(),
            gcp: GcpWriteOptions::default(),
            given: Vec::new(),
        }
    }

    /// Whether `key` was given through [`OutputOptions::set`].
    pub fn was_given(&self, key: &str) -> bool {
        self.given.iter().any(|k| k == key)
    }

    /// Turns compression on or off (`-c`).
    pub fn compressed(mut self, on: bool) -> Self {
        self.qcow2.compress = on;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::raw::Preallocation;

    #[test]
    fn parses_qemu_style_options() {
        let o = OutputOptions::new(Format::Qcow2)
            .with_options("compat=0.10,cluster_size=4k,preallocation=metadata")
            .unwrap();
        assert_eq!(o.qcow2.version, 2);
        assert_eq!(o.qcow2.cluster_bits, 12);
        assert_eq!(o.qcow2.preallocation, Preallocation::Metadata);
        assert_eq!(o.raw.preallocation, Preallocation::Off);
        let e = OutputOptions::new(Format::Raw)
            .with_options("cluster_size=64k")
            .unwrap_err();
        assert!(e.to_string().contains("does not apply to raw"), "{e}");
        assert!(
            OutputOptions::new(Format::Qcow2)
                .with_options("cluster_size=3M")
                .is_err()
        );
        assert!(
            OutputOptions::new(Format::Qcow2)
                .with_options("bogus=1")
                .is_err()
        );
        let o = OutputOptions::new(Format::Qcow2)
            .with_options("compat=0.10,compression_type=zstd")
            .unwrap();
        assert!(o.validate().is_err());
    }

    /// Regression: `-o subformat=fixed,block_size=2M` for vpc was accepted and the block size
    /// silently ignored; options that mean nothing with the others are refused, in any order
    /// and across several lists.
    #[test]
    fn refuses_options_that_mean_nothing() {
        for lists in [
            &["subformat=fixed,block_size=2M"][..],
            &["block_size=2M,subformat=fixed"],
            &["block_size=2M", "subformat=fixed"],
        ] {
            let mut o = OutputOptions::new(Format::Vhd);
            for l in lists {
                o = o.with_options(l).unwrap();
            }
            let e = o.validate().unwrap_err().to_string();
            assert!(
                e.contains("'block_size' means nothing with subformat=fixed"),
                "{lists:?}: {e}"
            );
        }
        // The default block size of a fixed VHD is no option given.
        let o = OutputOptions::new(Format::Vhd)
            .with_options("subformat=fixed,round_to_mib=off")
            .unwrap();
        o.validate().unwrap();
        let o = OutputOptions::new(Format::Vhd)
            .with_options("subformat=dynamic,block_size=2M")
            .unwrap();
        o.validate().unwrap();
        // A fixed VHDX is made of blocks (its BAT maps each one): block_size keeps a meaning.
        let o = OutputOptions::new(Format::Vhdx)
            .with_options("subformat=fixed,block_size=8M")
            .unwrap();
        o.validate().unwrap();
        assert_eq!(o.vhdx.block_size, 8 << 20);
        // Raw has no metadata to preallocate.
        let e = OutputOptions::new(Format::Raw)
            .with_options("preallocation=metadata")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("preallocation=metadata means nothing"), "{e}");
        OutputOptions::new(Format::Raw)
            .with_options("preallocation=falloc")
            .unwrap()
            .validate()
            .unwrap();
        // Unknown keys name the format's own list.
        let e = OutputOptions::new(Format::Vhd)
            .with_options("cluster_size=64k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not apply to vpc"), "{e}");
        let e = OutputOptions::new(Format::Vhd)
            .with_options("bogus=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("subformat, block_size, round_to_mib"), "{e}");
    }

    fn err(format: &str, list: &str) -> String {
        OutputOptions::new(format.parse().unwrap())
            .with_options(list)
            .unwrap_err()
            .to_string()
    }

    /// Every format: the message of a key no format knows, of a key of another format, and of
    /// a bad value, byte for byte as before the parsers moved into the format folders.
    #[test]
    fn unknown_keys_and_bad_values_of_every_format() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "raw",
                "bogus=1",
                "unknown option 'bogus' for raw output (known: preallocation)",
            ),
            (
                "raw",
                "subformat=fixed",
                "option 'subformat' does not apply to raw output (raw options: preallocation)",
            ),
            (
                "qcow2",
                "bogus=1",
                "unknown option 'bogus' for qcow2 output (known: compat, cluster_size, \
                 compression_type, preallocation)",
            ),
            (
                "qcow2",
                "static=on",
                "unknown option 'static' for qcow2 output (known: compat, cluster_size, \
                 compression_type, preallocation)",
            ),
            ("qcow2", "compat=2", "compat=2: expected 0.10 or 1.1"),
            (
                "qcow2",
                "cluster_size=256",
                "cluster_size=256: expected a power of two from 512 to 2M",
            ),
            (
                "qcow2",
                "compression_type=lz4",
                "compression_type=lz4: expected zlib or zstd",
            ),
            (
                "vmdk",
                "bogus=1",
                "unknown option 'bogus' for vmdk output (known: subformat, adapter_type, \
                 hwversion)",
            ),
            (
                "vmdk",
                "name=x",
                "option 'name' does not apply to vmdk output (vmdk options: subformat, \
                 adapter_type, hwversion)",
            ),
            (
                "vmdk",
                "subformat=twoGbMaxExtentSparse",
                "subformat=twoGbMaxExtentSparse: expected streamOptimized, monolithicSparse, \
                 monolithicFlat or vmfs",
            ),
            (
                "vmdk",
                "adapter_type=scsi",
                "adapter_type=scsi: expected lsilogic, ide, buslogic or legacyESX",
            ),
            (
                "vmdk",
                "hwversion=3",
                "hwversion=3: expected a virtual hardware version from 4 to 99",
            ),
            (
                "vpc",
                "bogus=1",
                "unknown option 'bogus' for vpc output (known: subformat, block_size, \
                 round_to_mib)",
            ),
            (
                "vpc",
                "subformat=x",
                "subformat=x: expected fixed or dynamic",
            ),
            (
                "vpc",
                "block_size=256k",
                "block_size=256k: expected a power of two from 512 KiB to 256 MiB",
            ),
            (
                "vpc",
                "round_to_mib=maybe",
                "round_to_mib=maybe: expected on or off",
            ),
            (
                "vhdx",
                "bogus=1",
                "unknown option 'bogus' for vhdx output (known: subformat, block_size, \
                 logical_sector_size, physical_sector_size)",
            ),
            (
                "vhdx",
                "subformat=x",
                "subformat=x: expected fixed or dynamic",
            ),
            (
                "vhdx",
                "block_size=512k",
                "block_size=512k: expected a power of two from 1 MiB to 256 MiB",
            ),
            (
                "vhdx",
                "physical_sector_size=1024",
                "physical_sector_size=1024: expected 512 or 4096",
            ),
            (
                "ova",
                "bogus=1",
                "unknown option 'bogus' for ova output (known: name, cpus, memory, os_type, \
                 firmware, adapter_type, hwversion)",
            ),
            (
                "ova",
                "subformat=streamOptimized",
                "option 'subformat' does not apply to ova output (ova options: name, cpus, \
                 memory, os_type, firmware, adapter_type, hwversion)",
            ),
            (
                "ova",
                "name=a b",
                "name=a b: use letters, digits, '-', '_' and '.' only",
            ),
            ("ova", "cpus=0", "cpus=0: expected 1 to 768"),
            (
                "ova",
                "memory=1",
                "memory=1: expected MiB (4096) or a size with a unit (4G)",
            ),
            (
                "ova",
                "os_type=a-b",
                "os_type=a-b: expected a VMware guest id such as otherGuest64 or \
                 windows2019srv_64Guest",
            ),
            (
                "ova",
                "firmware=coreboot",
                "firmware=coreboot: expected bios or efi",
            ),
            (
                "ova",
                "hwversion=100",
                "hwversion=100: expected a virtual hardware version from 4 to 99",
            ),
            (
                "vdi",
                "compat=1.1",
                "option 'compat' does not apply to vdi output (vdi options: subformat, static)",
            ),
            (
                "vdi",
                "subformat=x",
                "subformat=x: expected dynamic or fixed",
            ),
            ("vdi", "static=maybe", "static=maybe: expected on or off"),
            (
                "raw",
                "preallocation=some",
                "unknown preallocation mode 'some' (expected off, metadata, falloc or full)",
            ),
            (
                "qcow2",
                "nokey",
                "option 'nokey' is not of the form key=value",
            ),
        ];
        for (format, list, want) in cases {
            let e = err(format, list);
            assert!(e.contains(want), "-O {format} -o {list}: {e}");
        }
    }

    #[test]
    fn each_format_takes_its_own_options() {
        let o = OutputOptions::new(Format::Ova)
            .with_options("name=web01,cpus=4,memory=8G,adapter_type=ide,hwversion=13")
            .unwrap();
        assert_eq!(o.ova.vm_name, "web01");
        assert_eq!(o.ova.memory_mib, 8192);
        assert_eq!(o.vmdk.hw_version, 13);
        let o = OutputOptions::new(Format::Vdi)
            .with_options("static=on")
            .unwrap();
        assert_eq!(o.vdi.subformat, crate::formats::vdi::VdiSubformat::Fixed);
        let o = OutputOptions::new(Format::Vhdx)
            .with_options("logical_sector_size=4k,block_size=64M")
            .unwrap();
        assert_eq!(
            (o.vhdx.logical_sector_size, o.vhdx.block_size),
            (4096, 64 << 20)
        );
        // -c is qcow2's only.
        let e = OutputOptions::new(Format::Vhd)
            .compressed(true)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("vpc output cannot be compressed with -c"), "{e}");
        let e = OutputOptions::new(Format::Qcow2)
            .with_options("preallocation=full")
            .unwrap()
            .compressed(true)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("compressed images cannot be preallocated"),
            "{e}"
        );
    }
}
