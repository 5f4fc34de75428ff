//! Placeholder: filled in by the Vhd work.
