//! The pass engine: one sync pass from a source image to an in-place updated target, resumable
//! after a crash at any moment.
//!
//! # Crash safety
//!
//! The pass walks the disk in windows (at most 256 MiB of candidate blocks, at most 2^20 blocks
//! of disk). For a window with blocks to write:
//! 1. the state file is replaced (atomically) with `pending = the window`;
//! 2. the changed blocks are written to the target and the updater is flushed;
//! 3. their new fingerprints are written to the fingerprint file, which is synced;
//! 4. the state file is replaced with `position = end of window`, nothing pending.
//!
//! A kill anywhere leaves a state whose pending window (if any) has its candidate blocks
//! rewritten from the source on the next run, whatever the fingerprints say, before the pass
//! continues (only candidates are ever written, so they cover whatever was half-written);
//! blocks before the position have their target bytes and their fingerprints durable. So a
//! resumed pass ends with a target identical to the source (as it was read).
//!
//! # Target identity
//!
//! The state records the target's device and inode numbers. An in-place update keeps them; a
//! target replaced by another file (a copy, a re-conversion, a restore) gets a new inode, which
//! is refused before anything is written. A header fingerprint would not work for raw targets
//! (their first bytes are guest data, changed by every pass), and a random id stored inside the
//! target is impossible for raw; the inode is cheap and covers every format alike. The state
//! also records the target's identity: a local target's canonical path, or the id the caller
//! gives a [`SyncTarget::Storage`] (a remote disk has no inode); a state of another target is
//! refused.
//!
//! # Targets changed behind the sync's back
//!
//! Before a pass that trusts the stored fingerprints (every pass after the first, and a
//! resumed one) writes anything, a sample of target blocks (the first, the last, about 14
//! pseudo-randomly chosen ones; for a remote target 128 KiB of them, so that the check does not
//! cost more network traffic than a small pass) is read and hashed as the pass hashes the source: a block that
//! no longer holds what the last pass wrote refuses the pass (a rescan repairs the target).

use std::fs;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use crate::error::{Error, Hint, Result};
use crate::files::{ImageLock, OutputFiles};
use crate::formats::RAW;
use crate::image::{
    Format, ImageReader, ImageUpdater, data_ranges, read_ranges, read_skipping_holes,
};
use crate::open::{OpenOptions, PackageOptions, ReferencePolicy, open};
use crate::output::{OutputOptions, create_writer};
use crate::sync::bitmap::BlockBitmap;
use crate::sync::state::{FpFile, PassKind, RunningPass, SyncState, fp_path, is_block_device};
use crate::sync::target::{SyncSource, SyncTarget, open_target, state_place};
use crate::util::{human_bytes, is_zero, random_bytes16};
use crate::verify::{BlockSizes, check_block_size};

/// The initial fingerprint of every block when the target's content is unknown (a block device
/// holding old data): it matches no block, so every block is written.
const UNKNOWN_FINGERPRINT: u128 = 0;

/// Default block size: 64 KiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 10;
/// Largest block size accepted (the same as `verify`'s).
pub const MAX_BLOCK_SIZE: u64 = crate::verify::MAX_BLOCK_SIZE;
/// Default candidate bytes per crash-safety window (what a crash may force the next run to
/// rewrite): large enough that the fsyncs of a commit are rare next to the reads.
pub const DEFAULT_WINDOW_BYTES: u64 = 256 << 20;
/// Blocks a window spans at most (sparse candidates: a bitmap pass).
const MAX_SPAN: u64 = 1 << 20;
/// Bytes read and hashed by one worker at once: small enough that a piece is hashed while it is
/// still in the core's cache.
const PIECE_BYTES: u64 = 256 << 10;
/// Bytes of the source scanned in one parallel batch before its changed blocks are written:
/// enough pieces that the workers stay busy whatever mix of holes and data they get (smaller
/// batches left a core idle at each join: 15 % slower scans), and the bound on the memory
/// holding blocks waiting to be written.
const BATCH_BYTES: u64 = 32 << 20;

/// Progress callback: blocks done, blocks in the disk.
pub type SyncProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to run a pass.
#[derive(Clone)]
pub struct SyncOptions {
    /// Bytes per block (power of two, 4 KiB to 64 MiB). `None`: the state's block size, or
    /// [`DEFAULT_BLOCK_SIZE`] for a new sync.
    pub block_size: Option<u64>,
    /// The state file (default `<dst>.dcsync`; the fingerprints go to `<state>.fp`).
    pub state_path: Option<PathBuf>,
    /// The source's format (detected when `None`).
    pub source_format: Option<Format>,
    /// Which backing/data files of the source may be opened.
    pub references: ReferencePolicy,
    /// Disk selection and checks when the source is a package (an OVA).
    pub source_package: PackageOptions,
    /// Format of a new target (default: from the target's extension, raw when unknown).
    pub output_format: Option<Format>,
    /// Take the changed blocks from this qcow2 persistent dirty bitmap of the source.
    pub bitmap: Option<String>,
    /// Take the changed blocks from these byte ranges of the source.
    pub changed_ranges: Option<Vec<Range<u64>>>,
    /// On a damaged or mismatched state (or a target without a state), discard it and run a
    /// full rescan comparing every block of the source with the target.
    pub rescan_on_bad_state: bool,
    /// Set from any thread to stop the pass (the next pass resumes it).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called after each window.
    pub progress: Option<SyncProgress>,
    /// Longest time between progress checkpoints of windows that wrote nothing.
    pub checkpoint_interval: Duration,
    /// Candidate bytes per crash-safety window: the target is flushed and the progress
    /// committed after each window that wrote something; a crash makes the next run rewrite
    /// the candidates of one window at most.
    pub window_bytes: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            block_size: None,
            state_path: None,
            source_format: None,
            references: ReferencePolicy::default(),
            source_package: PackageOptions::default(),
            output_format: None,
            bitmap: None,
            changed_ranges: None,
            rescan_on_bad_state: false,
            cancel: None,
            progress: None,
            checkpoint_interval: Duration::from_secs(5),
            window_bytes: DEFAULT_WINDOW_BYTES,
        }
    }
}

/// Where a pass took its changed blocks from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeSource {
    /// First pass: a full copy.
    Full,
    /// A qcow2 persistent dirty bitmap, by name.
    Bitmap(String),
    /// Ranges from the calling program.
    Ranges,
    /// A fingerprint scan of the whole source.
    Scan,
    /// State discarded: every block compared with the target's content.
    Rescan,
    /// An interrupted pass, finished.
    Resume,
}

