//! The crate error type.
//!
//! Every fallible function returns [`Result`]. An [`Error`] has a stable [`ErrorKind`] (what a
//! caller branches on) and a chain of causes (what a person reads). Format parsers produce their
//! own typed errors ([`Qcow2Error`]) with the byte offset of
//! the structure at fault; the path of the file is attached once, where the file is opened.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::formats::error::FormatError;
use crate::formats::ova::OvaError;
use crate::formats::qcow2::Qcow2Error;
use crate::formats::vmdk::VmdkError;
use crate::guest::hive::HiveError;
use crate::guest::ntfs::NtfsError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stable classification of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operating system reported an I/O error.
    Io,
    /// The bytes are not the format they were opened as (bad magic, impossible header field).
    InvalidFormat,
    /// The format is right but a structure inside it is inconsistent (table entry past the end
    /// of the file, truncated table, undecodable compressed cluster, loop in a chain).
    Corrupt,
    /// A well-formed image uses something this version does not implement (encryption, an
    /// unknown incompatible feature, a format not yet supported).
    Unsupported,
    /// A file named inside an image (backing file, data file, extent) was not opened because
    /// the reference policy forbids it.
    ReferenceDenied,
    /// The caller asked for something impossible (bad option, out-of-range read).
    InvalidArgument,
    /// The operation was cancelled through its cancellation flag.
    Cancelled,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::InvalidFormat => "invalid format",
            ErrorKind::Corrupt => "corrupt image",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ReferenceDenied => "reference denied",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Cancelled => "cancelled",
        })
    }
}

/// The crate error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed; `op` says what was being done.
    #[error("{op}")]
    Io {
        /// What was being done, e.g. "reading 65536 bytes at offset 0x10000".
        op: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An error that happened while working on a named file.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong in it.
        #[source]
        source: Box<Error>,
    },
    /// A qcow2 structure is invalid, corrupt or unsupported.
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    /// A VMDK structure is invalid, corrupt or unsupported.
    #[error(transparent)]
    Vmdk(#[from] VmdkError),
    /// An OVA package is malformed, fails its manifest, or disagrees with its OVF descriptor.
    #[error(transparent)]
    Ova(#[from] OvaError),
    /// A VHD or VHDX structure is invalid, corrupt or unsupported.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A registry hive or transaction log is invalid, corrupt or dirty, or an edit is impossible.
    #[error(transparent)]
    Hive(#[from] HiveError),
    /// An NTFS structure is invalid or corrupt, the volume cannot be written safely, or a file
    /// operation is impossible.
    #[error(transparent)]
    Ntfs(#[from] NtfsError),
    /// The content of a file matched no format, or the wrong one.
    #[error("{0}")]
    InvalidFormat(String),
    /// A structure inside an image is inconsistent.
    #[error("{0}")]
    Corrupt(String),
    /// A feature or format this version does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A referenced file was not opened because of the reference policy.
    #[error(
        "{what} '{name}' is {reason}; {hint}",
        hint = "pass --references=anywhere (library: ReferencePolicy::Anywhere) to allow it"
    )]
    ReferenceDenied {
        /// What kind of reference ("backing file", "external data file", ...).
        what: &'static str,
        /// The name as written inside the image.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A bad option or argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// The stable kind of this error (looking through [`Error::File`] wrappers).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } => {
                if source.kind() == io::ErrorKind::UnexpectedEof {
                    ErrorKind::Corrupt
                } else {
                    ErrorKind::Io
                }
            }
            Error::File { source, .. } => source.kind(),
            Error::Qcow2(e) => e.kind(),
            Error::Vmdk(e) => e.kind(),
            Error::Ova(e) => e.kind(),
            Error::Format(e) => e.kind(),
            Error::Hive(e) => e.kind(),
            Error::Ntfs(e) => e.kind(),
            Error::InvalidFormat(_) => ErrorKind::InvalidFormat,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::ReferenceDenied { .. } => ErrorKind::ReferenceDenied,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Cancelled => ErrorKind::Cancelled,
        }
    }

    /// Wraps an I/O error with a description of the operation.
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    /// Attaches a file path to this error (once: an error that already names a file is kept).
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            e @ Error::File { .. } => e,
            e => Error::File {
                path: path.into(),
                source: Box::new(e),
            },
        }
    }

    /// Attaches the path of the image (or other file) in which this error happened, as the
    /// outermost file of the message.
    ///
    /// Unlike [`in_file`](Self::in_file), an error that already names *another* file keeps
    /// it: a failure in a backing file, a parent or an extent reads
    /// `top.qcow2: /images/base.qcow2: ...`, naming the image the caller opened and the file of
    /// its chain that failed. An error already naming the same file (by path, or by the file
    /// the paths resolve to) gets `path` in its place, so a file is named once, as the caller
    /// wrote it.
    pub fn in_image(self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        match self {
            Error::File {
                path: inner,
                source,
            } if same_file(&inner, &path) => Error::File { path, source },
            e => Error::File {
                path,
                source: Box::new(e),
            },
        }
    }

    /// The whole cause chain on one line, `outer: inner: innermost`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            let s = e.to_string();
            // A transparent wrapper repeats its inner message; print each message once.
            if !s.is_empty() && !out.ends_with(&s) {
                out.push_str(": ");
                out.push_str(&s);
            }
            cur = e.source();
        }
        out
    }
}

/// Whether two paths name the same file: equal, or resolving to the same file. Used only on
/// error paths.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Extension to attach a file path to errors of a [`Result`].
pub trait ResultExt<T> {
    /// See [`Error::in_file`].
    fn in_file(self, path: impl Into<PathBuf>) -> Result<T>;

    /// See [`Error::in_image`].
    fn in_image(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn in_file(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| e.in_file(path))
    }

    fn in_image(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| e.in_image(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_prints_each_cause_once() {
        let e = Error::io(
            "reading L1 table",
            io::Error::new(io::ErrorKind::UnexpectedEof, "file ends at 4096"),
        )
        .in_file("/tmp/a.qcow2");
        assert_eq!(
            e.chain(),
            "/tmp/a.qcow2: reading L1 table: file ends at 4096"
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn in_image_keeps_the_inner_file_of_a_chain() {
        let base = Error::Corrupt("bad L1".into()).in_file("/no/such/base.qcow2");
        let e = base.in_image("top.qcow2");
        assert_eq!(e.chain(), "top.qcow2: /no/such/base.qcow2: bad L1");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        // The same file is named once, as the outer caller wrote it.
        let e = Error::Cancelled.in_file("a.qcow2").in_image("a.qcow2");
        assert_eq!(e.chain(), "a.qcow2: cancelled");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, b"x").unwrap();
        let canonical = std::fs::canonicalize(&f).unwrap();
        let rel = dir.path().join(".").join("img");
        let e = Error::Cancelled.in_file(&canonical).in_image(&rel);
        assert_eq!(e.chain(), format!("{}: cancelled", rel.display()));
        // An error without a file gets one.
        assert_eq!(Error::Cancelled.in_image("b").chain(), "b: cancelled");
    }

    #[test]
    fn in_file_is_attached_once() {
        let e = Error::Cancelled.in_file("a").in_file("b");
        assert_eq!(e.chain(), "a: cancelled");
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }
}
