//! Sync tests (sync_update_vhd): filled in by the work on issue 6.
