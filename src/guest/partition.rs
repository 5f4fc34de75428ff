//! MBR and GPT partition tables, and the file systems found in the partitions.

use std::collections::HashSet;

use crate::bytes::{Guid, get_le32, get_le64};
use crate::error::{Error, Result};
use crate::guest::disk::DiskRead;
pub use crate::guest::fsdetect::FsKind;
use crate::guest::fsdetect::{self, PROBE_LEN};

/// The partitioning of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// A DOS partition table (primary and logical partitions).
    Mbr,
    /// A GUID partition table (behind a protective MBR).
    Gpt,
    /// No partition table: the whole disk is one volume (or unknown).
    None,
}

/// The type of a partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionType {
    /// MBR partition type byte.
    Mbr(u8),
    /// GPT partition type GUID, upper-case text form.
    Gpt(String),
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based number as Linux names it (MBR logical partitions from 5).
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Its type.
    pub kind: PartitionType,
    /// GPT partition name (empty for MBR).
    pub name: String,
    /// MBR active flag, or GPT legacy-BIOS-bootable attribute.
    pub bootable: bool,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionTable {
    /// MBR, GPT or none.
    pub scheme: Scheme,
    /// Logical sector size used to read the table (512 or 4096).
    pub sector_size: u32,
    /// The partitions in table order.
    pub partitions: Vec<Partition>,
}

/// A volume: a partition (or the whole disk) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    /// The partition, or `None` for a whole-disk volume.
    pub partition: Option<Partition>,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it holds.
    pub fs: FsKind,
}

/// Boot signature at byte 510 of an MBR or EBR (`55 AA`).
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// GPT header signature, "EFI PART" (UEFI 2.10 section 5.3.2).
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// MBR type of a protective (or hybrid) MBR's GPT entry.
const MBR_TYPE_GPT: u8 = 0xEE;

/// Largest GPT entry array read (bytes).
const MAX_GPT_ARRAY: u64 = 4 << 20;
/// Most logical partitions followed in an extended-partition chain.
const MAX_LOGICAL: u32 = 256;

fn corrupt(msg: String) -> Error {
    Error::Corrupt(msg)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// Reads `len` bytes at `offset`, or fewer when the disk ends first.
fn read_upto(disk: &dyn DiskRead, offset: u64, len: usize) -> Result<Vec<u8>> {
    let n = disk.len().saturating_sub(offset).min(len as u64) as usize;
    let mut b = vec![0u8; n];
    if n > 0 {
        disk.read_at(&mut b, offset)?;
    }
    Ok(b)
}

/// The file system whose boot sector / superblock starts `head` (the first
/// [`PROBE_LEN`] bytes or less).
fn fs_kind(head: &[u8]) -> FsKind {
    fsdetect::probe(head)
}

/// Reads the partition table: GPT (primary header, or the backup when the primary is damaged;
/// CRCs checked; any entry size >= 128) behind a protective MBR, else an MBR with its
/// extended-partition chain (bounded: loops are errors). A disk with neither is
/// [`Scheme::None`].
pub fn read_partition_table(disk: &dyn DiskRead) -> Result<PartitionTable> {
    let none = PartitionTable {
        scheme: Scheme::None,
        sector_size: 512,
        partitions: Vec::new(),
    };
    let mbr = read_upto(disk, 0, 512)?;
    if mbr.len() < 512 || mbr.get(510..512) != Some(&BOOT_SIGNATURE[..]) {
        // No MBR; a GPT without its protective MBR is still read.
        let gpt_at_1 =
            |ss: u64| -> Result<bool> { Ok(read_upto(disk, ss, 8)?.as_slice() == GPT_SIGNATURE) };
        if gpt_at_1(512)? || gpt_at_1(4096)? {
            return read_gpt(disk);
        }
        return Ok(none);
    }
    // A volume boot sector (a file system over the whole disk) also ends in 55 AA; its bytes
    // at 446 are boot code, not a table.
    if fs_kind(&read_upto(disk, 0, PROBE_LEN)?) != FsKind::Unknown {
        return Ok(none);
    }
    let slots: Vec<MbrSlot> = (0..4).map(|i| MbrSlot::parse(&mbr, 446 + 16 * i)).collect();
    if slots.iter().any(|s| s.kind == MBR_TYPE_GPT) {
        return read_gpt(disk);
    }
    read_mbr(disk, &slots)
}

#[derive(Debug, Clone, Copy)]
struct MbrSlot {
    boot: u8,
    kind: u8,
    start: u32,
    count: u32,
}

impl MbrSlot {
    fn parse(b: &[u8], at: usize) -> MbrSlot {
        MbrSlot {
            boot: b.get(at).copied().unwrap_or(0),
            kind: b.get(at + 4).copied().unwrap_or(0),
            start: get_le32(b, at + 8).unwrap_or(0),
            count: get_le32(b, at + 12).unwrap_or(0),
        }
    }
    fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0F | 0x85)
    }
}