impl std::fmt::Display for ChangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeSource::Full => f.write_str("full"),
            ChangeSource::Bitmap(n) => write!(f, "bitmap '{n}'"),
            ChangeSource::Ranges => f.write_str("ranges"),
            ChangeSource::Scan => f.write_str("scan"),
            ChangeSource::Rescan => f.write_str("rescan"),
            ChangeSource::Resume => f.write_str("resume"),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassReport {
    /// Pass number (1 = the first, full pass).
    pub pass: u64,
    /// Where the candidate blocks came from.
    pub source: ChangeSource,
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks in the disk.
    pub blocks_total: u64,
    /// Blocks looked at (candidates).
    pub blocks_scanned: u64,
    /// Blocks whose fingerprint differed from the stored one.
    pub blocks_changed: u64,
    /// Blocks written to the target (changed ones, plus the interrupted window on resume).
    pub blocks_written: u64,
    /// Bytes read from the source (holes are not read).
    pub bytes_read: u64,
    /// Bytes written to the target (zero blocks included, as write_zeroes):
    /// `bytes_written_data + bytes_written_zeroes`.
    pub bytes_written: u64,
    /// Bytes sent to the target as data writes.
    pub bytes_written_data: u64,
    /// Bytes sent to the target as zero writes (write_zeroes: no data crosses).
    pub bytes_written_zeroes: u64,
    /// Bytes of the target read to check that it still holds what the last pass wrote (a
    /// sample of blocks, before an incremental or resumed pass).
    pub target_bytes_checked: u64,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
    /// Bytes read per second, in MB/s (10^6).
    pub mb_per_s: f64,
}

fn bad_state(state: &Path, why: String) -> Error {
    Error::InvalidArgument(format!("sync state {}: {why}", state.display()))
}

/// The format a new target gets: `explicit`, else the one its extension asks for, else raw
/// ([`format_for_output`](crate::formats::registry::format_for_output), the rule `convert`
/// follows too). A name such as `x.ova` asks for a
/// format that cannot be a sync target: [`check_updatable`] refuses it.
pub fn target_format(dst: &Path, explicit: Option<Format>) -> Format {
    crate::formats::registry::format_for_output(dst, explicit)
}

/// Refuses, before anything is written, a target format that cannot be updated in place
/// (OVA): the caller syncs to an updatable format and converts the result at the end.
pub fn check_updatable(format: Format) -> Result<()> {
    crate::formats::registry::check_updatable(format)
}

/// Creates an empty target in a variant of `format` that [`open_updater`] can update: qcow2
/// uncompressed, VHD, VHDX and VDI dynamic, VMDK monolithicSparse (never streamOptimized).
fn create_target(dst: &Path, size: u64, format: Format) -> Result<()> {
    check_updatable(format)?;
    let opts = OutputOptions::new(format).with_options(format.row().sync_target_options)?;
    let mut files = OutputFiles::new(dst);
    let w = create_writer(&mut files, size, &opts).map_err(|e| e.in_file(dst))?;
    w.finish().map_err(|e| e.in_file(dst))?;
    files.commit()
}

fn dev_ino(path: &Path) -> Result<(u64, u64)> {
    let m = fs::metadata(path)
        .map_err(|e| Error::io("reading the target's metadata", e).in_file(path))?;
    Ok((m.dev(), m.ino()))
}

fn head_hash(src: &dyn ImageReader) -> Result<u128> {
    let n = src.virtual_size().min(1 << 20) as usize;
    let mut buf = vec![0u8; n];
    read_skipping_holes(src, &mut buf, 0)?;
    Ok(xxh3_128(&buf))
}

/// Whether `p` exists (through symbolic links: a dangling link's target is created).
fn exists(p: &Path) -> bool {
    fs::metadata(p).is_ok()
}

/// Opens the source of a pass (a path is opened; a reader is borrowed), with its identity,
/// and with a bitmap pass the ranges its bitmap marks changed.
#[allow(clippy::type_complexity)]
fn open_source<'a>(
    src: &'a SyncSource,
    opts: &SyncOptions,
) -> Result<(Source<'a>, String, Option<Vec<Range<u64>>>)> {
    let (reader, id) = match src {
        SyncSource::Path(src_path) => {
            let mut oo = OpenOptions::new().references(opts.references);
            oo.package = opts.source_package.clone();
            if let Some(f) = opts.source_format {
                oo = oo.format(f);
            }
            let r = open(src_path, &oo)?;
            // An NBD source is identified by its URI without TLS settings.
            let abs = match crate::net::NbdUri::parse_path(src_path) {
                Some(uri) => uri.id(),
                None => fs::canonicalize(src_path)
                    .map_err(|e| Error::io("resolving the source path", e).in_file(src_path))?
                    .to_string_lossy()
                    .into_owned(),
            };
            (Source::Owned(r), abs)
        }
        SyncSource::Reader { reader, id } => (Source::Borrowed(reader.as_ref()), id.clone()),
    };
    let dirty = match &opts.bitmap {
        Some(name) => Some(reader.get().dirty_ranges(name)?),
        None => None,
    };
    Ok((reader, id, dirty))
}

/// The source of a pass: opened by it, or the caller's.
enum Source<'a> {
    Owned(Box<dyn ImageReader>),
    Borrowed(&'a dyn ImageReader),
}

impl Source<'_> {
    fn get(&self) -> &dyn ImageReader {
        match self {
            Source::Owned(b) => b.as_ref(),
            Source::Borrowed(r) => *r,
        }
    }
}

/// What kind of place a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TgtKind {
    /// A local image file.
    File,
    /// A local block device.
    Device,
    /// A raw disk handed in as storage.
    Remote,
}

/// A target with what a pass needs to know of it.
struct Tgt<'a> {
    target: &'a SyncTarget,
    kind: TgtKind,
    /// Its name in messages.
    name: String,
    /// Its identity as recorded in the state (a local target's canonical path).
    id: String,
}

impl<'a> Tgt<'a> {
    fn new(target: &'a SyncTarget) -> Tgt<'a> {
        let (kind, id) = match target {
            SyncTarget::Path(p) => {
                let kind = if is_block_device(p) {
                    TgtKind::Device
                } else {
                    TgtKind::File
                };
                (kind, local_id(p))
            }
            SyncTarget::Storage { id, .. } => (TgtKind::Remote, id.clone()),
        };
        Tgt {
            target,
            kind,
            name: target.name(),
            id,
        }
    }

    /// The local path, if the target has one.
    fn path(&self) -> Option<&'a Path> {
        match self.target {
            SyncTarget::Path(p) => Some(p),
            SyncTarget::Storage { .. } => None,
        }
    }

    /// A raw disk of fixed size whose old content is unknown.
    fn fixed(&self) -> bool {
        self.kind != TgtKind::File
    }

    fn exists(&self) -> bool {
        self.path().is_none_or(exists)
    }

    /// The error `e`, naming the target.
    fn named(&self, e: Error) -> Error {
        match self.path() {
            Some(p) => e.in_file(p),
            None => e.in_file(&self.name),
        }
    }
}

