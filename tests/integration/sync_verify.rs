//! Sync tests (sync_verify): filled in by the work on issue 6.
