//! FILE records (MFT entries) and their attribute headers: parsing with bounds checks, and the
//! edits the writer needs (insert, replace, remove an attribute; build a new record).

use super::NtfsError;
use super::fixup;
use crate::bytes::{le16, le32, le64, set_le16, set_le32, set_le64};

/// Signature of an MFT record: ASCII "FILE".
pub const FILE_MAGIC: &[u8; 4] = b"FILE";
/// End-of-attributes marker.
pub const END_MARKER: u32 = 0xFFFF_FFFF;

/// `$STANDARD_INFORMATION`.
pub const AT_STANDARD_INFORMATION: u32 = 0x10;
/// `$ATTRIBUTE_LIST`.
pub const AT_ATTRIBUTE_LIST: u32 = 0x20;
/// `$FILE_NAME`.
pub const AT_FILE_NAME: u32 = 0x30;
/// `$VOLUME_NAME`.
pub const AT_VOLUME_NAME: u32 = 0x60;
/// `$VOLUME_INFORMATION`.
pub const AT_VOLUME_INFORMATION: u32 = 0x70;
/// `$DATA`.
pub const AT_DATA: u32 = 0x80;
/// `$INDEX_ROOT`.
pub const AT_INDEX_ROOT: u32 = 0x90;
/// `$INDEX_ALLOCATION`.
pub const AT_INDEX_ALLOCATION: u32 = 0xA0;
/// `$BITMAP`.
pub const AT_BITMAP: u32 = 0xB0;

/// Record flag: in use.
pub const FLAG_IN_USE: u16 = 0x0001;
/// Record flag: a directory (has an `$I30` index).
pub const FLAG_DIRECTORY: u16 = 0x0002;

/// Attribute flag: compressed (any bit of the low byte).
pub const ATTR_COMPRESSED: u16 = 0x00FF;
/// Attribute flag: encrypted.
pub const ATTR_ENCRYPTED: u16 = 0x4000;

/// Size of a resident attribute header.
pub const RESIDENT_HEADER: usize = 0x18;
/// Size of a non-resident attribute header (uncompressed).
pub const NONRESIDENT_HEADER: usize = 0x40;

/// Rounds up to a multiple of 8.
pub(crate) fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// One attribute inside a record (header fields; `pos` is its offset in the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Offset of the attribute in the record.
    pub pos: usize,
    /// Attribute type.
    pub ty: u32,
    /// Length of the whole attribute.
    pub len: usize,
    /// Non-resident.
    pub non_resident: bool,
    /// Name (UTF-16).
    pub name: Vec<u16>,
    /// Flags (compressed, encrypted, sparse).
    pub flags: u16,
    /// Attribute id.
    pub id: u16,
}

/// The non-resident header fields of an attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonResident {
    /// Lowest VCN mapped by this attribute (0 unless it is an extent of an attribute list).
    pub lowest_vcn: u64,
    /// Highest VCN mapped.
    pub highest_vcn: u64,
    /// Bytes allocated (clusters × cluster size).
    pub alloc: u64,
    /// Logical size.
    pub size: u64,
    /// Initialized size (bytes past it read as zeros).
    pub init: u64,
    /// Compression unit exponent (0 = not compressed).
    pub compression_unit: u16,
    /// The mapping pairs bytes' range in the record.
    pub pairs: std::ops::Range<usize>,
}

/// An MFT record with its fixups removed.
#[derive(Debug, Clone)]
pub struct Record {
    /// Record number.
    pub number: u64,
    /// Absolute byte offset of the record on the volume (for errors).
    pub offset: u64,
    /// The record bytes (record size).
    pub buf: Vec<u8>,
}

impl Record {
    fn what(&self) -> String {
        format!("MFT record {}", self.number)
    }

    fn bad(&self, at: usize, detail: impl Into<String>) -> NtfsError {
        NtfsError::corrupt(self.what(), self.offset + at as u64, detail)
    }

    /// Parses raw record bytes as read from disk (fixups still applied): checks the
    /// signature, the fixups, the header and every attribute header.
    pub fn parse(mut buf: Vec<u8>, number: u64, offset: u64) -> Result<Record, NtfsError> {
        let what = format!("MFT record {number}");
        if buf.len() < 1024 || &buf[0..4] != FILE_MAGIC {
            return Err(NtfsError::invalid(
                what,
                offset,
                format!(
                    "signature must be \"FILE\", found {:?}",
                    String::from_utf8_lossy(&buf[..4.min(buf.len())])
                ),
            ));
        }
        fixup::remove(&mut buf, &what, offset)?;
        let r = Record {
            number,
            offset,
            buf,
        };
        r.check()?;
        Ok(r)
    }

