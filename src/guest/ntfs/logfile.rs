//! `$LogFile` and `hiberfil.sys`: whether Windows left work pending on the volume.
//!
//! `$LogFile` starts with two restart pages (at offset 0 and at one system page size), each:
//! ```text
//! restart page header
//! 0x00 "RSTR" (or "CHKD" once chkdsk touched it); 0x04 u16 update sequence offset;
//! 0x06 u16 update sequence count; 0x08 u64 chkdsk LSN; 0x10 u32 system page size;
//! 0x14 u32 log page size; 0x18 u16 restart area offset; 0x1A i16 minor, 0x1C i16 major version
//! restart area (at the restart area offset)
//! 0x00 u64 current LSN; 0x08 u16 log clients; 0x0A u16 first free client;
//! 0x0C u16 first client in use (0xFFFF: none); 0x0E u16 flags (2: volume is clean);
//! 0x10 u32 sequence number bits; 0x14 u16 restart area length; 0x16 u16 client array offset;
//! 0x18 i64 file size; 0x20 u32 last LSN data length; 0x24 u16 log record header length;
//! 0x26 u16 log page data offset
//! log client record (0xA0 bytes each, from the client array offset)
//! 0x00 u64 oldest LSN; 0x08 u64 restart LSN; 0x10 u16 previous client; 0x12 u16 next client
//! ```
//! The log is clean when its most recent valid restart area has no client in use, or has the
//! clean flag. The consistency rules follow what ntfs-3g checks before it will write.

use super::NtfsError;
use super::fixup;
use crate::bytes::{get_le16, get_le32, get_le64};

/// `RSTR`: a restart page.
const MAGIC_RSTR: &[u8; 4] = b"RSTR";
/// `CHKD`: a restart page modified by chkdsk.
const MAGIC_CHKD: &[u8; 4] = b"CHKD";
/// `RCRD`: a log record page (the restart pages lie before the first one).
const MAGIC_RCRD: &[u8; 4] = b"RCRD";
/// No log client (end of a client list).
const NO_CLIENT: u16 = 0xFFFF;
/// Restart area flag: the volume was cleanly dismounted.
const RESTART_VOLUME_IS_CLEAN: u16 = 0x0002;
/// Size of a log client record.
const CLIENT_RECORD_LEN: usize = 0xA0;
/// Size of the fixed part of a restart area.
const RESTART_AREA_LEN: usize = 0x30;
/// The sector size the restart page header and restart area must fit in before fixups.
const BLOCK: usize = 512;
/// Offset of the update sequence number in a restart page header (the earliest the array may
/// start).
const RSTR_USN_OFFSET: usize = 0x1E;
/// Largest system page size accepted (Windows uses 4096; larger pages exist on other
/// architectures).
const MAX_PAGE: usize = 65536;
/// How far into the log the restart pages are searched.
const MAX_SEARCH: usize = 1 << 26;

/// A checked restart page: its current LSN and whether its restart area says clean.
struct Restart {
    lsn: u64,
    clean: bool,
}

