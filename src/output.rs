//! Output options (`-O FMT -o key=value,... -c`) and the writer factory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::convert::{
    ConvertOptions, ConvertStats, Progress, ProgressFn, convert, convert_to_files,
};
use crate::error::{Error, Result};
use crate::files::{
    OutputFiles, OutputTarget, Sink, folder_of, resolve_output, resolve_output_file,
};
use crate::formats::ova::{self, Firmware, OvaOptions};
use crate::formats::qcow2::header::{CompressionType, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
use crate::formats::qcow2::{Qcow2WriteOptions, Qcow2Writer};
use crate::formats::raw::{Preallocation, RawWriter};
use crate::formats::vdi::{self, VdiWriteOptions};
use crate::formats::vhd::{self, VhdSubformat, VhdWriteOptions};
use crate::formats::vhdx::{self, VhdxSubformat, VhdxWriteOptions};
use crate::formats::vmdk::{self, AdapterType, VmdkSubformat, VmdkWriteOptions};
use crate::image::{Format, ImageReader, ImageWriter, NamedWriter};
use crate::storage::{FileStorage, Storage};
use crate::util::{human_bytes, parse_size};

/// What to write: the format and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputOptions {
    /// Output format.
    pub format: Format,
    /// qcow2 options (also carries the preallocation mode used by raw).
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
    /// The keys given through [`OutputOptions::set`], so [`OutputOptions::validate`] can refuse
    /// one that means nothing with the others (`block_size` of a fixed VHD).
    given: Vec<&'static str>,
}

impl OutputOptions {
    /// Defaults for `format`.
    pub fn new(format: Format) -> Self {
        OutputOptions {
            format,
            qcow2: Qcow2WriteOptions::default(),
            vmdk: VmdkWriteOptions::default(),
            ova: OvaOptions::default(),
            vhd: VhdWriteOptions::default(),
            vhdx: VhdxWriteOptions::default(),
            vdi: VdiWriteOptions::default(),
            given: Vec::new(),
        }
    }

    fn was_given(&self, key: &str) -> bool {
        self.given.contains(&key)
    }

    /// Turns compression on or off (`-c`).
    pub fn compressed(mut self, on: bool) -> Self {
        self.qcow2.compress = on;
        self
    }

