//! The sync state: a small, checksummed, atomically replaced file beside the target
//! (`<dst>.dcsync`) plus a flat fingerprint file (`<dst>.dcsync.fp`, 16 bytes per block,
//! updated positionally one window at a time so memory stays flat whatever the disk size).
//!
//! State file layout (little-endian): magic `DCSYNC\0\x02`, then the fields of [`SyncState`]
//! in order (strings and byte strings as u32 length + bytes), then an xxh3-64 of everything
//! before it. Version 1 (magic `DCSYNC\0\x01`, still read) has no `tgt_id`. Any damage (truncation, a flipped bit) fails the checksum and is reported with
//! the file name.
//!
//! Fingerprint file layout: magic `DCSYNCFP`, the 16-byte sync id of the state it belongs to,
//! the block count (u64), then one xxh3-128 per block (16 bytes, little-endian).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::sync_dir;
use crate::sync::bitmap::BlockBitmap;

const MAGIC: &[u8; 8] = b"DCSYNC\0\x02";
/// Version 1: no target identity.
const MAGIC_V1: &[u8; 8] = b"DCSYNC\0\x01";
const FP_MAGIC: &[u8; 8] = b"DCSYNCFP";
/// Bytes before the first fingerprint in the fingerprint file.
pub const FP_HEADER: u64 = 32;
/// Largest state file accepted (the candidate bitmap is run-length coded, so real states are
/// far smaller).
const MAX_STATE: u64 = 256 << 20;
const MAX_STR: usize = 64 << 10;

/// What kind of pass is (or was) running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// First pass: every data block of the source.
    Full,
    /// Candidates from a qcow2 persistent dirty bitmap.
    Bitmap,
    /// Candidates handed in by the caller.
    Ranges,
    /// Every block, compared with the stored fingerprints.
    Scan,
    /// Every block, compared with what the target actually holds (state discarded).
    Rescan,
}

impl PassKind {
    fn code(self) -> u8 {
        match self {
            PassKind::Full => 1,
            PassKind::Bitmap => 2,
            PassKind::Ranges => 3,
            PassKind::Scan => 4,
            PassKind::Rescan => 5,
        }
    }
    fn from_code(c: u8) -> Option<PassKind> {
        Some(match c {
            1 => PassKind::Full,
            2 => PassKind::Bitmap,
            3 => PassKind::Ranges,
            4 => PassKind::Scan,
            5 => PassKind::Rescan,
            _ => return None,
        })
    }
}

/// The pass that was running when the state was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPass {
    /// Its kind.
    pub kind: PassKind,
    /// The blocks it has to look at.
    pub candidates: BlockBitmap,
    /// Blocks before this index are done (target written, fingerprints stored).
    pub position: u64,
    /// Blocks `[pending.0, pending.1)` may have been partly written: rewritten from the source
    /// on resume whatever the fingerprints say. Empty when `pending.0 == pending.1`.
    pub pending: (u64, u64),
}

/// Everything the state file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// Random id shared with the fingerprint file.
    pub sync_id: [u8; 16],
    /// Bytes per block.
    pub block_size: u64,
    /// Completed passes.
    pub passes: u64,
    /// Source format name.
    pub src_format: String,
    /// Source virtual size.
    pub src_size: u64,
    /// Source path (absolute, as resolved when the sync started).
    pub src_path: String,
    /// xxh3-128 of the source's first MiB at the end of the last pass (informational: a live
    /// source changes it legitimately).
    pub src_head: u128,
    /// Target format name.
    pub tgt_format: String,
    /// Target virtual size.
    pub tgt_size: u64,
    /// Device and inode of the target file (0, 0 while it is being created).
    pub tgt_dev: u64,
    /// See `tgt_dev`.
    pub tgt_ino: u64,
    /// The target's identity: the canonical path of a local target, the caller's id (say
    /// `nbd://host:10809/web01`) of a [`SyncTarget::Storage`](crate::sync::target::SyncTarget)
    /// one; empty in a state written by version 1 (checked by device and inode alone).
    pub tgt_id: String,
    /// Number of blocks (source size / block size, rounded up).
    pub blocks: u64,
    /// The running pass, if any.
    pub running: Option<RunningPass>,
}