    /// Whether raw bytes begin with the FILE signature (used for free record slots).
    pub fn has_magic(raw: &[u8]) -> bool {
        raw.len() >= 4 && &raw[0..4] == FILE_MAGIC
    }

    fn check(&self) -> Result<(), NtfsError> {
        let size = self.buf.len();
        let usa_ofs = le16(&self.buf, 4) as usize;
        let first = self.first_attr();
        if first < usa_ofs + 2 * (size / 512 + 1) || first % 8 != 0 || first + 8 > size {
            return Err(self.bad(
                0x14,
                format!("first attribute offset {first:#x} is not valid for a {size}-byte record"),
            ));
        }
        let used = self.used();
        if used > size || used < first + 4 {
            return Err(self.bad(
                0x18,
                format!("bytes in use {used} outside {}..={size}", first + 4),
            ));
        }
        let alloc = le32(&self.buf, 0x1C) as usize;
        if alloc != size {
            return Err(self.bad(
                0x1C,
                format!("allocated size {alloc}, expected the record size {size}"),
            ));
        }
        if usa_ofs >= 0x30 {
            let n = le32(&self.buf, 0x2C);
            if u64::from(n) != self.number & 0xFFFF_FFFF {
                return Err(self.bad(
                    0x2C,
                    format!(
                        "record number field says {n}, expected {} (record in the wrong place)",
                        self.number
                    ),
                ));
            }
        }
        self.attrs()?;
        Ok(())
    }

    /// Offset of the first attribute.
    pub fn first_attr(&self) -> usize {
        le16(&self.buf, 0x14) as usize
    }
    /// Bytes in use.
    pub fn used(&self) -> usize {
        le32(&self.buf, 0x18) as usize
    }
    /// Record flags.
    pub fn flags(&self) -> u16 {
        le16(&self.buf, 0x16)
    }
    /// Whether the record is in use.
    pub fn in_use(&self) -> bool {
        self.flags() & FLAG_IN_USE != 0
    }
    /// Whether the record is a directory.
    pub fn is_dir(&self) -> bool {
        self.flags() & FLAG_DIRECTORY != 0
    }
    /// Sequence number.
    pub fn sequence(&self) -> u16 {
        le16(&self.buf, 0x10)
    }
    /// Base record reference (0 for a base record).
    pub fn base_ref(&self) -> u64 {
        le64(&self.buf, 0x20)
    }
    /// The MFT reference of this record (number and sequence).
    pub fn reference(&self) -> u64 {
        (u64::from(self.sequence()) << 48) | self.number
    }

    /// Every attribute header, in order, checked against the record bounds.
    pub fn attrs(&self) -> Result<Vec<Attr>, NtfsError> {
        let used = self.used();
        let mut pos = self.first_attr();
        let mut out = Vec::new();
        loop {
            if pos + 4 > used {
                return Err(self.bad(pos, "attributes run past the bytes in use (no end marker)"));
            }
            let ty = le32(&self.buf, pos);
            if ty == END_MARKER {
                break;
            }
            if pos + 0x10 > used {
                return Err(self.bad(pos, "attribute header runs past the bytes in use"));
            }
            let len = le32(&self.buf, pos + 4) as usize;
            let non_resident = self.buf[pos + 8] != 0;
            let min = if non_resident {
                NONRESIDENT_HEADER
            } else {
                RESIDENT_HEADER
            };
            if len < min || len % 8 != 0 || pos.checked_add(len).is_none_or(|e| e > used) {
                return Err(self.bad(
                    pos + 4,
                    format!(
                        "attribute type {ty:#x} length {len} is invalid (at least {min}, a multiple of 8, inside the {used} bytes in use)"
                    ),
                ));
            }
            let name_len = self.buf[pos + 9] as usize;
            let name_off = le16(&self.buf, pos + 10) as usize;
            if name_len > 0 && name_off + 2 * name_len > len {
                return Err(self.bad(
                    pos + 10,
                    format!("attribute type {ty:#x} name runs past the attribute"),
                ));
            }
            let name = (0..name_len)
                .map(|i| le16(&self.buf, pos + name_off + 2 * i))
                .collect();
            let a = Attr {
                pos,
                ty,
                len,
                non_resident,
                name,
                flags: le16(&self.buf, pos + 12),
                id: le16(&self.buf, pos + 14),
            };
            if non_resident {
                self.nonresident(&a)?;
            } else {
                self.value(&a)?;
            }
            out.push(a);
            pos += len;
            if out.len() > self.buf.len() / 16 {
                return Err(self.bad(pos, "too many attributes"));
            }
        }
        Ok(out)
    }