fn read_mbr(disk: &dyn DiskRead, slots: &[MbrSlot]) -> Result<PartitionTable> {
    const SS: u64 = 512;
    let sectors = disk.len() / SS;
    let mut parts = Vec::new();
    let mut used: Vec<(u64, u64, u32)> = Vec::new();
    let mut extended: Option<(u64, u64)> = None;
    for (i, s) in slots.iter().enumerate() {
        let number = i as u32 + 1;
        if s.kind == 0 || s.count == 0 {
            continue;
        }
        if s.boot != 0 && s.boot != 0x80 {
            return Err(corrupt(format!(
                "MBR partition {number}: boot indicator {:#04x} at byte {} is neither 0x00 nor 0x80",
                s.boot,
                446 + 16 * i
            )));
        }
        let (start, count) = (s.start as u64, s.count as u64);
        if start == 0 || start + count > sectors {
            return Err(corrupt(format!(
                "MBR partition {number}: sectors {start}..{} lie outside the disk ({sectors} \
                 sectors of 512 bytes)",
                start + count
            )));
        }
        check_overlap(&used, start, count, number, "MBR")?;
        used.push((start, count, number));
        if s.is_extended() {
            if extended.is_some() {
                return Err(corrupt(format!(
                    "MBR partition {number} is a second extended partition"
                )));
            }
            extended = Some((start, count));
            continue;
        }
        parts.push(Partition {
            number,
            start: start * SS,
            len: count * SS,
            kind: PartitionType::Mbr(s.kind),
            name: String::new(),
            bootable: s.boot == 0x80,
        });
    }
    if let Some((ext_start, ext_count)) = extended {
        let mut ebr_lba = ext_start;
        let mut seen = HashSet::new();
        let mut logical: Vec<(u64, u64, u32)> = Vec::new();
        let mut number = 5u32;
        loop {
            if !seen.insert(ebr_lba) {
                return Err(corrupt(format!(
                    "the extended partition chain loops back to the boot record at sector \
                     {ebr_lba}"
                )));
            }
            if number - 5 >= MAX_LOGICAL {
                return Err(corrupt(format!(
                    "the extended partition chain is longer than {MAX_LOGICAL} logical partitions"
                )));
            }
            let ebr = read_upto(disk, ebr_lba * SS, 512)?;
            if ebr.len() < 512 || ebr.get(510..512) != Some(&BOOT_SIGNATURE[..]) {
                return Err(corrupt(format!(
                    "the extended boot record at sector {ebr_lba} (byte {:#x}) has no 55 AA \
                     signature",
                    ebr_lba * SS
                )));
            }
            let this = MbrSlot::parse(&ebr, 446);
            let next = MbrSlot::parse(&ebr, 462);
            if this.kind != 0 && this.count != 0 {
                let start = ebr_lba + this.start as u64;
                let count = this.count as u64;
                if this.start == 0 || start + count > ext_start + ext_count {
                    return Err(corrupt(format!(
                        "logical partition {number} (boot record at sector {ebr_lba}): sectors \
                         {start}..{} lie outside the extended partition (sectors {ext_start}..{})",
                        start + count,
                        ext_start + ext_count
                    )));
                }
                check_overlap(&logical, start, count, number, "logical")?;
                logical.push((start, count, number));
                parts.push(Partition {
                    number,
                    start: start * SS,
                    len: count * SS,
                    kind: PartitionType::Mbr(this.kind),
                    name: String::new(),
                    bootable: this.boot == 0x80,
                });
                number += 1;
            }
            if next.kind == 0 || next.count == 0 {
                break;
            }
            if !next.is_extended() {
                return Err(corrupt(format!(
                    "the boot record at sector {ebr_lba} links to a next record of type {:#04x}, \
                     not an extended one",
                    next.kind
                )));
            }
            let nxt = ext_start + next.start as u64;
            if next.start == 0 || nxt >= ext_start + ext_count {
                return Err(corrupt(format!(
                    "the boot record at sector {ebr_lba} links to sector {nxt}, outside the \
                     extended partition (sectors {ext_start}..{})",
                    ext_start + ext_count
                )));
            }
            ebr_lba = nxt;
        }
    }
    Ok(PartitionTable {
        scheme: Scheme::Mbr,
        sector_size: SS as u32,
        partitions: parts,
    })
}

