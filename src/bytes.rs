//! Endian readers and writers over byte slices at offsets, and the [`Guid`] type.
//!
//! Parsers read fixed-size fields with [`le32`], [`be64`], ... once they have checked that the
//! structure is long enough (these index the slice and panic past its end, like `b[at]`), or
//! with the checked [`get_le32`], ... (`None` past the end) where the bounds come from the
//! bytes themselves. Writers use [`set_le32`], ....

use std::fmt;

macro_rules! endian {
    ($(($t:ty, $n:literal, $le:ident, $be:ident, $get_le:ident, $get_be:ident, $set_le:ident, $set_be:ident)),* $(,)?) => {$(
        #[doc = concat!("Little-endian `", stringify!($t), "` at byte `at` of `b` (the caller checked the bounds).")]
        #[inline]
        pub fn $le(b: &[u8], at: usize) -> $t {
            <$t>::from_le_bytes(array(b, at))
        }

        #[doc = concat!("Big-endian `", stringify!($t), "` at byte `at` of `b` (the caller checked the bounds).")]
        #[inline]
        pub fn $be(b: &[u8], at: usize) -> $t {
            <$t>::from_be_bytes(array(b, at))
        }

        #[doc = concat!("Little-endian `", stringify!($t), "` at byte `at` of `b`; `None` when it does not lie inside `b`.")]
        #[inline]
        pub fn $get_le(b: &[u8], at: usize) -> Option<$t> {
            get_array(b, at).map(<$t>::from_le_bytes)
        }

        #[doc = concat!("Big-endian `", stringify!($t), "` at byte `at` of `b`; `None` when it does not lie inside `b`.")]
        #[inline]
        pub fn $get_be(b: &[u8], at: usize) -> Option<$t> {
            get_array(b, at).map(<$t>::from_be_bytes)
        }

        #[doc = concat!("Stores `v` as a little-endian `", stringify!($t), "` at byte `at` of `b` (the caller checked the bounds).")]
        #[inline]
        pub fn $set_le(b: &mut [u8], at: usize, v: $t) {
            b[at..at + $n].copy_from_slice(&v.to_le_bytes());
        }

        #[doc = concat!("Stores `v` as a big-endian `", stringify!($t), "` at byte `at` of `b` (the caller checked the bounds).")]
        #[inline]
        pub fn $set_be(b: &mut [u8], at: usize, v: $t) {
            b[at..at + $n].copy_from_slice(&v.to_be_bytes());
        }
    )*};
}

endian!(
    (u16, 2, le16, be16, get_le16, get_be16, set_le16, set_be16),
    (u32, 4, le32, be32, get_le32, get_be32, set_le32, set_be32),
    (u64, 8, le64, be64, get_le64, get_be64, set_le64, set_be64),
);

/// The `N` bytes at `at` of `b`; panics past the end.
#[inline]
fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// The `N` bytes at `at` of `b`, `None` past the end.
#[inline]
fn get_array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The big-endian 64-bit entries of a table (qcow2 L1, L2 and refcount tables); a partial
/// entry at the end is ignored.
pub fn be64_table(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(array(c, 0)))
        .collect()
}

/// Lower-case hexadecimal of `bytes`, no separators (digests in manifests).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A GUID (UUID) as Microsoft formats store it: the 16 on-disk bytes, whose first three groups
/// are little-endian integers (`Data1` u32, `Data2` u16, `Data3` u16) and whose last 8 bytes
/// are in order (GPT, VHDX, the registry, NTFS).
///
/// Displays as the usual `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` text, upper case (`{:x}`: lower
/// case); [`Guid::from_be_bytes`] takes a GUID stored with every group big-endian (RFC 4122
/// byte order, as the VHD footer stores it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The GUID of all zeros.
    pub const NIL: Guid = Guid([0; 16]);

    /// The GUID written `a-b-c-d` (`d` holds the last two groups' 8 bytes).
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// The GUID whose on-disk (mixed-endian) bytes are `b`.
    pub const fn from_bytes(b: [u8; 16]) -> Guid {
        Guid(b)
    }

    /// The GUID stored as `b` with every group big-endian (RFC 4122 byte order): its text is
    /// the bytes in order.
    pub fn from_be_bytes(b: [u8; 16]) -> Guid {
        let mut g = b;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Guid(g)
    }

    /// Its bytes with every group big-endian (RFC 4122 byte order), as the VHD footer stores
    /// a GUID.
    pub fn to_be_bytes(self) -> [u8; 16] {
        let mut g = self.0;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        g
    }

    /// The GUID at byte `at` of `b` (the caller checked the bounds).
    pub fn read(b: &[u8], at: usize) -> Guid {
        Guid(array(b, at))
    }

    /// The GUID at byte `at` of `b`; `None` when it does not lie inside `b`.
    pub fn get(b: &[u8], at: usize) -> Option<Guid> {
        get_array(b, at).map(Guid)
    }

    /// Its on-disk (mixed-endian) bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// A random GUID (version 4, variant bits set), from the standard library's random hasher
    /// keys (see [`crate::util::random_u64`]; not for cryptography).
    pub fn random() -> Guid {
        let mut g = crate::util::random_bytes16();
        g[7] = (g[7] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        Guid(g)
    }

    /// Whether every byte is zero.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (hex digits of either case), with or
    /// without surrounding braces and white space; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Guid> {
        let s = s.trim();
        let s = s
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .unwrap_or(s);
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8usize, 4, 4, 4, 12];
        if groups.len() != 5
            || groups
                .iter()
                .zip(lens)
                .any(|(g, l)| g.len() != l || !g.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return None;
        }
        let a = u32::from_str_radix(groups[0], 16).ok()?;
        let b = u16::from_str_radix(groups[1], 16).ok()?;
        let c = u16::from_str_radix(groups[2], 16).ok()?;
        let tail = [groups[3], groups[4]].concat();
        let mut d = [0u8; 8];
        for (i, x) in d.iter_mut().enumerate() {
            *x = u8::from_str_radix(tail.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid::from_fields(a, b, c, d))
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, upper: bool) -> fmt::Result {
        let g = &self.0;
        let a = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
        let b = u16::from_le_bytes([g[4], g[5]]);
        let c = u16::from_le_bytes([g[6], g[7]]);
        if upper {
            write!(f, "{a:08X}-{b:04X}-{c:04X}-{:02X}{:02X}-", g[8], g[9])?;
            g[10..].iter().try_for_each(|x| write!(f, "{x:02X}"))
        } else {
            write!(f, "{a:08x}-{b:04x}-{c:04x}-{:02x}{:02x}-", g[8], g[9])?;
            g[10..].iter().try_for_each(|x| write!(f, "{x:02x}"))
        }
    }
}

