//! XFS version 2 directories (XFS Algorithms & Data Structures, "Directories"): short-form
//! directories inside the inode, and the data blocks of block, leaf and node directories.
//!
//! Listing and lookup read only the data blocks (logical offsets below
//! [`LEAF_OFFSET`]): every entry of a block, leaf or node directory is in exactly one of
//! them, so the hash index (leaf and node blocks) is not needed to find names.

use super::{be16, be32, be64, check_crc, corrupt};
use crate::error::Result;

/// Data blocks live below this byte offset of a directory; leaf blocks above it
/// (`XFS_DIR2_LEAF_OFFSET`, 32 GiB).
pub const LEAF_OFFSET: u64 = 32 << 30;
/// Block-directory magic on v4 ("XD2B") and v5 ("XDB3").
const BLOCK_MAGIC: u32 = 0x5844_3242;
const BLOCK3_MAGIC: u32 = 0x5844_4233;
/// Data-block magic on v4 ("XD2D") and v5 ("XDD3").
const DATA_MAGIC: u32 = 0x5844_3244;
const DATA3_MAGIC: u32 = 0x5844_4433;
/// Where the v5 directory block header's CRC32C lies.
const DIR3_CRC_OFF: usize = 4;
/// `xfs_dir2_data_unused.freetag`.
const FREETAG: u16 = 0xffff;

/// A directory entry: its name and inode number.
pub type Entry = (Vec<u8>, u64);

/// Parses a short-form directory (the `size` bytes of the data fork in `fork`, at `offset`):
/// its entries (short-form directories store neither `.` nor `..`) and its parent.
pub fn parse_shortform(
    fork: &[u8],
    size: u64,
    offset: u64,
    ftype: bool,
    owner: u64,
) -> Result<(Vec<Entry>, u64)> {
    let what = format!("short-form directory of inode {owner}");
    let b = usize::try_from(size)
        .ok()
        .and_then(|s| fork.get(..s))
        .ok_or_else(|| {
            corrupt(
                &what,
                offset,
                format!(
                    "size {size} exceeds the inode's data fork of {} bytes",
                    fork.len()
                ),
            )
        })?;
    let short = |at: usize| {
        corrupt(
            &what,
            offset + at as u64,
            format!("ends inside an entry ({} bytes)", b.len()),
        )
    };
    if b.len() < 6 {
        return Err(short(0));
    }
    let count = usize::from(b[0]);
    let i8count = b[1];
    let inolen = if i8count == 0 { 4 } else { 8 };
    let read_ino = |at: usize| -> Option<u64> {
        let s = b.get(at..at + inolen)?;
        Some(if inolen == 4 {
            u64::from(be32(s, 0))
        } else {
            be64(s, 0)
        })
    };
    let parent = read_ino(2).ok_or_else(|| short(2))?;
    let mut at = 2 + inolen;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let namelen = usize::from(*b.get(at).ok_or_else(|| short(at))?);
        if namelen == 0 {
            return Err(corrupt(
                &what,
                offset + at as u64,
                format!("entry {i} has an empty name"),
            ));
        }
        let name_at = at + 3;
        let name = b.get(name_at..name_at + namelen).ok_or_else(|| short(at))?;
        let ino_at = name_at + namelen + usize::from(ftype);
        let ino = read_ino(ino_at).ok_or_else(|| short(at))?;
        check_name(name, &what, offset + at as u64)?;
        out.push((name.to_vec(), ino));
        at = ino_at + inolen;
    }
    Ok((out, parent))
}

