//! What a volume holds, from the first bytes of it: the file system (or encryption, or LVM
//! physical volume) signature, and for the Linux ones the details their superblock gives
//! (ext2/ext3/ext4 from the feature flags, XFS v4/v5, UUID, label).
//!
//! Everything here works on a byte slice (the first [`PROBE_LEN`] bytes of a volume, or fewer
//! when the volume is smaller), so hostile bytes can only make a probe answer "unknown".

use crate::bytes::{get_be16, get_le16, get_le32};

/// How many bytes of a volume [`probe`] and [`linux_fs`] look at: up to the end of the btrfs
/// superblock's first 4 KiB (the btrfs superblock sits at 64 KiB).
pub const PROBE_LEN: usize = BTRFS_SB + 4096;

/// The file system (or encryption) found at the start of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// NTFS boot sector (`NTFS    ` OEM id).
    Ntfs,
    /// BitLocker-encrypted volume (`-FVE-FS-` OEM id).
    BitLocker,
    /// FAT12/16/32 (an EFI System Partition, usually).
    Fat,
    /// ext2/3/4.
    Ext,
    /// XFS.
    Xfs,
    /// Linux swap.
    Swap,
    /// btrfs.
    Btrfs,
    /// LUKS encryption (reported, not opened).
    Luks,
    /// An LVM2 physical volume.
    #[serde(rename = "lvm2-pv")]
    Lvm,
    /// Anything else.
    Unknown,
}

/// Boot signature at byte 510 of an MBR or FAT boot sector (`55 AA`).
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// OEM id of an NTFS boot sector (bytes 3..11), "NTFS    ".
const OEM_NTFS: &[u8; 8] = b"NTFS    ";
/// OEM id of a BitLocker volume (bytes 3..11), "-FVE-FS-".
const OEM_BITLOCKER: &[u8; 8] = b"-FVE-FS-";
/// XFS superblock magic at byte 0, "XFSB" (XFS Algorithms & Data Structures, "Superblocks").
const XFS_MAGIC: &[u8; 4] = b"XFSB";
/// Where the ext2/3/4 superblock starts.
const EXT_SB: usize = 1024;
/// ext2/3/4 superblock magic (`s_magic`, at superblock byte 0x38).
const EXT_MAGIC: u16 = 0xEF53;
/// Linux swap signatures in the last 10 bytes of the first 4 KiB page.
const SWAP_MAGICS: [&[u8; 10]; 2] = [b"SWAPSPACE2", b"SWAP-SPACE"];
/// LUKS1 and LUKS2 header magic at byte 0, "LUKS\xba\xbe" (LUKS1 on-disk format spec,
/// section 2.4; LUKS2 on-disk format, section 2).
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Where the btrfs superblock starts (64 KiB), and its magic "_BHRfS_M" at superblock byte 0x40.
const BTRFS_SB: usize = 0x10000;
/// The btrfs superblock magic.
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
/// LVM2 label id at the start of one of the first four 512-byte sectors, "LABELONE", with the
/// label type "LVM2 001" at byte 24 of that sector (lvm2 `lib/label/label.h`).
const LVM_LABEL_ID: &[u8; 8] = b"LABELONE";
/// The LVM2 label type.
const LVM_LABEL_TYPE: &[u8; 8] = b"LVM2 001";

/// ext2/3/4 `s_feature_compat` bit: the file system has a journal (ext3 and up).
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
/// `s_feature_incompat` bit: the journal needs recovery.
pub const EXT_INCOMPAT_RECOVER: u32 = 0x4;
/// `s_feature_incompat` bit: an external journal device, not a file system.
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x8;
/// The incompatible features ext3 knows (FILETYPE, RECOVER, META_BG); any other makes it ext4
/// (the rule of util-linux's libblkid, `superblocks/ext.c`).
const EXT3_INCOMPAT_SUPP: u32 = 0x2 | 0x4 | 0x10;
/// The read-only compatible features ext3 knows (SPARSE_SUPER, LARGE_FILE, BTREE_DIR).
const EXT3_RO_COMPAT_SUPP: u32 = 0x1 | 0x2 | 0x4;

