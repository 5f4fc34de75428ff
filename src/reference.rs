//! The reference gate: how an image is opened, and the policy for files named inside it.
//!
//! An image can name other files: a qcow2 backing file or external data file, VMDK extents, a
//! VHD/VHDX/VDI parent. A hostile image could name `/etc/shadow` or a device, or a chain that
//! loops. Every such file is opened through [`OpenContext`], which applies the caller's
//! [`ReferencePolicy`], resolves relative names against the folder of the image that names them,
//! detects loops and limits the depth of a chain.
//!
//! This module sits below the formats and knows none of them: a context opens the images it
//! reaches through an [`ImageOpener`] it is given (the format registry,
//! [`crate::formats::registry::REGISTRY`], for every public entry point; a format that only
//! ever opens images of its own kind may pass a [`SingleFormat`]).

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result, ResultExt};
use crate::formats::Format;
use crate::image::{ImageReader, NamedReader};
use crate::storage::{FileStorage, Storage};

/// Which files named inside an image may be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReferencePolicy {
    /// Open none: an image that needs another file fails to open.
    Deny,
    /// Only files inside the folder of the image the caller opened (after resolving symlinks
    /// and `..`). The default.
    #[default]
    ImageFolder,
    /// Any file the process can read.
    Anywhere,
}

impl std::str::FromStr for ReferencePolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "deny" | "none" => Ok(ReferencePolicy::Deny),
            "folder" | "image-folder" => Ok(ReferencePolicy::ImageFolder),
            "anywhere" | "any" => Ok(ReferencePolicy::Anywhere),
            other => Err(Error::InvalidArgument(format!(
                "unknown reference policy '{other}' (expected deny, folder or anywhere)"
            ))),
        }
    }
}

/// Default limit on the length of a chain of images (crosvm uses the same bound).
pub const DEFAULT_MAX_DEPTH: u32 = 16;

/// How to open a package that holds a virtual machine rather than one disk (an OVA).
/// Other formats ignore these options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageOptions {
    /// Which disk to read, numbered from 1 in the order the package's descriptor lists them.
    /// `None`: the first, with a warning in [`ImageInfo::warnings`](crate::ImageInfo) when
    /// there are more.
    pub disk: Option<usize>,
    /// Check the manifest's digests of the descriptor and of the disk before using them
    /// (default `true`): a mismatch is an error. Costs one extra sequential read of the disk's
    /// member (see README "OVA packages"). When `false`, nothing is hashed.
    pub verify_manifest: bool,
    /// Accept a disk whose virtual size differs from the capacity the descriptor declares
    /// (default `false`: an error). When `true`, the difference is a warning.
    pub allow_capacity_mismatch: bool,
    /// Also open the disks that are not read, to report their real sizes and formats in
    /// [`ImageInfo::package`](crate::ImageInfo) (their capacities are checked as warnings).
    /// Default `false`.
    pub describe_all_disks: bool,
}

impl Default for PackageOptions {
    fn default() -> Self {
        PackageOptions {
            disk: None,
            verify_manifest: true,
            allow_capacity_mismatch: false,
            describe_all_disks: false,
        }
    }
}

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Force a format instead of detecting it from the content.
    pub format: Option<Format>,
    /// Policy for files named inside the image.
    pub references: ReferencePolicy,
    /// Maximum number of images in a chain below the top one.
    pub max_depth: u32,
    /// Read this internal snapshot (by id or name) instead of the active layer.
    pub snapshot: Option<String>,
    /// Disk selection, manifest and capacity checks of packages (OVA).
    pub package: PackageOptions,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            references: ReferencePolicy::default(),
            max_depth: DEFAULT_MAX_DEPTH,
            snapshot: None,
            package: PackageOptions::default(),
        }
    }
}

impl OpenOptions {
    /// Default options: detect the format, references under the image's folder, depth 16.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forces the format.
    pub fn format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// Sets the reference policy.
    pub fn references(mut self, policy: ReferencePolicy) -> Self {
        self.references = policy;
        self
    }

    /// Selects an internal snapshot by id or name.
    pub fn snapshot(mut self, name: impl Into<String>) -> Self {
        self.snapshot = Some(name.into());
        self
    }