    /// Applies a qemu-img style option list, `key=value,key=value`.
    pub fn with_options(mut self, list: &str) -> Result<Self> {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!("option '{item}' is not of the form key=value"))
            })?;
            self.set(key.trim(), value.trim())?;
        }
        Ok(self)
    }

    /// Sets one option, checking it applies to the output format.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let fmt = self.format;
        if fmt == Format::Vdi {
            // The format parses its own options.
            return self.vdi.set(key, value);
        }
        let only = |formats: &[Format]| -> Result<()> {
            if formats.contains(&fmt) {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "option '{key}' does not apply to {fmt} output ({fmt} options: {})",
                    known_options(fmt)
                )))
            }
        };
        match key {
            "compat" => {
                only(&[Format::Qcow2])?;
                self.qcow2.version = match value {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "compat={other}: expected 0.10 or 1.1"
                        )));
                    }
                };
            }
            "cluster_size" => {
                only(&[Format::Qcow2])?;
                let v = parse_size(value)
                    .filter(|v| v.is_power_of_two())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "cluster_size={value}: expected a power of two from 512 to 2M"
                        ))
                    })?;
                let bits = v.trailing_zeros();
                if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
                    return Err(Error::InvalidArgument(format!(
                        "cluster_size={value}: expected a power of two from 512 to 2M"
                    )));
                }
                self.qcow2.cluster_bits = bits;
            }
            "compression_type" => {
                only(&[Format::Qcow2])?;
                self.qcow2.compression_type = match value {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "compression_type={other}: expected zlib or zstd"
                        )));
                    }
                };
            }
            "preallocation" => {
                only(&[Format::Qcow2, Format::Raw])?;
                self.qcow2.preallocation = value.parse()?;
            }
            "subformat" if fmt == Format::Vhd => {
                self.vhd.subformat = match value {
                    "dynamic" => VhdSubformat::Dynamic,
                    "fixed" => VhdSubformat::Fixed,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "subformat={other}: expected fixed or dynamic"
                        )));
                    }
                };
            }
            "subformat" if fmt == Format::Vhdx => {
                self.vhdx.subformat = match value {
                    "dynamic" => VhdxSubformat::Dynamic,
                    "fixed" => VhdxSubformat::Fixed,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "subformat={other}: expected fixed or dynamic"
                        )));
                    }
                };
            }
            "block_size" => {
                only(&[Format::Vhd, Format::Vhdx])?;
                let (min, max) = if fmt == Format::Vhd {
                    (512 * 1024, 256 << 20)
                } else {
                    (1 << 20, 256 << 20)
                };
                let v = parse_size(value)
                    .filter(|v| v.is_power_of_two() && (min..=max).contains(v))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "block_size={value}: expected a power of two from {} to {}",
                            crate::util::human_bytes(min),
                            crate::util::human_bytes(max)
                        ))
                    })? as u32;
                if fmt == Format::Vhd {
                    self.vhd.block_size = v;
                } else {
                    self.vhdx.block_size = v;
                }
            }
            "round_to_mib" => {
                only(&[Format::Vhd])?;
                self.vhd.round_to_mib = parse_on_off(key, value)?;
            }
            "logical_sector_size" | "physical_sector_size" => {
                only(&[Format::Vhdx])?;
                let v = match value {
                    "512" => 512,
                    "4096" | "4k" | "4K" => 4096,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "{key}={other}: expected 512 or 4096"
                        )));
                    }
                };
                if key == "logical_sector_size" {
                    self.vhdx.logical_sector_size = v;
                } else {
                    self.vhdx.physical_sector_size = v;
                }
            }
            "subformat" => {
                only(&[Format::Vmdk])?;
                self.vmdk.subformat = match value {
                    "streamOptimized" => VmdkSubformat::StreamOptimized,
                    "monolithicSparse" => VmdkSubformat::MonolithicSparse,
                    "monolithicFlat" => VmdkSubformat::MonolithicFlat,
                    "vmfs" => VmdkSubformat::Vmfs,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "subformat={other}: expected streamOptimized, monolithicSparse, \
                             monolithicFlat or vmfs"
                        )));
                    }
                };
            }
            "adapter_type" => {
                only(&[Format::Vmdk, Format::Ova])?;
                self.vmdk.adapter_type = match value {
                    "lsilogic" => AdapterType::LsiLogic,
                    "ide" => AdapterType::Ide,
                    "buslogic" => AdapterType::BusLogic,
                    "legacyESX" => AdapterType::LegacyEsx,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "adapter_type={other}: expected lsilogic, ide, buslogic or legacyESX"
                        )));
                    }
                };
            }
            "hwversion" => {
                only(&[Format::Vmdk, Format::Ova])?;
                self.vmdk.hw_version = value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (4..=99).contains(v))
                    .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "hwversion={value}: expected a virtual hardware version from 4 to 99"
                    ))
                })?;
            }
            "name" => {
                only(&[Format::Ova])?;
                if value.is_empty()
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(Error::InvalidArgument(format!(
                        "name={value}: use letters, digits, '-', '_' and '.' only"
                    )));
                }
                self.ova.vm_name = value.to_string();
            }
            "cpus" => {
                only(&[Format::Ova])?;
                self.ova.cpus = value
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (1..=768).contains(v))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("cpus={value}: expected 1 to 768"))
                    })?;
            }
            "memory" => {
                only(&[Format::Ova])?;
                // A plain number is MiB (as in VMware's memsize); a suffix gives the unit.
                let mib = if value.chars().all(|c| c.is_ascii_digit()) {
                    value.parse::<u64>().ok()
                } else {
                    parse_size(value).map(|b| b >> 20)
                };
                self.ova.memory_mib = mib.filter(|&m| m >= 4).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "memory={value}: expected MiB (4096) or a size with a unit (4G)"
                    ))
                })?;
            }
            "os_type" => {
                only(&[Format::Ova])?;
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(Error::InvalidArgument(format!(
                        "os_type={value}: expected a VMware guest id such as otherGuest64 or \
                         windows2019srv_64Guest"
                    )));
                }
                self.ova.os_type = value.to_string();
            }
            "firmware" => {
                only(&[Format::Ova])?;
                self.ova.firmware = match value {
                    "bios" => Firmware::Bios,
                    "efi" | "uefi" => Firmware::Efi,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "firmware={other}: expected bios or efi"
                        )));
                    }
                };
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown option '{other}' for {fmt} output (known: {})",
                    known_options(fmt)
                )));
            }
        }
        if let Some(k) = KNOWN_KEYS
            .iter()
            .find(|k| **k == key)
            .filter(|k| !self.given.contains(k))
        {
            self.given.push(k);
        }
        Ok(())
    }

    /// Checks combinations of options.
    pub fn validate(&self) -> Result<()> {
        if !self.format.can_write() {
            return Err(Error::Unsupported(format!(
                "writing {} images is not implemented yet (this build writes raw, qcow2, VMDK, OVA, VHD, VHDX and VDI)",
                self.format
            )));
        }
        if self.format != Format::Qcow2 && self.qcow2.compress {
            return Err(Error::InvalidArgument(format!(
                "{} output cannot be compressed with -c (-c is for qcow2; streamOptimized VMDK \
                 and OVA are always compressed)",
                self.format
            )));
        }
        // Options the writer would silently ignore are refused: they mean nothing with the others.
        if self.format == Format::Vhd
            && self.vhd.subformat == VhdSubformat::Fixed
            && self.was_given("block_size")
        {
            return Err(Error::InvalidArgument(
                "option 'block_size' means nothing with subformat=fixed: a fixed VHD is one \
                 run of sectors with a footer, only a dynamic VHD is made of blocks; remove \
                 block_size or use subformat=dynamic"
                    .into(),
            ));
        }
        if self.format == Format::Raw && self.qcow2.preallocation == Preallocation::Metadata {
            return Err(Error::InvalidArgument(
                "preallocation=metadata means nothing for raw output (a raw image has no \
                 metadata to preallocate); use off, falloc or full"
                    .into(),
            ));
        }
        if self.format == Format::Qcow2 {
            let q = &self.qcow2;
            if q.version == 2 && q.compression_type != CompressionType::Zlib {
                return Err(Error::InvalidArgument(
                    "compression_type=zstd needs compat=1.1 (version 2 images have only zlib)"
                        .into(),
                ));
            }
            if q.compress && q.preallocation != Preallocation::Off {
                return Err(Error::InvalidArgument(
                    "compressed images cannot be preallocated".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Every key [`OutputOptions::set`] knows.
const KNOWN_KEYS: &[&str] = &[
    "compat",
    "cluster_size",
    "compression_type",
    "preallocation",
    "subformat",
    "block_size",
    "round_to_mib",
    "logical_sector_size",
    "physical_sector_size",
    "adapter_type",
    "hwversion",
    "name",
    "cpus",
    "memory",
    "os_type",
    "firmware",
];

/// The option keys of one output format, for messages.
fn known_options(fmt: Format) -> &'static str {
    match fmt {
        Format::Raw => "preallocation",
        Format::Qcow2 => "compat, cluster_size, compression_type, preallocation",
        Format::Vmdk => "subformat, adapter_type, hwversion",
        Format::Vhd => "subformat, block_size, round_to_mib",
        Format::Vhdx => "subformat, block_size, logical_sector_size, physical_sector_size",
        Format::Ova => "name, cpus, memory, os_type, firmware, adapter_type, hwversion",
        Format::Vdi => VdiWriteOptions::KEYS,
    }
}

fn parse_on_off(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(Error::InvalidArgument(format!(
            "{key}={other}: expected on or off"
        ))),
    }
}

/// Creates the writer for `opts` over the output files of one conversion.
pub fn create_writer(
    files: &mut dyn Sink,
    size: u64,
    opts: &OutputOptions,
) -> Result<Box<dyn ImageWriter>> {
    opts.validate()?;
    Ok(match opts.format {
        Format::Raw => Box::new(RawWriter::create(
            files.main()?,
            size,
            opts.qcow2.preallocation,
        )?),
        Format::Qcow2 => Box::new(Qcow2Writer::create(files.main()?, size, &opts.qcow2)?),
        Format::Vmdk => vmdk::writer::create(files, size, &opts.vmdk)?,
        Format::Ova => ova::create_writer(files, size, &opts.vmdk, &opts.ova)?,
        Format::Vhd => vhd::writer::create(files, size, &opts.vhd)?,
        Format::Vhdx => vhdx::writer::create(files, size, &opts.vhdx)?,
        Format::Vdi => vdi::writer::create(files.main()?, size, &opts.vdi)?,
    })
}

/// Names of the files written beside the main file `target_name` for `opts` (a flat VMDK's
/// extent). Scratch files are not listed: they go to the target's folder under temporary names.
pub fn sibling_names(target_name: &str, opts: &OutputOptions) -> Vec<String> {
    match opts.format {
        Format::Vmdk
            if matches!(
                opts.vmdk.subformat,
                VmdkSubformat::MonolithicFlat | VmdkSubformat::Vmfs
            ) =>
        {
            vec![vmdk::writer::flat_extent_name(target_name)]
        }
        _ => Vec::new(),
    }
}

/// Checks, before anything is read or created, every path an output of `opts` at `target` will
/// write: the main file (through its symbolic links) and the files beside it. Returns where the
/// main output leads. A block device takes only raw output without options that mean nothing
/// there; everything but a regular file or a block device is refused (see
/// [`resolve_output`]).
pub fn check_output(target: &Path, opts: &OutputOptions) -> Result<OutputTarget> {
    opts.validate()?;
    let t = resolve_output(target)?;
    match &t {
        OutputTarget::File { path, .. } => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dir = folder_of(path);
            for sibling in sibling_names(&name, opts) {
                resolve_output_file(&dir.join(&sibling)).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "the {} output writes {sibling} beside {}: {}",
                        opts.format,
                        path.display(),
                        crate::error::Error::from(e).chain()
                    ))
                })?;
            }
        }
        OutputTarget::BlockDevice { path, .. } => {
            if opts.format != Format::Raw {
                return Err(Error::InvalidArgument(format!(
                    "is a block device: only raw output (-O raw) can be written to a block \
                     device, not {}; write the {} image to a file instead",
                    opts.format, opts.format
                ))
                .in_file(path));
            }
            if opts.qcow2.preallocation != Preallocation::Off {
                return Err(Error::InvalidArgument(
                    "is a block device: preallocation does not apply to it (every byte of the \
                     image is written, zeros included)"
                        .into(),
                )
                .in_file(path));
            }
        }
    }
    Ok(t)
}

