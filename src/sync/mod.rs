//! Changed-block tracking and incremental sync: copy a running source to a target, then copy
//! only what changed, pass after pass, resumable after a crash, verifiable block by block.
//!
//! Parts: [`bitmap`] (one bit per block, set operations, compact on-disk form), `state` (the
//! crash-safe state file beside the target: identities, block size, pass number, one xxh3-128
//! fingerprint per block, progress of the running pass), the pass engine (where the changed
//! blocks come from: the source's qcow2 dirty bitmap, ranges from the caller, or a fingerprint
//! scan), [`target`] (in-place updates of every random-access format through
//! [`ImageUpdater`](crate::ImageUpdater)) and `verify` (block-by-block comparison and the SHA-256
//! manifest).

pub mod bitmap;
pub mod target;
pub mod verify;

pub use bitmap::BlockBitmap;
