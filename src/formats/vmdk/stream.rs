//! Placeholder: filled in by the VMDK work.
