//! The internal snapshot table (qcow2.txt, "Snapshots").
//!
//! The table is a contiguous run of variable-length entries at `snapshots_offset`, one per
//! snapshot (`nb_snapshots` of them). Each entry is a 40-byte fixed part, extra data, the id
//! string and the name; the next entry starts at the next multiple of 8. The last entry needs
//! no padding: qemu writes the table with its exact length (`snapshots_size`), so a table at
//! the end of a file (`qemu-img snapshot -c`) ends with the last name, and qemu reads it that
//! way. [`table_len`] finds how many bytes the table spans (so the reader can fetch it in one
//! I/O); [`parse_table`] validates and decodes it.

use super::Qcow2Error;
use super::header::{MAX_L1_BYTES, MAX_VIRTUAL_SIZE};
use crate::bytes::{be16, be32, be64};
use crate::image::SnapshotInfo;

/// Length of the fixed part of a snapshot table entry.
pub const ENTRY_FIXED_LEN: u64 = 40;
/// Largest extra data area accepted (qemu's QCOW_MAX_SNAPSHOT_EXTRA_DATA).
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Largest snapshot table accepted, in bytes (qemu's QCOW_MAX_SNAPSHOTS_SIZE).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Extra data length that carries the 64-bit VM state size and the disk size.
const EXTRA_WITH_DISK_SIZE: u32 = 16;

/// One decoded snapshot table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Snapshot {
    /// Byte offset of this entry in the file (for error messages).
    pub entry_offset: u64,
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Number of entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Unique id string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Seconds since the Unix epoch when the snapshot was taken.
    pub date_sec: u32,
    /// Sub-second part of the date, in nanoseconds.
    pub date_nsec: u32,
    /// Guest run time when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of the saved VM state (from the extra data when present).
    pub vm_state_size: u64,
    /// Virtual disk size of the snapshot, from the extra data when present.
    pub disk_size: Option<u64>,
}

impl Qcow2Snapshot {
    /// The public description; `header_size` is used when the entry records no disk size.
    pub fn info(&self, header_size: u64) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            virtual_size: self.disk_size.unwrap_or(header_size),
            vm_state_size: self.vm_state_size,
            date_sec: self.date_sec,
        }
    }
}

/// Length of the entry whose fixed part starts `bytes`, without the padding that follows it,
/// or `None` when `bytes` is shorter than the fixed part.
fn entry_len(bytes: &[u8]) -> Option<u64> {
    if (bytes.len() as u64) < ENTRY_FIXED_LEN {
        return None;
    }
    let id_len = u64::from(be16(bytes, 12));
    let name_len = u64::from(be16(bytes, 14));
    let extra = u64::from(be32(bytes, 36));
    // At most 40 + 2^32 + 2 * 2^16: no overflow in u64.
    Some(ENTRY_FIXED_LEN + extra + id_len + name_len)
}

/// Number of bytes spanned by a table of `count` entries whose start is `bytes`: every entry
/// but the last rounded up to a multiple of 8, the last one unpadded (qemu's `snapshots_size`).
///
/// Returns `None` when `bytes` ends before the fixed part of some entry, so the caller can read
/// more and ask again. The result may exceed `bytes.len()` (the last entry's variable part).
pub fn table_len(bytes: &[u8], count: u32) -> Option<u64> {
    let mut pos = 0u64;
    for _ in 0..count {
        pos = pos.checked_next_multiple_of(8)?;
        let start = usize::try_from(pos).ok()?;
        let len = entry_len(bytes.get(start..)?)?;
        pos = pos.checked_add(len)?;
    }
    Some(pos)
}

