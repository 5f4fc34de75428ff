//! The format registry: one row per format, and the dispatch everything above the formats goes
//! through (detecting, opening, creating an output, opening a sync target, checking).
//!
//! A row is a table of plain function pointers rather than a trait object per format: every
//! entry is optional (raw has nothing to check, OVA cannot be updated in place), a row is a
//! `const` that reads as a description of the format, and no format has to implement anything
//! it does not have. The formats know nothing of this module; it imports them all, so nothing
//! inside a format folder may import it (the images a format opens itself go through the
//! [`ImageOpener`] of its [`OpenContext`], which is this registry's [`REGISTRY`]).
//!
//! Adding a format: a folder under `src/formats/`, a variant of [`Format`], a row in
//! [`ROWS`] and, when it takes `-o` options, a field in
//! [`OutputOptions`](crate::formats::options::OutputOptions).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::files::Sink;
use crate::formats::check::CheckReport;
use crate::formats::options::OutputOptions;
use crate::formats::{Format, gcp, ova, qcow2, raw, vdi, vhd, vhdx, vmdk};
use crate::image::{ImageReader, ImageUpdater, ImageWriter};
use crate::reference::{ImageOpener, OpenContext};
use crate::storage::Storage;

/// Opens a reader on the image in `storage` (found at `path` when it has one); the `&str` is
/// the internal snapshot to read, given only to a format whose row says it has snapshots.
pub type OpenReaderFn = fn(
    Arc<dyn Storage>,
    Option<&Path>,
    &OpenContext<'_>,
    Option<&str>,
) -> Result<Box<dyn ImageReader>>;

/// Opens every disk of a package.
pub type OpenDisksFn =
    fn(Arc<dyn Storage>, Option<&Path>, &OpenContext<'_>) -> Result<Vec<Box<dyn ImageReader>>>;

/// Creates a writer of a `u64`-byte disk over the output files of one conversion.
pub type CreateWriterFn = fn(&mut dyn Sink, u64, &OutputOptions) -> Result<Box<dyn ImageWriter>>;

/// The files an output writes beside its main file (named from the main file's name).
pub type SiblingNamesFn = fn(&str, &OutputOptions) -> Vec<String>;

/// Opens the image at a path read-write for in-place updates.
pub type OpenUpdaterFn = fn(&Path) -> Result<Box<dyn ImageUpdater>>;

/// Checks the structure of the image in `storage`, read-only; the `bool` asks for the deep
/// check (every compressed grain of a VMDK inflated).
pub type CheckFn =
    fn(Arc<dyn Storage>, Option<&Path>, &OpenContext<'_>, bool) -> Result<CheckReport>;

/// Sets one `-o key=value` option; `Ok(false)` when the key is not the format's.
pub type SetOptionFn = fn(&mut OutputOptions, &str, &str) -> Result<bool>;

/// Everything diskconv knows how to do with one format.
#[derive(Debug, Clone, Copy)]
pub struct FormatRow {
    /// The format.
    pub format: Format,
    /// Names accepted for it by `-f` / `-O` besides [`Format::name`] (lower case).
    pub aliases: &'static [&'static str],
    /// Extensions (lower case, no dot) of an output file's name that ask for this format.
    pub extensions: &'static [&'static str],
    /// Recognises the format from the first sector (up to 512 bytes) and the file's length.
    /// Rows are probed in their order in [`ROWS`].
    pub probe: Option<fn(&[u8], u64) -> bool>,
    /// Recognises the format from the last sector, once no row recognised the first one.
    pub probe_tail: Option<fn(&[u8; 512]) -> bool>,
    /// Whether images of this format hold internal snapshots a reader can select.
    pub snapshots: bool,
    /// Opens a reader.
    pub open_reader: Option<OpenReaderFn>,
    /// Opens every disk of a package (a format that holds a virtual machine, not a disk).
    pub open_disks: Option<OpenDisksFn>,
    /// Creates a writer.
    pub create_writer: Option<CreateWriterFn>,
    /// The files a writer creates beside its main file.
    pub sibling_names: Option<SiblingNamesFn>,
    /// Opens an updater (the format can be a sync target).
    pub open_updater: Option<OpenUpdaterFn>,
    /// The `-o` options a new sync target of this format is created with (a variant the
    /// updater can update).
    pub sync_target_options: &'static str,
    /// Checks the structure.
    pub check: Option<CheckFn>,
    /// The `-o` keys the format takes, for messages.
    pub option_keys: &'static [&'static str],
    /// Sets one `-o key=value` option in the format's own options type; `Ok(false)` when the
    /// key is not one of the format's.
    pub set_option: SetOptionFn,
    /// Whether the format's parser reports unknown keys itself (its keys are then not
    /// reported to other formats as "does not apply").
    pub own_option_errors: bool,
    /// Checks combinations of the format's options.
    pub validate_options: fn(&OutputOptions) -> Result<()>,
    /// Whether `-c` (compress) applies.
    pub compress: bool,
}

