//! Changed-block tracking and incremental sync: copy a running source to a target, then copy
//! only what changed, pass after pass, resumable after a crash (verified block by block with [`crate::verify`]).
//!
//! Parts: [`bitmap`] (one bit per block, set operations, compact on-disk form), [`state`] (the
//! crash-safe state file beside the target: identities, block size, pass number, one xxh3-128
//! fingerprint per block in a flat side file, progress of the running pass), [`engine`] (the
//! pass: where the changed blocks come from, the qcow2 dirty bitmap of the source, ranges from
//! the caller, or a fingerprint scan; resume; convergence) and [`target`] (in-place updates of
//! every random-access format through [`ImageUpdater`](crate::ImageUpdater)).

pub mod bitmap;
pub mod engine;
pub mod state;
pub mod target;

pub use bitmap::BlockBitmap;
pub use engine::{
    ChangeSource, ConvergeReport, PassReport, SyncOptions, sync_pass, sync_pass_to,
    sync_until_converged, sync_until_converged_to,
};
pub use target::{SyncSource, SyncTarget, state_place};
