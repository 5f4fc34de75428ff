//! Values: the value list, key values (`vk`), inline data, data cells and big data (`db`).
//!
//! A key's value list is a cell holding `value count` 4-byte offsets of `vk` cells. Layout of
//! a `vk` cell (Suhanov, "Key value"):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 2 | signature `vk` |
//! | 2 | 2 | name length (bytes; 0 for the default value) |
//! | 4 | 4 | data size; bit 31 set: the data (at most 4 bytes) is stored in the offset field |
//! | 8 | 4 | data offset (or the inline data) |
//! | 12 | 4 | data type |
//! | 16 | 2 | flags (`VALUE_COMP_NAME` 0x1: Latin-1 name) |
//! | 18 | 2 | spare |
//! | 20 | … | name |
//!
//! Data above 16344 bytes in a hive of version 1.4 or later lives in a big-data cell: `db`,
//! a 2-byte segment count and the offset of a segment list (4-byte offsets of data cells of
//! 16344 bytes each, the last one shorter).

use super::HiveError;
use super::cell::{Cells, abs};
use super::key::{decode_name, encode_name};
use crate::bytes::{le16, le32};

/// `vk`: key value signature.
pub const VK_SIGNATURE: &[u8; 2] = b"vk";
/// `db`: big data signature.
pub const DB_SIGNATURE: &[u8; 2] = b"db";
/// Size of a `vk` before its name.
pub const VK_FIXED: usize = 20;
/// Flag: the value name is Latin-1.
pub const VALUE_COMP_NAME: u16 = 0x0001;
/// Bit 31 of the data size: data stored inline.
pub const DATA_INLINE: u32 = 0x8000_0000;
/// Largest data in one cell when big data is available; the size of a big-data segment.
pub const BIG_DATA_SEGMENT: usize = 16344;
/// Largest value data we accept (Windows' own limit is about 1 GiB; hives are at most 2 GiB).
pub const MAX_DATA: usize = 0x3FFF_FFFF;

/// A parsed key value.
#[derive(Clone, Debug)]
pub struct ValueNode {
    /// Cell offset.
    pub offset: u32,
    /// Raw name bytes.
    pub name_raw: Vec<u8>,
    /// Flags.
    pub flags: u16,
    /// Raw data size field.
    pub size_field: u32,
    /// Data offset field.
    pub data_off: u32,
    /// Type.
    pub kind: u32,
}

impl ValueNode {
    /// Reads and validates the `vk` at `offset`.
    pub fn read(cells: &Cells, offset: u32) -> Result<ValueNode, HiveError> {
        let d = cells.data(offset, "key value")?;
        if d.len() < VK_FIXED || &d[..2] != VK_SIGNATURE {
            return Err(HiveError::invalid(
                "key value",
                abs(offset),
                format!(
                    "expected signature 'vk' and {VK_FIXED} bytes, found {:02x?} in a {}-byte cell",
                    d.get(..2).unwrap_or(&[]),
                    d.len()
                ),
            ));
        }
        let nl = le16(d, 2) as usize;
        let name_raw = d
            .get(VK_FIXED..VK_FIXED + nl)
            .ok_or_else(|| {
                HiveError::corrupt(
                    "key value",
                    abs(offset),
                    format!("name length {nl} runs past the {}-byte cell", d.len()),
                )
            })?
            .to_vec();
        Ok(ValueNode {
            offset,
            name_raw,
            flags: le16(d, 16),
            size_field: le32(d, 4),
            data_off: le32(d, 8),
            kind: le32(d, 12),
        })
    }

    /// Whether the name is Latin-1.
    pub fn compressed(&self) -> bool {
        self.flags & VALUE_COMP_NAME != 0
    }

    /// The name ("" for the default value).
    pub fn name(&self) -> String {
        decode_name(&self.name_raw, self.compressed())
    }

    /// The name's UTF-16 units.
    pub fn name_units(&self) -> Vec<u16> {
        super::key::name_units(&self.name_raw, self.compressed())
    }

    /// Whether the data is stored in the offset field.
    pub fn inline(&self) -> bool {
        self.size_field & DATA_INLINE != 0
    }

    /// The data length.
    pub fn data_len(&self) -> usize {
        (self.size_field & !DATA_INLINE) as usize
    }

