//! Fuzzes a VMDK held in memory (sparse header, embedded descriptor, grain tables,
//! streamOptimized markers and grains). Extent files named by a text descriptor are refused
//! (the image has no folder), so descriptor parsing is covered too.
#![no_main]

#[path = "common.rs"]
mod common;

use diskconv::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::open_and_walk(data, Format::Vmdk));
