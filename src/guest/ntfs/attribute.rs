//! Attribute values the writer builds or reads: `$STANDARD_INFORMATION`, `$FILE_NAME`,
//! `$VOLUME_INFORMATION`.

use super::NtfsError;
use crate::bytes::{le16, le32, le64, set_le32, set_le64};

/// File attribute: archive (set on new files, as Windows does).
pub const FILE_ATTR_ARCHIVE: u32 = 0x0000_0020;
/// File attribute in `$FILE_NAME` / `$STANDARD_INFORMATION` of a folder: has an `$I30` index.
pub const FILE_ATTR_I30_INDEX_PRESENT: u32 = 0x1000_0000;

/// Namespace of a `$FILE_NAME`: Win32 (long name).
pub const NS_WIN32: u8 = 1;
/// Namespace: DOS 8.3 name.
pub const NS_DOS: u8 = 2;

/// Size of a `$STANDARD_INFORMATION` value on NTFS 3.x.
pub const SI_LEN: usize = 72;
/// Size of the fixed part of a `$FILE_NAME` value.
pub const FN_HEADER: usize = 0x42;

/// The current time as NTFS time (100 ns units since 1601-01-01 UTC).
pub fn ntfs_now() -> u64 {
    const EPOCH_DIFF: u64 = 116_444_736_000_000_000; // 1601 -> 1970 in 100 ns units
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    EPOCH_DIFF + d.as_secs() * 10_000_000 + u64::from(d.subsec_nanos() / 100)
}

/// A `$STANDARD_INFORMATION` value: all four times `time`, `attrs`, and the security id
/// (`None` builds the 48-byte NTFS 1.2 form without owner/security/quota/USN fields).
pub fn standard_information(time: u64, attrs: u32, security_id: Option<u32>) -> Vec<u8> {
    let len = if security_id.is_some() { SI_LEN } else { 48 };
    let mut v = vec![0u8; len];
    for o in [0, 8, 16, 24] {
        set_le64(&mut v, o, time); // created, modified, MFT changed, read
    }
    set_le32(&mut v, 0x20, attrs);
    if let Some(id) = security_id {
        set_le32(&mut v, 0x34, id);
    }
    v
}

/// The security id of a `$STANDARD_INFORMATION` value (`None` in the short NTFS 1.2 form).
pub fn si_security_id(v: &[u8]) -> Option<u32> {
    (v.len() >= SI_LEN).then(|| le32(v, 0x34))
}

/// A `$FILE_NAME` value.
pub fn file_name(
    parent_ref: u64,
    time: u64,
    sizes: (u64, u64),
    attrs: u32,
    name: &[u16],
    namespace: u8,
) -> Vec<u8> {
    let mut v = vec![0u8; FN_HEADER + 2 * name.len()];
    set_le64(&mut v, 0, parent_ref);
    for o in [8, 16, 24, 32] {
        set_le64(&mut v, o, time);
    }
    set_le64(&mut v, 0x28, sizes.0);
    set_le64(&mut v, 0x30, sizes.1);
    set_le32(&mut v, 0x38, attrs);
    v[0x40] = name.len() as u8;
    v[0x41] = namespace;
    for (i, u) in name.iter().enumerate() {
        v[FN_HEADER + 2 * i..FN_HEADER + 2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
    v
}

/// The parts of a `$FILE_NAME` value the writer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// Parent folder reference.
    pub parent_ref: u64,
    /// Allocated size copy.
    pub alloc: u64,
    /// Data size copy.
    pub size: u64,
    /// File attribute flags.
    pub attrs: u32,
    /// Namespace.
    pub namespace: u8,
    /// The name.
    pub name: Vec<u16>,
}

/// Parses a `$FILE_NAME` value (`what`/`offset` name it in errors).
pub fn parse_file_name(v: &[u8], what: &str, offset: u64) -> Result<FileName, NtfsError> {
    if v.len() < FN_HEADER {
        return Err(NtfsError::corrupt(
            what,
            offset,
            format!(
                "$FILE_NAME value is {} bytes, at least {FN_HEADER} needed",
                v.len()
            ),
        ));
    }
    let n = v[0x40] as usize;
    if FN_HEADER + 2 * n > v.len() {
        return Err(NtfsError::corrupt(
            what,
            offset,
            format!(
                "$FILE_NAME name of {n} characters runs past its {} bytes",
                v.len()
            ),
        ));
    }
    Ok(FileName {
        parent_ref: le64(v, 0),
        alloc: le64(v, 0x28),
        size: le64(v, 0x30),
        attrs: le32(v, 0x38),
        namespace: v[0x41],
        name: (0..n).map(|i| le16(v, FN_HEADER + 2 * i)).collect(),
    })
}

/// Writes new size copies into a `$FILE_NAME` value.
pub fn set_file_name_sizes(v: &mut [u8], alloc: u64, size: u64) {
    if v.len() >= FN_HEADER {
        set_le64(v, 0x28, alloc);
        set_le64(v, 0x30, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_round_trip() {
        let name: Vec<u16> = "Setup.INF".encode_utf16().collect();
        let v = file_name(
            (3u64 << 48) | 5,
            1,
            (4096, 10),
            FILE_ATTR_ARCHIVE,
            &name,
            NS_WIN32,
        );
        assert_eq!(v.len(), 0x42 + 18);
        let f = parse_file_name(&v, "x", 0).unwrap();
        assert_eq!(f.parent_ref, (3u64 << 48) | 5);
        assert_eq!((f.alloc, f.size, f.namespace), (4096, 10, NS_WIN32));
        assert_eq!(f.name, name);
        let mut v = v;
        set_file_name_sizes(&mut v, 8192, 5000);
        let f = parse_file_name(&v, "x", 0).unwrap();
        assert_eq!((f.alloc, f.size), (8192, 5000));
        // Name length past the value.
        v[0x40] = 200;
        assert!(parse_file_name(&v, "x", 0).is_err());
        assert!(parse_file_name(&v[..10], "x", 0).is_err());
    }

    #[test]
    fn standard_information_forms() {
        let v = standard_information(7, FILE_ATTR_ARCHIVE, Some(0x100));
        assert_eq!(v.len(), SI_LEN);
        assert_eq!(si_security_id(&v), Some(0x100));
        assert_eq!(le64(&v, 8), 7);
        assert_eq!(si_security_id(&standard_information(7, 0, None)), None);
        assert!(ntfs_now() > 130_000_000_000_000_000);
    }
}
