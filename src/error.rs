//! The crate error type.
//!
//! Every fallible function returns [`Result`]. An [`Error`] has a stable [`ErrorKind`] (what a
//! caller branches on) and a chain of causes (what a person reads). Format and file-system
//! parsers produce their own typed errors (`Qcow2Error`, `HiveError`, ...) with the byte offset
//! of the structure at fault, sharing [`StructureError`] for invalid and corrupt structures;
//! each converts into an [`Error::Typed`] where it leaves its module, keeping its kind and
//! itself as the error (see [`Error::downcast_ref`]). The path of the file is attached once,
//! where the file is opened.
//!
//! This module imports nothing from the rest of the crate: every other module may use it.

use std::fmt;
use std::io;
use std::path::PathBuf;

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
    /// A resource is held by someone else (an image another process is changing holds its
    /// lock).
    Busy,
    /// A fault of diskconv itself (a worker thread that panicked, a state the code should never
    /// reach), not of the input or the caller.
    Internal,
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
            ErrorKind::Busy => "busy",
            ErrorKind::Internal => "internal error",
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
    /// The typed error of a format or guest module (`Qcow2Error`, `HiveError`, ...), converted
    /// where it leaves its module. Prints as the typed error does; [`Error::downcast_ref`]
    /// gets it back.
    #[error(transparent)]
    Typed(TypedError),
    /// An error with a [`Hint`] at what the caller can change to get past it. Prints as the
    /// error does; [`Error::hint`] gets the hint back.
    #[error(transparent)]
    Hinted(HintedError),
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
    /// Its [`Error::hint`] is [`Hint::AllowReferences`].
    #[error("{what} '{name}' is {reason}")]
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
    /// A resource is held by someone else.
    #[error("{0}")]
    Busy(String),
    /// A fault of diskconv itself; the message starts with what failed ("internal error: ...").
    #[error("{0}")]
    Internal(String),
}

/// A typed error with its kind (see [`Error::Typed`]).
#[derive(Debug)]
pub struct TypedError {
    kind: ErrorKind,
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl TypedError {
    /// The kind the module gave its error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The typed error itself.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }
}

impl fmt::Display for TypedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for TypedError {
    /// The typed error's own cause: the wrapper is transparent.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// What the caller can change to get past an error. The library's message says what is wrong;
/// a front end names its own way of making the change (the CLI appends the flag that does it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Hint {
    /// Discard the sync state and compare every block with the target (a rescan).
    Rescan,
    /// Adopt a target that exists without a sync state by comparing every block with the
    /// source (a rescan).
    AdoptTarget,
    /// Use the block size the sync state recorded (give none).
    StateBlockSize,
    /// Name which of several volumes to work on (its partition number).
    ChoosePartition,
    /// Edit a dirty hive whose logs cannot be used, accepting that the logged data is lost.
    AcceptDataLoss,
    /// Open the files an image names wherever they are (the reference policy `Anywhere`).
    AllowReferences,
    /// Read an OVA without checking its manifest.
    SkipManifestCheck,
    /// Read an OVA disk whose size differs from the capacity its OVF declares.
    AllowCapacityMismatch,
    /// Write one disk of a package (its number) instead of all of them.
    ChooseDisk,
    /// Keep the sync state of a block device in a folder of your choice.
    StatePath,
}

/// An error with its [`Hint`] (see [`Error::Hinted`]).
#[derive(Debug)]
pub struct HintedError {
    hint: Hint,
    error: Box<Error>,
}

impl HintedError {
    /// The hint.
    pub fn hint(&self) -> Hint {
        self.hint
    }

    /// The error.
    pub fn error(&self) -> &Error {
        &self.error
    }
}

impl fmt::Display for HintedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for HintedError {
    /// The error's own cause: the wrapper is transparent.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.error.as_ref())
    }
}

/// An invalid or corrupt on-disk structure: the format, the structure, the byte offset where it
/// lies and what was expected and found, e.g. "qcow2 L2 table at 0x30000: entry 5 points past
/// the end of the file". The `Invalid`/`Corrupt` cases of every format's typed error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} {what} at {offset:#x}: {detail}")]
pub struct StructureError {
    /// [`ErrorKind::InvalidFormat`] (the bytes are not the structure they should be: bad magic,
    /// impossible field, bad checksum) or [`ErrorKind::Corrupt`] (well-formed but inconsistent
    /// with the rest of the image).
    pub kind: ErrorKind,
    /// The format or file system as messages name it: "qcow2", "VMDK", "VHD", "hive", "NTFS".
    pub format: &'static str,
    /// The structure, e.g. "header", "L2 table", "MFT record 5".
    pub what: String,
    /// Byte offset of the structure (or field) in its file or volume.
    pub offset: u64,
    /// What was expected and what was found.
    pub detail: String,
}