/// `<dst>.dcsync`.
pub fn default_state_path(dst: &Path) -> PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(".dcsync");
    PathBuf::from(s)
}

/// Where the state of a sync lives (see [`state_path_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePlace {
    /// The state file (the fingerprints go to [`fp_path`] of it).
    pub path: PathBuf,
    /// The target is a block device and no state path was given: the state is in the
    /// current folder, named after the device (say so to the user).
    pub in_current_folder: bool,
}

/// Whether `path` is (or leads to) a block device.
pub fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Where the state of a sync to `dst` lives: `explicit` when given, else `<dst>.dcsync` beside a
/// file target. Nothing is ever written into the folder of a device node: for a block device
/// target the default is `<device name>.dcsync` in the current folder, and a state path in the
/// device's folder (or the folder of the link naming it) is refused.
pub fn state_path_for(dst: &Path, explicit: Option<&Path>) -> Result<StatePlace> {
    if !is_block_device(dst) {
        return Ok(StatePlace {
            path: explicit
                .map(Path::to_path_buf)
                .unwrap_or_else(|| default_state_path(dst)),
            in_current_folder: false,
        });
    }
    let (path, in_current_folder) = match explicit {
        Some(p) => (p.to_path_buf(), false),
        None => {
            let name = dst.file_name().ok_or_else(|| {
                Error::InvalidArgument(format!("'{}' has no file name", dst.display()))
            })?;
            let mut n = name.to_owned();
            n.push(".dcsync");
            (Path::new(".").join(n), true)
        }
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let state_dir = canon(&crate::files::folder_of(&path));
    let mut device_dirs = vec![canon(&crate::files::folder_of(dst))];
    if let Ok(real) = std::fs::canonicalize(dst) {
        device_dirs.push(crate::files::folder_of(&real));
    }
    if device_dirs.contains(&state_dir) || state_dir.starts_with("/dev") {
        return Err(Error::InvalidArgument(format!(
            "the sync state of the block device {} would be written to {}, a folder of device \
             nodes",
            dst.display(),
            state_dir.display()
        ))
        .with_hint(crate::error::Hint::StatePath));
    }
    Ok(StatePlace {
        path,
        in_current_folder,
    })
}

/// The fingerprint file that goes with the state file at `state`.
pub fn fp_path(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_owned();
    s.push(".fp");
    PathBuf::from(s)
}

fn put_str(v: &mut Vec<u8>, s: &[u8]) {
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s);
}

