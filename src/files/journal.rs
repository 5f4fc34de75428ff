//! The undo journal of an in-place edit, and the rollback that uses it after a crash.
//!
//! The journal (`<image>.diskconv-undo`) holds the original bytes of every range an edit is
//! about to change: magic, virtual size, range count, then per range its offset, length and
//! bytes, then the SHA-256 of everything before it. A journal whose checksum does not match
//! was still being written when the edit stopped, before the image was touched.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ImageLock, sync_dir, write_atomically};
use crate::bytes::get_le64;
use crate::error::{Error, Result};
use crate::image::ImageUpdater;
use crate::util::is_zero;

/// The undo journal written beside an image while a commit is in progress.
pub fn journal_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(".diskconv-undo");
    PathBuf::from(name)
}

const JOURNAL_MAGIC: &[u8; 16] = b"DISKCONV-UNDO-01";

/// Largest undo journal [`rollback`] reads.
const MAX_JOURNAL: u64 = 1 << 34;

/// Serialises the undo journal: magic, virtual size, range count, then per range its offset,
/// length and original bytes, then the SHA-256 of everything before it.
fn encode_journal(virtual_size: u64, ranges: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let total: usize = ranges.iter().map(|(_, d)| d.len() + 16).sum();
    let mut out = Vec::with_capacity(32 + total + 32);
    out.extend_from_slice(JOURNAL_MAGIC);
    out.extend_from_slice(&virtual_size.to_le_bytes());
    out.extend_from_slice(&(ranges.len() as u64).to_le_bytes());
    for (off, data) in ranges {
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Why a journal could not be decoded.
enum JournalProblem {
    /// Shorter than its content says, or its checksum does not match: it was being written
    /// when the commit stopped, so the image was not touched yet.
    Incomplete(String),
    /// Not a journal of ours, or impossible content.
    Invalid(String),
}

type JournalRanges = (u64, Vec<(u64, Vec<u8>)>);

fn decode_journal(bytes: &[u8]) -> std::result::Result<JournalRanges, JournalProblem> {
    let le = |at: usize| get_le64(bytes, at);
    if bytes.len() < 16 {
        return Err(JournalProblem::Incomplete(format!(
            "only {} bytes long",
            bytes.len()
        )));
    }
    if bytes.get(..16) != Some(&JOURNAL_MAGIC[..]) {
        return Err(JournalProblem::Invalid(
            "it does not start with the diskconv undo journal signature".into(),
        ));
    }
    if bytes.len() < 32 + 32 {
        return Err(JournalProblem::Incomplete(format!(
            "only {} bytes long",
            bytes.len()
        )));
    }
    let body_len = bytes.len() - 32;
    let (body, sum) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != sum {
        return Err(JournalProblem::Incomplete(
            "its checksum does not match its content".into(),
        ));
    }
    let (Some(virtual_size), Some(count)) = (le(16), le(24)) else {
        return Err(JournalProblem::Invalid("its header is truncated".into()));
    };
    let mut at = 32usize;
    let mut ranges = Vec::new();
    for i in 0..count {
        let (Some(off), Some(len)) = (le(at), le(at + 8)) else {
            return Err(JournalProblem::Invalid(format!(
                "range {i} of {count}: its header at byte {at} is past the end of the journal"
            )));
        };
        let start = at + 16;
        let data = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= body_len)
            .and_then(|e| body.get(start..e));
        let Some(data) = data else {
            return Err(JournalProblem::Invalid(format!(
                "range {i} of {count} ({len} bytes at byte {start}) reaches past the end of the journal"
            )));
        };
        if off.checked_add(len).is_none_or(|e| e > virtual_size) {
            return Err(JournalProblem::Invalid(format!(
                "range {i} ({len} bytes at disk offset {off:#x}) reaches past the end of the disk \
                 ({virtual_size} bytes)"
            )));
        }
        ranges.push((off, data.to_vec()));
        at = start + data.len();
    }
    if at != body_len {
        return Err(JournalProblem::Invalid(format!(
            "{} bytes follow its last range",
            body_len - at
        )));
    }
    Ok((virtual_size, ranges))
}

/// The undo journal of one in-place edit, written and synced before the image is touched and
/// removed once the image is flushed. Dropping it leaves the file in place (a crash does too):
/// [`rollback`] then restores the original bytes.
#[derive(Debug)]
pub struct UndoJournal {
    path: PathBuf,
}

impl UndoJournal {
    /// Writes the journal of `image` (a disk of `virtual_size` bytes) holding the original bytes
    /// of `ranges` (offset, bytes), syncs it and its folder. An existing journal is never
    /// overwritten; a journal that could not be written completely is removed.
    pub fn create(image: &Path, virtual_size: u64, ranges: &[(u64, Vec<u8>)]) -> Result<Self> {
        let journal = encode_journal(virtual_size, ranges);
        let path = journal_path(image);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::io(
                "creating the undo journal",
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            )
            .in_file(&path));
        }
        // Written whole under a temporary name and renamed: a journal under its final name is
        // complete (the checksum still guards journals of older versions).
        write_atomically(&path, &journal, "undo journal")?;
        Ok(UndoJournal { path })
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the journal (the edit is complete, or undone) and syncs its folder.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_file(&self.path)
            .map_err(|e| Error::io("removing the undo journal", e).in_file(&self.path))?;
        Ok(sync_dir(&self.path)?)
    }
}