    /// Selects disk `n` (from 1) of a package (OVA).
    pub fn disk(mut self, n: usize) -> Self {
        self.package.disk = Some(n);
        self
    }

    /// Turns the manifest check of packages on (the default) or off.
    pub fn verify_manifest(mut self, on: bool) -> Self {
        self.package.verify_manifest = on;
        self
    }

    /// Accepts (as a warning) a package disk whose size differs from its declared capacity.
    pub fn allow_capacity_mismatch(mut self, on: bool) -> Self {
        self.package.allow_capacity_mismatch = on;
        self
    }
}

/// What a context calls to detect and open the images it reaches: the format registry, or a
/// narrower table. It is the only way this module, which sits below the formats, opens an
/// image.
pub trait ImageOpener: fmt::Debug + Sync {
    /// The format of the image in `storage`, from its content.
    fn detect(&self, storage: &dyn Storage) -> Result<Format>;

    /// Opens the image in `storage` (found at `path` when it has one) as `format`, or as the
    /// format its content shows when `None`; `snapshot` selects an internal snapshot.
    fn open(
        &self,
        ctx: &OpenContext<'_>,
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        format: Option<Format>,
        snapshot: Option<&str>,
    ) -> Result<Box<dyn ImageReader>>;

    /// Opens an image stored inside another one (a disk member of a package) as `format`;
    /// a package inside a package is refused.
    fn open_member(
        &self,
        ctx: &OpenContext<'_>,
        storage: Arc<dyn Storage>,
        format: Format,
    ) -> Result<Box<dyn ImageReader>>;
}

/// The opener of a context that was given none: every image it would open is an internal
/// error (a caller forgot [`OpenContext::with_opener`]).
#[derive(Debug)]
struct NoOpener;

impl NoOpener {
    fn fault() -> Error {
        Error::Internal("internal error: this open context has no image opener".into())
    }
}

impl ImageOpener for NoOpener {
    fn detect(&self, _: &dyn Storage) -> Result<Format> {
        Err(Self::fault())
    }

    fn open(
        &self,
        _: &OpenContext<'_>,
        _: Arc<dyn Storage>,
        _: Option<&Path>,
        _: Option<Format>,
        _: Option<&str>,
    ) -> Result<Box<dyn ImageReader>> {
        Err(Self::fault())
    }

    fn open_member(
        &self,
        _: &OpenContext<'_>,
        _: Arc<dyn Storage>,
        _: Format,
    ) -> Result<Box<dyn ImageReader>> {
        Err(Self::fault())
    }
}

/// The constructor of one format's reader, as a [`SingleFormat`] calls it.
pub type ReaderFn =
    fn(Arc<dyn Storage>, Option<&Path>, &OpenContext<'_>) -> Result<Box<dyn ImageReader>>;

/// An opener for one format only: for code of a format that opens images of its own kind
/// (the parent of a differencing image, whose format is always forced) without going
/// through the registry above it. Anything else is an internal error.
#[derive(Debug)]
pub struct SingleFormat {
    format: Format,
    reader: ReaderFn,
}

impl SingleFormat {
    /// An opener of `format` images made by `reader`.
    pub const fn new(format: Format, reader: ReaderFn) -> Self {
        SingleFormat { format, reader }
    }

    fn other(&self, what: &str) -> Error {
        Error::Internal(format!(
            "internal error: a {} opener was asked to open {what}",
            self.format
        ))
    }
}

impl ImageOpener for SingleFormat {
    fn detect(&self, _: &dyn Storage) -> Result<Format> {
        Err(self.other("an image of unknown format"))
    }

    fn open(
        &self,
        ctx: &OpenContext<'_>,
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        format: Option<Format>,
        snapshot: Option<&str>,
    ) -> Result<Box<dyn ImageReader>> {
        match format {
            Some(f) if f == self.format => {
                if snapshot.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "internal snapshots exist only in qcow2 images, this is {f}"
                    )));
                }
                (self.reader)(storage, path, ctx)
            }
            Some(f) => Err(self.other(&format!("a {f} image"))),
            None => Err(self.other("an image of unknown format")),
        }
    }

    fn open_member(
        &self,
        _: &OpenContext<'_>,
        _: Arc<dyn Storage>,
        format: Format,
    ) -> Result<Box<dyn ImageReader>> {
        Err(self.other(&format!("a {format} package member")))
    }
}