    /// Whether the data uses a big-data cell.
    pub fn is_big(&self, big_allowed: bool) -> bool {
        !self.inline() && big_allowed && self.data_len() > BIG_DATA_SEGMENT
    }

    /// Reads the data.
    pub fn data(&self, cells: &Cells, big_allowed: bool) -> Result<Vec<u8>, HiveError> {
        let len = self.data_len();
        if self.inline() {
            if len > 4 {
                return Err(HiveError::corrupt(
                    "key value",
                    abs(self.offset),
                    format!("inline data size {len} is above 4"),
                ));
            }
            return Ok(self.data_off.to_le_bytes()[..len].to_vec());
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        if len > MAX_DATA {
            return Err(HiveError::corrupt(
                "key value",
                abs(self.offset),
                format!("data size {len:#x} is above the limit {MAX_DATA:#x}"),
            ));
        }
        if self.is_big(big_allowed) {
            let segs = big_segments(cells, self.data_off)?;
            let mut out = Vec::with_capacity(len.min(cells.bytes.len()));
            for s in segs {
                if out.len() >= len {
                    break;
                }
                let d = cells.data(s, "big data segment")?;
                let take = (len - out.len()).min(BIG_DATA_SEGMENT).min(d.len());
                out.extend_from_slice(&d[..take]);
            }
            if out.len() < len {
                return Err(HiveError::corrupt(
                    "big data",
                    abs(self.data_off),
                    format!("segments hold {} bytes, the value says {len}", out.len()),
                ));
            }
            return Ok(out);
        }
        let d = cells.data(self.data_off, "value data")?;
        d.get(..len).map(<[u8]>::to_vec).ok_or_else(|| {
            HiveError::corrupt(
                "value data",
                abs(self.data_off),
                format!(
                    "key value at {:#x} says {len} bytes, the cell holds {}",
                    abs(self.offset),
                    d.len()
                ),
            )
        })
    }
}

/// The segment offsets of the big-data cell at `off`, the segment list cell last.
pub fn big_segments(cells: &Cells, off: u32) -> Result<Vec<u32>, HiveError> {
    let d = cells.data(off, "big data")?;
    if d.len() < 8 || &d[..2] != DB_SIGNATURE {
        return Err(HiveError::invalid(
            "big data",
            abs(off),
            format!(
                "expected signature 'db', found {:02x?}",
                d.get(..2).unwrap_or(&[])
            ),
        ));
    }
    let n = le16(d, 2) as usize;
    let list = le32(d, 4);
    let l = cells.data(list, "big data segment list")?;
    if n * 4 > l.len() {
        return Err(HiveError::corrupt(
            "big data segment list",
            abs(list),
            format!("{n} segments do not fit the {}-byte cell", l.len()),
        ));
    }
    Ok((0..n).map(|i| le32(l, i * 4)).collect())
}

/// The offsets in the value list at `off` (`count` entries).
pub fn read_value_list(cells: &Cells, off: u32, count: u32) -> Result<Vec<u32>, HiveError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let d = cells.data(off, "value list")?;
    let n = count as usize;
    if n.checked_mul(4).is_none_or(|b| b > d.len()) {
        return Err(HiveError::corrupt(
            "value list",
            abs(off),
            format!("{count} values do not fit the {}-byte cell", d.len()),
        ));
    }
    Ok((0..n).map(|i| le32(d, i * 4)).collect())
}

/// Builds the cell data of a `vk` (data fields filled by the caller).
pub fn build_vk(name: &str, kind: u32, size_field: u32, data_off: u32) -> Vec<u8> {
    let (raw, compressed) = encode_name(name);
    let mut d = vec![0u8; VK_FIXED + raw.len()];
    d[..2].copy_from_slice(VK_SIGNATURE);
    d[2..4].copy_from_slice(&(raw.len() as u16).to_le_bytes());
    d[4..8].copy_from_slice(&size_field.to_le_bytes());
    d[8..12].copy_from_slice(&data_off.to_le_bytes());
    d[12..16].copy_from_slice(&kind.to_le_bytes());
    let flags: u16 = if compressed && !raw.is_empty() {
        VALUE_COMP_NAME
    } else {
        0
    };
    d[16..18].copy_from_slice(&flags.to_le_bytes());
    d[VK_FIXED..].copy_from_slice(&raw);
    d
}