/// The identity recorded for a local target: its canonical path (for one not created yet, the
/// canonical path of its folder joined with its name).
fn local_id(p: &Path) -> String {
    let canon = fs::canonicalize(p).ok().or_else(|| {
        let name = p.file_name()?;
        fs::canonicalize(crate::files::folder_of(p))
            .ok()
            .map(|d| d.join(name))
    });
    canon
        .or_else(|| std::path::absolute(p).ok())
        .unwrap_or_else(|| p.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// The refusal of a state recorded for another target.
fn other_target(state_path: &Path, recorded: &str, t: &Tgt<'_>) -> Error {
    let recorded = if recorded.is_empty() {
        "another file".to_string()
    } else {
        recorded.to_string()
    };
    Error::InvalidArgument(format!(
        "sync state {} belongs to target {recorded}, not {}",
        state_path.display(),
        t.id
    ))
    .with_hint(Hint::Rescan)
}

/// What the next pass of an existing sync compares: the interrupted pass's candidates when
/// one is to be resumed, else the blocks the bitmap (`dirty`) or the changed ranges mark, else
/// every block. A new pass is recorded in the state before anything is done.
fn next_pass(
    st: &mut SyncState,
    dirty: Option<Vec<Range<u64>>>,
    src_size: u64,
    state_path: &Path,
    opts: &SyncOptions,
) -> Result<ChangeSource> {
    Ok(match &st.running {
        Some(_) => ChangeSource::Resume,
        None => {
            let mut cand = BlockBitmap::new(src_size, st.block_size)?;
            let (kind, source) = if let Some(r) = dirty {
                for x in r {
                    cand.set_range(x.start.min(src_size)..x.end.min(src_size));
                }
                (
                    PassKind::Bitmap,
                    ChangeSource::Bitmap(opts.bitmap.clone().unwrap_or_default()),
                )
            } else if let Some(r) = &opts.changed_ranges {
                for x in r {
                    if x.start > x.end || x.end > src_size {
                        return Err(Error::InvalidArgument(format!(
                            "changed range {:#x}..{:#x} is outside the {src_size}-byte source",
                            x.start, x.end
                        )));
                    }
                    cand.set_range(x.clone());
                }
                (PassKind::Ranges, ChangeSource::Ranges)
            } else {
                cand.set_all();
                (PassKind::Scan, ChangeSource::Scan)
            };
            st.running = Some(RunningPass {
                kind,
                candidates: cand,
                position: 0,
                pending: (0, 0),
            });
            // Recorded before anything is done, so an interrupted pass is resumed
            // with the same candidates (a bitmap pass, say) whatever the next run asks.
            st.save(state_path)?;
            source
        }
    })
}

/// Starts a sync without a usable state: a new target is created, an existing one adopted
/// (a rescan compares every block with it), a block device or a storage target written whole.
/// The state is saved before the target is created.
#[allow(clippy::too_many_arguments)]
fn new_sync(
    t: &Tgt<'_>,
    rescan: bool,
    state_path: &Path,
    fpp: &Path,
    src_format: &str,
    src_size: u64,
    src_id: &str,
    opts: &SyncOptions,
) -> Result<(SyncState, FpFile, ChangeSource)> {
    // A new sync, or an adopted target (rescan).
    let bs = opts.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    let blocks = src_size.div_ceil(bs);
    let target_exists = t.exists();
    // A block device (or storage) without a state gets a full pass that writes every block
    // (its old content is unknown); no --rescan needed to write over it.
    if target_exists && !t.fixed() && !(rescan || opts.rescan_on_bad_state) {
        return Err(Error::InvalidArgument(format!(
            "{} exists but has no sync state ({})",
            t.name,
            state_path.display()
        ))
        .with_hint(Hint::AdoptTarget));
    }
    let sync_id = random_bytes16();
    let zero_fp = zero_fingerprint(bs);
    let mut cand = BlockBitmap::new(src_size, bs)?;
    cand.set_all();
    let mut initial_fp = zero_fp;
    let (tgt_format, tgt_size, kind, source) = if t.fixed() && !rescan {
        let up = open_target(t.target, Some(RAW))?;
        if up.virtual_size() < src_size {
            let what = match t.kind {
                TgtKind::Remote => format!("the sync target {}", t.name),
                _ => "the block device".to_string(),
            };
            let e = Error::InvalidArgument(format!(
                "{what} holds {} bytes ({}), less than the {src_size} bytes ({}) of the source",
                up.virtual_size(),
                human_bytes(up.virtual_size()),
                human_bytes(src_size)
            ));
            return Err(match t.path() {
                Some(p) => e.in_file(p),
                None => e,
            });
        }
        // No block's fingerprint is this value (in practice: 2^-128), so the full pass
        // writes every block, zero blocks as zeros.
        initial_fp = UNKNOWN_FINGERPRINT;
        (RAW, up.virtual_size(), PassKind::Full, ChangeSource::Full)
    } else if target_exists {
        let up = open_target(t.target, t.fixed().then_some(RAW))?;
        if let Some(f) = opts.output_format.filter(|f| *f != up.format()) {
            return Err(Error::InvalidArgument(format!(
                "{} is a {} image; an output format ({f}) applies only to a new target",
                t.name,
                up.format()
            )));
        }
        if up.virtual_size() < src_size {
            return Err(Error::InvalidArgument(format!(
                "{} holds {} bytes, less than the {src_size}-byte source",
                t.name,
                up.virtual_size()
            )));
        }
        (
            up.format(),
            up.virtual_size(),
            PassKind::Rescan,
            ChangeSource::Rescan,
        )
    } else {
        let dst = t.path().ok_or_else(|| {
            Error::InvalidArgument(format!("the sync target {} does not exist", t.name))
        })?;
        let f = target_format(dst, opts.output_format);
        check_updatable(f)?;
        (f, 0, PassKind::Full, ChangeSource::Full)
    };
    let fp = FpFile::create(fpp, &sync_id, blocks, initial_fp)?;
    let mut st = SyncState {
        sync_id,
        block_size: bs,
        passes: 0,
        src_format: src_format.to_string(),
        src_size,
        src_path: src_id.to_string(),
        src_head: 0,
        tgt_format: tgt_format.name().to_string(),
        tgt_size,
        tgt_dev: 0,
        tgt_ino: 0,
        tgt_id: t.id.clone(),
        blocks,
        running: Some(RunningPass {
            kind,
            candidates: cand,
            position: 0,
            pending: (0, 0),
        }),
    };
    match t.path() {
        None => st.save(state_path)?,
        Some(dst) if target_exists => {
            let (d, i) = dev_ino(dst)?;
            st.tgt_dev = d;
            st.tgt_ino = i;
            st.save(state_path)?;
        }
        Some(dst) => {
            st.save(state_path)?;
            create_target(dst, src_size, tgt_format)?;
            let (d, i) = dev_ino(dst)?;
            st.tgt_dev = d;
            st.tgt_ino = i;
            st.tgt_id = local_id(dst);
            st.save(state_path)?;
        }
    }
    Ok((st, fp, source))
}

/// Runs one sync pass from the image at `src_path` to `dst`: a full copy when there is no
/// state, otherwise an incremental pass (or the resumption of an interrupted one). See
/// [`sync_pass_to`].
pub fn sync_pass(src_path: &Path, dst: &Path, opts: &SyncOptions) -> Result<PassReport> {
    sync_pass_to(
        &SyncSource::Path(src_path.to_path_buf()),
        &SyncTarget::Path(dst.to_path_buf()),
        opts,
    )
}

/// Runs one sync pass from `src` to `dst`: a full copy when there is no state, otherwise an
/// incremental pass (or the resumption of an interrupted one).
///
/// Before an incremental or resumed pass writes anything, a sample of target blocks (the
/// first, the last and about 14 others; 128 KiB of others for a [`SyncTarget::Storage`]) is
/// read and compared with the fingerprints the last
/// pass stored: a target changed behind the sync's back is refused ([`Hint::Rescan`]).
pub fn sync_pass_to(src: &SyncSource, dst: &SyncTarget, opts: &SyncOptions) -> Result<PassReport> {
    let start = Instant::now();
    let t = Tgt::new(dst);
    let state_path = state_place(dst, opts.state_path.as_deref())?.path;
    let fpp = fp_path(&state_path);
    if t.fixed() && opts.output_format.is_some_and(|f| !f.is_raw()) {
        let what = match t.kind {
            TgtKind::Remote => "is a raw disk: a sync to it",
            _ => "is a block device: a sync to a block device",
        };
        return Err(t.named(Error::InvalidArgument(format!(
            "{what} writes raw, not {}",
            opts.output_format.map_or("?", |f| f.name())
        ))));
    }
    if let Some(bs) = opts.block_size {
        check_block_size(bs, BlockSizes::PowersOfTwo)?;
    }
    if opts.bitmap.is_some() && opts.changed_ranges.is_some() {
        return Err(Error::InvalidArgument(
            "give either a bitmap or changed ranges, not both".into(),
        ));
    }
    // An existing local target is locked before its state is read; a new one once it is
    // created.
    let lock = match t.path() {
        Some(p) if exists(p) => Some(ImageLock::acquire(p)?),
        _ => None,
    };

    // The source.
    let (src, src_id, dirty) = open_source(src, opts)?;
    let src = src.get();
    let src_size = src.virtual_size();
    let src_format = src.format().name().to_string();

    // The state, checked before anything is written.
    let mut rescan = false;
    let loaded = match SyncState::load(&state_path) {
        Ok(s) => s,
        Err(e) if opts.rescan_on_bad_state => {
            let _ = e;
            rescan = true;
            None
        }
        Err(e) => {
            return Err(Error::InvalidArgument(e.chain()).with_hint(Hint::Rescan));
        }
    };
    let mut st_fp: Option<(SyncState, FpFile)> = None;
    let mut checked_up: Option<Box<dyn ImageUpdater>> = None;
    let mut target_bytes_checked = 0;
    if let Some(mut st) = loaded {
        let checked = check_state(
            &st,
            &state_path,
            &fpp,
            &src_format,
            src_size,
            &src_id,
            &t,
            opts,
        )
        .and_then(|fp| {
            if let Some(dst) = t.path().filter(|_| t.kind == TgtKind::File) {
                if st.tgt_ino == 0 {
                    // Killed while the target was being created.
                    if !exists(dst) {
                        create_target(dst, src_size, st.tgt_format.parse().map_err(hard)?)
                            .map_err(hard)?;
                    }
                    let (d, i) = dev_ino(dst).map_err(hard)?;
                    st.tgt_dev = d;
                    st.tgt_ino = i;
                    st.tgt_id = local_id(dst);
                    st.save(&state_path).map_err(hard)?;
                }
            }
            if st.tgt_id != t.id {
                // A version 1 state (checked by device and inode), or a local target moved
                // (the same inode): it records the id now.
                st.tgt_id = t.id.clone();
                st.save(&state_path).map_err(hard)?;
            }
            // A target changed behind the sync's back is refused before anything is written
            // (a rescan compares every block anyway).
            let kind = st.running.as_ref().map(|r| r.kind);
            if kind != Some(PassKind::Rescan) {
                let up = open_target(t.target, Some(st.tgt_format.parse().map_err(hard)?))
                    .map_err(hard)?;
                target_bytes_checked = check_target_sample(up.as_ref(), &fp, &st, &t)?;
                checked_up = Some(up);
            }
            Ok(fp)
        });
        match checked {
            Ok(fp) => st_fp = Some((st, fp)),
            Err(e) if opts.rescan_on_bad_state && e.is_bad_state => {
                checked_up = None;
                rescan = true;
            }
            Err(e) => return Err(e.err),
        }
    }

    let (mut st, fp, source) = match st_fp {
        Some((mut st, fp)) => {
            let source = next_pass(&mut st, dirty, src_size, &state_path, opts)?;
            (st, fp, source)
        }
        None => new_sync(
            &t,
            rescan,
            &state_path,
            &fpp,
            &src_format,
            src_size,
            &src_id,
            opts,
        )?,
    };

    let _lock = match (lock, t.path()) {
        (Some(l), _) => Some(l),
        (None, Some(p)) => Some(ImageLock::acquire(p)?),
        (None, None) => None,
    };
    let tgt_format: Format = st.tgt_format.parse()?;
    let mut up = match checked_up {
        Some(up) => up,
        None => open_target(dst, Some(tgt_format))?,
    };
    if st.tgt_size == 0 {
        st.tgt_size = up.virtual_size();
    }
    if up.virtual_size() != st.tgt_size || up.virtual_size() < src_size {
        return Err(bad_state(
            &state_path,
            format!(
                "the target {} now holds {} bytes; the state recorded {}",
                t.name,
                up.virtual_size(),
                st.tgt_size
            ),
        ));
    }
    let mut report = run_pass(src, up.as_mut(), &fp, &mut st, &state_path, opts)?;
    st.passes += 1;
    st.running = None;
    st.src_head = head_hash(src)?;
    st.save(&state_path)?;
    report.pass = st.passes;
    report.source = source;
    report.target_bytes_checked = target_bytes_checked;
    report.seconds = start.elapsed().as_secs_f64();
    report.mb_per_s = if report.seconds > 0.0 {
        report.bytes_read as f64 / 1e6 / report.seconds
    } else {
        0.0
    };
    Ok(report)
}

struct StateError {
    err: Error,
    is_bad_state: bool,
}

/// An error that is not about the state (an I/O failure, say): never answered by a rescan.
fn hard(err: Error) -> StateError {
    StateError {
        err,
        is_bad_state: false,
    }
}

/// Blocks sampled by [`check_target_sample`] besides the first and the last.
const SAMPLE_BLOCKS: u64 = 14;
/// Bytes the sample of a target reached through a [`Storage`](crate::storage::Storage) (a
/// remote disk) reads at most besides its first and last block: every byte crosses the
/// network, and an incremental pass of a few changed blocks should not pay more for the
/// check than for the changes (four 64 KiB blocks in all at the default block size).
const REMOTE_SAMPLE_BYTES: u64 = 128 << 10;

/// Reads the first, the last and about [`SAMPLE_BLOCKS`] pseudo-randomly chosen blocks of the
/// target (fewer for a remote target: [`REMOTE_SAMPLE_BYTES`]) and compares their fingerprints with the ones the last pass stored. Blocks of the
/// running pass's pending window and blocks whose content is unknown are skipped. Returns the
/// bytes read; a mismatch is a bad state (the target was changed behind the sync's back).
fn check_target_sample(
    up: &dyn ImageUpdater,
    fp: &FpFile,
    st: &SyncState,
    t: &Tgt<'_>,
) -> std::result::Result<u64, StateError> {
    let bs = st.block_size;
    let blocks = st.blocks;
    if blocks == 0 {
        return Ok(0);
    }
    let pending = st
        .running
        .as_ref()
        .map_or(0..0, |r| r.pending.0..r.pending.1);
    let mut sample = vec![0, blocks - 1];
    let extra = match t.target {
        SyncTarget::Storage { .. } => (REMOTE_SAMPLE_BYTES / bs).min(SAMPLE_BLOCKS),
        SyncTarget::Path(_) => SAMPLE_BLOCKS,
    };
    let seed = random_bytes16();
    let mut x = u64::from_le_bytes([
        seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7],
    ]);
    for _ in 0..extra {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        sample.push((z ^ (z >> 31)) % blocks);
    }
    sample.sort_unstable();
    sample.dedup();
    let mut buf = vec![0u8; bs as usize];
    let mut read = 0;
    for b in sample {
        if pending.contains(&b) {
            continue;
        }
        let mut stored = [0u128; 1];
        fp.read(b, &mut stored).map_err(hard)?;
        if stored[0] == UNKNOWN_FINGERPRINT {
            continue;
        }
        let off = b * bs;
        let len = (off + bs).min(st.src_size) - off;
        let mut now = [0u128; 1];
        hash_blocks(up, &mut buf, off, len, bs, &mut now).map_err(hard)?;
        read += len;
        if now[0] != stored[0] {
            return Err(StateError {
                err: Error::InvalidArgument(format!(
                    "target {} was changed since the last pass: block {b} (offset {off:#x}) \
                     does not hold what the last pass wrote",
                    t.name
                ))
                .with_hint(Hint::Rescan),
                is_bad_state: true,
            });
        }
    }
    Ok(read)
}

#[allow(clippy::too_many_arguments)]
fn check_state(
    st: &SyncState,
    state_path: &Path,
    fpp: &Path,
    src_format: &str,
    src_size: u64,
    src_abs: &str,
    t: &Tgt<'_>,
    opts: &SyncOptions,
) -> std::result::Result<FpFile, StateError> {
    let hard = |why: String| StateError {
        err: bad_state(state_path, why),
        is_bad_state: false,
    };
    let soft = |why: String| StateError {
        err: bad_state(state_path, why).with_hint(Hint::Rescan),
        is_bad_state: true,
    };
    let other = |recorded: &str| StateError {
        err: other_target(state_path, recorded, t),
        is_bad_state: true,
    };
    if st.src_path != src_abs {
        return Err(soft(format!(
            "it belongs to the source {}, not {src_abs}",
            st.src_path
        )));
    }
    if st.src_format != src_format {
        return Err(soft(format!(
            "it recorded a {} source; {src_abs} is {src_format}",
            st.src_format
        )));
    }
    if st.src_size != src_size {
        return Err(hard(format!(
            "the source size changed from {} to {src_size} bytes; start a new sync to a new target",
            st.src_size
        )));
    }
    if let Some(bs) = opts.block_size.filter(|&bs| bs != st.block_size) {
        let mut e = hard(format!(
            "block size {bs} differs from the state's {}",
            st.block_size
        ));
        e.err = e.err.with_hint(Hint::StateBlockSize);
        return Err(e);
    }
    if let Some(f) = opts
        .output_format
        .filter(|f| st.tgt_format.parse::<Format>().ok() != Some(*f))
    {
        return Err(hard(format!(
            "the target is a {} image; an output format ({f}) applies only to a new target",
            st.tgt_format
        )));
    }
    match t.path() {
        None => {
            // A storage target is known by its id alone.
            if st.tgt_id != t.id {
                return Err(other(&st.tgt_id));
            }
        }
        Some(dst) => {
            // A state recorded for a storage target (its id is not a local path).
            if !st.tgt_id.is_empty() && !st.tgt_id.starts_with('/') {
                return Err(other(&st.tgt_id));
            }
            if !exists(dst) {
                if st.tgt_ino == 0 {
                    // The target was being created: recreated by the caller.
                } else {
                    return Err(soft(format!(
                        "the target {} is missing (remove the state file to start over)",
                        dst.display()
                    )));
                }
            } else if st.tgt_ino != 0 {
                let (d, i) = dev_ino(dst).map_err(|e| StateError {
                    err: e,
                    is_bad_state: false,
                })?;
                if (d, i) != (st.tgt_dev, st.tgt_ino) {
                    if !st.tgt_id.is_empty() && st.tgt_id != t.id {
                        return Err(other(&st.tgt_id));
                    }
                    return Err(soft(format!(
                        "{} is not the target it recorded (the file was replaced)",
                        dst.display()
                    )));
                }
            }
        }
    }
    FpFile::open(fpp, &st.sync_id, st.blocks).map_err(|e| soft(e.chain()))
}

/// The fingerprint of a block of zeros.
pub fn zero_fingerprint(block_size: u64) -> u128 {
    xxh3_128(&vec![0u8; block_size as usize])
}

fn run_pass(
    src: &dyn ImageReader,
    up: &mut dyn ImageUpdater,
    fp: &FpFile,
    st: &mut SyncState,
    state_path: &Path,
    opts: &SyncOptions,
) -> Result<PassReport> {
    let bs = st.block_size;
    let blocks = st.blocks;
    let size = src.virtual_size();
    let Some(rp) = st.running.clone() else {
        return Err(Error::InvalidArgument("no pass to run".into()));
    };
    let rescan = rp.kind == PassKind::Rescan;
    let zero_fp = zero_fingerprint(bs);
    // Blocks of an interrupted window: rewritten whatever the fingerprints say. Only candidate
    // blocks are ever written, so the candidates inside the pending range are a superset of
    // what the interrupted run may have half-written.
    let forced = rp.pending.0..rp.pending.1;
    let plan = Plan {
        cand: &rp.candidates,
        start: rp.position,
        blocks,
        max_cand: (opts.window_bytes / bs).max(1),
        batch_blocks: (BATCH_BYTES / bs).max(1),
        piece_blocks: (PIECE_BYTES / bs).max(1),
        cancel: opts.cancel.as_deref(),
    };
    let pool = BufferPool::new((plan.piece_blocks * bs) as usize);
    let base = Scan {
        src,
        target: None,
        fp,
        bs,
        size,
        zero_fp,
        forced: &forced,
        pool: &pool,
    };
    let mut w = Writer {
        up,
        st,
        state_path,
        fp,
        pool: &pool,
        forced: &forced,
        zero_fp,
        size,
        rescan,
        opts,
        r: PassReport {
            pass: 0,
            source: ChangeSource::Scan,
            block_size: bs,
            blocks_total: blocks,
            blocks_scanned: 0,
            blocks_changed: 0,
            blocks_written: 0,
            bytes_read: 0,
            bytes_written: 0,
            bytes_written_data: 0,
            bytes_written_zeroes: 0,
            target_bytes_checked: 0,
            seconds: 0.0,
            mb_per_s: 0.0,
        },
        pos: rp.position,
        updates: Vec::new(),
        pending_saved: false,
        last_checkpoint: Instant::now(),
    };
    let finished = if rescan {
        // The target's blocks are hashed through the updater that writes them: one thread
        // scans and writes in turn.
        let cell = std::cell::RefCell::new(&mut w);
        plan.run(
            |pieces| {
                let w = cell.borrow();
                Scan {
                    target: Some(&*w.up),
                    ..base
                }
                .batch(pieces)
            },
            |step| cell.borrow_mut().step(step),
        )?
    } else {
        // The source is scanned on the worker pool while one thread writes the changed blocks
        // of the batch before and commits the windows (target flushes and fsyncs), so neither
        // waits for the other. One batch is handed over at a time: memory stays bounded.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Step>(0);
        std::thread::scope(|sc| {
            let writer = sc.spawn(|| -> Result<()> {
                for step in rx {
                    w.step(step)?;
                }
                Ok(())
            });
            let scanned = plan.run(
                |pieces| base.batch(pieces),
                // A closed channel means the writer failed: its error is the one reported.
                |step| tx.send(step).map_err(|_| Error::Cancelled),
            );
            drop(tx);
            let written = writer.join().unwrap_or_else(|_| {
                Err(Error::InvalidArgument(
                    "the thread writing a sync pass panicked".into(),
                ))
            });
            written.and(scanned)
        })?
    };
    if !finished {
        w.cancel()?;
        return Err(Error::Cancelled);
    }
    Ok(w.r)
}

/// The windows and batches a pass goes through.
struct Plan<'a> {
    cand: &'a BlockBitmap,
    /// First block to scan (where an interrupted pass stopped).
    start: u64,
    blocks: u64,
    max_cand: u64,
    batch_blocks: u64,
    piece_blocks: u64,
    cancel: Option<&'a AtomicBool>,
}