fn check_overlap(
    used: &[(u64, u64, u32)],
    start: u64,
    count: u64,
    number: u32,
    what: &str,
) -> Result<()> {
    for &(s, c, n) in used {
        if start < s + c && s < start + count {
            return Err(corrupt(format!(
                "{what} partition {number} (sectors {start}..{}) overlaps partition {n} (sectors \
                 {s}..{})",
                start + count,
                s + c
            )));
        }
    }
    Ok(())
}

/// A GPT header and its entry array, both checked.
struct Gpt {
    sector_size: u64,
    first_usable: u64,
    last_usable: u64,
    entry_size: u64,
    entries: Vec<u8>,
}

/// Reads and checks the GPT header at `lba` and its entries.
fn gpt_at(disk: &dyn DiskRead, ss: u64, lba: u64, which: &str) -> std::result::Result<Gpt, String> {
    let off = lba
        .checked_mul(ss)
        .filter(|o| o.saturating_add(ss) <= disk.len())
        .ok_or_else(|| format!("the {which} GPT header's sector {lba} is outside the disk"))?;
    let h = read_upto(disk, off, ss as usize).map_err(|e| e.to_string())?;
    if h.get(..8) != Some(&GPT_SIGNATURE[..]) {
        return Err(format!(
            "no {which} GPT header signature at byte {off:#x} (sector {lba}, {ss}-byte sectors)"
        ));
    }
    let hsize = get_le32(&h, 12).unwrap_or(0) as u64;
    if !(92..=ss).contains(&hsize) {
        return Err(format!(
            "the {which} GPT header at byte {off:#x} gives a header size of {hsize} (expected \
             92..={ss})"
        ));
    }
    let stored = get_le32(&h, 16).unwrap_or(0);
    let mut copy = h.get(..hsize as usize).unwrap_or(&[]).to_vec();
    if let Some(c) = copy.get_mut(16..20) {
        c.fill(0);
    }
    let computed = crc32(&copy);
    if stored != computed {
        return Err(format!(
            "the {which} GPT header at byte {off:#x} has CRC {stored:#010x}, computed \
             {computed:#010x}"
        ));
    }
    let my_lba = get_le64(&h, 24).unwrap_or(0);
    if my_lba != lba {
        return Err(format!(
            "the {which} GPT header at sector {lba} says it is at sector {my_lba}"
        ));
    }
    let first_usable = get_le64(&h, 40).unwrap_or(0);
    let last_usable = get_le64(&h, 48).unwrap_or(0);
    let entries_lba = get_le64(&h, 72).unwrap_or(0);
    let count = get_le32(&h, 80).unwrap_or(0) as u64;
    let entry_size = get_le32(&h, 84).unwrap_or(0) as u64;
    let entries_crc = get_le32(&h, 88).unwrap_or(0);
    if entry_size < 128 || entry_size % 8 != 0 {
        return Err(format!(
            "the {which} GPT header gives an entry size of {entry_size} (expected a multiple of \
             8, at least 128)"
        ));
    }
    let total = count * entry_size; // both came from 32-bit fields: no overflow
    if total > MAX_GPT_ARRAY {
        return Err(format!(
            "the {which} GPT header describes {count} entries of {entry_size} bytes, more than \
             {MAX_GPT_ARRAY} bytes"
        ));
    }
    let sectors = disk.len() / ss;
    if first_usable > last_usable || last_usable >= sectors {
        return Err(format!(
            "the {which} GPT header's usable sectors {first_usable}..={last_usable} do not fit \
             the disk ({sectors} sectors)"
        ));
    }
    let eoff = entries_lba
        .checked_mul(ss)
        .filter(|o| o.saturating_add(total) <= disk.len())
        .ok_or_else(|| {
            format!("the {which} GPT entry array at sector {entries_lba} is outside the disk")
        })?;
    let entries = read_upto(disk, eoff, total as usize).map_err(|e| e.to_string())?;
    let computed = crc32(&entries);
    if computed != entries_crc {
        return Err(format!(
            "the {which} GPT entry array at byte {eoff:#x} has CRC {computed:#010x}, the header \
             says {entries_crc:#010x}"
        ));
    }
    Ok(Gpt {
        sector_size: ss,
        first_usable,
        last_usable,
        entry_size,
        entries,
    })
}