/// Checks the restart page at `pos` in `data` (its first bytes are `RSTR` or `CHKD`).
fn check_restart_page(data: &[u8], pos: usize) -> Result<Restart, NtfsError> {
    let what = format!("$LogFile restart page at byte {pos:#x}");
    let bad = |d: String| NtfsError::invalid(what.as_str(), pos as u64, d);
    let head = &data[pos..];
    let is_chkd = head.get(..4) == Some(MAGIC_CHKD.as_slice());
    let sys_page = get_le32(head, 0x10).unwrap_or(0) as usize;
    let log_page = get_le32(head, 0x14).unwrap_or(0) as usize;
    if sys_page < BLOCK
        || log_page < BLOCK
        || !sys_page.is_power_of_two()
        || !log_page.is_power_of_two()
        || sys_page > MAX_PAGE
    {
        return Err(bad(format!(
            "system page size {sys_page} and log page size {log_page} must be powers of two from 512 to {MAX_PAGE}"
        )));
    }
    if pos != 0 && pos != sys_page {
        return Err(bad(format!(
            "the second restart page must be at the system page size {sys_page:#x}"
        )));
    }
    let (minor, major) = (
        get_le16(head, 0x1A).unwrap_or(0) as i16,
        get_le16(head, 0x1C).unwrap_or(0) as i16,
    );
    if !matches!((major, minor), (1, 1) | (2, 0)) {
        return Err(bad(format!(
            "log version {major}.{minor}, expected 1.1 or 2.0"
        )));
    }
    let usa_ofs = usize::from(get_le16(head, 4).unwrap_or(0));
    let usa_count = usize::from(get_le16(head, 6).unwrap_or(0));
    let have_usa = !(is_chkd && usa_count == 0);
    let mut usa_end = RSTR_USN_OFFSET;
    if have_usa {
        let want = 1 + sys_page / BLOCK;
        if usa_count != want {
            return Err(bad(format!(
                "update sequence array has {usa_count} entries, expected {want} for a {sys_page}-byte page"
            )));
        }
        usa_end = usa_ofs + 2 * usa_count;
        if usa_ofs < RSTR_USN_OFFSET || usa_end > BLOCK - 2 {
            return Err(bad(format!(
                "update sequence array at {usa_ofs:#x} ({usa_count} entries) is outside the header's sector"
            )));
        }
    }
    let ra_ofs = usize::from(get_le16(head, 0x18).unwrap_or(0));
    if ra_ofs % 8 != 0 || ra_ofs < usa_end || ra_ofs + RESTART_AREA_LEN > sys_page {
        return Err(bad(format!(
            "restart area offset {ra_ofs:#x} must be 8-aligned, after the update sequence array ({usa_end:#x}) and leave room in the page"
        )));
    }
    if !is_chkd && get_le64(head, 8).unwrap_or(0) != 0 {
        return Err(bad(format!(
            "an RSTR page (not touched by chkdsk) has chkdsk LSN {:#x}",
            get_le64(head, 8).unwrap_or(0)
        )));
    }
    // The restart area fields up to the file size must lie in the first sector (before the
    // first fixup position), so they are readable before fixups are removed.
    if ra_ofs + 0x18 > BLOCK - 2 {
        return Err(bad(format!(
            "restart area at {ra_ofs:#x} does not fit the page's first sector"
        )));
    }
    let page_end = pos.checked_add(sys_page).filter(|&e| e <= data.len());
    let Some(page_end) = page_end else {
        return Err(bad(format!(
            "the {sys_page}-byte page runs past the end of the {}-byte log",
            data.len()
        )));
    };
    let mut page = data[pos..page_end].to_vec();
    if have_usa {
        fixup::remove(&mut page, &what, pos as u64)?;
    }
    let ra = &page[ra_ofs..];
    let clients = usize::from(get_le16(ra, 0x08).unwrap_or(0));
    let free_list = get_le16(ra, 0x0A).unwrap_or(0);
    let in_use = get_le16(ra, 0x0C).unwrap_or(0);
    let flags = get_le16(ra, 0x0E).unwrap_or(0);
    let seq_bits = get_le32(ra, 0x10).unwrap_or(0);
    let ra_len = usize::from(get_le16(ra, 0x14).unwrap_or(0));
    let ca_ofs = usize::from(get_le16(ra, 0x16).unwrap_or(0));
    let file_size = get_le64(ra, 0x18).unwrap_or(0);
    let rec_hdr_len = get_le16(ra, 0x24).unwrap_or(0);
    let data_ofs = get_le16(ra, 0x26).unwrap_or(0);
    let abad = |d: String| {
        NtfsError::invalid(
            what.as_str(),
            (pos + ra_ofs) as u64,
            format!("restart area: {d}"),
        )
    };
    if ca_ofs % 8 != 0 || ra_ofs + ca_ofs > BLOCK - 2 {
        return Err(abad(format!(
            "client array offset {ca_ofs:#x} must be 8-aligned and start in the first sector"
        )));
    }
    let needed = ca_ofs + clients * CLIENT_RECORD_LEN;
    if ra_ofs + needed > sys_page || ra_ofs + ra_len > sys_page || needed > ra_len {
        return Err(abad(format!(
            "{clients} client records from {ca_ofs:#x} need {needed:#x} bytes; the area is {ra_len:#x} bytes in a {sys_page}-byte page"
        )));
    }
    for (name, idx) in [("free", free_list), ("in-use", in_use)] {
        if idx != NO_CLIENT && usize::from(idx) >= clients {
            return Err(abad(format!(
                "first {name} client {idx} is past the {clients} client records"
            )));
        }
    }
    let fs_bits = 64 - file_size.leading_zeros();
    if seq_bits != 67 - fs_bits {
        return Err(abad(format!(
            "sequence number bits {seq_bits}, expected {} for a {file_size}-byte log",
            67 - fs_bits
        )));
    }
    if rec_hdr_len % 8 != 0 || data_ofs % 8 != 0 {
        return Err(abad(format!(
            "log record header length {rec_hdr_len:#x} and page data offset {data_ofs:#x} must be multiples of 8"
        )));
    }
    // The free and in-use client lists: every index within the array, the first with no
    // previous client, no more steps than there are clients (so a cycle is an error).
    if !is_chkd && in_use != NO_CLIENT {
        check_client_lists(&page, ra_ofs + ca_ofs, clients, [free_list, in_use]).map_err(abad)?;
    }
    let clean = in_use == NO_CLIENT || flags & RESTART_VOLUME_IS_CLEAN != 0;
    let lsn = if is_chkd {
        get_le64(&page, 8).unwrap_or(0)
    } else {
        get_le64(ra, 0).unwrap_or(0)
    };
    Ok(Restart { lsn, clean })
}

