//! Integration tests: one binary, one module per area, shared helpers in `util`.
//!
//! Oracles (qemu-img, imago) make the inputs and check the outputs. With `CI=true` a missing
//! oracle fails the test instead of skipping it.

mod cli;
mod contract;
mod convert;
mod disk_partition;
mod drivers_iso;
mod hive_cli;
mod hive_core;
mod hive_log;
mod hive_reg;
mod hive_windows;
mod inject_windows;
mod inspect_cli;
mod ntfs_cli;
mod ntfs_damage;
mod ntfs_fixture;
mod ntfs_index;
mod ntfs_model;
mod ntfs_write;
mod ova;
mod qcow2_check;
mod qcow2_read;
mod qcow2_write;
mod sync_engine;
mod sync_update_raw_qcow2;
mod sync_update_vhd;
mod sync_update_vmdk;
mod sync_verify;
mod util;
mod vhd;
mod vhdx;
mod vmdk_read;
mod vmdk_write;
