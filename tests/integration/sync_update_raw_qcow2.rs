//! Sync tests (sync_update_raw_qcow2): filled in by the work on issue 6.
