//! Fuzzes a whole qcow2 image held in memory: the structural check, then open, map and read
//! every extent (bounded).
#![no_main]

#[path = "common.rs"]
mod common;

use diskconv::Format;
use diskconv::formats::qcow2;
use diskconv::storage::MemStorage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qcow2::check(&MemStorage::from_vec(data.to_vec()));
    common::open_and_walk(data, Format::Qcow2);
});