fn read_gpt(disk: &dyn DiskRead) -> Result<PartitionTable> {
    let mut problems = Vec::new();
    let mut found = None;
    // The primary at sector 1, for 512- then 4096-byte sectors; then the backups.
    'outer: for backup in [false, true] {
        for ss in [512u64, 4096] {
            let lba = if backup {
                match (disk.len() / ss).checked_sub(1) {
                    Some(l) if l > 1 => l,
                    _ => continue,
                }
            } else {
                1
            };
            let which = if backup { "backup" } else { "primary" };
            match gpt_at(disk, ss, lba, which) {
                Ok(g) => {
                    found = Some(g);
                    break 'outer;
                }
                Err(e) => {
                    // Only report a missing signature when no sector size had one.
                    problems.push(e);
                }
            }
        }
    }
    let Some(g) = found else {
        let real: Vec<&String> = problems.iter().filter(|p| !p.starts_with("no ")).collect();
        let msg = if real.is_empty() {
            "the protective MBR announces a GPT but no GPT header was found (sector 1 or the \
             last sector, 512- or 4096-byte sectors)"
                .to_string()
        } else {
            format!(
                "no usable GPT header: {}",
                real.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        return Err(corrupt(msg));
    };
    let mut parts = Vec::new();
    let es = g.entry_size as usize;
    let mut used: Vec<(u64, u64, u32)> = Vec::new();
    for (i, e) in g.entries.chunks_exact(es).enumerate() {
        let number = i as u32 + 1;
        let tguid = e.get(..16).unwrap_or(&[]);
        if tguid.iter().all(|&b| b == 0) {
            continue;
        }
        let first = get_le64(e, 32).unwrap_or(0);
        let last = get_le64(e, 40).unwrap_or(0);
        if first > last || first < g.first_usable || last > g.last_usable {
            return Err(corrupt(format!(
                "GPT partition {number}: sectors {first}..={last} are outside the usable sectors \
                 {}..={}",
                g.first_usable, g.last_usable
            )));
        }
        let count = last - first + 1;
        check_overlap(&used, first, count, number, "GPT")?;
        used.push((first, count, number));
        let attrs = get_le64(e, 48).unwrap_or(0);
        let name_units: Vec<u16> = e
            .get(56..128)
            .unwrap_or(&[])
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        parts.push(Partition {
            number,
            start: first * g.sector_size,
            len: count * g.sector_size,
            kind: PartitionType::Gpt(Guid::read(tguid, 0).to_string()),
            name: String::from_utf16_lossy(&name_units),
            bootable: attrs & 4 != 0,
        });
    }
    Ok(PartitionTable {
        scheme: Scheme::Gpt,
        sector_size: g.sector_size as u32,
        partitions: parts,
    })
}

/// Every volume on the disk with its file system kind: each partition (except extended
/// containers), or the whole disk when there is no partition table.
pub fn find_volumes(disk: &dyn DiskRead) -> Result<Vec<Volume>> {
    let table = read_partition_table(disk)?;
    if table.scheme == Scheme::None {
        let head = read_upto(disk, 0, PROBE_LEN)?;
        return Ok(vec![Volume {
            partition: None,
            start: 0,
            len: disk.len(),
            fs: fs_kind(&head),
        }]);
    }
    let mut out = Vec::new();
    for p in table.partitions {
        let head = read_upto(disk, p.start, (p.len.min(PROBE_LEN as u64)) as usize)?;
        out.push(Volume {
            start: p.start,
            len: p.len,
            fs: fs_kind(&head),
            partition: Some(p),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn mbr_disk(slots: &[(u8, u8, u32, u32)], size: usize) -> MemStorage {
        let mut d = vec![0u8; size];
        for (i, &(boot, kind, start, count)) in slots.iter().enumerate() {
            let at = 446 + 16 * i;
            d[at] = boot;
            d[at + 4] = kind;
            d[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            d[at + 12..at + 16].copy_from_slice(&count.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        MemStorage::from_vec(d)
    }

    #[test]
    fn mbr_primary_partitions_and_errors() {
        let d = mbr_disk(&[(0x80, 0x07, 2048, 2048), (0, 0x83, 4096, 100)], 4 << 20);
        let t = read_partition_table(&d).unwrap();
        assert_eq!(t.scheme, Scheme::Mbr);
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[0].start, 2048 * 512);
        assert!(t.partitions[0].bootable);
        // Past the end.
        let d = mbr_disk(&[(0, 0x07, 2048, 1 << 20)], 4 << 20);
        let e = read_partition_table(&d).unwrap_err().to_string();
        assert!(e.contains("outside the disk"), "{e}");
        // Overlap.
        let d = mbr_disk(&[(0, 0x07, 2048, 2048), (0, 0x07, 4000, 10)], 4 << 20);
        let e = read_partition_table(&d).unwrap_err().to_string();
        assert!(e.contains("overlaps"), "{e}");
    }

    #[test]
    fn mbr_extended_chain_loop_is_an_error() {
        let mut d = mbr_disk(&[(0, 0x05, 2048, 4096)], 4 << 20);
        // EBR at 2048: a logical partition, and a link back to itself.
        let at = 2048 * 512;
        let e = &mut d.bytes_mut()[at..at + 512];
        e[446 + 4] = 0x83;
        e[446 + 8..446 + 12].copy_from_slice(&63u32.to_le_bytes());
        e[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
        e[462 + 4] = 0x05;
        e[462 + 8..462 + 12].copy_from_slice(&0u32.to_le_bytes());
        e[462 + 12..462 + 16].copy_from_slice(&100u32.to_le_bytes());
        e[510] = 0x55;
        e[511] = 0xAA;
        let err = read_partition_table(&d).unwrap_err().to_string();
        assert!(err.contains("outside the extended"), "{err}");
        // A link to a later EBR that links back to the first.
        let e = &mut d.bytes_mut()[at..at + 512];
        e[462 + 8..462 + 12].copy_from_slice(&1000u32.to_le_bytes());
        let at2 = (2048 + 1000) * 512;
        let e2 = &mut d.bytes_mut()[at2..at2 + 512];
        e2[462 + 4] = 0x05;
        e2[462 + 8..462 + 12].copy_from_slice(&1u32.to_le_bytes());
        e2[462 + 12..462 + 16].copy_from_slice(&10u32.to_le_bytes());
        e2[510] = 0x55;
        e2[511] = 0xAA;
        // EBR at 2049 links to 2048+1000 again: a loop.
        let at3 = 2049 * 512;
        let e3 = &mut d.bytes_mut()[at3..at3 + 512];
        e3[462 + 4] = 0x05;
        e3[462 + 8..462 + 12].copy_from_slice(&1000u32.to_le_bytes());
        e3[462 + 12..462 + 16].copy_from_slice(&10u32.to_le_bytes());
        e3[510] = 0x55;
        e3[511] = 0xAA;
        let err = read_partition_table(&d).unwrap_err().to_string();
        assert!(err.contains("loops"), "{err}");
    }

    #[test]
    fn whole_disk_file_systems() {
        let mut d = vec![0u8; 65536];
        d[3..11].copy_from_slice(b"NTFS    ");
        d[510] = 0x55;
        d[511] = 0xAA;
        let v = find_volumes(&MemStorage::from_vec(d.clone())).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].fs, FsKind::Ntfs);
        d[3..11].copy_from_slice(b"-FVE-FS-");
        assert_eq!(
            find_volumes(&MemStorage::from_vec(d)).unwrap()[0].fs,
            FsKind::BitLocker
        );
        let mut x = vec![0u8; 65536];
        x[..4].copy_from_slice(b"XFSB");
        assert_eq!(
            find_volumes(&MemStorage::from_vec(x)).unwrap()[0].fs,
            FsKind::Xfs
        );
        let mut s = vec![0u8; 65536];
        s[4086..4096].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(
            find_volumes(&MemStorage::from_vec(s)).unwrap()[0].fs,
            FsKind::Swap
        );
        let empty = find_volumes(&MemStorage::from_vec(vec![0u8; 100])).unwrap();
        assert_eq!(empty[0].fs, FsKind::Unknown);
    }

    #[test]
    fn protective_mbr_without_gpt_is_an_error() {
        let d = mbr_disk(&[(0, 0xEE, 1, 8191)], 4 << 20);
        let e = read_partition_table(&d).unwrap_err().to_string();
        assert!(e.contains("no GPT header"), "{e}");
    }
}
