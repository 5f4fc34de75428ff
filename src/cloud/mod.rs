//! Cloud delivery: target profiles (what each cloud or hypervisor imports and the output a
//! `--target` writes, [`profile`]), the preflight report (will an image import and boot
//! there, [`preflight`]) and uploads into cloud storage ([`azure`] page blobs, [`s3`] object
//! stores).

pub mod azure;
pub mod preflight;
pub mod profile;
#[cfg(feature = "cloud")]
pub mod s3;

pub use preflight::{
    Check, FoundOs, OsKind, PlannedOutput, PreflightOptions, PreflightReport, Status, os_check,
    preflight as preflight_image, preflight_reader,
};
pub use profile::{
    BootMode, PaddedReader, Profile, Target, TargetOutput, convert_for_target, target_output,
};
