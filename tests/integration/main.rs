//! Integration tests: one binary, one module per area, shared helpers in `util`.
//!
//! Oracles (qemu-img, imago, hivex, ntfs-3g, ...) make the inputs and check the outputs. The
//! tools, Python modules and conditions the tests need are listed in tests/oracles/tools.txt;
//! a test calls `util::require(NAME)` and returns early when it is missing (with `CI=true` it
//! fails instead), and `zz_oracles::summary` reports whatever is missing.

mod azure_upload;
mod btrfs_read;
mod check_formats;
mod cli;
mod cli_text;
mod cloud_preflight;
mod contract;
mod convert;
mod convert_stats;
mod disk_partition;
mod drivers_iso;
mod errors_name_files;
mod ext4_write;
mod gcp;
mod hive_cli;
mod hive_core;
mod hive_log;
mod hive_reg;
mod hive_windows;
mod image_lock;
mod initramfs;
mod inject_windows;
mod inspect_cli;
mod inspect_linux;
mod kmod;
mod linux_boot;
mod linux_fixture;
mod linux_config;
mod msrv;
mod nbd_client;
mod nbd_push;
mod nbd_server;
mod nbd_tls;
mod ntfs_cli;
mod ntfs_damage;
mod ntfs_fixture;
mod ntfs_index;
mod ntfs_model;
mod ntfs_write;
mod oracles;
mod output_size;
mod outputs;
mod ova;
mod qcow2_check;
mod qcow2_read;
mod qcow2_write;
mod s3_upload;
mod sink;
mod sync_engine;
mod sync_targets;
mod sync_update_raw_qcow2;
mod sync_update_vhd;
mod sync_update_vmdk;
mod sync_verify;
mod util;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk_read;
mod vmdk_write;
mod xfs_read;
mod zz_oracles;
