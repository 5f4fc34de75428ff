//! Fuzzes the LVM2 readers on arbitrary bytes: the first half as a PV (label, PV header,
//! metadata area, circular text), the whole input as metadata text, and every logical volume
//! of a text that parses mapped onto the input as its only PV (`LvDisk`: segments checked
//! against the PV, reads at both ends). Also the volume probe (`linux_fs`). Any panic is a
//! bug; errors are fine.
#![no_main]

use diskconv::guest::disk::DiskRead;
use diskconv::guest::fsdetect::linux_fs;
use diskconv::guest::lvm::{LvDisk, parse_metadata, read_pv};
use diskconv::storage::MemStorage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = linux_fs(data);
    let pv = MemStorage::from_vec(data.to_vec());
    if let Ok(Some(label)) = read_pv(&pv) {
        if let Some(text) = label.metadata {
            let _ = parse_metadata(&text);
        }
    }
    let Ok(vg) = parse_metadata(data) else {
        return;
    };
    let len = pv.len();
    for lv in &vg.lvs {
        if let Ok(d) = LvDisk::new(&pv, &vg, lv, |_| Some((0, len))) {
            assert!(d.len() <= lv.size);
            let mut b = [0u8; 16];
            let n = d.len().min(16) as usize;
            let _ = d.read_at(&mut b[..n], 0);
            let _ = d.read_at(&mut b[..n], d.len() - n as u64);
        }
    }
});
