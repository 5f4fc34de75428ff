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
use crate::formats::raw::{Preallocation, RawWriter};
use crate::formats::registry;
use crate::image::{ImageReader, ImageWriter, NamedWriter};
use crate::net::{NbdOptions, NbdSink, is_nbd_path};
use crate::storage::{FileStorage, Storage};
use crate::util::human_bytes;

pub use crate::formats::options::OutputOptions;
pub use crate::formats::registry::sibling_names;

/// Creates the writer for `opts` over the output files of one conversion.
pub fn create_writer(
    files: &mut dyn Sink,
    size: u64,
    opts: &OutputOptions,
) -> Result<Box<dyn ImageWriter>> {
    registry::check_writable(opts.format)?;
    opts.validate()?;
    registry::create_writer(files, size, opts)
}

/// Checks, before anything is read or created, every path an output of `opts` at `target` will
/// write: the main file (through its symbolic links) and the files beside it. Returns where the
/// main output leads. A block device takes only raw output without options that mean nothing
/// there; everything but a regular file or a block device is refused (see
/// [`resolve_output`]).
pub fn check_output(target: &Path, opts: &OutputOptions) -> Result<OutputTarget> {
    registry::check_writable(opts.format)?;
    opts.validate()?;
    if is_nbd_path(target) {
        if !opts.format.is_raw() {
            return Err(Error::InvalidArgument(format!(
                "is an NBD export: only raw output (-O raw) can be written to an export, not \
                 {}; write the {} image to a file instead",
                opts.format, opts.format
            ))
            .in_file(target));
        }
        if opts.raw.preallocation != Preallocation::Off {
            return Err(Error::InvalidArgument(
                "is an NBD export: preallocation does not apply to it".into(),
            )
            .in_file(target));
        }
        return Ok(OutputTarget::Nbd {
            uri: target.to_path_buf(),
        });
    }
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
            if !opts.format.is_raw() {
                return Err(Error::InvalidArgument(format!(
                    "is a block device: only raw output (-O raw) can be written to a block \
                     device, not {}; write the {} image to a file instead",
                    opts.format, opts.format
                ))
                .in_file(path));
            }
            if opts.raw.preallocation != Preallocation::Off {
                return Err(Error::InvalidArgument(
                    "is a block device: preallocation does not apply to it (every byte of the \
                     image is written, zeros included)"
                        .into(),
                )
                .in_file(path));
            }
        }
        OutputTarget::Nbd { .. } => {}
    }
    Ok(t)
}

/// Converts `src` into raw bytes written in place at the start of the NBD export `uri` names,
/// which must be at least as large as the source and writable: data is written, zero and
/// unallocated ranges are made to read as zeros (`NBD_CMD_WRITE_ZEROES`), and the export is
/// flushed at the end. An export cannot be rolled back: an interrupted conversion leaves it
/// partly written. The bytes past the image are left as they were
/// ([`ConvertStats::untouched_tail`]).
pub fn convert_to_nbd(
    src: &dyn ImageReader,
    uri: &Path,
    convert_opts: &ConvertOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<ConvertStats> {
    let size = src.virtual_size();
    let mut sink = NbdSink::connect(uri, &NbdOptions::default())?;
    let len = sink.len();
    if len < size {
        return Err(Error::InvalidArgument(format!(
            "the NBD export holds {len} bytes ({}), less than the {size} bytes ({}) of the source",
            human_bytes(len),
            human_bytes(size)
        ))
        .in_file(uri));
    }
    let w = RawWriter::in_place(sink.main()?, size).map_err(|e| e.in_file(uri))?;
    let mut stats = convert(src, Box::new(w), convert_opts, progress).map_err(|e| match e {
        Error::Cancelled => e,
        e => e.in_file(uri),
    })?;
    Box::new(sink).commit()?;
    stats.untouched_tail = len - size;
    Ok(stats)
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
        OutputTarget::Nbd { uri } => convert_to_nbd(src, &uri, convert_opts, progress),
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
    registry::check_writable(opts.format)?;
    opts.validate()?;
    // Every output path is checked before anything is read: the same checks as one output's,
    // and the outputs are files (a block device takes one disk: convert it on its own).
    let mut paths: Vec<PathBuf> = Vec::with_capacity(jobs.len());
    for (_, target) in jobs {
        let path = match check_output(target, opts)? {
            OutputTarget::File { path, .. } => path,
            OutputTarget::BlockDevice { .. } | OutputTarget::Nbd { .. } => {
                return Err(Error::InvalidArgument(
                    "is a block device or an NBD export; several disks are written to files".into(),
                )
                .with_hint(crate::error::Hint::ChooseDisk)
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
}