impl SyncState {
    /// The on-disk form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.sync_id);
        for x in [self.block_size, self.passes] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        put_str(&mut v, self.src_format.as_bytes());
        v.extend_from_slice(&self.src_size.to_le_bytes());
        put_str(&mut v, self.src_path.as_bytes());
        v.extend_from_slice(&self.src_head.to_le_bytes());
        put_str(&mut v, self.tgt_format.as_bytes());
        for x in [self.tgt_size, self.tgt_dev, self.tgt_ino] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        put_str(&mut v, self.tgt_id.as_bytes());
        v.extend_from_slice(&self.blocks.to_le_bytes());
        match &self.running {
            None => v.push(0),
            Some(r) => {
                v.push(r.kind.code());
                put_str(&mut v, &r.candidates.to_bytes());
                for x in [r.position, r.pending.0, r.pending.1] {
                    v.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&v);
        v.extend_from_slice(&sum.to_le_bytes());
        v
    }

    /// Parses the on-disk form; `what` names the file in errors.
    pub fn from_bytes(b: &[u8], what: &str) -> Result<SyncState> {
        let bad = |why: String| Error::Corrupt(format!("sync state {what}: {why}"));
        if b.len() < MAGIC.len() + 8 {
            return Err(bad(format!("truncated ({} bytes)", b.len())));
        }
        let v1 = &b[..8] == MAGIC_V1;
        if &b[..8] != MAGIC && !v1 {
            return Err(bad(
                "not a diskconv sync state file (bad magic or unknown version)".into(),
            ));
        }
        let (body, sum) = b.split_at(b.len() - 8);
        let mut sb = [0u8; 8];
        sb.copy_from_slice(sum);
        if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(sb) {
            return Err(bad(
                "checksum mismatch: the file is truncated or damaged".into()
            ));
        }
        let mut c = Cursor { b: body, pos: 8 };
        let trunc = || bad("truncated field".into());
        let mut sync_id = [0u8; 16];
        sync_id.copy_from_slice(c.take(16).ok_or_else(trunc)?);
        let block_size = c.u64().ok_or_else(trunc)?;
        let passes = c.u64().ok_or_else(trunc)?;
        let src_format = c.string().ok_or_else(trunc)?;
        let src_size = c.u64().ok_or_else(trunc)?;
        let src_path = c.string().ok_or_else(trunc)?;
        let src_head = c.u128().ok_or_else(trunc)?;
        let tgt_format = c.string().ok_or_else(trunc)?;
        let tgt_size = c.u64().ok_or_else(trunc)?;
        let tgt_dev = c.u64().ok_or_else(trunc)?;
        let tgt_ino = c.u64().ok_or_else(trunc)?;
        let tgt_id = if v1 {
            String::new()
        } else {
            c.string().ok_or_else(trunc)?
        };
        let blocks = c.u64().ok_or_else(trunc)?;
        if !block_size.is_power_of_two() || block_size < 4096 {
            return Err(bad(format!("invalid block size {block_size}")));
        }
        if src_size.div_ceil(block_size) != blocks {
            return Err(bad(format!(
                "{blocks} blocks do not match a {src_size}-byte source in {block_size}-byte blocks"
            )));
        }
        let code = c.take(1).ok_or_else(trunc)?[0];
        let running = if code == 0 {
            None
        } else {
            let kind = PassKind::from_code(code)
                .ok_or_else(|| bad(format!("unknown pass kind {code}")))?;
            let cand = c.bytes().ok_or_else(trunc)?;
            let candidates = BlockBitmap::from_bytes(cand, &format!("sync state {what}"))?;
            if candidates.blocks() != blocks || candidates.block_size() != block_size {
                return Err(bad(
                    "the candidate set does not match the block layout".into()
                ));
            }
            let position = c.u64().ok_or_else(trunc)?;
            let p0 = c.u64().ok_or_else(trunc)?;
            let p1 = c.u64().ok_or_else(trunc)?;
            if position > blocks || p0 > p1 || p1 > blocks {
                return Err(bad(format!(
                    "pass position {position} / pending {p0}..{p1} outside {blocks} blocks"
                )));
            }
            Some(RunningPass {
                kind,
                candidates,
                position,
                pending: (p0, p1),
            })
        };
        if c.pos != body.len() {
            return Err(bad("trailing bytes".into()));
        }
        Ok(SyncState {
            sync_id,
            block_size,
            passes,
            src_format,
            src_size,
            src_path,
            src_head,
            tgt_format,
            tgt_size,
            tgt_dev,
            tgt_ino,
            tgt_id,
            blocks,
            running,
        })
    }

    /// Reads and checks the state file at `path`; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<SyncState>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening the sync state", e).in_file(path)),
        };
        let len = f
            .metadata()
            .map_err(|e| Error::io("reading the sync state's size", e).in_file(path))?
            .len();
        if len > MAX_STATE {
            return Err(Error::Corrupt(format!(
                "sync state {}: {len} bytes is too large for a state file",
                path.display()
            )));
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, 0)
            .map_err(|e| Error::io("reading the sync state", e).in_file(path))?;
        Self::from_bytes(&buf, &path.display().to_string()).map(Some)
    }

    /// Replaces the state file atomically: temporary file in the same folder, fsync, rename,
    /// fsync of the folder.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::files::replace_file(path, &self.to_bytes(), "sync state")
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }
    fn u128(&mut self) -> Option<u128> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Some(u128::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        self.take(u32::from_le_bytes(a) as usize)
    }
    fn string(&mut self) -> Option<String> {
        let b = self.bytes()?;
        if b.len() > MAX_STR {
            return None;
        }
        String::from_utf8(b.to_vec()).ok()
    }
}

/// The fingerprint file: one xxh3-128 per block, read and written a window at a time.
#[derive(Debug)]
pub struct FpFile {
    file: File,
    path: PathBuf,
    blocks: u64,
}