/// What the scanning side hands the writing side.
enum Step {
    /// A batch of the window `pos..wend`, the window's last when `last`.
    Batch {
        pos: u64,
        wend: u64,
        scanned: Vec<Result<Scanned>>,
        last: bool,
    },
    /// The window up to block `to` holds no candidate.
    Skip { to: u64 },
}

impl Plan<'_> {
    /// Scans the candidates window by window, batch by batch (`scan`), and hands each batch
    /// to `step`. Returns false when cancelled.
    fn run(
        &self,
        mut scan: impl FnMut(&[(u64, u64)]) -> Vec<Result<Scanned>>,
        mut step: impl FnMut(Step) -> Result<()>,
    ) -> Result<bool> {
        let cancelled = || self.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        let mut pos = self.start;
        while pos < self.blocks {
            if cancelled() {
                return Ok(false);
            }
            // A window holds at most `max_cand` candidates (what a crash may force us to
            // rewrite) and spans at most MAX_SPAN blocks.
            let (wend, ncand) = window_end(self.cand, pos, self.blocks, self.max_cand);
            if ncand == 0 {
                step(Step::Skip { to: wend })?;
                pos = wend;
                continue;
            }
            let mut i = pos;
            while i < wend {
                if cancelled() {
                    return Ok(false);
                }
                let (pieces, next) =
                    batch_pieces(self.cand, i, wend, self.batch_blocks, self.piece_blocks);
                let scanned = scan(&pieces);
                step(Step::Batch {
                    pos,
                    wend,
                    scanned,
                    last: next >= wend,
                })?;
                i = next;
            }
            pos = wend;
        }
        Ok(true)
    }
}