/// Opens the image at `path` for reading, as [`open`](crate::open()) does, detecting and
/// opening images through `opener`.
pub fn open_top(
    path: &Path,
    opts: &OpenOptions,
    opener: &'static dyn ImageOpener,
) -> Result<Box<dyn ImageReader>> {
    let (ctx, _) = OpenContext::for_top(path, opts)?;
    ctx.with_opener(opener)
        .open_path(path, opts.format, opts.snapshot.as_deref())
}

/// State carried down a chain of images while opening it.
#[derive(Debug, Clone)]
pub struct OpenContext<'a> {
    opts: &'a OpenOptions,
    /// Folder that references must stay inside (the folder of the top image).
    root: Option<PathBuf>,
    /// Canonical paths of the images above the one being opened, top first.
    chain: Vec<PathBuf>,
    /// How the images it reaches are detected and opened.
    opener: &'static dyn ImageOpener,
}

impl<'a> OpenContext<'a> {
    /// The context for opening the image at `path` (the top of a chain): references are
    /// confined to its folder. Returns the canonical path too.
    pub(crate) fn for_top(path: &Path, opts: &'a OpenOptions) -> Result<(Self, PathBuf)> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| Error::io("opening", e))
            .in_file(path)?;
        let root = canonical
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let ctx = OpenContext {
            opts,
            root: Some(root),
            chain: Vec::new(),
            opener: &NoOpener,
        };
        Ok((ctx, canonical))
    }

    /// The context for looking at the image at `path` itself (a check, not an open): references
    /// are confined to its folder and the image counts as entered, so a file naming itself is
    /// a loop. Returns the canonical path too.
    pub(crate) fn for_image(path: &Path, opts: &'a OpenOptions) -> Result<(Self, PathBuf)> {
        let (mut ctx, canonical) = Self::for_top(path, opts)?;
        ctx.chain.push(canonical.clone());
        Ok((ctx, canonical))
    }

    /// A context for an image that has no folder (held in memory): every file it names is
    /// refused.
    pub(crate) fn detached(opts: &'a OpenOptions) -> Self {
        OpenContext {
            opts,
            root: None,
            chain: Vec::new(),
            opener: &NoOpener,
        }
    }

    /// The same context, detecting and opening the images it reaches through `opener`.
    /// A context made without one fails (with an internal error) to open any image.
    pub fn with_opener(mut self, opener: &'static dyn ImageOpener) -> Self {
        self.opener = opener;
        self
    }

    /// Counts the image at `canonical` as entered: a file below it naming it is a loop.
    pub(crate) fn enter(&mut self, canonical: PathBuf) {
        self.chain.push(canonical);
    }

    /// The format of the image in `storage`, from its content (as the opener detects it).
    pub fn detect(&self, storage: &dyn Storage) -> Result<Format> {
        self.opener.detect(storage)
    }

    /// Number of images above the one being opened.
    pub fn depth(&self) -> u32 {
        self.chain.len() as u32
    }

    /// The options the caller gave.
    pub fn options(&self) -> &OpenOptions {
        self.opts
    }

    /// Opens an image stored inside the current one (a disk member of a package) as
    /// `format`. It has no folder: any file it names is refused. A package inside a package
    /// is refused.
    pub fn open_member(
        &self,
        storage: Arc<dyn Storage>,
        format: Format,
    ) -> Result<Box<dyn ImageReader>> {
        self.opener.open_member(self, storage, format)
    }

    /// The reference policy in force (a format that must search for a file, such as the
    /// parent of a differencing VDI, does not search when it is [`ReferencePolicy::Deny`]).
    pub fn references(&self) -> ReferencePolicy {
        self.opts.references
    }

