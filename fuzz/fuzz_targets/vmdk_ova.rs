//! Fuzzes an OVA package held in memory: tar member table, OVF scan, then the VMDK member.
#![no_main]

#[path = "common.rs"]
mod common;

use diskconv::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::open_and_walk(data, Format::Ova));