/// The writing side of a pass: writes the changed blocks through the updater, records a
/// window as pending before its first write, and commits it at its end.
struct Writer<'a> {
    up: &'a mut dyn ImageUpdater,
    st: &'a mut SyncState,
    state_path: &'a Path,
    fp: &'a FpFile,
    pool: &'a BufferPool,
    forced: &'a Range<u64>,
    zero_fp: u128,
    size: u64,
    rescan: bool,
    opts: &'a SyncOptions,
    r: PassReport,
    /// Start of the current window: everything before it is written and committed.
    pos: u64,
    /// New fingerprints of the window's pieces, stored after the target is flushed.
    updates: Vec<(u64, Vec<u128>)>,
    /// The state names the current window as pending.
    pending_saved: bool,
    last_checkpoint: Instant,
}

impl Writer<'_> {
    fn step(&mut self, step: Step) -> Result<()> {
        match step {
            Step::Skip { to } => {
                self.pos = to;
                if self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval {
                    set_position(self.st, to);
                    self.st.save(self.state_path)?;
                    self.last_checkpoint = Instant::now();
                }
                Ok(())
            }
            Step::Batch {
                pos,
                wend,
                scanned,
                last,
            } => {
                let win = WindowState {
                    pos,
                    wend,
                    forced: self.forced,
                    zero_fp: self.zero_fp,
                };
                for p in scanned {
                    let p = p?;
                    let r = &mut self.r;
                    r.bytes_read += p.bytes_read;
                    r.blocks_scanned += p.fps.len() as u64;
                    r.blocks_changed +=
                        p.fps.iter().zip(&p.old).filter(|(a, b)| a != b).count() as u64;
                    let mut wrote = false;
                    if let Some(data) = p.data {
                        let run = Run {
                            first: p.first,
                            data: &data,
                            fps: &p.fps,
                            old: &p.old,
                        };
                        let w = write_changed(
                            &mut *self.up,
                            self.st,
                            self.state_path,
                            r,
                            &run,
                            &win,
                            &mut self.pending_saved,
                            self.size,
                        );
                        self.pool.put(data);
                        wrote = w?;
                    }
                    if wrote || self.rescan {
                        self.updates.push((p.first, p.fps));
                    }
                }
                if last {
                    if self.pending_saved || self.rescan {
                        commit(
                            &mut *self.up,
                            self.fp,
                            &self.updates,
                            self.st,
                            self.state_path,
                            wend,
                        )?;
                        self.last_checkpoint = Instant::now();
                    }
                    self.updates.clear();
                    self.pending_saved = false;
                    self.pos = wend;
                    if let Some(p) = &self.opts.progress {
                        p(wend, self.st.blocks);
                    }
                }
                Ok(())
            }
        }
    }

    /// Leaves the state resumable after the scan stopped early.
    fn cancel(&mut self) -> Result<()> {
        if self.pending_saved {
            // Part of the window is written: the state names it as pending, so the next run
            // rewrites its candidates. Leave the target's metadata whole.
            self.up.flush()
        } else {
            // Everything before `pos` is written and fingerprinted: the next run resumes here.
            set_position(self.st, self.pos);
            self.st.save(self.state_path)
        }
    }
}