    /// Opens the image at `path` (the top of a chain, or a reference already resolved): a
    /// loop is refused, the file is opened read-only, and errors name `path`.
    pub(crate) fn open_path(
        &self,
        path: &Path,
        format: Option<Format>,
        snapshot: Option<&str>,
    ) -> Result<Box<dyn ImageReader>> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| Error::io("opening", e))
            .in_file(path)?;
        if self.chain.contains(&canonical) {
            let mut names: Vec<String> =
                self.chain.iter().map(|p| p.display().to_string()).collect();
            names.push(canonical.display().to_string());
            return Err(Error::Corrupt(format!(
                "the chain of images loops: {}",
                names.join(" -> ")
            )));
        }
        let storage = FileStorage::open_read_only(&canonical)
            .map_err(|e| Error::io("opening read-only", e))
            .in_file(path)?;
        let mut child = self.clone();
        child.chain.push(canonical.clone());
        let reader = child
            .open_storage(Arc::new(storage), Some(&canonical), format, snapshot)
            .in_image(path)?;
        // Errors of later maps and reads name the file too.
        Ok(Box::new(NamedReader::new(reader, path)))
    }

    /// Opens the image in `storage` through the opener (see [`ImageOpener::open`]).
    pub(crate) fn open_storage(
        &self,
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        format: Option<Format>,
        snapshot: Option<&str>,
    ) -> Result<Box<dyn ImageReader>> {
        self.opener.open(self, storage, path, format, snapshot)
    }

    /// Resolves `name`, as written inside the image at `referrer`, to a path the policy allows.
    pub fn resolve_reference(
        &self,
        referrer: Option<&Path>,
        what: &'static str,
        name: &str,
    ) -> Result<PathBuf> {
        let denied = |reason: String| Error::ReferenceDenied {
            what,
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(Error::Corrupt(format!("the {what} name is empty")));
        }
        if name.contains('\0') {
            return Err(Error::Corrupt(format!(
                "the {what} name contains a NUL byte"
            )));
        }
        if name.starts_with("json:") || name.contains("://") {
            return Err(Error::Unsupported(format!(
                "{what} '{name}' is not a file name (protocols and json: names are not supported)"
            )));
        }
        if self.opts.references == ReferencePolicy::Deny {
            return Err(denied("not opened because references are denied".into()));
        }
        let (Some(referrer), Some(root)) = (referrer, self.root.as_ref()) else {
            return Err(denied(
                "named by an image that has no folder (opened from memory)".into(),
            ));
        };
        if self.depth() > self.opts.max_depth {
            return Err(Error::Corrupt(format!(
                "the chain of images is deeper than {} levels at {what} '{name}'",
                self.opts.max_depth
            )));
        }
        let base = referrer.parent().unwrap_or(Path::new("/"));
        let joined = base.join(name);
        let resolved = std::fs::canonicalize(&joined).map_err(|e| {
            Error::io(
                format!("opening {what} '{name}' (resolved to {})", joined.display()),
                e,
            )
        })?;
        if self.opts.references == ReferencePolicy::ImageFolder && !resolved.starts_with(root) {
            return Err(denied(format!(
                "outside the image's folder {} (it resolves to {})",
                root.display(),
                resolved.display()
            )));
        }
        Ok(resolved)
    }

    /// Opens another image named inside the current one (a backing file or parent).
    pub fn open_reference(
        &self,
        referrer: Option<&Path>,
        what: &'static str,
        name: &str,
        format: Option<Format>,
    ) -> Result<Box<dyn ImageReader>> {
        let path = self.resolve_reference(referrer, what, name)?;
        // Snapshots apply to the top image only.
        self.open_path(&path, format, None)
    }

    /// Opens a plain file named inside the current image (an external data file, an extent).
    pub fn open_reference_storage(
        &self,
        referrer: Option<&Path>,
        what: &'static str,
        name: &str,
    ) -> Result<Arc<dyn Storage>> {
        let path = self.resolve_reference(referrer, what, name)?;
        let s = FileStorage::open_read_only(&path)
            .map_err(|e| Error::io(format!("opening {what} read-only"), e))
            .in_file(&path)?;
        Ok(Arc::new(s))
    }
}

