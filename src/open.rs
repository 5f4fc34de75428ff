//! Opening images: the public entry points. Files named inside an image go through the
//! reference gate ([`crate::reference`]); formats are detected and opened through the format
//! registry ([`crate::formats::registry`]).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result, ResultExt};
use crate::formats::qcow2::Qcow2Reader;
use crate::formats::registry::{REGISTRY, detect};
use crate::image::ImageReader;
use crate::net::{NbdOptions, NbdReader, NbdStorage, NbdUri, is_nbd_path};
use crate::storage::{FileStorage, Storage};

pub use crate::reference::{
    DEFAULT_MAX_DEPTH, OpenContext, OpenOptions, PackageOptions, ReferencePolicy, is_plain_relative,
};

/// Opens the image at `path` for reading.
///
/// The file is opened read-only and never modified. The format is detected from the content
/// unless forced in `opts`.
///
/// Every error, when opening and later when mapping or reading, names `path` (and, when the
/// failure is in a file of its chain, that file too: `top.qcow2: /images/base.qcow2: ...`).
///
/// ```no_run
/// use diskconv::{open, OpenOptions};
/// let img = open("disk.qcow2", &OpenOptions::default())?;
/// println!("{} bytes of {}", img.virtual_size(), img.format());
/// # Ok::<(), diskconv::Error>(())
/// ```
///
/// `path` may be an NBD URI (`nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`,
/// `nbds://...`): the export is opened as a raw image over an [`NbdStorage`], or as the
/// container format `opts.format` names (any file that image names is then refused, as for
/// [`open_storage`]).
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Box<dyn ImageReader>> {
    let path = path.as_ref();
    if is_nbd_path(path) {
        return open_nbd(path, opts, &NbdOptions::default());
    }
    crate::reference::open_top(path, opts, &REGISTRY)
}

/// Connects to the NBD export `uri` names (a URI as [`NbdUri::parse`] takes it); errors name
/// the URI.
pub fn connect_nbd(uri: &Path, nbd: &NbdOptions) -> Result<Arc<NbdStorage>> {
    let text = uri.to_string_lossy();
    let parsed = NbdUri::parse(&text).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let storage = NbdStorage::connect(&parsed, nbd)
        .map_err(|e| Error::io("connecting to the NBD server", e))
        .in_file(uri)?;
    Ok(Arc::new(storage))
}

/// Opens the NBD export `uri` names as an image (see [`open`]), with the client settings
/// `nbd` (a dirty bitmap to select, the retry budget).
pub fn open_nbd(uri: &Path, opts: &OpenOptions, nbd: &NbdOptions) -> Result<Box<dyn ImageReader>> {
    let storage = connect_nbd(uri, nbd)?;
    let mut o = opts.clone();
    o.format = Some(opts.format.unwrap_or(crate::image::Format::Raw));
    let reader = open_storage(storage.clone(), &o).in_image(uri)?;
    Ok(Box::new(NbdReader::new(reader, storage, uri)))
}

/// Opens every disk of the image at `path`: each disk of a package (an OVA, in the order its
/// descriptor lists them), or the image itself for any other format. `opts.package.disk` is
/// ignored. A package's manifest is checked for the descriptor and every disk (the disks are
/// hashed at the same time, on separate threads) before any disk is opened.
pub fn open_disks(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Vec<Box<dyn ImageReader>>> {
    let path = path.as_ref();
    if is_nbd_path(path) {
        return Ok(vec![open_nbd(path, opts, &NbdOptions::default())?]);
    }
    let (ctx, canonical) = OpenContext::for_top(path, opts)?;
    let ctx = ctx.with_opener(&REGISTRY);
    let storage = FileStorage::open_read_only(&canonical)
        .map_err(|e| Error::io("opening read-only", e))
        .in_file(path)?;
    let format = match opts.format {
        Some(f) => f,
        None => detect(&storage).in_file(path)?,
    };
    let Some(open_disks) = format.row().open_disks else {
        return Ok(vec![ctx.open_path(
            path,
            Some(format),
            opts.snapshot.as_deref(),
        )?]);
    };
    let mut child = ctx.clone();
    child.enter(canonical.clone());
    open_disks(Arc::new(storage), Some(&canonical), &child).in_file(path)
}

/// Opens the qcow2 image at `path` as a concrete [`Qcow2Reader`], for what only qcow2 has
/// (persistent dirty bitmaps, the header, the snapshot table). Same rules as [`open`]: the
/// file is opened read-only, files it names go through the reference policy, and
/// `opts.snapshot` selects an internal snapshot. `opts.format` is ignored.
pub fn open_qcow2(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Qcow2Reader> {
    let path = path.as_ref();
    let (ctx, canonical) = OpenContext::for_top(path, opts)?;
    let mut ctx = ctx.with_opener(&REGISTRY);
    let storage = FileStorage::open_read_only(&canonical)
        .map_err(|e| Error::io("opening read-only", e))
        .in_file(path)?;
    ctx.enter(canonical.clone());
    Qcow2Reader::open(
        Arc::new(storage),
        Some(&canonical),
        &ctx,
        opts.snapshot.as_deref(),
    )
    .in_image(path)
}

/// Opens an image held in an arbitrary [`Storage`] (memory, a file opened by the caller).
///
/// Such an image has no folder, so any file it names is refused.
pub fn open_storage(storage: Arc<dyn Storage>, opts: &OpenOptions) -> Result<Box<dyn ImageReader>> {
    let ctx = OpenContext::detached(opts).with_opener(&REGISTRY);
    ctx.open_storage(storage, None, opts.format, opts.snapshot.as_deref())
}
