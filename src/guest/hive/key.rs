//! Key nodes (`nk` cells) and names.
//!
//! Layout of a key node's cell data (Suhanov, "Key node"):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 2 | signature `nk` |
//! | 2 | 2 | flags |
//! | 4 | 8 | last written timestamp (FILETIME) |
//! | 12 | 4 | access bits |
//! | 16 | 4 | parent key node offset |
//! | 20 | 4 | number of subkeys |
//! | 24 | 4 | number of volatile subkeys |
//! | 28 | 4 | subkeys list offset (0xFFFFFFFF: none) |
//! | 32 | 4 | volatile subkeys list offset |
//! | 36 | 4 | number of values |
//! | 40 | 4 | values list offset |
//! | 44 | 4 | key security (`sk`) offset |
//! | 48 | 4 | class name offset |
//! | 52 | 4 | largest subkey name length (low 16 bits, UTF-16 bytes) and flags (high bits) |
//! | 56 | 4 | largest subkey class name length |
//! | 60 | 4 | largest value name length |
//! | 64 | 4 | largest value data size |
//! | 68 | 4 | work var |
//! | 72 | 2 | key name length (bytes) |
//! | 74 | 2 | class name length (bytes) |
//! | 76 | … | key name (Latin-1 when `KEY_COMP_NAME`, else UTF-16LE) |

use super::HiveError;
use super::cell::{Cells, abs};
use crate::bytes::{le16, le32};

/// `nk`: key node signature.
pub const NK_SIGNATURE: &[u8; 2] = b"nk";
/// Size of a key node before its name.
pub const NK_FIXED: usize = 76;
/// Flag: the key is the root of the hive.
pub const KEY_HIVE_ENTRY: u16 = 0x0004;
/// Flag: the key cannot be deleted.
pub const KEY_NO_DELETE: u16 = 0x0008;
/// Flag: the name is stored in Latin-1 (one byte per character).
pub const KEY_COMP_NAME: u16 = 0x0020;
/// "No such cell" in offset fields.
pub const NIL: u32 = 0xFFFF_FFFF;

/// Field offsets in the key node.
pub mod off {
    /// flags
    pub const FLAGS: usize = 2;
    /// last written
    pub const LAST_WRITTEN: usize = 4;
    /// parent
    pub const PARENT: usize = 16;
    /// subkey count
    pub const SUBKEY_COUNT: usize = 20;
    /// subkey list
    pub const SUBKEY_LIST: usize = 28;
    /// value count
    pub const VALUE_COUNT: usize = 36;
    /// value list
    pub const VALUE_LIST: usize = 40;
    /// security
    pub const SECURITY: usize = 44;
    /// class
    pub const CLASS: usize = 48;
    /// max subkey name
    pub const MAX_SUBKEY_NAME: usize = 52;
    /// max value name
    pub const MAX_VALUE_NAME: usize = 60;
    /// max value data
    pub const MAX_VALUE_DATA: usize = 64;
}

/// A parsed key node.
#[derive(Clone, Debug)]
pub struct KeyNode {
    /// Cell offset.
    pub offset: u32,
    /// Flags.
    pub flags: u16,
    /// Last written.
    pub last_written: u64,
    /// Parent key node.
    pub parent: u32,
    /// Number of stable subkeys.
    pub subkey_count: u32,
    /// Stable subkey list.
    pub subkey_list: u32,
    /// Number of values.
    pub value_count: u32,
    /// Value list.
    pub value_list: u32,
    /// `sk` cell.
    pub security: u32,
    /// Class name cell.
    pub class: u32,
    /// Class name length in bytes.
    pub class_len: u16,
    /// Largest subkey name field (whole 32 bits).
    pub max_subkey_name: u32,
    /// Largest value name length.
    pub max_value_name: u32,
    /// Largest value data size.
    pub max_value_data: u32,
    /// The raw name bytes.
    pub name_raw: Vec<u8>,
}

impl KeyNode {
    /// Reads and validates the key node at `offset`.
    pub fn read(cells: &Cells, offset: u32) -> Result<KeyNode, HiveError> {
        let d = cells.data(offset, "key node")?;
        if d.len() < NK_FIXED || &d[..2] != NK_SIGNATURE {
            return Err(HiveError::invalid(
                "key node",
                abs(offset),
                format!(
                    "expected signature 'nk' and {NK_FIXED} bytes, found {:02x?} in a {}-byte cell",
                    d.get(..2).unwrap_or(&[]),
                    d.len()
                ),
            ));
        }
        let name_len = le16(d, 72) as usize;
        let name_raw = d
            .get(NK_FIXED..NK_FIXED + name_len)
            .ok_or_else(|| {
                HiveError::corrupt(
                    "key node",
                    abs(offset),
                    format!("name length {name_len} runs past the {}-byte cell", d.len()),
                )
            })?
            .to_vec();
        Ok(KeyNode {
            offset,
            flags: le16(d, 2),
            last_written: u64::from(le32(d, 4)) | (u64::from(le32(d, 8)) << 32),
            parent: le32(d, 16),
            subkey_count: le32(d, 20),
            subkey_list: le32(d, 28),
            value_count: le32(d, 36),
            value_list: le32(d, 40),
            security: le32(d, 44),
            class: le32(d, 48),
            max_subkey_name: le32(d, 52),
            max_value_name: le32(d, 60),
            max_value_data: le32(d, 64),
            class_len: le16(d, 74),
            name_raw,
        })
    }

