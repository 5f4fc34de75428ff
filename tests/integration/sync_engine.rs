//! Sync tests (sync_engine): filled in by the work on issue 6.