impl fmt::Display for Guid {
    /// `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, upper case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

impl fmt::LowerHex for Guid {
    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, false)
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl std::str::FromStr for Guid {
    type Err = String;

    /// See [`Guid::parse`].
    fn from_str(s: &str) -> Result<Guid, String> {
        Guid::parse(s).ok_or_else(|| {
            format!("'{s}' is not a GUID of the form XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endian_reads_writes_and_bounds() {
        let mut b = [0u8; 10];
        set_le32(&mut b, 1, 0x1234_5678);
        assert_eq!(b[1..5], [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(le32(&b, 1), 0x1234_5678);
        assert_eq!(be32(&b, 1), 0x7856_3412);
        set_be64(&mut b, 2, 0x0102_0304_0506_0708);
        assert_eq!(b[2..10], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(be64(&b, 2), 0x0102_0304_0506_0708);
        assert_eq!(le64(&b, 2), 0x0807_0605_0403_0201);
        set_le16(&mut b, 0, 0xabcd);
        set_be16(&mut b, 8, 0xabcd);
        assert_eq!((le16(&b, 0), be16(&b, 8)), (0xabcd, 0xabcd));
        set_le64(&mut b, 2, 1);
        assert_eq!(le64(&b, 2), 1);
        set_be32(&mut b, 0, 1);
        assert_eq!(be32(&b, 0), 1);
        // Checked reads: the last whole field, then one byte too far, then an overflowing
        // offset.
        assert_eq!(get_le16(&b, 8), Some(u16::from_le_bytes([b[8], b[9]])));
        assert_eq!(get_be16(&b, 9), None);
        assert_eq!(get_le32(&b, 7), None);
        assert_eq!(get_be32(&b, 6), Some(be32(&b, 6)));
        assert_eq!(get_le64(&b, 2), Some(le64(&b, 2)));
        assert_eq!(get_be64(&b, 3), None);
        assert_eq!(get_le64(&b, usize::MAX), None);
        assert_eq!(be64_table(&[0, 0, 0, 0, 0, 0, 1, 0, 9]), vec![256]);
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }

    #[test]
    fn guid_text_bytes_and_parsing() {
        // The EFI system partition type GUID as GPT stores it.
        let esp = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        let g = Guid::from_bytes(esp);
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(format!("{g:x}"), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            g,
            Guid::from_fields(
                0xC12A_7328,
                0xF81F,
                0x11D2,
                [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]
            )
        );
        assert_eq!(g.to_bytes(), esp);
        let mut buf = [0u8; 20];
        buf[3..19].copy_from_slice(&esp);
        assert_eq!(Guid::read(&buf, 3), g);
        assert_eq!(Guid::get(&buf, 4), Some(Guid::read(&buf, 4)));
        assert_eq!(Guid::get(&buf, 5), None);
        for text in [
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}",
            " c12a7328-F81F-11d2-ba4b-00a0c93ec93b\n",
        ] {
            assert_eq!(Guid::parse(text), Some(g), "{text}");
            assert_eq!(text.parse::<Guid>(), Ok(g));
        }
        for bad in [
            "",
            "C12A7328-F81F-11D2-BA4B",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93BB",
            "+12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "G12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "C12A7328F81F-11D2-BA4B-00A0C93EC93B0",
            "{C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad}");
        }
        assert!("x".parse::<Guid>().unwrap_err().contains("is not a GUID"));
        // RFC 4122 byte order: the text is the bytes in order.
        let be = Guid::from_be_bytes([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 7,
        ]);
        assert_eq!(format!("{be:x}"), "01234567-89ab-cdef-0001-020304050607");
        assert_eq!(
            be.to_be_bytes(),
            [
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 7
            ]
        );
        // Random: version 4, RFC 4122 variant, and not the same twice.
        let r = Guid::random();
        assert_eq!(r.to_bytes()[7] >> 4, 4);
        assert_eq!(r.to_bytes()[8] >> 6, 0b10);
        assert_ne!(r, Guid::random());
        assert!(Guid::NIL.is_nil() && !r.is_nil());
    }
}
