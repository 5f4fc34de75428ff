//! Sync tests (sync_update_vmdk): filled in by the work on issue 6.