fn check_name(name: &[u8], what: &str, offset: u64) -> Result<()> {
    if name.contains(&b'/') || name.contains(&0) {
        return Err(corrupt(
            what,
            offset,
            format!(
                "the name {:?} holds a '/' or a NUL byte",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    Ok(())
}

/// Parses one directory data block (`dirblksize` bytes read at `offset`): a block
/// directory's only block or a data block of a leaf or node directory. Returns its entries,
/// `.` and `..` included. On v5 the CRC, the block's own address and its owner are checked.
pub fn parse_data_block(
    b: &[u8],
    offset: u64,
    v5: bool,
    ftype: bool,
    owner: u64,
) -> Result<Vec<Entry>> {
    let what = format!("directory block of inode {owner}");
    let hdr = if v5 { 64 } else { 16 };
    if b.len() < hdr + 16 {
        return Err(corrupt(&what, offset, format!("only {} bytes", b.len())));
    }
    let magic = be32(b, 0);
    let (block_magic, data_magic) = if v5 {
        (BLOCK3_MAGIC, DATA3_MAGIC)
    } else {
        (BLOCK_MAGIC, DATA_MAGIC)
    };
    if magic != block_magic && magic != data_magic {
        return Err(corrupt(
            &what,
            offset,
            format!(
                "magic is {magic:#010x}, expected {block_magic:#010x} (block) or \
                 {data_magic:#010x} (data)"
            ),
        ));
    }
    if v5 {
        check_crc(b, DIR3_CRC_OFF, &what, offset)?;
        let blkno = be64(b, 8);
        if blkno != offset / 512 {
            return Err(corrupt(
                &what,
                offset + 8,
                format!(
                    "says it lies at sector {blkno}, expected {} (a misplaced block)",
                    offset / 512
                ),
            ));
        }
        let own = be64(b, 40);
        if own != owner {
            return Err(corrupt(
                &what,
                offset + 40,
                format!("belongs to inode {own}, expected {owner}"),
            ));
        }
    }
    let end = if magic == block_magic {
        // The block tail (count, stale) closes the block, after `count` leaf entries.
        let count = u64::from(be32(b, b.len() - 8));
        let leaf = count
            .checked_mul(8)
            .and_then(|l| l.checked_add(8))
            .filter(|&l| l <= (b.len() - hdr) as u64)
            .ok_or_else(|| {
                corrupt(
                    &what,
                    offset + b.len() as u64 - 8,
                    format!("{count} leaf entries do not fit the block"),
                )
            })?;
        b.len() - leaf as usize
    } else {
        b.len()
    };
    let mut out = Vec::new();
    let mut at = hdr;
    while at < end {
        let here = offset + at as u64;
        if end - at < 8 {
            return Err(corrupt(
                &what,
                here,
                format!("{} bytes left before the end of the data area", end - at),
            ));
        }
        if be16(b, at) == FREETAG {
            let len = usize::from(be16(b, at + 2));
            if len < 8 || len % 8 != 0 || len > end - at {
                return Err(corrupt(
                    &what,
                    here,
                    format!(
                        "unused space of {len} bytes: expected a multiple of 8, at least 8, \
                         at most the {} bytes left",
                        end - at
                    ),
                ));
            }
            at += len;
            continue;
        }
        // The smallest entry is 16 bytes (8-byte number, length, 1-byte name, tag).
        if end - at < 16 {
            return Err(corrupt(
                &what,
                here,
                format!("an entry in the last {} bytes of the data area", end - at),
            ));
        }
        let ino = be64(b, at);
        let namelen = usize::from(b[at + 8]);
        let len = (8 + 1 + namelen + usize::from(ftype) + 2).div_ceil(8) * 8;
        if namelen == 0 || len > end - at {
            return Err(corrupt(
                &what,
                here,
                format!(
                    "an entry with a name of {namelen} bytes: expected 1 to fit the {} bytes \
                     left",
                    end - at
                ),
            ));
        }
        let tag = usize::from(be16(b, at + len - 2));
        if tag != at {
            return Err(corrupt(
                &what,
                here + len as u64 - 2,
                format!("entry tag is {tag:#x}, expected its own offset {at:#x}"),
            ));
        }
        let name = &b[at + 9..at + 9 + namelen];
        check_name(name, &what, here)?;
        out.push((name.to_vec(), ino));
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shortform_with_ftype() {
        let mut b = vec![2u8, 0, 0, 0, 0, 128]; // count 2, i8count 0, parent 128
        b.extend_from_slice(&[1, 0, 0x60, b'a', 1, 0, 0, 0, 131]); // "a" -> 131, ftype 1
        b.extend_from_slice(&[2, 0, 0x70, b'b', b'c', 2, 0, 0, 0, 132]); // "bc" -> 132
        let (e, parent) = parse_shortform(&b, b.len() as u64, 0, true, 128).unwrap();
        assert_eq!(parent, 128);
        assert_eq!(e, vec![(b"a".to_vec(), 131), (b"bc".to_vec(), 132)]);
        // Truncated: the size cuts the last entry.
        let e = parse_shortform(&b, b.len() as u64 - 1, 0x200, true, 128)
            .unwrap_err()
            .to_string();
        assert!(e.contains("short-form directory of inode 128"), "{e}");
        // Size larger than the fork.
        assert!(parse_shortform(&b, 1000, 0, true, 128).is_err());
    }

    fn entry(ino: u64, name: &[u8], at: usize) -> Vec<u8> {
        let len = (8 + 1 + name.len() + 2).div_ceil(8) * 8;
        let mut e = vec![0u8; len];
        e[..8].copy_from_slice(&ino.to_be_bytes()); // inumber
        e[8] = name.len() as u8; // namelen
        e[9..9 + name.len()].copy_from_slice(name); // name
        e[len - 2..].copy_from_slice(&(at as u16).to_be_bytes()); // tag
        e
    }

    #[test]
    fn parses_a_v4_block_directory() {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(b"XD2B");
        let mut at = 16;
        for (ino, name) in [(128u64, &b"."[..]), (128, b".."), (140, b"hello")] {
            let e = entry(ino, name, at);
            b[at..at + e.len()].copy_from_slice(&e);
            at += e.len();
        }
        let tail = 512 - 8 - 3 * 8;
        b[at..at + 2].copy_from_slice(&FREETAG.to_be_bytes()); // unused space up to the leaf
        b[at + 2..at + 4].copy_from_slice(&((tail - at) as u16).to_be_bytes());
        b[504..508].copy_from_slice(&3u32.to_be_bytes()); // tail count
        let e = parse_data_block(&b, 0x4000, false, false, 128).unwrap();
        assert_eq!(e[2], (b"hello".to_vec(), 140));
        // A broken tag.
        let mut bad = b.clone();
        bad[16 + 15] ^= 1;
        assert!(parse_data_block(&bad, 0, false, false, 128).is_err());
        // A data block (no tail) whose last 8 bytes hold neither an entry nor free space.
        let mut data = vec![0u8; 64];
        data[..4].copy_from_slice(b"XD2D");
        let e = entry(128, b"x", 16);
        data[16..16 + e.len()].copy_from_slice(&e);
        data[32..34].copy_from_slice(&FREETAG.to_be_bytes());
        data[34..36].copy_from_slice(&32u16.to_be_bytes());
        assert_eq!(
            parse_data_block(&data, 0, false, false, 128).unwrap().len(),
            1
        );
        data[34..36].copy_from_slice(&24u16.to_be_bytes());
        data[56] = 0x12;
        assert!(parse_data_block(&data, 0, false, false, 128).is_err());
        // A leaf count that does not fit.
        let mut bad = b.clone();
        bad[504..508].copy_from_slice(&1000u32.to_be_bytes());
        assert!(parse_data_block(&bad, 0, false, false, 128).is_err());
        // v5 needs a CRC.
        let e = parse_data_block(&b, 0, true, false, 128)
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
    }
}