/// Walks the free and in-use client lists of a restart area whose client array starts at `ca`
/// in `page`: every index within the array, the first with no previous client, no more steps
/// than there are clients (so a cycle is an error). The error says which list went wrong.
fn check_client_lists(
    page: &[u8],
    ca: usize,
    clients: usize,
    [free_list, in_use]: [u16; 2],
) -> Result<(), String> {
    for (name, first) in [("free", free_list), ("in-use", in_use)] {
        let mut idx = first;
        let mut steps = 0usize;
        while idx != NO_CLIENT {
            let i = usize::from(idx);
            if i >= clients || steps >= clients {
                return Err(format!(
                    "{name} client list reaches client {idx} after {steps} steps ({clients} clients)"
                ));
            }
            let rec = ca + i * CLIENT_RECORD_LEN;
            if steps == 0 && get_le16(page, rec + 0x10).unwrap_or(0) != NO_CLIENT {
                return Err(format!("first {name} client {idx} has a previous client"));
            }
            idx = get_le16(page, rec + 0x12).unwrap_or(0);
            steps += 1;
        }
    }
    Ok(())
}

/// Whether `$LogFile`'s content (its whole unnamed `$DATA`) holds no transactions that would
/// have to be replayed: all 0xFF (emptied, as mkntfs and ntfs-3g leave it), or a valid restart
/// page (`RSTR`, fixups checked) whose current restart area says the volume is clean (the
/// clean flag set, or no client in use). A damaged restart page is an error naming it.
pub fn log_is_clean(data: &[u8]) -> Result<bool, NtfsError> {
    if data.len() < 2 * BLOCK {
        return Err(NtfsError::invalid(
            "$LogFile",
            0,
            format!("{} bytes is too small for a log", data.len()),
        ));
    }
    let limit = data.len().min(MAX_SEARCH);
    let mut empty = true;
    let mut found: Vec<Restart> = Vec::new();
    let mut damaged: Option<NtfsError> = None;
    // Restart pages sit at 0 and at the system page size; look at 0, 512, 1024, 2048, ... as
    // ntfs-3g does, stopping at the first log record page or the second restart page.
    let mut pos = 0usize;
    while pos + BLOCK <= limit {
        let magic = &data[pos..pos + 4];
        if magic != [0xFF; 4] {
            empty = false;
        } else if !empty {
            break;
        }
        if magic == MAGIC_RCRD {
            break;
        }
        if magic == MAGIC_RSTR || magic == MAGIC_CHKD {
            match check_restart_page(data, pos) {
                Ok(r) => {
                    found.push(r);
                    if pos != 0 {
                        break;
                    }
                }
                Err(e) => {
                    damaged.get_or_insert(e);
                }
            }
        }
        pos = if pos == 0 { BLOCK } else { pos * 2 };
    }
    if empty {
        return Ok(true);
    }
    // The most recent restart area counts.
    if let Some(r) = found.iter().max_by_key(|r| r.lsn) {
        return Ok(r.clean);
    }
    Err(damaged.unwrap_or_else(|| {
        NtfsError::corrupt(
            "$LogFile",
            0,
            "the log is not empty (not all 0xFF) but has no restart page (RSTR) at 0 or at the page size",
        )
    }))
}