impl StructureError {
    /// The bytes are not a valid structure ([`ErrorKind::InvalidFormat`]).
    pub fn invalid(
        format: &'static str,
        what: impl Into<String>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        StructureError {
            kind: ErrorKind::InvalidFormat,
            format,
            what: what.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// A structure is inconsistent with the rest of the image ([`ErrorKind::Corrupt`]).
    pub fn corrupt(
        format: &'static str,
        what: impl Into<String>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        StructureError {
            kind: ErrorKind::Corrupt,
            ..StructureError::invalid(format, what, offset, detail)
        }
    }

    /// Whether the bytes are not the structure at all (rather than inconsistent).
    pub fn is_invalid(&self) -> bool {
        self.kind == ErrorKind::InvalidFormat
    }
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
            Error::Hinted(h) => h.error.kind(),
            Error::Typed(t) => t.kind,
            Error::InvalidFormat(_) => ErrorKind::InvalidFormat,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::ReferenceDenied { .. } => ErrorKind::ReferenceDenied,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Busy(_) => ErrorKind::Busy,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Wraps the typed error `error` of a module, whose kind is `kind` (what each module's
    /// `From<ItsError> for Error` does).
    pub fn typed(kind: ErrorKind, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Typed(TypedError {
            kind,
            error: Box::new(error),
        })
    }

    /// The typed error of type `T` inside this error (looking through [`Error::File`]
    /// wrappers), e.g. `e.downcast_ref::<NtfsError>()`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            Error::File { source, .. } => source.downcast_ref(),
            Error::Hinted(h) => h.error.downcast_ref(),
            Error::Typed(t) => t.error.downcast_ref(),
            _ => None,
        }
    }

    /// Attaches `hint` (what the caller can change to get past this error).
    pub fn with_hint(self, hint: Hint) -> Self {
        Error::Hinted(HintedError {
            hint,
            error: Box::new(self),
        })
    }

    /// The hint attached to this error or to one of its causes, if any: a refused reference
    /// always has [`Hint::AllowReferences`].
    pub fn hint(&self) -> Option<Hint> {
        match self {
            Error::File { source, .. } => source.hint(),
            Error::Hinted(h) => Some(h.hint),
            Error::ReferenceDenied { .. } => Some(Hint::AllowReferences),
            _ => {
                let mut cur = std::error::Error::source(self);
                while let Some(e) = cur {
                    if let Some(inner) = e.downcast_ref::<Error>() {
                        return inner.hint();
                    }
                    cur = e.source();
                }
                None
            }
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

    /// A typed error of some module, with a cause of its own.
    #[derive(Debug, thiserror::Error)]
    #[error("thing at 0x10: broken")]
    struct ThingError {
        #[source]
        cause: io::Error,
    }

    #[test]
    fn typed_errors_keep_kind_message_and_chain() {
        let e = Error::typed(
            ErrorKind::Corrupt,
            ThingError {
                cause: io::Error::other("disk said no"),
            },
        )
        .in_file("a.img");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(e.chain(), "a.img: thing at 0x10: broken: disk said no");
        assert!(e.downcast_ref::<ThingError>().is_some());
        assert!(e.downcast_ref::<StructureError>().is_none());
        let s = Error::typed(
            ErrorKind::InvalidFormat,
            StructureError::invalid("qcow2", "header", 0, "magic is wrong"),
        );
        assert_eq!(s.to_string(), "qcow2 header at 0x0: magic is wrong");
        assert_eq!(s.kind(), ErrorKind::InvalidFormat);
        let c = StructureError::corrupt("VHD", "BAT", 0x600, "entry 3 is past the end");
        assert_eq!(c.to_string(), "VHD BAT at 0x600: entry 3 is past the end");
        assert_eq!(c.kind, ErrorKind::Corrupt);
        assert!(!c.is_invalid());
        assert_eq!(Error::Busy("held".into()).kind(), ErrorKind::Busy);
        assert_eq!(
            Error::Internal("internal error: x".into()).kind(),
            ErrorKind::Internal
        );
    }

    #[test]
    fn a_hint_is_kept_through_files_and_prints_nothing() {
        let e = Error::InvalidArgument("two volumes".into())
            .with_hint(Hint::ChoosePartition)
            .in_file("a.img");
        assert_eq!(e.chain(), "a.img: two volumes");
        assert_eq!(e.hint(), Some(Hint::ChoosePartition));
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(Error::Cancelled.hint(), None);
        let t = Error::typed(
            ErrorKind::Corrupt,
            ThingError {
                cause: io::Error::other("disk said no"),
            },
        )
        .with_hint(Hint::Rescan);
        assert_eq!(t.chain(), "thing at 0x10: broken: disk said no");
        assert!(t.downcast_ref::<ThingError>().is_some());
        assert_eq!(t.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn in_file_is_attached_once() {
        let e = Error::Cancelled.in_file("a").in_file("b");
        assert_eq!(e.chain(), "a: cancelled");
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }
}