/// Makes a window's writes durable and records them: flushes the target, stores the new
/// fingerprints, and moves the state's position to `wend`.
fn commit(
    up: &mut dyn ImageUpdater,
    fp: &FpFile,
    updates: &[(u64, Vec<u128>)],
    st: &mut SyncState,
    state_path: &Path,
    wend: u64,
) -> Result<()> {
    up.flush()?;
    for (first, fps) in updates {
        fp.write(*first, fps)?;
    }
    fp.sync()?;
    set_position(st, wend);
    st.save(state_path)
}

/// The pieces (first block, blocks) of the next batch: runs of candidates from block `from`,
/// cut at `piece_blocks` and at `end`, until `batch_blocks` candidates are covered. Returns
/// them and the block where the next batch starts.
fn batch_pieces(
    cand: &BlockBitmap,
    from: u64,
    end: u64,
    batch_blocks: u64,
    piece_blocks: u64,
) -> (Vec<(u64, u64)>, u64) {
    let mut pieces = Vec::new();
    let mut covered = 0;
    let mut i = from;
    while i < end && covered < batch_blocks {
        if !cand.get(i) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < end && j - i < piece_blocks && cand.get(j) {
            j += 1;
        }
        pieces.push((i, j - i));
        covered += j - i;
        i = j;
    }
    (pieces, i)
}

/// Buffers of one piece, reused from batch to batch.
struct BufferPool {
    len: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    fn new(len: usize) -> BufferPool {
        BufferPool {
            len,
            free: Mutex::new(Vec::new()),
        }
    }