    /// The first attribute of type `ty` named `name`.
    pub fn find(&self, ty: u32, name: &[u16]) -> Result<Option<Attr>, NtfsError> {
        Ok(self
            .attrs()?
            .into_iter()
            .find(|a| a.ty == ty && a.name == name))
    }

    /// Every attribute of type `ty`.
    pub fn find_all(&self, ty: u32) -> Result<Vec<Attr>, NtfsError> {
        Ok(self.attrs()?.into_iter().filter(|a| a.ty == ty).collect())
    }

    /// The value of a resident attribute.
    pub fn value(&self, a: &Attr) -> Result<&[u8], NtfsError> {
        if a.non_resident {
            return Err(self.bad(
                a.pos + 8,
                format!("attribute type {:#x} should be resident", a.ty),
            ));
        }
        let vlen = le32(&self.buf, a.pos + 0x10) as usize;
        let voff = le16(&self.buf, a.pos + 0x14) as usize;
        if voff.checked_add(vlen).is_none_or(|e| e > a.len) {
            return Err(self.bad(
                a.pos + 0x10,
                format!(
                    "attribute type {:#x} value ({vlen} bytes at {voff:#x}) runs past its {} bytes",
                    a.ty, a.len
                ),
            ));
        }
        Ok(&self.buf[a.pos + voff..a.pos + voff + vlen])
    }

    /// The non-resident fields of an attribute.
    pub fn nonresident(&self, a: &Attr) -> Result<NonResident, NtfsError> {
        if !a.non_resident {
            return Err(self.bad(
                a.pos + 8,
                format!("attribute type {:#x} should be non-resident", a.ty),
            ));
        }
        let p = a.pos;
        let b = &self.buf;
        let pairs_off = le16(b, p + 0x20) as usize;
        if pairs_off < NONRESIDENT_HEADER || pairs_off >= a.len {
            return Err(self.bad(
                p + 0x20,
                format!(
                    "attribute type {:#x} mapping pairs offset {pairs_off:#x} outside {:#x}..{:#x}",
                    a.ty, NONRESIDENT_HEADER, a.len
                ),
            ));
        }
        let nr = NonResident {
            lowest_vcn: le64(b, p + 0x10),
            highest_vcn: le64(b, p + 0x18),
            compression_unit: le16(b, p + 0x22),
            alloc: le64(b, p + 0x28),
            size: le64(b, p + 0x30),
            init: le64(b, p + 0x38),
            pairs: p + pairs_off..p + a.len,
        };
        if nr.lowest_vcn == 0 && (nr.size > nr.alloc || nr.init > nr.size) {
            return Err(self.bad(
                p + 0x28,
                format!(
                    "attribute type {:#x} sizes inconsistent: allocated {}, size {}, initialized {}",
                    a.ty, nr.alloc, nr.size, nr.init
                ),
            ));
        }
        Ok(nr)
    }

    /// The next attribute id (and increments it).
    fn take_id(&mut self) -> u16 {
        let id = le16(&self.buf, 0x28);
        set_le16(&mut self.buf, 0x28, id.wrapping_add(1));
        id
    }

    /// Replaces `len` bytes at `pos` with `new`, moving the rest of the attributes; fails when
    /// the record would overflow (`what_needed` explains the operation).
    fn splice(&mut self, pos: usize, len: usize, new: &[u8]) -> Result<(), NtfsError> {
        let used = self.used();
        let size = self.buf.len();
        let new_used = used - len + new.len();
        if new_used > size {
            return Err(NtfsError::Unsupported(format!(
                "MFT record {} is full ({used} of {size} bytes used, {} more needed); moving \
                 attributes to an extension record (attribute list) is not implemented",
                self.number,
                new_used - used
            )));
        }
        let tail: Vec<u8> = self.buf[pos + len..used].to_vec();
        self.buf[pos..pos + new.len()].copy_from_slice(new);
        self.buf[pos + new.len()..new_used].copy_from_slice(&tail);
        for b in &mut self.buf[new_used..size] {
            *b = 0;
        }
        set_le32(&mut self.buf, 0x18, new_used as u32);
        Ok(())
    }

    /// Free bytes in the record.
    pub fn free(&self) -> usize {
        self.buf.len().saturating_sub(self.used())
    }