    /// The name.
    pub fn name(&self) -> String {
        decode_name(&self.name_raw, self.flags & KEY_COMP_NAME != 0)
    }

    /// The name as UTF-16 units.
    pub fn name_units(&self) -> Vec<u16> {
        name_units(&self.name_raw, self.flags & KEY_COMP_NAME != 0)
    }
}

/// The UTF-16 units of a stored name.
pub fn name_units(raw: &[u8], compressed: bool) -> Vec<u16> {
    if compressed {
        raw.iter().map(|&b| u16::from(b)).collect()
    } else {
        raw.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
}

/// Decodes a stored name: Latin-1 when `compressed`, else UTF-16LE.
pub fn decode_name(raw: &[u8], compressed: bool) -> String {
    if compressed {
        raw.iter().map(|&b| char::from(b)).collect()
    } else {
        String::from_utf16_lossy(&name_units(raw, false))
    }
}

/// Encodes a name for storage: Latin-1 (compressed) when every character is at most U+00FF,
/// else UTF-16LE. Returns the bytes and whether they are compressed.
pub fn encode_name(name: &str) -> (Vec<u8>, bool) {
    if name.chars().all(|c| (c as u32) <= 0xFF) {
        (name.chars().map(|c| c as u32 as u8).collect(), true)
    } else {
        (super::data::utf16_bytes(name), false)
    }
}

/// Length of a name in UTF-16 bytes (what the maximum-name-length fields count).
pub fn utf16_len(name: &str) -> usize {
    name.encode_utf16().count() * 2
}

/// Upper-cases one UTF-16 unit the way the registry compares names: the simple upper-case
/// mapping when it is a single BMP character, the unit itself otherwise.
pub fn upcase(u: u16) -> u16 {
    if u < 0x80 {
        return u8::try_from(u).map_or(u, |b| u16::from(b.to_ascii_uppercase()));
    }
    let Some(c) = char::from_u32(u32::from(u)) else {
        return u; // a surrogate
    };
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(x), None) if (x as u32) <= 0xFFFF => x as u32 as u16,
        _ => u,
    }
}

/// Upper-cased UTF-16 units of `name`.
pub fn upcase_units(units: &[u16]) -> Vec<u16> {
    units.iter().map(|&u| upcase(u)).collect()
}

/// Upper-cased UTF-16 units of a string.
pub fn upcase_str(name: &str) -> Vec<u16> {
    name.encode_utf16().map(upcase).collect()
}

/// Builds the cell data of a new key node.
pub fn build_nk(
    name: &str,
    flags: u16,
    parent: u32,
    security: u32,
    timestamp: u64,
) -> Result<Vec<u8>, HiveError> {
    let (raw, compressed) = encode_name(name);
    if raw.is_empty() || raw.len() > 510 {
        return Err(HiveError::InvalidArgument(format!(
            "key name '{name}' must have 1 to 255 characters"
        )));
    }
    let mut d = vec![0u8; NK_FIXED + raw.len()];
    d[..2].copy_from_slice(NK_SIGNATURE);
    let flags = if compressed {
        flags | KEY_COMP_NAME
    } else {
        flags & !KEY_COMP_NAME
    };
    d[2..4].copy_from_slice(&flags.to_le_bytes());
    d[4..12].copy_from_slice(&timestamp.to_le_bytes());
    d[16..20].copy_from_slice(&parent.to_le_bytes());
    d[28..32].copy_from_slice(&NIL.to_le_bytes());
    d[32..36].copy_from_slice(&NIL.to_le_bytes());
    d[40..44].copy_from_slice(&NIL.to_le_bytes());
    d[44..48].copy_from_slice(&security.to_le_bytes());
    d[48..52].copy_from_slice(&NIL.to_le_bytes());
    d[72..74].copy_from_slice(&(raw.len() as u16).to_le_bytes());
    d[NK_FIXED..].copy_from_slice(&raw);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(encode_name("abc"), (b"abc".to_vec(), true));
        assert_eq!(encode_name("äöü"), (vec![0xe4, 0xf6, 0xfc], true));
        let (raw, c) = encode_name("weird™");
        assert!(!c);
        assert_eq!(decode_name(&raw, false), "weird™");
        assert_eq!(decode_name(&[0xe4], true), "ä");
        assert_eq!(upcase(u16::from(b'a')), u16::from(b'A'));
        assert_eq!(upcase(0xe4), 0xc4);
        assert_eq!(upcase(0xdf), 0xdf, "sharp s has no single-unit upper case");
        assert_eq!(upcase(0xd800), 0xd800);
        assert_eq!(upcase_str("aB_ü"), upcase_str("Ab_Ü"));
        assert_eq!(utf16_len("a™"), 4);
    }
}