impl FpFile {
    /// Creates (replacing) the file for `blocks` blocks, every entry set to `initial`.
    pub fn create(path: &Path, sync_id: &[u8; 16], blocks: u64, initial: u128) -> Result<FpFile> {
        let io = |op: &str, e| Error::io(op.to_string(), e).in_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io("creating the fingerprint file", e))?;
        let mut head = Vec::with_capacity(FP_HEADER as usize);
        head.extend_from_slice(FP_MAGIC);
        head.extend_from_slice(sync_id);
        head.extend_from_slice(&blocks.to_le_bytes());
        file.write_all_at(&head, 0)
            .map_err(|e| io("writing the fingerprint file", e))?;
        let fp = FpFile {
            file,
            path: path.to_path_buf(),
            blocks,
        };
        const STEP: u64 = 64 << 10;
        let one = initial.to_le_bytes();
        let mut i = 0;
        while i < blocks {
            let n = STEP.min(blocks - i);
            let buf: Vec<u8> = one.iter().copied().cycle().take(n as usize * 16).collect();
            fp.file
                .write_all_at(&buf, FP_HEADER + i * 16)
                .map_err(|e| io("writing the fingerprint file", e))?;
            i += n;
        }
        fp.sync()?;
        sync_dir(path)?;
        Ok(fp)
    }

    /// Opens an existing file and checks it belongs to `sync_id` and has `blocks` entries.
    pub fn open(path: &Path, sync_id: &[u8; 16], blocks: u64) -> Result<FpFile> {
        let io = |op: &str, e| Error::io(op.to_string(), e).in_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io("opening the fingerprint file", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("reading the fingerprint file's size", e))?
            .len();
        let want = blocks
            .checked_mul(16)
            .and_then(|x| x.checked_add(FP_HEADER));
        let bad = |why: &str| Error::Corrupt(format!("fingerprint file {}: {why}", path.display()));
        if want != Some(len) {
            return Err(bad(&format!(
                "{len} bytes, expected {} for {blocks} blocks (truncated or damaged)",
                want.unwrap_or(u64::MAX)
            )));
        }
        let mut head = [0u8; FP_HEADER as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| io("reading the fingerprint file", e))?;
        if &head[..8] != FP_MAGIC || &head[8..24] != sync_id {
            return Err(bad("it does not belong to this sync state"));
        }
        Ok(FpFile {
            file,
            path: path.to_path_buf(),
            blocks,
        })
    }

    /// Reads the fingerprints of blocks `[first, first + out.len())`.
    pub fn read(&self, first: u64, out: &mut [u128]) -> Result<()> {
        let n = out.len() as u64;
        if first.checked_add(n).is_none_or(|e| e > self.blocks) {
            return Err(Error::InvalidArgument(format!(
                "fingerprints {first}+{n} outside {} blocks",
                self.blocks
            )));
        }
        let mut buf = vec![0u8; out.len() * 16];
        self.file
            .read_exact_at(&mut buf, FP_HEADER + first * 16)
            .map_err(|e| Error::io("reading fingerprints", e).in_file(&self.path))?;
        for (o, c) in out.iter_mut().zip(buf.chunks_exact(16)) {
            let mut a = [0u8; 16];
            a.copy_from_slice(c);
            *o = u128::from_le_bytes(a);
        }
        Ok(())
    }

    /// Writes the fingerprints of blocks `[first, first + fps.len())` (not synced).
    pub fn write(&self, first: u64, fps: &[u128]) -> Result<()> {
        let n = fps.len() as u64;
        if first.checked_add(n).is_none_or(|e| e > self.blocks) {
            return Err(Error::InvalidArgument(format!(
                "fingerprints {first}+{n} outside {} blocks",
                self.blocks
            )));
        }
        let buf: Vec<u8> = fps.iter().flat_map(|f| f.to_le_bytes()).collect();
        self.file
            .write_all_at(&buf, FP_HEADER + first * 16)
            .map_err(|e| Error::io("writing fingerprints", e).in_file(&self.path))
    }

    /// Makes the written fingerprints durable.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("syncing the fingerprint file", e).in_file(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SyncState {
        let mut cand = BlockBitmap::new(10 << 20, 65536).unwrap();
        cand.set_range(65536..300_000);
        SyncState {
            sync_id: [7; 16],
            block_size: 65536,
            passes: 3,
            src_format: "raw".into(),
            src_size: 10 << 20,
            src_path: "/x/src.img".into(),
            src_head: 0x1234,
            tgt_format: "qcow2".into(),
            tgt_size: 10 << 20,
            tgt_dev: 5,
            tgt_ino: 99,
            tgt_id: "nbd://host:10809/web01".into(),
            blocks: 160,
            running: Some(RunningPass {
                kind: PassKind::Scan,
                candidates: cand,
                position: 17,
                pending: (16, 32),
            }),
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let s = sample();
        let b = s.to_bytes();
        assert_eq!(SyncState::from_bytes(&b, "t").unwrap(), s);
        for cut in [0, 5, 8, 20, b.len() - 1] {
            assert!(SyncState::from_bytes(&b[..cut], "t").is_err());
        }
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x10;
            let e = SyncState::from_bytes(&d, "t").unwrap_err();
            assert!(e.to_string().contains("sync state t"), "{e}");
        }
    }

    /// The version 1 form of `s` (no target identity), as version 1 wrote it.
    fn v1_bytes(s: &SyncState) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(MAGIC_V1);
        v.extend_from_slice(&s.sync_id);
        for x in [s.block_size, s.passes] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        put_str(&mut v, s.src_format.as_bytes());
        v.extend_from_slice(&s.src_size.to_le_bytes());
        put_str(&mut v, s.src_path.as_bytes());
        v.extend_from_slice(&s.src_head.to_le_bytes());
        put_str(&mut v, s.tgt_format.as_bytes());
        for x in [s.tgt_size, s.tgt_dev, s.tgt_ino, s.blocks] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.push(0);
        let sum = xxhash_rust::xxh3::xxh3_64(&v);
        v.extend_from_slice(&sum.to_le_bytes());
        v
    }

    #[test]
    fn reads_version_1_and_writes_version_2_with_the_target_id() {
        let mut s = sample();
        s.running = None;
        let old = v1_bytes(&s);
        let got = SyncState::from_bytes(&old, "t").unwrap();
        let mut want = s.clone();
        want.tgt_id = String::new();
        assert_eq!(got, want);
        // Written back, it is version 2 and keeps the (empty) id.
        let b = got.to_bytes();
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(SyncState::from_bytes(&b, "t").unwrap(), want);
        // Version 2 keeps the id; a version 2 body under the version 1 magic is refused.
        let b = s.to_bytes();
        assert_eq!(SyncState::from_bytes(&b, "t").unwrap().tgt_id, s.tgt_id);
        let mut relabelled = b[..b.len() - 8].to_vec();
        relabelled[..8].copy_from_slice(MAGIC_V1);
        let sum = xxhash_rust::xxh3::xxh3_64(&relabelled);
        relabelled.extend_from_slice(&sum.to_le_bytes());
        assert!(SyncState::from_bytes(&relabelled, "t").is_err());
        // An unknown version is named as such.
        let mut v3 = b.clone();
        v3[7] = 3;
        let e = SyncState::from_bytes(&v3, "t").unwrap_err();
        assert!(e.to_string().contains("unknown version"), "{e}");
    }

    #[test]
    fn saves_atomically_and_fp_file_checks_identity() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img.dcsync");
        assert!(SyncState::load(&p).unwrap().is_none());
        let s = sample();
        s.save(&p).unwrap();
        assert_eq!(SyncState::load(&p).unwrap().unwrap(), s);
        let fpp = fp_path(&p);
        let fp = FpFile::create(&fpp, &s.sync_id, 160, 42).unwrap();
        let mut out = [0u128; 4];
        fp.read(156, &mut out).unwrap();
        assert_eq!(out, [42; 4]);
        fp.write(1, &[5, 6]).unwrap();
        assert!(fp.read(158, &mut out).is_err());
        drop(fp);
        let fp = FpFile::open(&fpp, &s.sync_id, 160).unwrap();
        fp.read(0, &mut out).unwrap();
        assert_eq!(out, [42, 5, 6, 42]);
        assert!(FpFile::open(&fpp, &[8; 16], 160).is_err());
        assert!(FpFile::open(&fpp, &s.sync_id, 161).is_err());
    }
}