    /// Inserts a new attribute (built by [`resident`] or [`non_resident`]) in type order,
    /// giving it the next attribute id.
    pub fn insert(&mut self, mut bytes: Vec<u8>) -> Result<(), NtfsError> {
        let ty = le32(&bytes, 0);
        let id = le16(&self.buf, 0x28);
        set_le16(&mut bytes, 14, id);
        let attrs = self.attrs()?;
        let pos = attrs
            .iter()
            .find(|a| a.ty > ty)
            .map(|a| a.pos)
            .unwrap_or_else(|| {
                attrs
                    .last()
                    .map(|a| a.pos + a.len)
                    .unwrap_or(self.first_attr())
            });
        self.splice(pos, 0, &bytes)?;
        self.take_id();
        Ok(())
    }

    /// Replaces the attribute `a` by `bytes`, keeping its attribute id.
    pub fn replace(&mut self, a: &Attr, mut bytes: Vec<u8>) -> Result<(), NtfsError> {
        set_le16(&mut bytes, 14, a.id);
        self.splice(a.pos, a.len, &bytes)
    }

    /// Removes the attribute `a`.
    #[cfg(test)]
    pub fn remove(&mut self, a: &Attr) -> Result<(), NtfsError> {
        self.splice(a.pos, a.len, &[])
    }

    /// The bytes to write to disk (fixups applied).
    pub fn to_disk(&self) -> Result<Vec<u8>, NtfsError> {
        let mut out = self.buf.clone();
        fixup::apply(&mut out, &self.what(), self.offset)?;
        Ok(out)
    }

    /// A new empty record (FILE header, update sequence array, end marker) of `size` bytes.
    pub fn new_empty(number: u64, offset: u64, size: usize, sequence: u16, flags: u16) -> Record {
        let mut b = vec![0u8; size];
        b[0..4].copy_from_slice(FILE_MAGIC);
        let usa_count = size / 512 + 1;
        set_le16(&mut b, 4, 0x30); // update sequence array offset (NTFS 3.1 layout)
        set_le16(&mut b, 6, usa_count as u16);
        set_le16(&mut b, 0x10, sequence);
        set_le16(&mut b, 0x12, if flags & FLAG_IN_USE != 0 { 1 } else { 0 }); // link count
        let first = align8(0x30 + 2 * usa_count);
        set_le16(&mut b, 0x14, first as u16);
        set_le16(&mut b, 0x16, flags);
        set_le32(&mut b, 0x18, (first + 8) as u32);
        set_le32(&mut b, 0x1C, size as u32);
        set_le32(&mut b, 0x2C, number as u32);
        set_le16(&mut b, 0x30, 1); // initial update sequence number (apply increments it)
        set_le32(&mut b, first, END_MARKER);
        Record {
            number,
            offset,
            buf: b,
        }
    }
}

/// A resident attribute of type `ty` named `name` holding `value` (id 0; set on insert).
pub fn resident(ty: u32, name: &[u16], value: &[u8], indexed: bool) -> Vec<u8> {
    let name_off = RESIDENT_HEADER;
    let value_off = align8(name_off + 2 * name.len());
    let len = align8(value_off + value.len());
    let mut b = vec![0u8; len];
    set_le32(&mut b, 0, ty);
    set_le32(&mut b, 4, len as u32);
    b[8] = 0;
    b[9] = name.len() as u8;
    set_le16(&mut b, 10, name_off as u16);
    set_le32(&mut b, 0x10, value.len() as u32);
    set_le16(&mut b, 0x14, value_off as u16);
    b[0x16] = u8::from(indexed);
    for (i, u) in name.iter().enumerate() {
        set_le16(&mut b, name_off + 2 * i, *u);
    }
    b[value_off..value_off + value.len()].copy_from_slice(value);
    b
}

/// Bytes a resident attribute with this name and value length takes.
pub fn resident_len(name_len: usize, value_len: usize) -> usize {
    align8(align8(RESIDENT_HEADER + 2 * name_len) + value_len)
}

/// Sizes of a non-resident attribute.
#[derive(Debug, Clone, Copy)]
pub struct NonResidentSizes {
    /// Highest VCN (clusters - 1; u64::MAX wraps to "none" for an empty attribute).
    pub highest_vcn: u64,
    /// Allocated bytes.
    pub alloc: u64,
    /// Logical size.
    pub size: u64,
    /// Initialized size.
    pub init: u64,
}

