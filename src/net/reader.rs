//! An NBD export opened as an image: the reader of its contents (raw, or the container format
//! the caller declared) with errors naming the URI, plus what only a server can tell (its
//! `qemu:dirty-bitmap:NAME` contexts).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::storage::NbdStorage;
use crate::error::{Error, Result};
use crate::image::{Extent, Format, ImageInfo, ImageReader, NamedReader};

/// The image in an NBD export.
pub struct NbdReader {
    /// The reader of the export's contents; its errors name the URI.
    inner: NamedReader,
    storage: Arc<NbdStorage>,
    uri: PathBuf,
}

impl std::fmt::Debug for NbdReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdReader")
            .field("uri", &self.uri)
            .field("format", &self.inner.format())
            .finish()
    }
}

impl NbdReader {
    /// Wraps `inner`, read from `storage`, opened from `uri` (the URI as the user wrote it,
    /// for messages: URIs hold no key material).
    pub fn new(inner: Box<dyn ImageReader>, storage: Arc<NbdStorage>, uri: &Path) -> Self {
        NbdReader {
            inner: NamedReader::new(inner, uri),
            storage,
            uri: uri.to_path_buf(),
        }
    }

    /// The export's storage.
    pub fn storage(&self) -> &Arc<NbdStorage> {
        &self.storage
    }

    /// The URI it was opened from.
    pub fn uri(&self) -> &Path {
        &self.uri
    }
}

impl ImageReader for NbdReader {
    fn format(&self) -> Format {
        self.inner.format()
    }

    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Extent> {
        self.inner.map(offset, max_len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn dirty_ranges(&self, name: &str) -> Result<Vec<std::ops::Range<u64>>> {
        export_dirty_ranges(self, name)
    }

    fn info(&self) -> ImageInfo {
        let mut i = self.inner.info();
        if i.filename.is_none() {
            i.filename = Some(self.uri.display().to_string());
        }
        i
    }
}

/// The dirty ranges `name` marks, through `qemu:dirty-bitmap:NAME` over the whole export (a
/// second connection selects the context when the first did not).
fn export_dirty_ranges(r: &NbdReader, name: &str) -> Result<Vec<std::ops::Range<u64>>> {
    if !r.inner.format().is_raw() {
        return Err(Error::Unsupported(format!(
            "the export holds a {} image: a server's dirty bitmap describes the export's bytes, \
             not that image's disk",
            r.inner.format()
        ))
        .in_file(&r.uri));
    }
    let size = r.storage.info().size;
    let cname = format!("{}{name}", super::proto::DIRTY_BITMAP_PREFIX);
    let io = |e| Error::io(format!("reading the {cname} status"), e);
    let ranges = if r.storage.info().context_id(&cname).is_some() {
        r.storage.dirty_ranges(name, 0..size).map_err(io)
    } else {
        let opts = super::NbdOptions {
            dirty_bitmap: Some(name.to_string()),
            ..super::NbdOptions::default()
        };
        NbdStorage::connect(r.storage.client().uri(), &opts)
            .and_then(|s| s.dirty_ranges(name, 0..size))
            .map_err(io)
    };
    ranges.map_err(|e| e.in_file(&r.uri))
}