/// Converts `src` into raw bytes written in place at the start of the block device `device`,
/// which must be at least as large as the source: data is written, zero and unallocated ranges
/// are made to read as zeros (the device holds old data), the device is synced at the end. The
/// bytes past the image are left as they were ([`ConvertStats::untouched_tail`]).
pub fn convert_to_device(
    src: &dyn ImageReader,
    device: &Path,
    convert_opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    let size = src.virtual_size();
    // Written in place: another diskconv process writing the device is refused (Busy).
    let _lock = crate::files::ImageLock::acquire(device)?;
    let storage = FileStorage::open_block_device_for_writing(device)
        .map_err(|e| Error::io("opening the block device for writing", e).in_file(device))?;
    let dev_size = storage
        .len()
        .map_err(|e| Error::io("reading the size of the block device", e).in_file(device))?;
    if dev_size < size {
        return Err(Error::InvalidArgument(format!(
            "the block device holds {dev_size} bytes ({}), less than the {size} bytes ({}) of \
             the source",
            human_bytes(dev_size),
            human_bytes(size)
        ))
        .in_file(device));
    }
    let w = RawWriter::in_place(Arc::new(storage), size).map_err(|e| e.in_file(device))?;
    let mut stats = convert(src, Box::new(w), convert_opts, progress).map_err(|e| match e {
        Error::Cancelled => e,
        e => e.in_file(device),
    })?;
    stats.untouched_tail = dev_size - size;
    Ok(stats)
}