/// The file system kind whose signature starts `head` (the first [`PROBE_LEN`] bytes of a
/// volume, or fewer).
pub fn probe(head: &[u8]) -> FsKind {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(3, OEM_NTFS) {
        FsKind::Ntfs
    } else if at(3, OEM_BITLOCKER) {
        FsKind::BitLocker
    } else if at(0, LUKS_MAGIC) {
        FsKind::Luks
    } else if at(0, XFS_MAGIC) {
        FsKind::Xfs
    } else if get_le16(head, EXT_SB + 0x38) == Some(EXT_MAGIC) {
        FsKind::Ext
    } else if at(BTRFS_SB + 0x40, BTRFS_MAGIC) {
        FsKind::Btrfs
    } else if lvm_label_sector(head).is_some() {
        FsKind::Lvm
    } else if SWAP_MAGICS.iter().any(|m| at(4096 - 10, &m[..])) {
        FsKind::Swap
    } else if at(510, &BOOT_SIGNATURE)
        && (at(54, b"FAT12   ")
            || at(54, b"FAT16   ")
            || at(54, b"FAT     ")
            || at(82, b"FAT32   "))
    {
        FsKind::Fat
    } else {
        FsKind::Unknown
    }
}

/// The sector (0..4) holding an LVM2 label, if one of the first four holds one.
pub fn lvm_label_sector(head: &[u8]) -> Option<u64> {
    (0..4u64).find(|&s| {
        let o = s as usize * 512;
        head.get(o..o + 8) == Some(&LVM_LABEL_ID[..])
            && head.get(o + 24..o + 32) == Some(&LVM_LABEL_TYPE[..])
    })
}

/// An LVM UUID (32 characters) in its usual text form, dashes after 6, 10, 14, 18, 22, 26
/// characters (`xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx`).
pub fn format_lvm_uuid(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if matches!(i, 6 | 10 | 14 | 18 | 22 | 26) {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// A Linux file system (or container) kind, finer than [`FsKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinuxFsKind {
    /// ext2: no journal.
    Ext2,
    /// ext3: a journal, no ext4 feature.
    Ext3,
    /// ext4: any feature ext3 does not know (extents, 64bit, flex_bg, metadata_csum, ...).
    Ext4,
    /// An external ext3/4 journal device.
    ExtJournal,
    /// XFS with a version 4 superblock.
    XfsV4,
    /// XFS with a version 5 superblock (CRCs; the default since xfsprogs 3.2.3).
    XfsV5,
    /// XFS with another superblock version.
    XfsOther,
    /// btrfs.
    Btrfs,
    /// LUKS1 encryption (not opened).
    Luks1,
    /// LUKS2 encryption (not opened).
    Luks2,
    /// LUKS of another version.
    LuksOther,
    /// Linux swap.
    Swap,
    /// An LVM2 physical volume.
    Lvm2Pv,
}

impl LinuxFsKind {
    /// Its usual name: `ext4`, `XFS (v5)`, `LUKS2`, `LVM2 PV`.
    pub fn name(self) -> &'static str {
        match self {
            LinuxFsKind::Ext2 => "ext2",
            LinuxFsKind::Ext3 => "ext3",
            LinuxFsKind::Ext4 => "ext4",
            LinuxFsKind::ExtJournal => "ext journal device",
            LinuxFsKind::XfsV4 => "XFS (v4)",
            LinuxFsKind::XfsV5 => "XFS (v5)",
            LinuxFsKind::XfsOther => "XFS",
            LinuxFsKind::Btrfs => "btrfs",
            LinuxFsKind::Luks1 => "LUKS1",
            LinuxFsKind::Luks2 => "LUKS2",
            LinuxFsKind::LuksOther => "LUKS",
            LinuxFsKind::Swap => "swap",
            LinuxFsKind::Lvm2Pv => "LVM2 PV",
        }
    }

    /// Whether it is ext2, ext3 or ext4 (what the ext4 reader opens).
    pub fn is_ext(self) -> bool {
        matches!(
            self,
            LinuxFsKind::Ext2 | LinuxFsKind::Ext3 | LinuxFsKind::Ext4
        )
    }
}

/// What a Linux volume's superblock says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinuxFs {
    /// The kind.
    pub kind: LinuxFsKind,
    /// The file system (or LUKS, or swap) UUID, in its usual text form.
    pub uuid: Option<String>,
    /// The label, when it has one.
    pub label: Option<String>,
    /// ext3/4: the journal needs recovery (the guest was not shut down cleanly); the reader
    /// replays the journal in memory.
    pub needs_recovery: bool,
}