/// What [`rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackOutcome {
    /// The journal was complete: these ranges were restored to their original bytes.
    Restored {
        /// Ranges restored.
        ranges: usize,
        /// Bytes restored.
        bytes: u64,
    },
    /// The journal was incomplete (the commit stopped while writing it, before touching the
    /// image): it was removed and the image left as it is.
    JournalIncomplete {
        /// Why it was judged incomplete.
        reason: String,
    },
}

/// Restores an image whose commit was interrupted, from the undo journal beside it
/// (`<image>.diskconv-undo`), then removes the journal. An image without a journal is an error.
/// The image is locked ([`ImageLock`]) for the whole rollback; `open_updater` opens it for the
/// in-place writes once the journal has been read and found complete.
pub fn rollback(
    image: &Path,
    open_updater: impl FnOnce(&Path) -> Result<Box<dyn ImageUpdater>>,
) -> Result<RollbackOutcome> {
    let _lock = ImageLock::acquire(image)?;
    rollback_unlocked(image, open_updater)
}

/// [`rollback`] without taking the image lock: for an image that is not a local file (a
/// remote disk, whose journal is kept locally under the name `image`).
pub fn rollback_unlocked(
    image: &Path,
    open_updater: impl FnOnce(&Path) -> Result<Box<dyn ImageUpdater>>,
) -> Result<RollbackOutcome> {
    let jpath = journal_path(image);
    let err = |op: String, e| Error::io(op, e).in_file(&jpath);
    let mut f = match std::fs::File::open(&jpath) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::InvalidArgument(format!(
                "there is no undo journal {} beside the image: nothing to roll back",
                jpath.display()
            ))
            .in_file(image));
        }
        Err(e) => return Err(err("opening the undo journal".into(), e)),
    };
    let size = f
        .metadata()
        .map_err(|e| err("reading the undo journal's size".into(), e))?
        .len();
    if size > MAX_JOURNAL {
        return Err(Error::InvalidArgument(format!(
            "the undo journal is {size} bytes, more than the {MAX_JOURNAL} bytes diskconv writes"
        ))
        .in_file(&jpath));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.read_to_end(&mut bytes)
        .map_err(|e| err("reading the undo journal".into(), e))?;
    drop(f);
    let (virtual_size, ranges) = match decode_journal(&bytes) {
        Ok(v) => v,
        Err(JournalProblem::Incomplete(reason)) => {
            std::fs::remove_file(&jpath)
                .map_err(|e| err("removing the incomplete undo journal".into(), e))?;
            sync_dir(&jpath)?;
            return Ok(RollbackOutcome::JournalIncomplete { reason });
        }
        Err(JournalProblem::Invalid(why)) => {
            return Err(Error::Corrupt(format!(
                "the undo journal cannot be used: {why}; it was left in place"
            ))
            .in_file(&jpath));
        }
    };
    let mut up = open_updater(image)?;
    if up.virtual_size() != virtual_size {
        return Err(Error::InvalidArgument(format!(
            "the undo journal is for a disk of {virtual_size} bytes, the image has {} bytes; \
             it was left in place",
            up.virtual_size()
        ))
        .in_file(image));
    }
    let mut restored = 0u64;
    for (off, data) in &ranges {
        if is_zero(data) {
            up.write_zeroes(*off, data.len() as u64)?;
        } else {
            up.write_at(data, *off)?;
        }
        restored += data.len() as u64;
    }
    up.flush()?;
    drop(up);
    std::fs::remove_file(&jpath).map_err(|e| err("removing the undo journal".into(), e))?;
    sync_dir(&jpath)?;
    Ok(RollbackOutcome::Restored {
        ranges: ranges.len(),
        bytes: restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_damage() {
        let ranges = vec![(4096u64, vec![1u8; 4096]), (65536, vec![0u8; 8192])];
        let j = encode_journal(1 << 20, &ranges);
        let (size, back) = decode_journal(&j).ok().unwrap_or_default();
        assert_eq!(size, 1 << 20);
        assert_eq!(back, ranges);
        // Truncated: incomplete.
        assert!(matches!(
            decode_journal(&j[..j.len() - 1]),
            Err(JournalProblem::Incomplete(_))
        ));
        // Wrong magic: invalid.
        let mut bad = j.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode_journal(&bad),
            Err(JournalProblem::Invalid(_))
        ));
        // A range past the end of the disk (checksum recomputed): invalid.
        let j2 = encode_journal(4096, &ranges);
        assert!(matches!(
            decode_journal(&j2),
            Err(JournalProblem::Invalid(_))
        ));
    }
}