/// Whether a name, as written inside an image, climbs out of its folder lexically.
/// Used by writers that must not record such names.
pub fn is_plain_relative(name: &str) -> bool {
    let p = Path::new(name);
    p.components().all(|c| matches!(c, Component::Normal(_)))
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

    #[test]
    fn policy_parses() {
        assert_eq!(
            "deny".parse::<ReferencePolicy>().unwrap(),
            ReferencePolicy::Deny
        );
        assert_eq!(
            "anywhere".parse::<ReferencePolicy>().unwrap(),
            ReferencePolicy::Anywhere
        );
        assert!("x".parse::<ReferencePolicy>().is_err());
    }

    #[test]
    fn references_outside_folder_are_denied_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("outside"), b"x").unwrap();
        std::fs::write(sub.join("inside"), b"x").unwrap();
        let top = sub.join("top");
        std::fs::write(&top, b"x").unwrap();
        let opts = OpenOptions::default();
        let ctx = OpenContext {
            opts: &opts,
            root: Some(std::fs::canonicalize(&sub).unwrap()),
            chain: vec![],
            opener: &NoOpener,
        };
        assert!(
            ctx.resolve_reference(Some(&top), "backing file", "inside")
                .is_ok()
        );
        let err = ctx
            .resolve_reference(Some(&top), "backing file", "../outside")
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ReferenceDenied);
        // The library says what is wrong; the CLI turns the hint into its flag.
        assert!(!err.to_string().contains("--"), "{err}");
        assert_eq!(err.hint(), Some(crate::error::Hint::AllowReferences));
        let abs = dir.path().join("outside");
        let err = ctx
            .resolve_reference(Some(&top), "backing file", abs.to_str().unwrap())
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ReferenceDenied);
        let any = OpenOptions::default().references(ReferencePolicy::Anywhere);
        let ctx = OpenContext { opts: &any, ..ctx };
        assert!(
            ctx.resolve_reference(Some(&top), "backing file", "../outside")
                .is_ok()
        );
    }

    #[test]
    fn symlink_escaping_the_folder_is_denied() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), sub.join("link")).unwrap();
        let top = sub.join("top");
        std::fs::write(&top, b"x").unwrap();
        let opts = OpenOptions::default();
        let ctx = OpenContext {
            opts: &opts,
            root: Some(std::fs::canonicalize(&sub).unwrap()),
            chain: vec![],
            opener: &NoOpener,
        };
        let err = ctx
            .resolve_reference(Some(&top), "backing file", "link")
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ReferenceDenied);
    }

    #[test]
    fn plain_relative_names() {
        assert!(is_plain_relative("a.qcow2"));
        assert!(is_plain_relative("d/a.qcow2"));
        assert!(!is_plain_relative("../a.qcow2"));
        assert!(!is_plain_relative("/a.qcow2"));
    }

    fn raw_reader(
        storage: Arc<dyn Storage>,
        path: Option<&Path>,
        _: &OpenContext<'_>,
    ) -> Result<Box<dyn ImageReader>> {
        Ok(Box::new(crate::formats::raw::RawReader::new(
            storage, path,
        )?))
    }

    static RAW_ONLY: SingleFormat = SingleFormat::new(crate::formats::RAW, raw_reader);

    #[test]
    fn a_context_opens_only_through_its_opener() {
        let opts = OpenOptions::default();
        let mem =
            || -> Arc<dyn Storage> { Arc::new(crate::storage::MemStorage::from_vec(vec![0; 512])) };
        // Without an opener, opening anything is an internal error, never a wrong format.
        let bare = OpenContext::detached(&opts);
        let e = fails(bare.open_storage(mem(), None, None, None));
        assert_eq!(e.kind(), crate::ErrorKind::Internal, "{e}");
        assert_eq!(
            bare.detect(mem().as_ref()).unwrap_err().kind(),
            crate::ErrorKind::Internal
        );
        // A single-format opener opens its format, refuses every other one and detection.
        let ctx = OpenContext::detached(&opts).with_opener(&RAW_ONLY);
        let r = ctx
            .open_storage(mem(), None, Some(crate::formats::RAW), None)
            .unwrap();
        assert_eq!(r.virtual_size(), 512);
        let other = "qcow2".parse().unwrap();
        let e = fails(ctx.open_storage(mem(), None, Some(other), None));
        assert_eq!(e.kind(), crate::ErrorKind::Internal, "{e}");
        assert!(
            e.to_string()
                .contains("a raw opener was asked to open a qcow2 image"),
            "{e}"
        );
        assert!(ctx.open_storage(mem(), None, None, None).is_err());
        assert!(ctx.open_member(mem(), crate::formats::RAW).is_err());
        let e = fails(ctx.open_storage(mem(), None, Some(crate::formats::RAW), Some("s")));
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    }
}