/// Every format, in the order their probes run.
pub static ROWS: &[FormatRow] = &[
    FormatRow {
        format: Format::Raw,
        aliases: &["img"],
        extensions: &["raw"],
        probe: None,
        probe_tail: None,
        snapshots: false,
        open_reader: Some(|s, p, _, _| Ok(Box::new(raw::RawReader::new(s, p)?))),
        open_disks: None,
        create_writer: Some(|files, size, o| {
            Ok(Box::new(raw::RawWriter::create(
                files.main()?,
                size,
                o.raw.preallocation,
            )?))
        }),
        sibling_names: None,
        open_updater: Some(|p| Ok(Box::new(raw::RawUpdater::open(p)?))),
        sync_target_options: "",
        check: None,
        option_keys: raw::RawWriteOptions::KEYS,
        set_option: |o, k, v| o.raw.set(k, v),
        own_option_errors: false,
        validate_options: |o| o.raw.validate(),
        compress: false,
    },
    FormatRow {
        format: Format::Qcow2,
        aliases: &[],
        extensions: &["qcow2", "qcow"],
        probe: Some(qcow2::probe),
        probe_tail: None,
        snapshots: true,
        open_reader: Some(|s, p, c, snap| Ok(Box::new(qcow2::Qcow2Reader::open(s, p, c, snap)?))),
        open_disks: None,
        create_writer: Some(|files, size, o| {
            Ok(Box::new(qcow2::Qcow2Writer::create(
                files.main()?,
                size,
                &o.qcow2,
            )?))
        }),
        sibling_names: None,
        open_updater: Some(|p| Ok(Box::new(qcow2::update::Qcow2Updater::open(p)?))),
        sync_target_options: "",
        check: Some(|s, _, _, _| qcow2::check(s.as_ref())),
        option_keys: qcow2::Qcow2WriteOptions::KEYS,
        set_option: |o, k, v| o.qcow2.set(k, v),
        own_option_errors: false,
        validate_options: |o| o.qcow2.validate(),
        compress: true,
    },
    FormatRow {
        format: Format::Vmdk,
        aliases: &[],
        extensions: &["vmdk"],
        probe: Some(vmdk::probe),
        probe_tail: None,
        snapshots: false,
        open_reader: Some(|s, p, c, _| Ok(Box::new(vmdk::VmdkReader::open(s, p, c)?))),
        open_disks: None,
        create_writer: Some(|files, size, o| vmdk::writer::create(files, size, &o.vmdk)),
        sibling_names: Some(|name, o| vmdk::writer::sibling_names(name, &o.vmdk)),
        open_updater: Some(|p| Ok(Box::new(vmdk::update::VmdkUpdater::open(p)?))),
        sync_target_options: "subformat=monolithicSparse",
        check: Some(|s, p, c, deep| {
            vmdk::check::check(s, p, c, &vmdk::check::VmdkCheckOptions { deep })
        }),
        option_keys: vmdk::VmdkWriteOptions::KEYS,
        set_option: |o, k, v| o.vmdk.set(k, v),
        own_option_errors: false,
        validate_options: |_| Ok(()),
        compress: false,
    },
    FormatRow {
        format: Format::Vhdx,
        aliases: &[],
        extensions: &["vhdx"],
        probe: Some(vhdx::probe),
        probe_tail: None,
        snapshots: false,
        open_reader: Some(|s, p, c, _| Ok(Box::new(vhdx::VhdxReader::open(s, p, c)?))),
        open_disks: None,
        create_writer: Some(|files, size, o| vhdx::writer::create(files, size, &o.vhdx)),
        sibling_names: None,
        open_updater: Some(|p| Ok(Box::new(vhdx::update::VhdxUpdater::open(p)?))),
        sync_target_options: "",
        check: Some(|s, _, _, _| vhdx::check::check(s.as_ref())),
        option_keys: vhdx::VhdxWriteOptions::KEYS,
        set_option: |o, k, v| o.vhdx.set(k, v),
        own_option_errors: false,
        validate_options: |_| Ok(()),
        compress: false,
    },
    FormatRow {
        format: Format::Vhd,
        aliases: &["vhd"],
        extensions: &["vhd", "vpc"],
        probe: Some(vhd::probe),
        probe_tail: Some(vhd::probe_tail),
        snapshots: false,
        open_reader: Some(|s, p, c, _| Ok(Box::new(vhd::VhdReader::open(s, p, c)?))),
        open_disks: None,
        create_writer: Some(|files, size, o| vhd::writer::create(files, size, &o.vhd)),
        sibling_names: None,
        open_updater: Some(|p| Ok(Box::new(vhd::update::VhdUpdater::open(p)?))),
        sync_target_options: "",
        check: Some(|s, p, c, _| vhd::check::check(s.as_ref(), p, c)),
        option_keys: vhd::VhdWriteOptions::KEYS,
        set_option: |o, k, v| o.vhd.set(k, v),
        own_option_errors: false,
        validate_options: |o| o.vhd.validate(o.was_given("block_size")),
        compress: false,
    },
    FormatRow {
        format: Format::Ova,
        aliases: &[],
        extensions: &["ova"],
        probe: Some(ova::probe),
        probe_tail: None,
        snapshots: false,
        open_reader: Some(|s, p, c, _| Ok(Box::new(ova::open_ova(s, p, c)?))),
        open_disks: Some(|s, p, c| {
            Ok(ova::open_ova_disks(s, p, c)?
                .into_iter()
                .map(|d| Box::new(d) as Box<dyn ImageReader>)
                .collect())
        }),
        create_writer: Some(|files, size, o| ova::create_writer(files, size, &o.vmdk, &o.ova)),
        sibling_names: None,
        open_updater: None,
        sync_target_options: "",
        check: None,
        // The VM's options, then the VMDK options of the disk inside.
        option_keys: &[
            "name",
            "cpus",
            "memory",
            "os_type",
            "firmware",
            "adapter_type",
            "hwversion",
        ],
        set_option: |o, k, v| match k {
            "adapter_type" | "hwversion" => o.vmdk.set(k, v),
            _ => o.ova.set(k, v),
        },
        own_option_errors: false,
        validate_options: |_| Ok(()),
        compress: false,
    },
    FormatRow {
        format: Format::Vdi,
        aliases: &[],
        extensions: &["vdi"],
        probe: Some(|head, _| vdi::probe(head)),
        probe_tail: None,
        snapshots: false,
        open_reader: Some(|s, p, c, _| Ok(Box::new(vdi::VdiReader::open(s, p, c)?))),
        open_disks: None,
        create_writer: Some(|files, size, o| vdi::writer::create(files.main()?, size, &o.vdi)),
        sibling_names: None,
        open_updater: Some(|p| Ok(Box::new(vdi::VdiUpdater::open(p)?))),
        sync_target_options: "",
        check: Some(|s, p, c, _| vdi::check::check(s.as_ref(), p, c)),
        option_keys: &["subformat", "static"],
        // The VDI parser reports unknown keys itself.
        set_option: |o, k, v| o.vdi.set(k, v).map(|()| true),
        own_option_errors: true,
        validate_options: |_| Ok(()),
        compress: false,
    },
    FormatRow {
        format: Format::Gcp,
        aliases: &[],
        extensions: &["tar.gz"],
        // A gzip stream is recognised so that it is refused by name, not read as a raw disk.
        probe: Some(|head, _| gcp::probe(head)),
        probe_tail: None,
        snapshots: false,
        open_reader: None,
        open_disks: None,
        create_writer: Some(|files, size, o| {
            Ok(Box::new(gcp::GcpWriter::create(
                files.main()?,
                size,
                &o.gcp,
            )?))
        }),
        sibling_names: None,
        open_updater: None,
        sync_target_options: "",
        check: None,
        option_keys: gcp::GcpWriteOptions::KEYS,
        set_option: |o, k, v| o.gcp.set(k, v),
        own_option_errors: false,
        validate_options: |_| Ok(()),
        compress: false,
    },
];

