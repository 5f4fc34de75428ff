//! Helpers of the `convert` benchmark: the source image and child-process measurement.

pub mod measure;
pub mod source;