/// A non-resident attribute with lowest VCN 0 and the given mapping pairs (as
/// `runlist::encode` makes them) and flags.
pub fn non_resident(
    ty: u32,
    name: &[u16],
    flags: u16,
    sizes: NonResidentSizes,
    pairs: &[u8],
) -> Vec<u8> {
    let name_off = NONRESIDENT_HEADER;
    let pairs_off = align8(name_off + 2 * name.len());
    let len = align8(pairs_off + pairs.len());
    let mut b = vec![0u8; len];
    set_le32(&mut b, 0, ty);
    set_le32(&mut b, 4, len as u32);
    b[8] = 1;
    b[9] = name.len() as u8;
    set_le16(&mut b, 10, name_off as u16);
    set_le16(&mut b, 12, flags);
    set_le64(&mut b, 0x10, 0);
    set_le64(&mut b, 0x18, sizes.highest_vcn);
    set_le16(&mut b, 0x20, pairs_off as u16);
    set_le64(&mut b, 0x28, sizes.alloc);
    set_le64(&mut b, 0x30, sizes.size);
    set_le64(&mut b, 0x38, sizes.init);
    for (i, u) in name.iter().enumerate() {
        set_le16(&mut b, name_off + 2 * i, *u);
    }
    b[pairs_off..pairs_off + pairs.len()].copy_from_slice(pairs);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_insert_replace_parse() {
        let mut r = Record::new_empty(30, 0x1000, 1024, 1, FLAG_IN_USE);
        r.insert(resident(AT_DATA, &[], b"hello", false)).unwrap();
        r.insert(resident(AT_STANDARD_INFORMATION, &[], &[0u8; 72], false))
            .unwrap();
        let a = r.attrs().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].ty, AT_STANDARD_INFORMATION); // type order kept
        assert_eq!(a[1].ty, AT_DATA);
        assert_eq!(a[1].id, 0);
        assert_eq!(a[0].id, 1);
        assert_eq!(r.value(&a[1]).unwrap(), b"hello");
        let pairs = [0x11u8, 0x04, 0x20, 0];
        let nr = non_resident(
            AT_DATA,
            &[],
            0,
            NonResidentSizes {
                highest_vcn: 3,
                alloc: 16384,
                size: 10000,
                init: 10000,
            },
            &pairs,
        );
        r.replace(&a[1], nr).unwrap();
        let disk = r.to_disk().unwrap();
        let back = Record::parse(disk, 30, 0x1000).unwrap();
        let d = back.find(AT_DATA, &[]).unwrap().unwrap();
        assert_eq!(d.id, 0);
        let n = back.nonresident(&d).unwrap();
        assert_eq!(
            (n.alloc, n.size, n.init, n.highest_vcn),
            (16384, 10000, 10000, 3)
        );
        assert_eq!(&back.buf[n.pairs.start..n.pairs.start + 4], &pairs);
        let mut back = back;
        back.remove(&d).unwrap();
        assert_eq!(back.attrs().unwrap().len(), 1);
    }

    #[test]
    fn full_record_is_an_error_not_corruption() {
        let mut r = Record::new_empty(40, 0, 1024, 1, FLAG_IN_USE);
        let e = r
            .insert(resident(AT_DATA, &[], &[7u8; 1000], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("full"), "{e}");
        assert_eq!(r.attrs().unwrap().len(), 0);
    }

    #[test]
    fn hostile_headers_are_errors() {
        let r = Record::new_empty(7, 0, 1024, 1, FLAG_IN_USE);
        let good = r.to_disk().unwrap();
        // Wrong record number.
        assert!(Record::parse(good.clone(), 8, 0).is_err());
        // Bytes in use past the record.
        let mut b = r.clone();
        set_le32(&mut b.buf, 0x18, 5000);
        assert!(Record::parse(b.to_disk().unwrap(), 7, 0).is_err());
        // Attribute length zero.
        let mut b = r.clone();
        b.insert(resident(AT_DATA, &[], b"x", false)).unwrap();
        let first = b.first_attr();
        set_le32(&mut b.buf, first + 4, 0);
        assert!(Record::parse(b.to_disk().unwrap(), 7, 0).is_err());
        // Resident value past the attribute.
        let mut b = r.clone();
        b.insert(resident(AT_DATA, &[], b"x", false)).unwrap();
        set_le32(&mut b.buf, first + 0x10, 4000);
        assert!(Record::parse(b.to_disk().unwrap(), 7, 0).is_err());
        // Bad signature / torn fixup.
        let mut bad = good.clone();
        bad[0] = b'B';
        assert!(Record::parse(bad, 7, 0).is_err());
        let mut torn = good;
        torn[1023] ^= 0xFF;
        assert!(Record::parse(torn, 7, 0).is_err());
    }
}