/// Converts `src` into a new file at `target` in the format `opts` names, or in place onto a
/// block device (raw only).
///
/// Every output path is checked first ([`check_output`]), before the source is read. A file
/// output is written under a temporary name beside the final file (the file a symbolic link
/// leads to) and renamed into place only on success; stale temporaries of the same output left
/// by a killed run are removed. A block device is written in place ([`convert_to_device`]).
pub fn convert_file(
    src: &dyn ImageReader,
    target: &Path,
    opts: &OutputOptions,
    convert_opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    let size = src.virtual_size();
    match check_output(target, opts)? {
        OutputTarget::BlockDevice { path, size: dev } => {
            if dev < size {
                return Err(Error::InvalidArgument(format!(
                    "the block device holds {dev} bytes ({}), less than the {size} bytes ({}) \
                     of the source",
                    human_bytes(dev),
                    human_bytes(size)
                ))
                .in_file(target));
            }
            convert_to_device(src, &path, convert_opts, progress)
        }
        OutputTarget::File { path, .. } => convert_to_files(
            src,
            &path,
            |files| create_writer(files, size, opts),
            convert_opts,
            progress,
        ),
    }
}

/// The output name of disk `index` (from 1) when several disks are written from one name:
/// `-disk<index>` before the extension (`web01.qcow2` -> `web01-disk2.qcow2`, `web01` ->
/// `web01-disk2`), in the same folder.
pub fn disk_output_path(target: &Path, index: usize) -> PathBuf {
    let stem = target
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match target.extension() {
        Some(ext) => format!("{stem}-disk{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-disk{index}"),
    };
    target.with_file_name(name)
}

