//! Fuzzes an OVA package held in memory: tar member table, manifest, OVF descriptor, every disk
//! member. Opened twice: without the manifest check and with capacities accepted, describing
//! every disk (so random packages get past the checks into the OVF and the disks), then with
//! the defaults (manifest checked, capacities enforced).
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use diskconv::storage::MemStorage;
use diskconv::{Format, OpenOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut opts = OpenOptions::new()
        .format(Format::Ova)
        .verify_manifest(false)
        .allow_capacity_mismatch(true);
    opts.package.describe_all_disks = true;
    let storage = Arc::new(MemStorage::from_vec(data.to_vec()));
    if let Ok(img) = diskconv::open_storage(storage, &opts) {
        let _ = img.info();
    }
    common::open_and_walk(data, Format::Ova)
});