/// Parses and validates a snapshot table.
///
/// `bytes` are the table's bytes read from `table_offset`; `count` is `nb_snapshots`;
/// `cluster_size` and `file_len` are used to check each snapshot's L1 table.
pub fn parse_table(
    bytes: &[u8],
    table_offset: u64,
    count: u32,
    cluster_size: u64,
    file_len: u64,
) -> Result<Vec<Qcow2Snapshot>, Qcow2Error> {
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    let mut pos = 0usize;
    for i in 0..count {
        // Entries start at multiples of 8; the padding before this one belongs to the last.
        pos = pos.next_multiple_of(8);
        let entry_offset = table_offset.saturating_add(pos as u64);
        let corrupt = |detail: String| {
            Qcow2Error::corrupt(format!("snapshot table entry {i}"), entry_offset, detail)
        };
        let rest = bytes.get(pos..).unwrap_or(&[]);
        let Some(len) = entry_len(rest) else {
            return Err(corrupt(format!(
                "the table ends at {:#x}, before the {ENTRY_FIXED_LEN}-byte entry header",
                table_offset.saturating_add(bytes.len() as u64)
            )));
        };
        if len > rest.len() as u64 {
            return Err(corrupt(format!(
                "the entry is {len} bytes long but the table ends after {} more bytes",
                rest.len()
            )));
        }
        // `len <= rest.len()`, so it fits in usize.
        let e = &rest[..len as usize];
        let l1_table_offset = be64(e, 0);
        let l1_size = be32(e, 8);
        let id_len = usize::from(be16(e, 12));
        let name_len = usize::from(be16(e, 14));
        let date_sec = be32(e, 16);
        let date_nsec = be32(e, 20);
        let vm_clock_nsec = be64(e, 24);
        let vm_state_32 = be32(e, 32);
        let extra_len = be32(e, 36);
        if extra_len > MAX_EXTRA_DATA {
            return Err(corrupt(format!(
                "extra data size is {extra_len}, expected at most {MAX_EXTRA_DATA}"
            )));
        }
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(corrupt(format!(
                "l1_size is {l1_size}, larger than the {} MiB limit on L1 tables",
                MAX_L1_BYTES >> 20
            )));
        }
        if l1_size > 0 {
            if l1_table_offset == 0 || l1_table_offset % cluster_size != 0 {
                return Err(corrupt(format!(
                    "L1 table offset {l1_table_offset:#x} is not a non-zero multiple of the \
                     cluster size ({cluster_size:#x})"
                )));
            }
            match l1_table_offset.checked_add(u64::from(l1_size) * 8) {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(corrupt(format!(
                        "L1 table at {l1_table_offset:#x} ({l1_size} entries) runs past the end \
                         of the file ({file_len:#x} bytes)"
                    )));
                }
            }
        }
        let extra_start = ENTRY_FIXED_LEN as usize;
        let extra = &e[extra_start..extra_start + extra_len as usize];
        let mut vm_state_size = u64::from(vm_state_32);
        let mut disk_size = None;
        if extra_len >= 8 {
            vm_state_size = be64(extra, 0);
        }
        if extra_len >= EXTRA_WITH_DISK_SIZE {
            let size = be64(extra, 8);
            if size > MAX_VIRTUAL_SIZE {
                return Err(corrupt(format!("disk size {size:#x} is absurd")));
            }
            disk_size = Some(size);
        }
        let id_start = extra_start + extra_len as usize;
        let id = String::from_utf8_lossy(&e[id_start..id_start + id_len]).into_owned();
        let name_start = id_start + id_len;
        let name = String::from_utf8_lossy(&e[name_start..name_start + name_len]).into_owned();
        if id.is_empty() {
            return Err(corrupt("the snapshot id is empty".into()));
        }
        if out.iter().any(|s: &Qcow2Snapshot| s.id == id) {
            return Err(corrupt(format!("duplicate snapshot id '{id}'")));
        }
        out.push(Qcow2Snapshot {
            entry_offset,
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec,
            date_nsec,
            vm_clock_nsec,
            vm_state_size,
            disk_size,
        });
        pos += len as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds one table entry with the fields the tests vary.
    fn entry(l1_off: u64, l1_size: u32, id: &str, name: &str, extra: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&l1_off.to_be_bytes()); // 0-7: L1 table offset
        e.extend_from_slice(&l1_size.to_be_bytes()); // 8-11: L1 entries
        e.extend_from_slice(&(id.len() as u16).to_be_bytes()); // 12-13: id length
        e.extend_from_slice(&(name.len() as u16).to_be_bytes()); // 14-15: name length
        e.extend_from_slice(&1_700_000_000u32.to_be_bytes()); // 16-19: date (seconds)
        e.extend_from_slice(&5u32.to_be_bytes()); // 20-23: date (nanoseconds)
        e.extend_from_slice(&7u64.to_be_bytes()); // 24-31: VM clock
        e.extend_from_slice(&99u32.to_be_bytes()); // 32-35: VM state size (32-bit)
        e.extend_from_slice(&(extra.len() as u32).to_be_bytes()); // 36-39: extra data size
        e.extend_from_slice(extra); // extra data
        e.extend_from_slice(id.as_bytes()); // id, not NUL-terminated
        e.extend_from_slice(name.as_bytes()); // name, not NUL-terminated
        while e.len() % 8 != 0 {
            e.push(0); // padding to a multiple of 8
        }
        e
    }

    /// Version 3 extra data: 64-bit VM state size, then the disk size.
    fn extra(vm_state: u64, disk: u64) -> Vec<u8> {
        let mut x = vm_state.to_be_bytes().to_vec();
        x.extend_from_slice(&disk.to_be_bytes());
        x
    }

    const CS: u64 = 65536;
    const FILE: u64 = 0x100000;

    #[test]
    fn parses_two_entries() {
        let mut t = entry(0x30000, 2, "1", "first", &extra(0, 1 << 20));
        let second = entry(0x40000, 1, "2", "second snapshot", &[]);
        t.extend_from_slice(&second);
        assert_eq!(table_len(&t, 2), Some(t.len() as u64));
        // A buffer that stops inside the second header cannot be measured yet.
        assert_eq!(table_len(&t[..t.len() - second.len() + 10], 2), None);
        let s = parse_table(&t, 0x50000, 2, CS, FILE).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].id, "1");
        assert_eq!(s[0].name, "first");
        assert_eq!(s[0].l1_table_offset, 0x30000);
        assert_eq!(s[0].l1_size, 2);
        assert_eq!(s[0].disk_size, Some(1 << 20));
        assert_eq!(s[0].vm_state_size, 0);
        assert_eq!(s[0].date_sec, 1_700_000_000);
        assert_eq!(s[0].entry_offset, 0x50000);
        // No extra data: the 32-bit VM state size counts and the disk size is unknown.
        assert_eq!(s[1].name, "second snapshot");
        assert_eq!(s[1].vm_state_size, 99);
        assert_eq!(s[1].disk_size, None);
        assert_eq!(s[1].entry_offset, 0x50000 + 64);
        assert_eq!(s[1].info(4096).virtual_size, 4096);
        assert_eq!(s[0].info(4096).virtual_size, 1 << 20);
    }

    /// What `qemu-img snapshot -c` leaves at the end of a file: entries padded to 8 bytes
    /// between them, the last one ending right after its name.
    #[test]
    fn last_entry_needs_no_padding() {
        // 40 + 24 (qemu's extra data: VM state size, disk size, icount) + "1" + "s1" = 67 bytes.
        let mut x = extra(0, 16 << 20);
        x.extend_from_slice(&u64::MAX.to_be_bytes()); // icount: -1, not recorded
        let first = entry(0x30000, 1, "1", "s1", &x);
        assert_eq!(first.len(), 72);
        let mut t = first.clone();
        t.truncate(67);
        assert_eq!(table_len(&t, 1), Some(67));
        let s = parse_table(&t, 0x160000, 1, CS, FILE).unwrap();
        assert_eq!((s[0].id.as_str(), s[0].name.as_str()), ("1", "s1"));
        assert_eq!(s[0].disk_size, Some(16 << 20));

        // Three entries: the first two padded, the last one not.
        let mut t = first.clone();
        t.extend_from_slice(&entry(0x40000, 1, "2", "bb", &x));
        t.extend_from_slice(&entry(0x50000, 1, "3", "ccc", &x)[..68]);
        assert_eq!(table_len(&t, 3), Some(72 + 72 + 68));
        let s = parse_table(&t, 0x160000, 3, CS, FILE).unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s1", "bb", "ccc"]);
        assert_eq!(s[2].entry_offset, 0x160000 + 144);

        // One byte short of the last name is still an error, with the entry's offset.
        let e = err_at(&t[..t.len() - 1], 3, 0x160000);
        assert!(e.contains("entry 2 at 0x160090"), "{e}");
        assert!(e.contains("68 bytes long"), "{e}");
    }

    fn err_at(t: &[u8], count: u32, at: u64) -> String {
        parse_table(t, at, count, CS, FILE).unwrap_err().to_string()
    }

    fn err(t: &[u8], count: u32) -> String {
        parse_table(t, 0x50000, count, CS, FILE)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rejects_bad_entries_with_offsets() {
        let good = entry(0x30000, 2, "1", "a", &extra(0, 1 << 20));
        // Table shorter than the count says.
        let e = err(&good, 2);
        assert!(e.contains("entry 1 at 0x50040"), "{e}");
        assert!(e.contains("before the 40-byte entry header"), "{e}");
        // Variable part cut off.
        let e = err(&good[..44], 1);
        assert!(e.contains("entry 0 at 0x50000"), "{e}");
        // Unaligned L1 table.
        let e = err(&entry(0x30100, 2, "1", "a", &[]), 1);
        assert!(e.contains("L1 table offset 0x30100"), "{e}");
        // L1 table past the end of the file.
        let e = err(&entry(0xf0000, 0x10000, "1", "a", &[]), 1);
        assert!(e.contains("runs past the end of the file"), "{e}");
        // Huge L1.
        let e = err(&entry(0x30000, u32::MAX, "1", "a", &[]), 1);
        assert!(e.contains("l1_size is 4294967295"), "{e}");
        // Extra data too large.
        let mut big = entry(0x30000, 2, "1", "a", &[]);
        big[36..40].copy_from_slice(&5000u32.to_be_bytes());
        big.resize(6000, 0);
        let e = err(&big, 1);
        assert!(e.contains("extra data size is 5000"), "{e}");
        // Absurd disk size.
        let e = err(&entry(0x30000, 2, "1", "a", &extra(0, u64::MAX)), 1);
        assert!(e.contains("disk size"), "{e}");
        // Duplicate ids.
        let mut t = good.clone();
        t.extend_from_slice(&good);
        let e = err(&t, 2);
        assert!(e.contains("duplicate snapshot id '1'"), "{e}");
        // Empty id.
        let e = err(&entry(0x30000, 2, "", "a", &[]), 1);
        assert!(e.contains("id is empty"), "{e}");
        // Everything above is a Corrupt error.
        let k = parse_table(&good, 0, 2, CS, FILE).unwrap_err().kind();
        assert_eq!(k, crate::ErrorKind::Corrupt);
    }

    #[test]
    fn table_len_never_overflows() {
        // Maximum lengths in every field: the sum stays well inside u64.
        let mut e = vec![0xffu8; 40];
        e[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(table_len(&e, 1).unwrap() > u64::from(u32::MAX));
        assert_eq!(table_len(&e, 2), None);
        assert_eq!(table_len(&[], 0), Some(0));
    }
}
