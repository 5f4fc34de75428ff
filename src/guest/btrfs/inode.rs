//! Inode items, root items (a subvolume's tree) and root back references (where a subvolume
//! is linked).

use super::{corrupt, le_u16, le_u32, le_u64};
use crate::error::Result;

/// `BTRFS_INODE_ITEM_KEY`.
pub const INODE_ITEM_KEY: u8 = 1;
/// `BTRFS_INODE_REF_KEY`.
pub const INODE_REF_KEY: u8 = 12;
/// `BTRFS_ROOT_ITEM_KEY`.
pub const ROOT_ITEM_KEY: u8 = 132;
/// `BTRFS_ROOT_BACKREF_KEY`.
pub const ROOT_BACKREF_KEY: u8 = 144;
/// The size of `struct btrfs_inode_item`.
pub const INODE_ITEM_SIZE: usize = 160;
/// The smallest root item (up to and including `level`; newer ones are longer).
const ROOT_ITEM_MIN: usize = 239;

/// File types of the mode's `S_IFMT` bits.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// The inode fields the reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    /// Size in bytes.
    pub size: u64,
    /// Mode (type and permissions).
    pub mode: u32,
}

impl Inode {
    /// Parses an inode item found at device offset `offset` (for messages).
    pub fn parse(b: &[u8], ino: u64, offset: u64) -> Result<Inode> {
        if b.len() < INODE_ITEM_SIZE {
            return Err(corrupt(
                &format!("inode item {ino}"),
                offset,
                format!("{} bytes, expected {INODE_ITEM_SIZE}", b.len()),
            ));
        }
        Ok(Inode {
            size: le_u64(b, 16),
            mode: le_u32(b, 52),
        })
    }

    /// The file type.
    pub fn kind(&self) -> InodeKind {
        match self.mode & S_IFMT {
            S_IFREG => InodeKind::File,
            S_IFDIR => InodeKind::Dir,
            S_IFLNK => InodeKind::Symlink,
            _ => InodeKind::Other,
        }
    }
}

/// Where a tree's root block lies, and its top directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootItem {
    /// Logical address of the root block.
    pub bytenr: u64,
    /// Level of the root block.
    pub level: u8,
    /// The inode number of the top directory (256).
    pub root_dirid: u64,
}

impl RootItem {
    /// Parses the root item of tree `id`.
    pub fn parse(b: &[u8], id: u64, offset: u64) -> Result<RootItem> {
        if b.len() < ROOT_ITEM_MIN {
            return Err(corrupt(
                &format!("root item of tree {id}"),
                offset,
                format!("{} bytes, expected at least {ROOT_ITEM_MIN}", b.len()),
            ));
        }
        Ok(RootItem {
            root_dirid: le_u64(b, 168),
            bytenr: le_u64(b, 176),
            level: b[238],
        })
    }
}

/// A name with the number of the directory holding it: an inode ref (parent inode given by
/// the key) or a root back reference (`dirid` in the parent tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRef {
    /// The directory inode (root back references; 0 for inode refs, whose key names it).
    pub dirid: u64,
    /// The name.
    pub name: Vec<u8>,
}

/// Parses a root back reference (`struct btrfs_root_ref`: dirid, sequence, name length,
/// name).
pub fn parse_root_ref(b: &[u8], what: &str, offset: u64) -> Result<NameRef> {
    if b.len() < 18 {
        return Err(corrupt(
            what,
            offset,
            format!("{} bytes, expected at least 18", b.len()),
        ));
    }
    let n = le_u16(b, 16) as usize;
    let name = b.get(18..18 + n).ok_or_else(|| {
        corrupt(
            what,
            offset,
            format!("a {n} byte name in {} bytes", b.len()),
        )
    })?;
    Ok(NameRef {
        dirid: le_u64(b, 0),
        name: name.to_vec(),
    })
}

/// Parses the first name of an inode ref item (`struct btrfs_inode_ref`: index, name length,
/// name; a directory has one).
pub fn parse_inode_ref(b: &[u8], what: &str, offset: u64) -> Result<NameRef> {
    if b.len() < 10 {
        return Err(corrupt(
            what,
            offset,
            format!("{} bytes, expected at least 10", b.len()),
        ));
    }
    let n = le_u16(b, 8) as usize;
    let name = b.get(10..10 + n).ok_or_else(|| {
        corrupt(
            what,
            offset,
            format!("a {n} byte name in {} bytes", b.len()),
        )
    })?;
    Ok(NameRef {
        dirid: 0,
        name: name.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inode_root_and_refs() {
        let mut i = vec![0u8; INODE_ITEM_SIZE];
        i[16..24].copy_from_slice(&1234u64.to_le_bytes()); // size
        i[52..56].copy_from_slice(&0o120777u32.to_le_bytes()); // mode: a symlink
        let ino = Inode::parse(&i, 257, 0).unwrap();
        assert_eq!((ino.size, ino.kind()), (1234, InodeKind::Symlink));
        assert!(
            Inode::parse(&i[..100], 257, 0x50)
                .unwrap_err()
                .to_string()
                .contains("inode item 257")
        );
        let mut r = vec![0u8; 439];
        r[168..176].copy_from_slice(&256u64.to_le_bytes()); // root_dirid
        r[176..184].copy_from_slice(&0x1d00000u64.to_le_bytes()); // bytenr
        r[238] = 1; // level
        let root = RootItem::parse(&r, 5, 0).unwrap();
        assert_eq!(
            (root.bytenr, root.level, root.root_dirid),
            (0x1d00000, 1, 256)
        );
        assert!(RootItem::parse(&r[..200], 5, 0).is_err());
        let mut rr = 256u64.to_le_bytes().to_vec(); // dirid
        rr.extend(2u64.to_le_bytes()); // sequence
        rr.extend(3u16.to_le_bytes()); // name_len
        rr.extend(b"abc");
        assert_eq!(parse_root_ref(&rr, "x", 0).unwrap().name, b"abc");
        assert!(parse_root_ref(&rr[..19], "x", 0).is_err());
        let mut ir = 2u64.to_le_bytes().to_vec(); // index
        ir.extend(1u16.to_le_bytes()); // name_len
        ir.extend(b"d");
        assert_eq!(parse_inode_ref(&ir, "x", 0).unwrap().name, b"d");
        assert!(parse_inode_ref(&ir[..10], "x", 0).is_err());
    }
}