/// The row of `format`.
pub fn row(format: Format) -> &'static FormatRow {
    ROWS.iter()
        .find(|r| r.format == format)
        .unwrap_or_else(|| unreachable!("every format has a row in the registry"))
}

impl Format {
    /// The registry row of this format: what diskconv can do with it.
    pub fn row(self) -> &'static FormatRow {
        row(self)
    }

    /// Whether this version can read the format.
    pub fn can_read(self) -> bool {
        row(self).open_reader.is_some()
    }

    /// Whether this version can write the format.
    pub fn can_write(self) -> bool {
        row(self).create_writer.is_some()
    }

    /// Whether the format is a package holding a virtual machine (its disks opened with
    /// [`open_disks`](crate::open_disks)) rather than one disk.
    pub fn is_package(self) -> bool {
        row(self).open_disks.is_some()
    }

    /// Whether an existing image of this format can be updated in place (a sync target).
    pub fn can_update(self) -> bool {
        row(self).open_updater.is_some()
    }

    /// The format an output file's name asks for, by its extension (case ignored): `.qcow2`
    /// and `.qcow` qcow2, `.vmdk` vmdk, `.vhd` and `.vpc` vpc, `.vhdx` vhdx, `.ova` ova, `.vdi`
    /// vdi, `.raw` raw, `.tar.gz` gcp. `None` for any other extension and for none: `.img` and `.bin` say
    /// nothing either, since cloud images named `.img` are as often qcow2 as raw.
    ///
    /// This is the one extension rule of every output (a converted file, a new sync target):
    /// see [`Format::for_output`]. Inputs are never detected by name.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        // An extension may have several parts (`tar.gz`); the name needs a stem before it.
        ROWS.iter()
            .find(|r| {
                r.extensions.iter().any(|ext| {
                    name.len() > ext.len() + 1
                        && name.ends_with(ext)
                        && name.as_bytes()[name.len() - ext.len() - 1] == b'.'
                })
            })
            .map(|r| r.format)
    }

    /// The format of a new output file: `explicit` when given, else the one its extension asks
    /// for ([`Format::from_extension`]), else raw (qemu-img's default).
    pub fn for_output(path: &Path, explicit: Option<Format>) -> Format {
        format_for_output(path, explicit)
    }

    /// When `format` was chosen explicitly for an output at `path` whose extension asks for
    /// another format, that other format (worth a warning: `x.qcow2` holding a raw image is
    /// a trap for whoever opens it by name).
    pub fn extension_mismatch(path: &Path, format: Format) -> Option<Format> {
        Format::from_extension(path).filter(|&e| e != format)
    }
}