/// Converts several sources, each into its own new file, all or nothing: every output is
/// written under a temporary name, and only when every conversion succeeded are they renamed
/// into place (in order). On any error nothing appears under a final name and existing files
/// are left as they were. (The renames themselves are not atomic as a group: a rename that
/// fails after others succeeded, which a same-folder rename does not do in practice, leaves
/// the earlier ones in place.) `progress` sees the disks as one: `total` is the sum of their
/// sizes.
pub fn convert_files(
    jobs: &[(&dyn ImageReader, &Path)],
    opts: &OutputOptions,
    convert_opts: &ConvertOptions,
    mut progress: Option<&mut ProgressFn<'_>>,
) -> Result<Vec<ConvertStats>> {
    opts.validate()?;
    // Every output path is checked before anything is read: the same checks as one output's,
    // and the outputs are files (a block device takes one disk: convert it on its own).
    let mut paths: Vec<PathBuf> = Vec::with_capacity(jobs.len());
    for (_, target) in jobs {
        let path = match check_output(target, opts)? {
            OutputTarget::File { path, .. } => path,
            OutputTarget::BlockDevice { .. } => {
                return Err(Error::InvalidArgument(
                    "is a block device; several disks are written to files (convert one disk \
                     to the device with --disk N)"
                        .into(),
                )
                .in_file(*target));
            }
        };
        if paths.contains(&path) {
            return Err(Error::InvalidArgument(format!(
                "output {} is named twice",
                target.display()
            )));
        }
        paths.push(path);
    }
    let total: u64 = jobs.iter().map(|(r, _)| r.virtual_size()).sum();
    let mut done_before = 0u64;
    let mut pending = Vec::with_capacity(jobs.len());
    let mut stats = Vec::with_capacity(jobs.len());
    for ((src, target), path) in jobs.iter().zip(&paths) {
        let size = src.virtual_size();
        let mut files = OutputFiles::new(path);
        let writer = create_writer(&mut files, size, opts).map_err(|e| e.in_file(*target))?;
        let writer = Box::new(NamedWriter::new(writer, *target));
        let mut cb = |p: Progress| {
            if let Some(f) = progress.as_mut() {
                f(Progress {
                    done: done_before + p.done,
                    total,
                });
            }
        };
        let mut st = convert(*src, writer, convert_opts, Some(&mut cb))?;
        st.stale_temporaries_removed = files.stale_removed();
        done_before += size;
        stats.push(st);
        pending.push(files);
    }
    // A cancellation that came while the last writer finished still leaves every target as it
    // was.
    if convert_opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Relaxed))
    {
        return Err(Error::Cancelled);
    }
    for files in pending {
        files.commit()?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_output_names() {
        assert_eq!(
            disk_output_path(Path::new("out/web01.qcow2"), 2),
            Path::new("out/web01-disk2.qcow2")
        );
        assert_eq!(
            disk_output_path(Path::new("web01"), 1),
            Path::new("web01-disk1")
        );
    }

    #[test]
    fn parses_qemu_style_options() {
        let o = OutputOptions::new(Format::Qcow2)
            .with_options("compat=0.10,cluster_size=4k,preallocation=metadata")
            .unwrap();
        assert_eq!(o.qcow2.version, 2);
        assert_eq!(o.qcow2.cluster_bits, 12);
        assert_eq!(o.qcow2.preallocation, Preallocation::Metadata);
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
}
