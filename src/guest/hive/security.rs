//! Key security cells (`sk`): a security descriptor shared by the keys that reference it.
//!
//! Layout (Suhanov, "Key security"):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 2 | signature `sk` |
//! | 2 | 2 | reserved |
//! | 4 | 4 | flink: next `sk` in the ring |
//! | 8 | 4 | blink: previous `sk` in the ring |
//! | 12 | 4 | reference count (keys pointing at it) |
//! | 16 | 4 | security descriptor size |
//! | 20 | … | self-relative security descriptor |

use super::HiveError;
use super::cell::{Cells, abs};
use crate::bytes::le32;

/// `sk`: key security signature.
pub const SK_SIGNATURE: &[u8; 2] = b"sk";
/// Size of an `sk` before its descriptor.
pub const SK_FIXED: usize = 20;

/// A parsed `sk` cell.
#[derive(Clone, Debug)]
pub struct SecurityNode {
    /// Cell offset.
    pub offset: u32,
    /// Next in the ring.
    pub flink: u32,
    /// Previous in the ring.
    pub blink: u32,
    /// Reference count.
    pub refcount: u32,
    /// The descriptor bytes.
    pub descriptor: Vec<u8>,
}

impl SecurityNode {
    /// Reads and validates the `sk` at `offset`.
    pub fn read(cells: &Cells, offset: u32) -> Result<SecurityNode, HiveError> {
        let d = cells.data(offset, "key security")?;
        if d.len() < SK_FIXED || &d[..2] != SK_SIGNATURE {
            return Err(HiveError::invalid(
                "key security",
                abs(offset),
                format!(
                    "expected signature 'sk', found {:02x?}",
                    d.get(..2).unwrap_or(&[])
                ),
            ));
        }
        let n = le32(d, 16) as usize;
        let descriptor = d
            .get(SK_FIXED..SK_FIXED.saturating_add(n))
            .ok_or_else(|| {
                HiveError::corrupt(
                    "key security",
                    abs(offset),
                    format!("descriptor size {n} runs past the {}-byte cell", d.len()),
                )
            })?
            .to_vec();
        Ok(SecurityNode {
            offset,
            flink: le32(d, 4),
            blink: le32(d, 8),
            refcount: le32(d, 12),
            descriptor,
        })
    }
}

/// Builds an `sk` cell's data.
pub fn build_sk(flink: u32, blink: u32, refcount: u32, descriptor: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(SK_FIXED + descriptor.len());
    d.extend_from_slice(SK_SIGNATURE);
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&flink.to_le_bytes());
    d.extend_from_slice(&blink.to_le_bytes());
    d.extend_from_slice(&refcount.to_le_bytes());
    d.extend_from_slice(&(descriptor.len() as u32).to_le_bytes());
    d.extend_from_slice(descriptor);
    d
}

/// Appends a SID: revision 1, sub-authority count, 6-byte big-endian identifier authority,
/// then the sub-authorities (little endian).
fn push_sid(out: &mut Vec<u8>, authority: u8, subs: &[u32]) {
    out.push(1);
    out.push(subs.len() as u8);
    out.extend_from_slice(&[0, 0, 0, 0, 0, authority]);
    for s in subs {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Appends an ACCESS_ALLOWED_ACE: type 0, flags, size (u16), access mask (u32), SID.
fn push_ace(out: &mut Vec<u8>, flags: u8, mask: u32, authority: u8, subs: &[u32]) {
    let size = 8 + 8 + 4 * subs.len();
    out.push(0); // ACCESS_ALLOWED_ACE_TYPE
    out.push(flags);
    out.extend_from_slice(&(size as u16).to_le_bytes());
    out.extend_from_slice(&mask.to_le_bytes());
    push_sid(out, authority, subs);
}

/// The default self-relative security descriptor of a new hive's root key.
///
/// - Header (20 bytes): revision 1, Sbz1 0, control 0x8004 (`SE_SELF_RELATIVE` |
///   `SE_DACL_PRESENT`), then the offsets of owner, group, SACL (0: none) and DACL.
/// - DACL at 20: ACL header (revision 2, Sbz1 0, size u16, ACE count u16 = 3, Sbz2 0), then
///   three ACCESS_ALLOWED ACEs with `CONTAINER_INHERIT_ACE` (0x02) so subkeys inherit them:
///   SYSTEM (S-1-5-18) `KEY_ALL_ACCESS` 0xF003F, Administrators (S-1-5-32-544)
///   `KEY_ALL_ACCESS`, Users (S-1-5-32-545) `KEY_READ` 0x20019.
/// - Owner: BUILTIN\Administrators (S-1-5-32-544); group: SYSTEM (S-1-5-18).
pub fn default_descriptor() -> Vec<u8> {
    const CONTAINER_INHERIT_ACE: u8 = 0x02;
    const KEY_ALL_ACCESS: u32 = 0x000F_003F;
    const KEY_READ: u32 = 0x0002_0019;
    let mut aces = Vec::new();
    push_ace(&mut aces, CONTAINER_INHERIT_ACE, KEY_ALL_ACCESS, 5, &[18]);
    push_ace(
        &mut aces,
        CONTAINER_INHERIT_ACE,
        KEY_ALL_ACCESS,
        5,
        &[32, 544],
    );
    push_ace(&mut aces, CONTAINER_INHERIT_ACE, KEY_READ, 5, &[32, 545]);
    let mut dacl = vec![2, 0];
    dacl.extend_from_slice(&((8 + aces.len()) as u16).to_le_bytes());
    dacl.extend_from_slice(&3u16.to_le_bytes());
    dacl.extend_from_slice(&[0, 0]);
    dacl.extend_from_slice(&aces);
    let mut owner = Vec::new();
    push_sid(&mut owner, 5, &[32, 544]);
    let mut group = Vec::new();
    push_sid(&mut group, 5, &[18]);
    let dacl_off = 20u32;
    let owner_off = dacl_off + dacl.len() as u32;
    let group_off = owner_off + owner.len() as u32;
    let mut sd = vec![1, 0];
    sd.extend_from_slice(&0x8004u16.to_le_bytes());
    sd.extend_from_slice(&owner_off.to_le_bytes());
    sd.extend_from_slice(&group_off.to_le_bytes());
    sd.extend_from_slice(&0u32.to_le_bytes());
    sd.extend_from_slice(&dacl_off.to_le_bytes());
    sd.extend_from_slice(&dacl);
    sd.extend_from_slice(&owner);
    sd.extend_from_slice(&group);
    sd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_descriptor_layout() {
        let sd = default_descriptor();
        assert_eq!(&sd[..4], &[1, 0, 0x04, 0x80]);
        let owner = le32(&sd, 4) as usize;
        let group = le32(&sd, 8) as usize;
        let dacl = le32(&sd, 16) as usize;
        assert_eq!(
            &sd[owner..owner + 16],
            &[1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0]
        );
        assert_eq!(
            &sd[group..group + 12],
            &[1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0]
        );
        assert_eq!(sd[dacl], 2);
        assert_eq!(u16::from_le_bytes([sd[dacl + 4], sd[dacl + 5]]), 3);
        assert_eq!(sd.len(), group + 12);
    }
}
