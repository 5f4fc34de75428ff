//! Update-sequence ("multi-sector transfer") fixups of FILE records and INDX blocks.
//!
//! On disk the last two bytes of every 512-byte stride of a protected structure hold the update
//! sequence number (USN, the first u16 of the update sequence array); the real bytes live in the
//! array. `remove` checks and undoes that after a read, `apply` redoes it before a write,
//! incrementing the USN (skipping 0 and 0xFFFF, as Windows does).

use super::NtfsError;

/// The stride protected by one update-sequence entry: always 512 bytes in NTFS, whatever the
/// sector size.
pub const STRIDE: usize = 512;

fn header(buf: &[u8], what: &str, offset: u64) -> Result<(usize, usize), NtfsError> {
    if buf.len() < 8 || buf.len() % STRIDE != 0 {
        return Err(NtfsError::invalid(
            what,
            offset,
            format!(
                "a protected structure must be a multiple of {STRIDE} bytes, got {}",
                buf.len()
            ),
        ));
    }
    let usa_ofs = u16::from_le_bytes([buf[4], buf[5]]) as usize;
    let usa_count = u16::from_le_bytes([buf[6], buf[7]]) as usize;
    let strides = buf.len() / STRIDE;
    if usa_count != strides + 1 {
        return Err(NtfsError::invalid(
            what,
            offset,
            format!(
                "update sequence array has {usa_count} entries, expected {} for {} bytes",
                strides + 1,
                buf.len()
            ),
        ));
    }
    if usa_ofs % 2 != 0 || usa_ofs < 8 || usa_ofs + 2 * usa_count > STRIDE - 2 {
        return Err(NtfsError::invalid(
            what,
            offset,
            format!("update sequence array offset {usa_ofs:#x} is outside the first stride"),
        ));
    }
    Ok((usa_ofs, usa_count))
}

/// Checks and removes the fixups of a structure read from disk (`offset`: its absolute byte
/// offset, for errors). A stride whose tail does not hold the USN means a torn write.
pub fn remove(buf: &mut [u8], what: &str, offset: u64) -> Result<(), NtfsError> {
    let (usa_ofs, usa_count) = header(buf, what, offset)?;
    let usn = [buf[usa_ofs], buf[usa_ofs + 1]];
    for i in 1..usa_count {
        let end = i * STRIDE;
        if buf[end - 2..end] != usn {
            return Err(NtfsError::corrupt(
                what,
                offset,
                format!(
                    "update sequence mismatch in stride {} (bytes {:#x}..{:#x}): expected {:02x}{:02x}, found {:02x}{:02x} (torn write)",
                    i - 1,
                    end - 2,
                    end,
                    usn[0],
                    usn[1],
                    buf[end - 2],
                    buf[end - 1]
                ),
            ));
        }
        let (a, b) = (buf[usa_ofs + 2 * i], buf[usa_ofs + 2 * i + 1]);
        buf[end - 2] = a;
        buf[end - 1] = b;
    }
    Ok(())
}

/// Applies fixups to a structure about to be written: increments the USN, saves each stride's
/// last two bytes in the array and puts the USN there. `buf` must hold the structure with its
/// fixups removed (as [`remove`] left it or as freshly built).
pub fn apply(buf: &mut [u8], what: &str, offset: u64) -> Result<(), NtfsError> {
    let (usa_ofs, usa_count) = header(buf, what, offset)?;
    let mut usn = u16::from_le_bytes([buf[usa_ofs], buf[usa_ofs + 1]]).wrapping_add(1);
    if usn == 0 || usn == 0xFFFF {
        usn = 1;
    }
    buf[usa_ofs..usa_ofs + 2].copy_from_slice(&usn.to_le_bytes());
    for i in 1..usa_count {
        let end = i * STRIDE;
        let (a, b) = (buf[end - 2], buf[end - 1]);
        buf[usa_ofs + 2 * i] = a;
        buf[usa_ofs + 2 * i + 1] = b;
        buf[end - 2..end].copy_from_slice(&usn.to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0..4].copy_from_slice(b"FILE");
        b[4..6].copy_from_slice(&0x30u16.to_le_bytes()); // usa offset
        b[6..8].copy_from_slice(&3u16.to_le_bytes()); // 1 + 2 strides
        b[0x30..0x32].copy_from_slice(&7u16.to_le_bytes()); // current USN
        b[510] = 0xAB;
        b[511] = 0xCD;
        b[1022] = 0x12;
        b[1023] = 0x34;
        b
    }

    #[test]
    fn apply_then_remove_round_trips() {
        let orig = record();
        let mut b = orig.clone();
        apply(&mut b, "MFT record 0", 0).unwrap();
        assert_eq!(&b[0x30..0x32], &8u16.to_le_bytes());
        assert_eq!(&b[510..512], &8u16.to_le_bytes());
        assert_eq!(&b[1022..1024], &8u16.to_le_bytes());
        assert_eq!(&b[0x32..0x36], &[0xAB, 0xCD, 0x12, 0x34]);
        remove(&mut b, "MFT record 0", 0).unwrap();
        assert_eq!(&b[510..512], &[0xAB, 0xCD]);
        assert_eq!(&b[1022..1024], &[0x12, 0x34]);
        assert_eq!(&b[..0x30], &orig[..0x30]);
    }

    #[test]
    fn torn_stride_is_an_error_naming_the_stride() {
        let mut b = record();
        apply(&mut b, "MFT record 9", 0x2400).unwrap();
        b[1023] ^= 1;
        let e = remove(&mut b, "MFT record 9", 0x2400)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stride 1") && e.contains("0x2400"), "{e}");
    }

    #[test]
    fn usn_skips_zero_and_ffff() {
        let mut b = record();
        b[0x30..0x32].copy_from_slice(&0xFFFEu16.to_le_bytes());
        apply(&mut b, "r", 0).unwrap();
        assert_eq!(&b[0x30..0x32], &1u16.to_le_bytes());
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut b = record();
        b[6] = 9;
        assert!(remove(&mut b, "r", 0).is_err());
        let mut b = record();
        b[4..6].copy_from_slice(&0x1fau16.to_le_bytes());
        assert!(apply(&mut b, "r", 0).is_err());
        let mut short = vec![0u8; 100];
        assert!(remove(&mut short, "r", 0).is_err());
    }
}