/// The format of a new output file: `explicit` when given, else the one its extension asks for
/// ([`Format::from_extension`]), else raw (qemu-img's default). The one rule of `convert` and
/// of a new `sync` target.
pub fn format_for_output(path: &Path, explicit: Option<Format>) -> Format {
    explicit
        .or_else(|| Format::from_extension(path))
        .unwrap_or(Format::Raw)
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let name = s.to_ascii_lowercase();
        ROWS.iter()
            .find(|r| r.format.name() == name || r.aliases.contains(&name.as_str()))
            .map(|r| r.format)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown format '{name}' (known: raw, qcow2, vmdk, vpc/vhd, vhdx, vdi, ova, gcp)"
                ))
            })
    }
}

/// Detects the format of an image from its first and last sectors.
///
/// Anything not recognised is raw. A raw disk that happens to start with a known magic (a guest
/// may write anything into its disk) must be opened with the format forced to raw.
pub fn detect(storage: &dyn Storage) -> Result<Format> {
    let len = storage
        .len()
        .map_err(|e| Error::io("reading the file size", e))?;
    let mut head = [0u8; 512];
    let n = storage
        .read_at(&mut head, 0)
        .map_err(|e| Error::io("reading the first sector", e))?;
    let head = &head[..n];
    if let Some(r) = ROWS
        .iter()
        .find(|r| r.probe.is_some_and(|probe| probe(head, len)))
    {
        return Ok(r.format);
    }
    if len >= 512 {
        let mut tail = [0u8; 512];
        storage
            .read_exact_at(&mut tail, len - 512)
            .map_err(|e| Error::io("reading the last sector", e))?;
        if let Some(r) = ROWS
            .iter()
            .find(|r| r.probe_tail.is_some_and(|probe| probe(&tail)))
        {
            return Ok(r.format);
        }
    }
    Ok(Format::Raw)
}