/// Whether the first bytes of `hiberfil.sys` mark a hibernation / Fast Startup image (`hibr`,
/// `HIBR`, `wake`, `WAKE`, `RSTR` per ntfs-3g's rules; a zeroed header is not).
///
/// ntfs-3g refuses `hibr`/`HIBR` (hibernated, including a Fast Startup shutdown); we also
/// refuse `wake` (an image being resumed) and `RSTR` (a resume interrupted while restoring),
/// the other signatures Windows writes into a live hibernation file, and any case variant.
pub fn hiberfil_in_use(header: &[u8]) -> bool {
    let Some(sig) = header.get(..4) else {
        return false;
    };
    let sig = sig.to_ascii_lowercase();
    matches!(&sig[..], b"hibr" | b"wake" | b"rstr")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `size` bytes (0xFF) with two restart pages (4096-byte pages, version 1.1) whose
    /// restart areas have `in_use` and `flags`, LSNs `lsn1` and `lsn2`. The layout (client
    /// array at 0x40 after a 0x30-byte area, area length 0xE0) is the one of a $LogFile
    /// Windows 10 wrote, which we checked this function reads as clean.
    fn log(size: usize, in_use: u16, flags: u16, lsn1: u64, lsn2: u64) -> Vec<u8> {
        let mut d = vec![0xFFu8; size];
        for (pos, lsn) in [(0usize, lsn1), (4096, lsn2)] {
            let p = &mut d[pos..pos + 4096];
            p.fill(0);
            p[0..4].copy_from_slice(b"RSTR");
            p[4..6].copy_from_slice(&0x1Eu16.to_le_bytes()); // update sequence offset
            p[6..8].copy_from_slice(&9u16.to_le_bytes()); // 1 + 4096 / 512
            // 0x08: chkdsk LSN 0
            p[0x10..0x14].copy_from_slice(&4096u32.to_le_bytes()); // system page size
            p[0x14..0x18].copy_from_slice(&4096u32.to_le_bytes()); // log page size
            p[0x18..0x1A].copy_from_slice(&0x30u16.to_le_bytes()); // restart area offset
            p[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes()); // minor version
            p[0x1C..0x1E].copy_from_slice(&1u16.to_le_bytes()); // major version
            let ra = 0x30;
            p[ra..ra + 8].copy_from_slice(&lsn.to_le_bytes()); // current LSN
            p[ra + 8..ra + 10].copy_from_slice(&1u16.to_le_bytes()); // one client
            p[ra + 0x0A..ra + 0x0C].copy_from_slice(&NO_CLIENT.to_le_bytes()); // free list
            p[ra + 0x0C..ra + 0x0E].copy_from_slice(&in_use.to_le_bytes()); // in-use list
            p[ra + 0x0E..ra + 0x10].copy_from_slice(&flags.to_le_bytes());
            let bits = 67 - (64 - (size as u64).leading_zeros());
            p[ra + 0x10..ra + 0x14].copy_from_slice(&bits.to_le_bytes()); // seq number bits
            p[ra + 0x14..ra + 0x16].copy_from_slice(&0xE0u16.to_le_bytes()); // area length
            p[ra + 0x16..ra + 0x18].copy_from_slice(&0x40u16.to_le_bytes()); // client array
            p[ra + 0x18..ra + 0x20].copy_from_slice(&(size as u64).to_le_bytes()); // file size
            p[ra + 0x24..ra + 0x26].copy_from_slice(&0x30u16.to_le_bytes()); // record header
            p[ra + 0x26..ra + 0x28].copy_from_slice(&0x40u16.to_le_bytes()); // page data
            let c = ra + 0x40; // client record 0: "NTFS", no neighbours
            p[c + 0x10..c + 0x12].copy_from_slice(&NO_CLIENT.to_le_bytes());
            p[c + 0x12..c + 0x14].copy_from_slice(&NO_CLIENT.to_le_bytes());
            p[c + 0x1C..c + 0x20].copy_from_slice(&8u32.to_le_bytes());
            for (i, ch) in "NTFS".encode_utf16().enumerate() {
                p[c + 0x20 + 2 * i..c + 0x22 + 2 * i].copy_from_slice(&ch.to_le_bytes());
            }
            p[4094] = 0x5A; // page data under the last fixup position
            fixup::apply(p, "test restart page", 0).unwrap();
        }
        // A log record page after them.
        d[8192..8196].copy_from_slice(b"RCRD");
        d
    }

    const SIZE: usize = 256 * 1024;

    #[test]
    fn empty_log_is_clean() {
        assert!(log_is_clean(&vec![0xFF; SIZE]).unwrap());
    }

    #[test]
    fn clean_flag_or_no_client_in_use_is_clean() {
        // Windows XP and later: client 0 in use, clean flag set on dismount.
        assert!(log_is_clean(&log(SIZE, 0, RESTART_VOLUME_IS_CLEAN, 10, 20)).unwrap());
        // Windows 2000: no client in use.
        assert!(log_is_clean(&log(SIZE, NO_CLIENT, 0, 10, 20)).unwrap());
        // In use without the clean flag: transactions pending.
        assert!(!log_is_clean(&log(SIZE, 0, 0, 10, 20)).unwrap());
    }

    #[test]
    fn the_more_recent_restart_page_decides() {
        let mut d = log(SIZE, 0, 0, 30, 20);
        // Page 2 (older) says clean, page 1 (newer) says dirty: dirty.
        let mut p2 = d[4096..8192].to_vec();
        fixup::remove(&mut p2, "t", 0).unwrap();
        p2[0x30 + 0x0E] = RESTART_VOLUME_IS_CLEAN as u8;
        fixup::apply(&mut p2, "t", 0).unwrap();
        d[4096..8192].copy_from_slice(&p2);
        assert!(!log_is_clean(&d).unwrap());
        // Make page 2 the newer one: clean.
        fixup::remove(&mut p2, "t", 0).unwrap();
        p2[0x30..0x38].copy_from_slice(&40u64.to_le_bytes());
        fixup::apply(&mut p2, "t", 0).unwrap();
        d[4096..8192].copy_from_slice(&p2);
        assert!(log_is_clean(&d).unwrap());
    }

    #[test]
    fn one_damaged_restart_page_is_tolerated_two_are_an_error() {
        let mut d = log(SIZE, 0, RESTART_VOLUME_IS_CLEAN, 10, 20);
        d[4096 + 1022] ^= 0xFF; // torn write in page 2's second stride
        assert!(log_is_clean(&d).unwrap());
        d[1022] ^= 0xFF; // and in page 1
        let e = log_is_clean(&d).unwrap_err().to_string();
        assert!(
            e.contains("restart page at byte 0x0") && e.contains("stride 1"),
            "{e}"
        );
    }

    #[test]
    fn inconsistent_restart_areas_are_errors() {
        type Edit = fn(&mut [u8]);
        let cases: &[(Edit, &str)] = &[
            (
                |p| p[0x10..0x14].copy_from_slice(&3000u32.to_le_bytes()),
                "powers of two",
            ),
            (|p| p[0x1C] = 5, "version 5.1"),
            (|p| p[6] = 3, "3 entries, expected 9"),
            (|p| p[0x18] = 0x08, "restart area offset 0x8"),
            (|p| p[8] = 1, "chkdsk LSN"),
            (|p| p[0x30 + 0x16] = 0x41, "client array offset 0x41"),
            (|p| p[0x30 + 8] = 40, "40 client records"),
            (|p| p[0x30 + 0x0C] = 3, "in-use client 3"),
            (|p| p[0x30 + 0x10] = 1, "sequence number bits 1"),
            (|p| p[0x30 + 0x24] = 0x31, "multiples of 8"),
            (|p| p[0x30 + 0x40 + 0x10] = 0, "has a previous client"),
        ];
        for (edit, want) in cases {
            let mut d = log(SIZE, 0, RESTART_VOLUME_IS_CLEAN, 10, 20);
            for pos in [0, 4096] {
                let mut p = d[pos..pos + 4096].to_vec();
                fixup::remove(&mut p, "t", 0).unwrap();
                edit(&mut p);
                if p[6..8] == [9, 0] {
                    fixup::apply(&mut p, "t", 0).unwrap();
                }
                d[pos..pos + 4096].copy_from_slice(&p);
            }
            let e = log_is_clean(&d).unwrap_err().to_string();
            assert!(e.contains(want), "want {want:?}: {e}");
        }
    }

    #[test]
    fn chkd_page_without_fixups_is_read() {
        let mut d = log(SIZE, 0, 0, 10, 20);
        for pos in [0usize, 4096] {
            let mut p = d[pos..pos + 4096].to_vec();
            fixup::remove(&mut p, "t", 0).unwrap();
            p[0..4].copy_from_slice(b"CHKD");
            p[6..8].copy_from_slice(&0u16.to_le_bytes()); // no update sequence array
            p[8..16].copy_from_slice(&7u64.to_le_bytes()); // chkdsk LSN
            d[pos..pos + 4096].copy_from_slice(&p);
        }
        assert!(!log_is_clean(&d).unwrap());
    }

    #[test]
    fn garbage_without_restart_pages_is_an_error() {
        let mut d = vec![0xFFu8; SIZE];
        d[0..4].copy_from_slice(b"RCRD");
        let e = log_is_clean(&d).unwrap_err().to_string();
        assert!(e.contains("no restart page"), "{e}");
        assert!(log_is_clean(&[0xFF; 100]).is_err());
        let mut d = vec![0u8; SIZE];
        assert!(log_is_clean(&d).is_err());
        d[0..4].copy_from_slice(b"RSTR");
        assert!(log_is_clean(&d).is_err());
    }

    #[test]
    fn fuzzed_logs_never_panic() {
        let base = log(16384, 0, RESTART_VOLUME_IS_CLEAN, 10, 20);
        let mut seed = 0x5DEE_CE66u64;
        for _ in 0..5000 {
            let mut d = base.clone();
            for _ in 0..4 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let i = (seed >> 33) as usize % 8192;
                d[i] = (seed >> 20) as u8;
            }
            let _ = log_is_clean(&d);
        }
    }

    #[test]
    fn hiberfil_signatures() {
        for sig in [&b"hibr"[..], b"HIBR", b"wake", b"WAKE", b"RSTR", b"Hibr"] {
            let mut h = vec![0u8; 4096];
            h[..4].copy_from_slice(sig);
            assert!(hiberfil_in_use(&h), "{sig:?}");
        }
        assert!(!hiberfil_in_use(&[0u8; 4096]));
        assert!(!hiberfil_in_use(b"link"));
        assert!(!hiberfil_in_use(b"hib"));
        assert!(!hiberfil_in_use(&[]));
    }
}
