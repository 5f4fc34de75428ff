//! Directory entries: `DIR_ITEM` (keyed by the name's hash, for lookups) and `DIR_INDEX`
//! (keyed by the entry's index, for listings); one item may pack several entries.

use super::tree::{KEY_SIZE, Key};
use super::{corrupt, le_u16};
use crate::error::Result;

/// `BTRFS_DIR_ITEM_KEY`.
pub const DIR_ITEM_KEY: u8 = 84;
/// `BTRFS_DIR_INDEX_KEY`.
pub const DIR_INDEX_KEY: u8 = 96;
/// The fixed part of `struct btrfs_dir_item`: location key, transid, data_len, name_len, type.
const DIR_ITEM_SIZE: usize = KEY_SIZE + 8 + 2 + 2 + 1;
/// Longest name btrfs stores (`BTRFS_NAME_LEN`).
const NAME_MAX: usize = 255;

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// What it points at: (inode, INODE_ITEM, 0) in the same tree, or (tree id, ROOT_ITEM,
    /// ...) for a subvolume.
    pub location: Key,
    /// The entry's file type (`BTRFS_FT_*`).
    pub ftype: u8,
    /// The name.
    pub name: Vec<u8>,
}

/// The hash `DIR_ITEM` keys carry: CRC-32C seeded with `~1`, without the final inversion
/// (the kernel's `btrfs_name_hash`).
pub fn name_hash(name: &[u8]) -> u64 {
    // crc32c_append inverts before and after; the kernel's raw crc32c does neither.
    u64::from(!crc32c::crc32c_append(!(!1u32), name))
}

/// The entries packed in one dir item found at device offset `offset`.
pub fn parse_entries(b: &[u8], what: &str, offset: u64) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < b.len() {
        let here = offset + at as u64;
        let head = b.get(at..at + DIR_ITEM_SIZE).ok_or_else(|| {
            corrupt(
                what,
                here,
                format!("an entry cut short ({} bytes left)", b.len() - at),
            )
        })?;
        let data_len = le_u16(head, KEY_SIZE + 8) as usize;
        let name_len = le_u16(head, KEY_SIZE + 10) as usize;
        if name_len == 0 || name_len > NAME_MAX {
            return Err(corrupt(
                what,
                here,
                format!("name length {name_len}, expected 1 to {NAME_MAX}"),
            ));
        }
        let start = at + DIR_ITEM_SIZE;
        let end = start + name_len + data_len;
        let name = b
            .get(start..start + name_len)
            .filter(|_| end <= b.len())
            .ok_or_else(|| {
                corrupt(
                    what,
                    here,
                    format!(
                        "a {name_len} byte name and {data_len} data bytes with {} left",
                        b.len() - start
                    ),
                )
            })?;
        out.push(DirEntry {
            location: Key::parse(&head[..KEY_SIZE]),
            ftype: head[KEY_SIZE + 12],
            name: name.to_vec(),
        });
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One packed dir entry.
    pub(crate) fn entry(location: Key, ftype: u8, name: &[u8]) -> Vec<u8> {
        let mut b = location.to_bytes().to_vec(); // location
        b.extend(7u64.to_le_bytes()); // transid
        b.extend(0u16.to_le_bytes()); // data_len
        b.extend((name.len() as u16).to_le_bytes()); // name_len
        b.push(ftype); // type
        b.extend_from_slice(name);
        b
    }

    #[test]
    fn hash_matches_btrfs() {
        // Values from `btrfs inspect-internal dump-tree` of a mkfs.btrfs image: the root tree's
        // "default" DIR_ITEM key is (6 DIR_ITEM 2378154706).
        assert_eq!(name_hash(b"default"), 2378154706);
    }

    #[test]
    fn parses_packed_entries() {
        let mut b = entry(Key::new(257, 1, 0), 1, b"a");
        b.extend(entry(Key::new(258, 132, u64::MAX), 2, b"sub"));
        let e = parse_entries(&b, "dir item", 0).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, b"sub");
        assert_eq!(e[1].location.ty, 132);
        for n in 1..b.len() {
            if n != 31 {
                assert!(parse_entries(&b[..n], "dir item", 0).is_err(), "{n}");
            }
        }
    }
}