fn uuid_text(b: Option<&[u8]>) -> Option<String> {
    let b = b?;
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A NUL-padded name field as text (`None` when empty).
fn name_text(b: Option<&[u8]>) -> Option<String> {
    let b = b?;
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The Linux file system (or LUKS container, swap area, LVM2 PV) that starts `head`, with
/// what its superblock says; `None` for anything else.
pub fn linux_fs(head: &[u8]) -> Option<LinuxFs> {
    let mut fs = LinuxFs {
        kind: LinuxFsKind::Swap,
        uuid: None,
        label: None,
        needs_recovery: false,
    };
    match probe(head) {
        FsKind::Ext => {
            let sb = head.get(EXT_SB..)?;
            let compat = get_le32(sb, 0x5C)?;
            let incompat = get_le32(sb, 0x60)?;
            let ro_compat = get_le32(sb, 0x64)?;
            fs.kind = if incompat & EXT_INCOMPAT_JOURNAL_DEV != 0 {
                LinuxFsKind::ExtJournal
            } else if incompat & !EXT3_INCOMPAT_SUPP != 0 || ro_compat & !EXT3_RO_COMPAT_SUPP != 0 {
                LinuxFsKind::Ext4
            } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
                LinuxFsKind::Ext3
            } else {
                LinuxFsKind::Ext2
            };
            fs.needs_recovery = incompat & EXT_INCOMPAT_RECOVER != 0;
            fs.uuid = uuid_text(sb.get(0x68..0x78));
            fs.label = name_text(sb.get(0x78..0x88));
        }
        FsKind::Xfs => {
            // sb_versionnum (big-endian u16 at 100): the low 4 bits are the version.
            fs.kind = match get_be16(head, 100)? & 0xF {
                4 => LinuxFsKind::XfsV4,
                5 => LinuxFsKind::XfsV5,
                _ => LinuxFsKind::XfsOther,
            };
            fs.uuid = uuid_text(head.get(32..48));
            fs.label = name_text(head.get(108..120));
        }
        FsKind::Btrfs => {
            fs.kind = LinuxFsKind::Btrfs;
            fs.uuid = uuid_text(head.get(BTRFS_SB + 0x20..BTRFS_SB + 0x30));
            fs.label = name_text(head.get(BTRFS_SB + 0x12B..BTRFS_SB + 0x22B));
        }
        FsKind::Luks => {
            // Version: big-endian u16 at byte 6; the UUID as 40 bytes of text at byte 168
            // (both versions); LUKS2's label: 48 bytes at byte 24.
            fs.kind = match get_be16(head, 6)? {
                1 => LinuxFsKind::Luks1,
                2 => LinuxFsKind::Luks2,
                _ => LinuxFsKind::LuksOther,
            };
            fs.uuid = name_text(head.get(168..208));
            if fs.kind == LinuxFsKind::Luks2 {
                fs.label = name_text(head.get(24..72));
            }
        }
        FsKind::Swap => {
            // Swap header v1 after 1024 boot bytes: version, last_page, nr_badpages, then the
            // UUID (16 bytes at 1036) and the label (16 bytes at 1052).
            if get_le32(head, 1024) == Some(1) {
                fs.uuid = uuid_text(head.get(1036..1052));
                fs.label = name_text(head.get(1052..1068));
            }
        }
        FsKind::Lvm => {
            fs.kind = LinuxFsKind::Lvm2Pv;
            // The PV UUID: 32 characters at the start of the PV header, which the label's
            // offset_xl (u32 at byte 20) places.
            let s = lvm_label_sector(head)? as usize * 512;
            let off = get_le32(head, s + 20)? as usize;
            let at = s.checked_add(off)?;
            fs.uuid = head.get(at..at.checked_add(32)?).map(format_lvm_uuid);
        }
        _ => return None,
    }
    Some(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(compat: u32, incompat: u32, ro: u32) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[EXT_SB + 0x38..EXT_SB + 0x3A].copy_from_slice(&EXT_MAGIC.to_le_bytes()); // s_magic
        b[EXT_SB + 0x5C..EXT_SB + 0x60].copy_from_slice(&compat.to_le_bytes()); // compat
        b[EXT_SB + 0x60..EXT_SB + 0x64].copy_from_slice(&incompat.to_le_bytes()); // incompat
        b[EXT_SB + 0x64..EXT_SB + 0x68].copy_from_slice(&ro.to_le_bytes()); // ro_compat
        b[EXT_SB + 0x68] = 0xAB; // s_uuid[0]
        b[EXT_SB + 0x78..EXT_SB + 0x7C].copy_from_slice(b"root"); // s_volume_name
        b
    }

    #[test]
    fn ext_versions_from_feature_flags() {
        // ext2: sparse_super, large_file, no journal.
        let f = linux_fs(&ext(0, 0x2, 0x3)).unwrap();
        assert_eq!(f.kind, LinuxFsKind::Ext2);
        assert_eq!(f.label.as_deref(), Some("root"));
        assert_eq!(
            f.uuid.as_deref(),
            Some("ab000000-0000-0000-0000-000000000000")
        );
        // ext3: has_journal.
        assert_eq!(
            linux_fs(&ext(0x4, 0x2, 0x3)).unwrap().kind,
            LinuxFsKind::Ext3
        );
        // ext4: extents (incompat 0x40), or metadata_csum (ro_compat 0x400).
        assert_eq!(
            linux_fs(&ext(0x4, 0x42, 0x3)).unwrap().kind,
            LinuxFsKind::Ext4
        );
        assert_eq!(
            linux_fs(&ext(0x4, 0x2, 0x403)).unwrap().kind,
            LinuxFsKind::Ext4
        );
        let r = linux_fs(&ext(0x4, 0x46, 0)).unwrap();
        assert!(r.needs_recovery);
        assert_eq!(
            linux_fs(&ext(0, 0x8, 0)).unwrap().kind,
            LinuxFsKind::ExtJournal
        );
    }

    #[test]
    fn xfs_btrfs_luks_lvm_swap() {
        let mut x = vec![0u8; 512];
        x[..4].copy_from_slice(XFS_MAGIC);
        x[100..102].copy_from_slice(&0xB4A5u16.to_be_bytes()); // sb_versionnum: v5
        x[108..112].copy_from_slice(b"data"); // sb_fname
        let f = linux_fs(&x).unwrap();
        assert_eq!(
            (f.kind, f.label.as_deref()),
            (LinuxFsKind::XfsV5, Some("data"))
        );
        x[100..102].copy_from_slice(&0x34A4u16.to_be_bytes()); // v4
        assert_eq!(linux_fs(&x).unwrap().kind, LinuxFsKind::XfsV4);

        let mut b = vec![0u8; PROBE_LEN];
        b[BTRFS_SB + 0x40..BTRFS_SB + 0x48].copy_from_slice(BTRFS_MAGIC);
        assert_eq!(probe(&b), FsKind::Btrfs);
        assert_eq!(linux_fs(&b).unwrap().kind, LinuxFsKind::Btrfs);
        // Cut short before the btrfs superblock: unknown, no panic.
        assert_eq!(probe(&b[..BTRFS_SB + 0x44]), FsKind::Unknown);

        let mut l = vec![0u8; 1024];
        l[..6].copy_from_slice(LUKS_MAGIC);
        l[6..8].copy_from_slice(&2u16.to_be_bytes());
        l[168..172].copy_from_slice(b"abcd");
        let f = linux_fs(&l).unwrap();
        assert_eq!(
            (f.kind, f.uuid.as_deref()),
            (LinuxFsKind::Luks2, Some("abcd"))
        );

        let mut p = vec![0u8; 2048];
        p[512..520].copy_from_slice(LVM_LABEL_ID);
        p[512 + 20..512 + 24].copy_from_slice(&32u32.to_le_bytes());
        p[512 + 24..512 + 32].copy_from_slice(LVM_LABEL_TYPE);
        p[512 + 32..512 + 64].copy_from_slice(b"abcdefghijklmnopqrstuvwxyz012345");
        let f = linux_fs(&p).unwrap();
        assert_eq!(f.kind, LinuxFsKind::Lvm2Pv);
        assert_eq!(
            f.uuid.as_deref(),
            Some("abcdef-ghij-klmn-opqr-stuv-wxyz-012345")
        );

        let mut s = vec![0u8; 4096];
        s[4086..].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(linux_fs(&s).unwrap().kind, LinuxFsKind::Swap);
        assert_eq!(linux_fs(&[0u8; 100]), None);
    }

    #[test]
    fn every_truncation_of_a_header_is_safe() {
        let mut p = vec![0u8; 2048];
        p[0..8].copy_from_slice(LVM_LABEL_ID);
        p[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // hostile offset_xl
        p[24..32].copy_from_slice(LVM_LABEL_TYPE);
        for n in 0..p.len() {
            let _ = linux_fs(&p[..n]);
        }
        let e = ext(0x4, 0x42, 0);
        for n in 0..e.len() {
            let _ = linux_fs(&e[..n]);
        }
    }
}