    fn get(&self) -> Vec<u8> {
        let b = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        b.unwrap_or_else(|| vec![0u8; self.len])
    }

    fn put(&self, b: Vec<u8>) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(b);
    }
}

/// What every piece of a pass is scanned with.
struct Scan<'a> {
    src: &'a dyn ImageReader,
    /// In a rescan, the target (whose blocks are hashed instead of the recorded fingerprints).
    target: Option<&'a dyn ImageUpdater>,
    fp: &'a FpFile,
    bs: u64,
    size: u64,
    zero_fp: u128,
    forced: &'a Range<u64>,
    pool: &'a BufferPool,
}

/// One piece scanned: its fingerprints, the ones recorded (or the target's), and its data when
/// a block of it must be written.
struct Scanned {
    first: u64,
    bytes_read: u64,
    fps: Vec<u128>,
    old: Vec<u128>,
    data: Option<Vec<u8>>,
}

impl Scan<'_> {
    /// Reads, hashes and compares `pieces` in parallel, keeping the data of the pieces with
    /// blocks to write.
    fn batch(&self, pieces: &[(u64, u64)]) -> Vec<Result<Scanned>> {
        // The source's map of the batch, asked once per stretch of adjacent pieces rather than
        // once per piece (for a raw file, a few seeks instead of a few per piece).
        let mut data = Vec::new();
        let mut k = 0;
        while k < pieces.len() {
            let start = pieces[k].0;
            let mut end = start + pieces[k].1;
            k += 1;
            while k < pieces.len() && pieces[k].0 == end {
                end += pieces[k].1;
                k += 1;
            }
            let (off, e) = (start * self.bs, (end * self.bs).min(self.size));
            match data_ranges(self.src, off, e - off) {
                Ok(d) => data.extend(d),
                Err(e) => return vec![Err(e)],
            }
        }
        let tlen = if self.target.is_some() {
            self.pool.len
        } else {
            0
        };
        pieces
            .par_iter()
            .map_init(
                || vec![0u8; tlen],
                |tbuf, &(first, nb)| self.piece(first, nb, &data, tbuf),
            )
            .collect()
    }

    /// Reads and hashes blocks `first..first + nb` of the source and compares them with the
    /// recorded fingerprints (or, in a rescan, with the target's blocks, hashed in `tbuf`).
    fn piece(&self, first: u64, nb: u64, data: &[Range<u64>], tbuf: &mut [u8]) -> Result<Scanned> {
        let bs = self.bs;
        let off = first * bs;
        let len = ((first + nb) * bs).min(self.size) - off;
        let mut buf = self.pool.get();
        let b = &mut buf[..(nb * bs) as usize];
        let (bytes_read, fps) = match read_and_hash(self.src, b, off, len, bs, data, self.zero_fp) {
            Ok(x) => x,
            Err(e) => {
                self.pool.put(buf);
                return Err(e);
            }
        };
        let mut old = vec![0u128; nb as usize];
        let got = match self.target {
            // The target as it is now, read through the updater that writes it (its earlier
            // writes included, flushed or not).
            Some(t) => hash_blocks(t, &mut tbuf[..b.len()], off, len, bs, &mut old),
            None => self.fp.read(first, &mut old),
        };
        if let Err(e) = got {
            self.pool.put(buf);
            return Err(e);
        }
        let write = fps
            .iter()
            .zip(&old)
            .enumerate()
            .any(|(k, (a, b))| a != b || self.forced.contains(&(first + k as u64)));
        let data = if write {
            Some(buf)
        } else {
            self.pool.put(buf);
            None
        };
        Ok(Scanned {
            first,
            bytes_read,
            fps,
            old,
            data,
        })
    }
}

/// Blocks of one run of candidates: the source's bytes, their fingerprints and the ones recorded
/// (or, in a rescan, the target's).
struct Run<'a> {
    first: u64,
    data: &'a [u8],
    fps: &'a [u128],
    old: &'a [u128],
}

/// The window a run belongs to, the blocks of an interrupted window that must be rewritten, and
/// the fingerprint of a zero block (computed once per pass).
struct WindowState<'a> {
    pos: u64,
    wend: u64,
    forced: &'a Range<u64>,
    zero_fp: u128,
}

/// Writes the blocks of `run` that changed (or are forced) through `up`; before the first write
/// of a window, records the window as pending in the state. Returns whether anything was written.
#[allow(clippy::too_many_arguments)]
fn write_changed(
    up: &mut dyn ImageUpdater,
    st: &mut SyncState,
    state_path: &Path,
    r: &mut PassReport,
    run: &Run<'_>,
    win: &WindowState<'_>,
    pending_saved: &mut bool,
    size: u64,
) -> Result<bool> {
    let bs = st.block_size;
    let n = run.fps.len();
    let write = |k: usize| run.fps[k] != run.old[k] || win.forced.contains(&(run.first + k as u64));
    let block = |k: usize| &run.data[k * bs as usize..(k + 1) * bs as usize];
    let zero = |k: usize| run.fps[k] == win.zero_fp && is_zero(block(k));
    let mut wrote = false;
    let mut k = 0;
    while k < n {
        if !write(k) {
            k += 1;
            continue;
        }
        if !*pending_saved {
            if let Some(rp) = st.running.as_mut() {
                rp.position = win.pos;
                rp.pending = (win.pos, win.wend);
            }
            st.save(state_path)?;
            *pending_saved = true;
        }
        // Adjacent blocks to write go in one request: zeroes with zeroes, data with data.
        let z = zero(k);
        let mut e = k + 1;
        while e < n && write(e) && zero(e) == z {
            e += 1;
        }
        let boff = (run.first + k as u64) * bs;
        let blen = ((run.first + e as u64) * bs).min(size) - boff;
        if z {
            up.write_zeroes(boff, blen)?;
            r.bytes_written_zeroes += blen;
        } else {
            let at = k * bs as usize;
            up.write_at(&run.data[at..at + blen as usize], boff)?;
            r.bytes_written_data += blen;
        }
        r.blocks_written += (e - k) as u64;
        r.bytes_written += blen;
        wrote = true;
        k = e;
    }
    Ok(wrote)
}

/// Where the window starting at block `pos` ends: at most `max_cand` candidates (what a crash
/// may force the next run to rewrite) and at most [`MAX_SPAN`] blocks. Returns the end and the
/// number of candidates in the window.
fn window_end(cand: &BlockBitmap, pos: u64, blocks: u64, max_cand: u64) -> (u64, u64) {
    let mut wend = pos;
    let mut ncand = 0;
    while wend < blocks && wend - pos < MAX_SPAN && ncand < max_cand {
        if cand.get(wend) {
            ncand += 1;
        }
        wend += 1;
    }
    (wend, ncand)
}

