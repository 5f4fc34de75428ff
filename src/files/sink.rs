//! Where the finished bytes of an output go: the [`Sink`] trait, and the local files
//! ([`OutputFiles`]) as its first implementation.
//!
//! A format's writer is created over a `&mut dyn Sink`: it asks the sink for the storage of the
//! output itself ([`Sink::main`]), of files beside it that the output names (a flat VMDK's
//! extent: [`Sink::sibling`]) and of scratch space it needs while writing ([`Sink::scratch`]);
//! the caller that made the sink then commits everything at once or abandons everything. A
//! format never learns whether the bytes go to a local folder, an object store or a network
//! block device.
//!
//! A sink says what it can do ([`SinkCapabilities`]). A local file takes writes at any offset.
//! A streaming destination (an object-store upload, a pipe) can only append: its
//! [`Sink::main`] storage accepts a write only at the current end (any other is an error
//! naming the offset). A format that writes out of order (qcow2 and VHDX fill in their tables
//! after the data; VHD rewrites its footer) is then written into [`Sink::scratch`] storage,
//! which every sink provides as a local, random-access temporary, and copied into the stream in
//! order when the writer has finished: the creator of the writer decides that from
//! [`SinkCapabilities::random_access`] and the format's own needs, not the format. Formats that
//! already write in order (raw, streamOptimized VMDK, OVA) stream directly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::OutputFiles;
use crate::error::Result;
use crate::storage::Storage;

/// What a [`Sink`] can do with the bytes it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkCapabilities {
    /// The storage of [`Sink::main`] (and siblings) takes writes and reads at any offset; when
    /// false, only appends at the current end.
    pub random_access: bool,
    /// [`Sink::sibling`] can create further named outputs beside the main one.
    pub siblings: bool,
}

/// The destination of one output (see the module documentation). Nothing a sink creates is
/// visible under its final name before [`commit`](Sink::commit); [`abandon`](Sink::abandon) (or
/// dropping the sink) leaves the destination as it was.
pub trait Sink: std::fmt::Debug {
    /// The final name of the output (for a local file, its path with symbolic links
    /// resolved): in messages, and for formats whose files name each other.
    fn target(&self) -> &Path;

    /// What this sink can do.
    fn capabilities(&self) -> SinkCapabilities;

    /// Creates the storage of the output itself. Once per sink.
    fn main(&mut self) -> Result<Arc<dyn Storage>>;

    /// Creates the storage of another named output, `name`, beside the main one (a plain
    /// name, no folders).
    fn sibling(&mut self, name: &str) -> Result<Arc<dyn Storage>>;

    /// Creates local, random-access scratch storage, removed on commit or abandon.
    fn scratch(&mut self) -> Result<Arc<dyn Storage>>;

    /// Leftovers of earlier, killed runs for the same destination that creating the storage
    /// cleaned up (for a local file: stale temporaries), to be reported.
    fn stale_removed(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Makes every output created visible under its final name, all together (siblings
    /// first, the main output last), and drops the scratch storage.
    fn commit(self: Box<Self>) -> Result<()>;

    /// Removes everything created; the destination stays as it was.
    fn abandon(self: Box<Self>);
}

impl Sink for OutputFiles {
    fn target(&self) -> &Path {
        OutputFiles::target(self)
    }

    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities {
            random_access: true,
            siblings: true,
        }
    }

    fn main(&mut self) -> Result<Arc<dyn Storage>> {
        OutputFiles::main(self)
    }

    fn sibling(&mut self, name: &str) -> Result<Arc<dyn Storage>> {
        OutputFiles::sibling(self, name)
    }

    fn scratch(&mut self) -> Result<Arc<dyn Storage>> {
        OutputFiles::scratch(self)
    }

    fn stale_removed(&self) -> Vec<PathBuf> {
        OutputFiles::stale_removed(self)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        OutputFiles::commit(*self)
    }

    fn abandon(self: Box<Self>) {
        drop(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_file_sink_commits_all_or_abandons_all_through_the_trait() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("disk.vmdk");
        let mut sink: Box<dyn Sink> = Box::new(OutputFiles::new(&target));
        assert_eq!(
            sink.capabilities(),
            SinkCapabilities {
                random_access: true,
                siblings: true
            }
        );
        assert_eq!(sink.target(), target);
        sink.main().unwrap().write_all_at(b"desc", 0).unwrap();
        sink.sibling("disk-flat.vmdk")
            .unwrap()
            .write_all_at(b"data", 0)
            .unwrap();
        sink.scratch().unwrap().write_all_at(b"tmp", 0).unwrap();
        assert!(!target.exists());
        sink.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"desc");
        assert_eq!(
            std::fs::read(d.path().join("disk-flat.vmdk")).unwrap(),
            b"data"
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);

        // Abandoned: the committed files stay as they were, nothing new is left.
        let mut sink: Box<dyn Sink> = Box::new(OutputFiles::new(&target));
        sink.main().unwrap().write_all_at(b"other", 0).unwrap();
        sink.sibling("disk-flat.vmdk")
            .unwrap()
            .write_all_at(b"x", 0)
            .unwrap();
        sink.abandon();
        assert_eq!(std::fs::read(&target).unwrap(), b"desc");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
