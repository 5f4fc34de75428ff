//! `diskconv check`: the structural check of an image file, whatever its format.
//!
//! The format is detected from the content (as [`open`](crate::open()) does) and the file handed
//! to that format's own check: [`qcow2`](crate::formats::qcow2::check()),
//! [`vmdk`](crate::formats::vmdk::check::check), [`vhd`](crate::formats::vhd::check::check),
//! [`vhdx`](crate::formats::vhdx::check::check) or [`vdi`](crate::formats::vdi::check::check).
//! Every one fills the same
//! [`CheckReport`]. Formats without structure of their own (raw) have nothing to check and give
//! an [`ErrorKind::Unsupported`](crate::ErrorKind) error. The image is only read.
//!
//! ```no_run
//! use diskconv::check::{CheckOptions, check_file};
//! let report = check_file("disk.vmdk".as_ref(), &CheckOptions::default())?;
//! if !report.is_clean() {
//!     print!("{report}");
//! }
//! # Ok::<(), diskconv::Error>(())
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result, ResultExt};
use crate::formats::registry::{self, REGISTRY, detect};
use crate::image::Format;
use crate::open::{OpenContext, OpenOptions, ReferencePolicy};
use crate::storage::{FileStorage, Storage};

pub use crate::formats::check::{CheckProblem, CheckReport, ProblemKind};

/// How to check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Which files named inside the image (VMDK extents, parents) may be opened.
    pub references: ReferencePolicy,
    /// Also decompress every compressed grain of a VMDK and check it inflates to exactly one
    /// grain (slower: it reads and inflates all the data).
    pub deep: bool,
}

/// Checks an image held in `storage` (memory, or a file the caller opened), read-only; the
/// format is detected unless given. Such an image has no folder, so the files it names (VMDK
/// extents, parents) are not opened: they are reported as not checked.
pub fn check_storage(
    storage: Arc<dyn Storage>,
    format: Option<Format>,
    opts: &CheckOptions,
) -> Result<CheckReport> {
    let open = OpenOptions::default().references(opts.references);
    let ctx = OpenContext::detached(&open).with_opener(&REGISTRY);
    let format = match format {
        Some(f) => f,
        None => detect(storage.as_ref())?,
    };
    dispatch(storage, format, None, &ctx, opts).map_err(|e| match e {
        Dispatch::Error(e) => e,
        Dispatch::Nothing(f) => Error::Unsupported(format!(
            "a {f} image has no structure to check; only qcow2, VMDK, VHD, VHDX and VDI images have"
        )),
    })
}

/// Why [`dispatch`] gave no report.
enum Dispatch {
    Error(Error),
    /// The format has no structure to check.
    Nothing(Format),
}

fn dispatch(
    storage: Arc<dyn Storage>,
    format: Format,
    path: Option<&Path>,
    ctx: &OpenContext<'_>,
    opts: &CheckOptions,
) -> std::result::Result<CheckReport, Dispatch> {
    match registry::check(storage, format, path, ctx, opts.deep) {
        Some(r) => r.map_err(Dispatch::Error),
        None => Err(Dispatch::Nothing(format)),
    }
}

/// Checks the image at `path`, read-only.
///
/// `Err` when the file cannot be opened, has a format without structure to check (raw), or its
/// main header is unusable (the check could not run); everything found after that is in the
/// report.
pub fn check_file(path: &Path, opts: &CheckOptions) -> Result<CheckReport> {
    let open = OpenOptions::default().references(opts.references);
    let (ctx, canonical) = OpenContext::for_image(path, &open)?;
    let ctx = ctx.with_opener(&REGISTRY);
    let storage = FileStorage::open_read_only(&canonical)
        .map_err(|e| Error::io("opening read-only", e))
        .in_file(path)?;
    let format = detect(&storage).in_file(path)?;
    match dispatch(Arc::new(storage), format, Some(&canonical), &ctx, opts) {
        Ok(r) => Ok(r),
        Err(Dispatch::Error(e)) => Err(e.in_file(path)),
        Err(Dispatch::Nothing(other)) => Err(Error::Unsupported(format!(
            "{} is a {other} image; only qcow2, VMDK, VHD, VHDX and VDI images have structure to \
             check",
            path.display()
        ))),
    }
}
