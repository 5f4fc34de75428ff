//! Placeholder: filled in by the Vhdx work.
