//! Placeholder: filled in by the qcow2 reader work.