/// The opener of every public entry point: detects with [`detect`] and opens with the rows.
#[derive(Debug)]
pub struct Registry;

/// The registry as the [`ImageOpener`] of an [`OpenContext`].
pub static REGISTRY: Registry = Registry;

impl ImageOpener for Registry {
    fn detect(&self, storage: &dyn Storage) -> Result<Format> {
        detect(storage)
    }

    fn open(
        &self,
        ctx: &OpenContext<'_>,
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        format: Option<Format>,
        snapshot: Option<&str>,
    ) -> Result<Box<dyn ImageReader>> {
        let format = match format {
            Some(f) => f,
            None => detect(storage.as_ref())?,
        };
        let r = row(format);
        if snapshot.is_some() && !r.snapshots {
            return Err(Error::InvalidArgument(format!(
                "internal snapshots exist only in qcow2 images, this is {format}"
            )));
        }
        let open = r.open_reader.ok_or_else(|| {
            Error::Unsupported(format!("reading {format} images is not implemented"))
        })?;
        open(storage, path, ctx, snapshot)
    }

    fn open_member(
        &self,
        ctx: &OpenContext<'_>,
        storage: Arc<dyn Storage>,
        format: Format,
    ) -> Result<Box<dyn ImageReader>> {
        if row(format).open_disks.is_some() {
            return Err(Error::Unsupported(format!(
                "an {} package inside an {} package",
                format.name().to_ascii_uppercase(),
                format.name().to_ascii_uppercase()
            )));
        }
        self.open(ctx, storage, None, Some(format), None)
    }
}

impl OutputOptions {
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

    /// Sets one option, checking it applies to the output format: the format's own parser
    /// (its row's [`FormatRow::set_option`]) takes it or says it is not one of its keys.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let fmt = self.format;
        let r = row(fmt);
        if !(r.set_option)(self, key, value)? {
            let known = r.option_keys.join(", ");
            let elsewhere = ROWS
                .iter()
                .any(|o| !o.own_option_errors && o.option_keys.contains(&key));
            return Err(Error::InvalidArgument(if elsewhere {
                format!("option '{key}' does not apply to {fmt} output ({fmt} options: {known})")
            } else {
                format!("unknown option '{key}' for {fmt} output (known: {known})")
            }));
        }
        if !self.was_given(key) {
            self.given.push(key.to_string());
        }
        Ok(())
    }

    /// Checks combinations of options: `-c` only for a format it applies to, then the
    /// format's own checks (its row's [`FormatRow::validate_options`]).
    pub fn validate(&self) -> Result<()> {
        let r = row(self.format);
        if self.qcow2.compress && !r.compress {
            return Err(Error::InvalidArgument(format!(
                "{} output cannot be compressed with -c (-c is for qcow2; streamOptimized VMDK \
                 and OVA are always compressed)",
                self.format
            )));
        }
        (r.validate_options)(self)
    }
}

