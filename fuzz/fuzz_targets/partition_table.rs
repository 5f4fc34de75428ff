//! Fuzzes the MBR / GPT reader on arbitrary bytes as a disk: the table, then every volume's
//! file system kind. Any panic is a bug; errors are fine. Every partition returned must lie
//! inside the disk.
#![no_main]

use diskconv::storage::MemStorage;
use diskconv::guest::partition::{find_volumes, read_partition_table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let disk = MemStorage::from_vec(data.to_vec());
    if let Ok(t) = read_partition_table(&disk) {
        for p in &t.partitions {
            assert!(p.start + p.len <= data.len() as u64, "{p:?}");
        }
    }
    let _ = find_volumes(&disk);
});
