//! An NBD export as the destination of a conversion: a [`Sink`] whose main storage is the
//! export itself, written in place (raw only).
//!
//! An export cannot be rolled back: nothing is staged under a temporary name, so
//! [`Sink::commit`] only flushes (`NBD_CMD_FLUSH`) and [`Sink::abandon`] leaves what was
//! written. An interrupted conversion leaves the export partly written, as with a block
//! device target.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::client::NbdOptions;
use super::storage::NbdStorage;
use super::uri::NbdUri;
use crate::error::{Error, Result};
use crate::files::{Sink, SinkCapabilities};
use crate::storage::Storage;

/// The export an NBD URI names, as an output.
#[derive(Debug)]
pub struct NbdSink {
    uri: PathBuf,
    storage: Arc<NbdStorage>,
    main_taken: bool,
}

impl NbdSink {
    /// Connects to the export `uri` names; a read-only export is refused here, before
    /// anything is written.
    pub fn connect(uri: &Path, opts: &NbdOptions) -> Result<NbdSink> {
        let parsed = NbdUri::parse(&uri.to_string_lossy())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let storage = NbdStorage::connect(&parsed, opts)
            .map_err(|e| Error::io("connecting to the NBD server", e).in_file(uri))?;
        if storage.info().read_only() {
            return Err(Error::InvalidArgument(
                "the NBD export is read-only: it cannot be written (is the server started \
                 writable, without -r / --read-only?)"
                    .into(),
            )
            .in_file(uri));
        }
        Ok(NbdSink {
            uri: uri.to_path_buf(),
            storage: Arc::new(storage),
            main_taken: false,
        })
    }

    /// Size of the export in bytes.
    pub fn len(&self) -> u64 {
        self.storage.info().size
    }

    /// `true` when the export holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The export's storage.
    pub fn storage(&self) -> &Arc<NbdStorage> {
        &self.storage
    }
}

impl Sink for NbdSink {
    fn target(&self) -> &Path {
        &self.uri
    }

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities {
            random_access: true,
            siblings: false,
        }
    }

    fn main(&mut self) -> Result<Arc<dyn Storage>> {
        if self.main_taken {
            return Err(Error::Internal(
                "the main storage of an NBD output was asked for twice".into(),
            ));
        }
        self.main_taken = true;
        Ok(self.storage.clone())
    }

    fn sibling(&mut self, name: &str) -> Result<Arc<dyn Storage>> {
        Err(Error::InvalidArgument(format!(
            "an NBD export holds one raw disk; the output cannot write {name} beside it"
        ))
        .in_file(&self.uri))
    }

    fn scratch(&mut self) -> Result<Arc<dyn Storage>> {
        Err(Error::InvalidArgument(
            "an NBD export takes raw output written in place, which needs no scratch space".into(),
        )
        .in_file(&self.uri))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.storage
            .sync()
            .map_err(|e| Error::io("flushing the export", e).in_file(&self.uri))
    }

    fn abandon(self: Box<Self>) {
        // Nothing to undo: the export was written in place.
    }
}