/// Reads `len` bytes of the source at `off` into `buf` (zero-filled past `len`), given the
/// source's data stretches ([`data_ranges`]), and hashes each `bs`-byte block. Returns the
/// bytes read (holes are not read) and the fingerprints.
#[allow(clippy::too_many_arguments)]
fn read_and_hash(
    src: &dyn ImageReader,
    buf: &mut [u8],
    off: u64,
    len: u64,
    bs: u64,
    data: &[Range<u64>],
    zero_fp: u128,
) -> Result<(u64, Vec<u128>)> {
    let n = read_ranges(src, &mut buf[..len as usize], off, data)?;
    buf[len as usize..].fill(0);
    // A block with no data stretch in it reads as zeros: its fingerprint is known without
    // hashing it (holes and zero clusters are often a third of a disk). Blocks past the end of
    // the disk are zeros too.
    let mut has_data = vec![false; buf.len() / bs as usize];
    let first = data.partition_point(|r| r.end <= off);
    for r in data[first..].iter().take_while(|r| r.start < off + len) {
        let (s, e) = (r.start.max(off), r.end.min(off + len));
        has_data[((s - off) / bs) as usize..=((e - 1 - off) / bs) as usize].fill(true);
    }
    let fps = buf
        .chunks(bs as usize)
        .zip(has_data)
        .map(|(b, d)| if d { xxh3_128(b) } else { zero_fp })
        .collect();
    Ok((n, fps))
}

/// Reads `len` bytes of `img` at `off` into `buf` (zero-filled past `len`) and stores the
/// fingerprint of each `bs`-byte block in `out`.
fn hash_blocks<R: ImageReader + ?Sized>(
    img: &R,
    buf: &mut [u8],
    off: u64,
    len: u64,
    bs: u64,
    out: &mut [u128],
) -> Result<()> {
    read_skipping_holes(img, &mut buf[..len as usize], off)?;
    buf[len as usize..].fill(0);
    for (k, o) in out.iter_mut().enumerate() {
        let at = k * bs as usize;
        *o = xxh3_128(&buf[at..at + bs as usize]);
    }
    Ok(())
}

fn set_position(st: &mut SyncState, pos: u64) {
    if let Some(run) = st.running.as_mut() {
        run.position = pos;
        run.pending = (pos, pos);
    }
}

/// What [`sync_until_converged`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvergeReport {
    /// Every pass, in order.
    pub passes: Vec<PassReport>,
    /// The last pass changed fewer than `max_changed` blocks.
    pub converged: bool,
    /// Expected duration of a final pass (source stopped), seconds: for bitmap or range passes,
    /// the last pass's changed blocks times its measured time per block looked at; for scan
    /// passes, the last pass's time (a scan reads the whole source whatever changed).
    pub estimated_final_seconds: f64,
}

/// Repeats passes until one changes fewer than `max_changed` blocks (a first, full pass or a
/// resumed pass never counts as converged), sleeping `interval` between passes, at most
/// `max_passes` passes. `on_pass` sees each report as it completes. See
/// [`sync_until_converged_to`].
pub fn sync_until_converged(
    src: &Path,
    dst: &Path,
    opts: &SyncOptions,
    max_changed: u64,
    interval: Duration,
    max_passes: u64,
    on_pass: impl FnMut(&PassReport),
) -> Result<ConvergeReport> {
    sync_until_converged_to(
        &SyncSource::Path(src.to_path_buf()),
        &SyncTarget::Path(dst.to_path_buf()),
        opts,
        max_changed,
        interval,
        max_passes,
        on_pass,
    )
}

/// Repeats passes from `src` to `dst` ([`sync_pass_to`]) until one changes fewer than
/// `max_changed` blocks (a first, full pass or a resumed pass never counts as converged),
/// sleeping `interval` between passes, at most `max_passes` passes. `on_pass` sees each
/// report as it completes.
pub fn sync_until_converged_to(
    src: &SyncSource,
    dst: &SyncTarget,
    opts: &SyncOptions,
    max_changed: u64,
    interval: Duration,
    max_passes: u64,
    mut on_pass: impl FnMut(&PassReport),
) -> Result<ConvergeReport> {
    if max_passes == 0 {
        return Err(Error::InvalidArgument(
            "max passes must be at least 1".into(),
        ));
    }
    let mut passes = Vec::new();
    let mut converged = false;
    while (passes.len() as u64) < max_passes {
        if !passes.is_empty() {
            let until = Instant::now() + interval;
            while Instant::now() < until {
                if opts
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(Ordering::Relaxed))
                {
                    return Err(Error::Cancelled);
                }
                std::thread::sleep(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(100)),
                );
            }
        }
        let r = sync_pass_to(src, dst, opts)?;
        on_pass(&r);
        let incremental = !matches!(
            r.source,
            ChangeSource::Full | ChangeSource::Resume | ChangeSource::Rescan
        );
        passes.push(r);
        if incremental
            && passes
                .last()
                .is_some_and(|r| r.blocks_changed < max_changed)
        {
            converged = true;
            break;
        }
    }
    let estimated_final_seconds = passes.last().map_or(0.0, estimate_final).max(0.0);
    Ok(ConvergeReport {
        passes,
        converged,
        estimated_final_seconds,
    })
}

fn estimate_final(r: &PassReport) -> f64 {
    match r.source {
        ChangeSource::Bitmap(_) | ChangeSource::Ranges => {
            r.blocks_changed as f64 * r.seconds / r.blocks_scanned.max(1) as f64
        }
        _ => r.seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Format {
        name.parse().unwrap()
    }

    #[test]
    fn target_format_from_extension() {
        assert_eq!(target_format(Path::new("a.qcow2"), None), f("qcow2"));
        assert_eq!(target_format(Path::new("a.VHDX"), None), f("vhdx"));
        assert_eq!(target_format(Path::new("a.img"), None), f("raw"));
        // Regression: `x.ova` used to become a raw target silently; it asks for an OVA, which
        // cannot be updated in place, and is refused.
        assert_eq!(target_format(Path::new("x.ova"), None), f("ova"));
        let e = check_updatable(target_format(Path::new("x.ova"), None)).unwrap_err();
        assert!(e.to_string().contains("convert the result to ova"), "{e}");
        assert!(check_updatable(target_format(Path::new("x.vmdk"), None)).is_ok());
        assert_eq!(target_format(Path::new("a"), Some(f("vpc"))), f("vpc"));
        let p = BlockSizes::PowersOfTwo;
        assert!(check_block_size(65536, p).is_ok());
        assert!(check_block_size(2048, p).is_err());
        assert!(check_block_size(65537, p).is_err());
        // The verify rule takes multiples of 512, not only powers of two.
        assert!(check_block_size(3 * 512, BlockSizes::Sectors).is_ok());
        assert!(check_block_size(1000, BlockSizes::Sectors).is_err());
    }

    #[test]
    fn estimate_uses_per_block_time_for_bitmaps() {
        let mut r = PassReport {
            pass: 2,
            source: ChangeSource::Bitmap("b".into()),
            block_size: 65536,
            blocks_total: 1000,
            blocks_scanned: 100,
            blocks_changed: 10,
            blocks_written: 10,
            bytes_read: 0,
            bytes_written: 0,
            bytes_written_data: 0,
            bytes_written_zeroes: 0,
            target_bytes_checked: 0,
            seconds: 2.0,
            mb_per_s: 0.0,
        };
        assert!((estimate_final(&r) - 0.2).abs() < 1e-9);
        r.source = ChangeSource::Scan;
        assert!((estimate_final(&r) - 2.0).abs() < 1e-9);
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"source\":\"scan\""), "{j}");
    }
}