/// Refuses a format this version cannot write.
pub fn check_writable(format: Format) -> Result<()> {
    if !format.can_write() {
        return Err(Error::Unsupported(format!(
            "writing {format} images is not implemented yet (this build writes raw, qcow2, VMDK, OVA, VHD, VHDX, VDI and the GCP tarball)"
        )));
    }
    Ok(())
}

/// Creates the writer for `opts` over the output files of one conversion (the options are
/// not validated here: see [`OutputOptions::validate`]).
pub fn create_writer(
    files: &mut dyn Sink,
    size: u64,
    opts: &OutputOptions,
) -> Result<Box<dyn ImageWriter>> {
    check_writable(opts.format)?;
    let create = row(opts.format)
        .create_writer
        .ok_or_else(|| Error::Internal(format!("internal error: no {} writer", opts.format)))?;
    create(files, size, opts)
}

/// Names of the files written beside the main file `target_name` for `opts` (a flat VMDK's
/// extent).
pub fn sibling_names(target_name: &str, opts: &OutputOptions) -> Vec<String> {
    row(opts.format)
        .sibling_names
        .map(|f| f(target_name, opts))
        .unwrap_or_default()
}

/// Opens the image at `path` (of `format`) for in-place updates; a format that cannot be
/// updated in place is refused with the reason.
pub fn open_updater(path: &Path, format: Format) -> Result<Box<dyn ImageUpdater>> {
    match row(format).open_updater {
        Some(open) => open(path),
        None => Err(Error::Unsupported(format!(
            "a {format} image cannot be updated in place; sync to a raw, qcow2, VHD, VHDX, VDI or \
             monolithicSparse VMDK target and convert it at the end"
        ))
        .in_file(path)),
    }
}

/// Refuses, before anything is written, a target format that cannot be updated in place
/// (OVA): the caller syncs to an updatable format and converts the result at the end.
pub fn check_updatable(format: Format) -> Result<()> {
    if format.can_update() {
        return Ok(());
    }
    Err(Error::Unsupported(format!(
        "a {format} target cannot be updated in place; sync to raw, qcow2, vpc, vhdx, vdi or \
         vmdk (monolithicSparse) and convert the result to {format} at the end"
    )))
}

/// Checks the structure of the image in `storage` as `format`; `Ok(None)` when the format has
/// no structure of its own to check (raw, OVA).
pub fn check(
    storage: Arc<dyn Storage>,
    format: Format,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
    deep: bool,
) -> Option<Result<CheckReport>> {
    row(format)
        .check
        .map(|check| check(storage, path, ctx, deep))
}

