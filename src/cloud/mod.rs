//! Cloud delivery: uploads of finished artifacts into object stores.

#[cfg(feature = "cloud")]
pub mod s3;
