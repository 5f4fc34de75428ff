//! Small helpers shared by the formats and the engine: zero detection, alignment, sizes, random
//! values, whether two paths are one file. Endian fields and GUIDs are in [`crate::bytes`].

/// Whether every byte of `buf` is zero. Compares 16-byte words, not bytes.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the aligned middle.
    let (head, mid, tail) = unsafe { buf.align_to::<u128>() };
    if !head.iter().all(|&b| b == 0) || !tail.iter().all(|&b| b == 0) {
        return false;
    }
    // Check in blocks so a non-zero byte early stops the scan early, while the block loop is
    // simple enough for the compiler to vectorise.
    for block in mid.chunks(16) {
        if block.iter().fold(0u128, |acc, &w| acc | w) != 0 {
            return false;
        }
    }
    true
}

/// Rounds `v` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Rounds `v` down to a multiple of `align` (a power of two).
pub fn align_down(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    v & !(align - 1)
}

/// A random 64-bit value from the standard library's per-process random hasher keys (fresh
/// CIDs, UUIDs and GUIDs for new images; not for cryptography).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// 16 random bytes (see [`random_u64`]).
pub fn random_bytes16() -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&random_u64().to_le_bytes());
    b[8..].copy_from_slice(&random_u64().to_le_bytes());
    b
}

/// Whether two paths name the same file: the same device and inode (hard links and symbolic
/// links included), or block devices with the same device number. `false` when either cannot
/// be looked at (a missing output, for one).
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            (x.dev() == y.dev() && x.ino() == y.ino())
                || (x.file_type().is_block_device()
                    && y.file_type().is_block_device()
                    && x.rdev() == y.rdev())
        }
        _ => false,
    }
}

/// Human-readable byte count, binary units ("1.5 GiB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Parses a size with an optional binary suffix: `65536`, `64k`, `64K`, `2M`, `1G`, `512`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let suffix = s[i..].trim().to_ascii_lowercase();
            let mult = match suffix.trim_end_matches(['b', 'i']) {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                "p" => 1 << 50,
                _ => return None,
            };
            (&s[..i], mult)
        }
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of a day counted from 1970-01-01
/// (negative before it): Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_sees_links_not_names() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        let hard = d.path().join("hard");
        std::fs::hard_link(&a, &hard).unwrap();
        let sym = d.path().join("sym");
        std::os::unix::fs::symlink(&a, &sym).unwrap();
        let other = d.path().join("other");
        std::fs::write(&other, b"x").unwrap();
        assert!(same_file(&a, &a));
        assert!(same_file(&a, &d.path().join(".").join("a")));
        assert!(same_file(&a, &hard));
        assert!(same_file(&sym, &a));
        assert!(!same_file(&a, &other));
        assert!(!same_file(&a, &d.path().join("missing")));
    }

    #[test]
    fn zero_detection_finds_any_nonzero_byte() {
        let mut buf = vec![0u8; 4099];
        assert!(is_zero(&buf));
        assert!(is_zero(&buf[1..]));
        for pos in [0, 1, 15, 16, 17, 255, 256, 2048, 4097, 4098] {
            buf[pos] = 1;
            assert!(!is_zero(&buf), "byte {pos}");
            assert!(!is_zero(&buf[..pos + 1]), "byte {pos}");
            buf[pos] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
    }

    #[test]
    fn alignment() {
        assert_eq!(align_up(0, 512), Some(0));
        assert_eq!(align_up(1, 512), Some(512));
        assert_eq!(align_up(u64::MAX, 512), None);
        assert_eq!(align_down(1023, 512), 512);
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.50 GiB");
    }
}