/// Whether a writer of `opts` writes its main output strictly in order, every write at or past
/// the current end (gaps read as zeros), so that it can go straight into an append-only sink
/// (an object-store upload): raw, gcp, streamOptimized VMDK and OVA (whose disk goes through the
/// sink's scratch storage first). The others fill in tables or rewrite headers after the data
/// and are written into [`Sink::scratch`] storage first.
pub fn writes_in_order(opts: &OutputOptions) -> bool {
    match opts.format {
        Format::Raw | Format::Ova | Format::Gcp => true,
        Format::Vmdk => opts.vmdk.subformat == vmdk::writer::VmdkSubformat::StreamOptimized,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails<T>(r: Result<T>) -> Error {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }
    use crate::storage::MemStorage;

    fn detect_bytes(b: Vec<u8>) -> Format {
        detect(&MemStorage::from_vec(b)).unwrap()
    }

    #[test]
    fn every_format_has_one_row() {
        for f in [
            Format::Raw,
            Format::Qcow2,
            Format::Vmdk,
            Format::Vhd,
            Format::Vhdx,
            Format::Vdi,
            Format::Ova,
            Format::Gcp,
        ] {
            assert_eq!(ROWS.iter().filter(|r| r.format == f).count(), 1, "{f}");
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert_eq!(ROWS.len(), 8);
    }

    #[test]
    fn a_package_inside_a_package_is_refused() {
        let opts = crate::reference::OpenOptions::default();
        let ctx = OpenContext::detached(&opts).with_opener(&REGISTRY);
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(vec![0; 1024]));
        let e = fails(ctx.open_member(storage.clone(), Format::Ova));
        assert_eq!(
            e.to_string(),
            "unsupported: an OVA package inside an OVA package"
        );
        assert!(Format::Ova.is_package() && !Format::Vmdk.is_package());
        // A member of another format is opened through its row.
        let r = ctx.open_member(storage, Format::Raw).unwrap();
        assert_eq!(r.virtual_size(), 1024);
    }

    #[test]
    fn snapshots_only_where_the_row_has_them() {
        let opts = crate::reference::OpenOptions::default();
        let ctx = OpenContext::detached(&opts).with_opener(&REGISTRY);
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(vec![0; 1024]));
        let e = fails(REGISTRY.open(&ctx, storage, None, None, Some("s1"))).to_string();
        assert_eq!(
            e,
            "internal snapshots exist only in qcow2 images, this is raw"
        );
    }

    #[test]
    fn names_and_aliases_parse() {
        assert_eq!("IMG".parse::<Format>().unwrap(), Format::Raw);
        assert_eq!("vhd".parse::<Format>().unwrap(), Format::Vhd);
        assert_eq!("VPC".parse::<Format>().unwrap(), Format::Vhd);
        let e = "qcow".parse::<Format>().unwrap_err().to_string();
        assert!(
            e.contains(
                "unknown format 'qcow' (known: raw, qcow2, vmdk, vpc/vhd, vhdx, vdi, ova, gcp)"
            ),
            "{e}"
        );
    }

    #[test]
    fn only_ova_and_gcp_cannot_be_updated_and_raw_ova_gcp_have_no_check() {
        let no_update: Vec<_> = ROWS
            .iter()
            .filter(|r| r.open_updater.is_none())
            .map(|r| r.format)
            .collect();
        assert_eq!(no_update, [Format::Ova, Format::Gcp]);
        let e = check_updatable(Format::Ova).unwrap_err().to_string();
        assert!(e.contains("a ova target cannot be updated in place"), "{e}");
        let no_check: Vec<_> = ROWS
            .iter()
            .filter(|r| r.check.is_none())
            .map(|r| r.format)
            .collect();
        assert_eq!(no_check, [Format::Raw, Format::Ova, Format::Gcp]);
        // A GCP tarball is written, never read.
        assert!(Format::Gcp.can_write() && !Format::Gcp.can_read());
    }

    #[test]
    fn recognises_magics() {
        let mut q = vec![0u8; 1024];
        q[..4].copy_from_slice(&crate::formats::qcow2::header::MAGIC);
        assert_eq!(detect_bytes(q), Format::Qcow2);
        let mut v = vec![0u8; 1024];
        v[..4].copy_from_slice(b"KDMV");
        assert_eq!(detect_bytes(v), Format::Vmdk);
        let mut d = b"# Disk DescriptorFile\nversion=1\n".to_vec();
        d.resize(600, 0);
        assert_eq!(detect_bytes(d), Format::Vmdk);
        let mut x = vec![0u8; 1024];
        x[..8].copy_from_slice(b"vhdxfile");
        assert_eq!(detect_bytes(x), Format::Vhdx);
        let mut f = vec![0u8; 2048];
        f[1536..1544].copy_from_slice(b"conectix");
        assert_eq!(detect_bytes(f), Format::Vhd);
        let mut vdi = vec![0u8; 1024];
        vdi[0x40..0x44].copy_from_slice(&crate::formats::vdi::header::SIGNATURE);
        assert_eq!(detect_bytes(vdi), Format::Vdi);
        let mut ova = vec![0u8; 1024];
        ova[..9].copy_from_slice(b"vm/vm.ovf");
        ova[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(detect_bytes(ova.clone()), Format::Ova);
        ova[..9].copy_from_slice(b"vm/vm.txt");
        assert_eq!(detect_bytes(ova), Format::Raw);
        let mut gz = vec![0u8; 1024];
        gz[..10].copy_from_slice(&crate::formats::gcp::gzip::HEADER);
        assert_eq!(detect_bytes(gz), Format::Gcp);
    }

    #[test]
    fn descriptor_without_its_comment_is_vmdk() {
        let d = b"version=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
                  RW 20480 FLAT \"a-flat.vmdk\" 0\n"
            .to_vec();
        assert_eq!(detect_bytes(d), Format::Vmdk);
        // The same words inside a large binary image do not count.
        let mut big = b"createType=x\nRW 1 FLAT \"a\"\n".to_vec();
        big.resize(2 << 20, 0);
        assert_eq!(detect_bytes(big), Format::Raw);
    }

    #[test]
    fn everything_else_is_raw() {
        assert_eq!(detect_bytes(vec![]), Format::Raw);
        assert_eq!(detect_bytes(vec![0x55; 100]), Format::Raw);
        assert_eq!(detect_bytes(vec![0; 4096]), Format::Raw);
        // "QFI" alone is not the magic.
        assert_eq!(detect_bytes(b"QFI\x00".to_vec()), Format::Raw);
    }

    #[test]
    fn output_format_from_the_extension() {
        let f = |name: &str| Format::from_extension(std::path::Path::new(name));
        assert_eq!(f("a.qcow2"), Some(Format::Qcow2));
        assert_eq!(f("dir.x/A.QCOW2"), Some(Format::Qcow2));
        assert_eq!(f("a.vmdk"), Some(Format::Vmdk));
        assert_eq!(f("a.vhd"), Some(Format::Vhd));
        assert_eq!(f("a.VPC"), Some(Format::Vhd));
        assert_eq!(f("a.vhdx"), Some(Format::Vhdx));
        assert_eq!(f("web01.ova"), Some(Format::Ova));
        assert_eq!(f("a.vdi"), Some(Format::Vdi));
        assert_eq!(f("a.raw"), Some(Format::Raw));
        assert_eq!(f("web01.tar.gz"), Some(Format::Gcp));
        assert_eq!(f("dir/Web01.TAR.GZ"), Some(Format::Gcp));
        for none in [
            "a.img",
            "a",
            "a.bin",
            "a.iso",
            ".qcow2",
            "dir.vmdk/a",
            "a.gz",
            ".tar.gz",
            "atar.gz",
        ] {
            assert_eq!(f(none), None, "{none}");
        }
        let o = |name: &str, e| Format::for_output(std::path::Path::new(name), e);
        assert_eq!(o("x.ova", None), Format::Ova);
        assert_eq!(o("x.img", None), Format::Raw);
        assert_eq!(o("x", None), Format::Raw);
        assert_eq!(o("x.qcow2", Some(Format::Raw)), Format::Raw);
        let m = |name: &str, fmt| Format::extension_mismatch(std::path::Path::new(name), fmt);
        assert_eq!(m("x.qcow2", Format::Raw), Some(Format::Qcow2));
        assert_eq!(m("x.qcow2", Format::Qcow2), None);
        assert_eq!(m("x.img", Format::Qcow2), None);
        assert_eq!(m("x.vhd", Format::Vhd), None);
    }
}
