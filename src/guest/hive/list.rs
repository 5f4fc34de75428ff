//! Subkey lists: `li` (offsets), `lf` (offsets + first four name characters), `lh` (offsets +
//! name hash) and `ri` (an index root whose elements are `li`/`lf`/`lh` leaves).
//!
//! Every list starts with a 2-byte signature and a 2-byte element count; `li` and `ri` elements
//! are 4-byte cell offsets, `lf` and `lh` elements are a 4-byte offset and a 4-byte hint. A
//! list is sorted by the upper-cased key name compared as UTF-16 units.

use super::HiveError;
use super::cell::{Cells, abs};
use super::key::upcase;
use crate::bytes::{le16, le32};

/// `li`: index leaf signature.
pub const LI: &[u8; 2] = b"li";
/// `lf`: fast leaf signature (hive 1.3 and later).
pub const LF: &[u8; 2] = b"lf";
/// `lh`: hash leaf signature (hive 1.5 and later).
pub const LH: &[u8; 2] = b"lh";
/// `ri`: index root signature.
pub const RI: &[u8; 2] = b"ri";
/// The most elements we put into one leaf before splitting it under an `ri`.
pub const LEAF_MAX: usize = 500;

/// The `lh` hash of a name: h = 37 * h + upcase(unit) over its UTF-16 units.
pub fn lh_hash(units: &[u16]) -> u32 {
    units.iter().fold(0u32, |h, &u| {
        h.wrapping_mul(37).wrapping_add(u32::from(upcase(u)))
    })
}

/// The `lf` hint: the first four characters of the name, one byte each (units above 0xFF
/// give their low byte; missing characters are zero).
pub fn lf_hint(units: &[u16]) -> u32 {
    let mut h = [0u8; 4];
    for (i, &u) in units.iter().take(4).enumerate() {
        h[i] = u as u8;
    }
    u32::from_le_bytes(h)
}

/// One leaf of a list as read.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Cell offset of the leaf.
    pub offset: u32,
    /// Its signature.
    pub kind: [u8; 2],
    /// (key node offset, hint) per element; the hint is 0 in `li`.
    pub items: Vec<(u32, u32)>,
}

fn read_leaf(cells: &Cells, off: u32) -> Result<Leaf, HiveError> {
    let d = cells.data(off, "subkey list")?;
    if d.len() < 4 {
        return Err(HiveError::invalid(
            "subkey list",
            abs(off),
            format!("cell of {} bytes is too small", d.len()),
        ));
    }
    let kind = [d[0], d[1]];
    let count = le16(d, 2) as usize;
    let width = match &kind {
        x if x == LI || x == RI => 4,
        x if x == LF || x == LH => 8,
        _ => {
            return Err(HiveError::invalid(
                "subkey list",
                abs(off),
                format!(
                    "expected signature li, lf, lh or ri, found {:02x?}",
                    &d[..2]
                ),
            ));
        }
    };
    if 4 + count * width > d.len() {
        return Err(HiveError::corrupt(
            "subkey list",
            abs(off),
            format!(
                "{count} elements of {width} bytes do not fit the {}-byte cell",
                d.len()
            ),
        ));
    }
    let items = (0..count)
        .map(|i| {
            let p = 4 + i * width;
            (le32(d, p), if width == 8 { le32(d, p + 4) } else { 0 })
        })
        .collect();
    Ok(Leaf {
        offset: off,
        kind,
        items,
    })
}

/// The leaves of the subkey list at `off` (one leaf, or the leaves of an index root).
pub fn read_leaves(cells: &Cells, off: u32) -> Result<Vec<Leaf>, HiveError> {
    let top = read_leaf(cells, off)?;
    if &top.kind != RI {
        return Ok(vec![top]);
    }
    let mut leaves = Vec::with_capacity(top.items.len());
    for &(l, _) in &top.items {
        let leaf = read_leaf(cells, l)?;
        if &leaf.kind == RI {
            // Windows never nests index roots; refusing them also makes loops impossible.
            return Err(HiveError::corrupt(
                "subkey list",
                abs(l),
                format!("index root at {:#x} contains another index root", abs(off)),
            ));
        }
        leaves.push(leaf);
    }
    Ok(leaves)
}

/// The key node offsets of the subkey list at `off`, in list order.
pub fn read_all(cells: &Cells, off: u32) -> Result<Vec<(u32, u32)>, HiveError> {
    Ok(read_leaves(cells, off)?
        .into_iter()
        .flat_map(|l| l.items)
        .collect())
}

/// The hint stored for a name in a leaf of `kind` (0 for `li`).
pub fn hint(kind: &[u8; 2], units: &[u16]) -> u32 {
    if kind == LH {
        lh_hash(units)
    } else if kind == LF {
        lf_hint(units)
    } else {
        0
    }
}

/// Builds a leaf of the given kind from (key node offset, hint) elements.
pub fn build_leaf_raw(kind: &[u8; 2], items: &[(u32, u32)]) -> Vec<u8> {
    let width = if kind == LI { 4 } else { 8 };
    let mut d = Vec::with_capacity(4 + items.len() * width);
    d.extend_from_slice(kind);
    d.extend_from_slice(&(items.len() as u16).to_le_bytes());
    for (o, h) in items {
        d.extend_from_slice(&o.to_le_bytes());
        if width == 8 {
            d.extend_from_slice(&h.to_le_bytes());
        }
    }
    d
}

/// Builds an index root over leaf offsets.
pub fn build_ri(leaves: &[u32]) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + leaves.len() * 4);
    d.extend_from_slice(RI);
    d.extend_from_slice(&(leaves.len() as u16).to_le_bytes());
    for o in leaves {
        d.extend_from_slice(&o.to_le_bytes());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes() {
        let u: Vec<u16> = "ab".encode_utf16().collect();
        assert_eq!(lh_hash(&u), 37 * u32::from(b'A') + u32::from(b'B'));
        assert_eq!(
            lh_hash(&"AB".encode_utf16().collect::<Vec<_>>()),
            lh_hash(&u)
        );
        assert_eq!(lf_hint(&u), u32::from_le_bytes([b'a', b'b', 0, 0]));
        let l = build_leaf_raw(LH, &[(0x20, hint(LH, &u))]);
        assert_eq!(&l[..4], b"lh\x01\x00");
        assert_eq!(l.len(), 12);
    }
}
