//! Cloud delivery: uploads into cloud storage (DESIGN.md's "cloud" layer).

pub mod azure;
