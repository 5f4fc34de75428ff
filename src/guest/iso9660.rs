//! A reader for ISO 9660 images (the virtio-win driver ISO): primary and Joliet supplementary
//! volume descriptors, folders, files; Joliet (UCS-2) names preferred, `;1` versions stripped.
//!
//! Everything read from the image is checked before use: descriptors are looked for in a
//! bounded range of sectors, directory records must fit their sector and their extents the
//! file, folders and paths have size and depth limits, and multi-extent files are assembled
//! only from consecutive records of one name.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::bytes::{get_le16, get_le32};
use crate::error::{Error, Result};

/// ISO 9660 logical block size (the only one accepted).
const BLOCK: u64 = 2048;
/// Volume descriptors looked at, from sector 16, before giving up on a terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// Largest folder read (bytes of directory records).
const MAX_DIR_BYTES: u64 = 16 << 20;
/// Most path components followed.
const MAX_DEPTH: usize = 64;
/// Most extents of one multi-extent file.
const MAX_EXTENTS: usize = 1024;

/// One entry of an ISO folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// Name (Joliet when present, else ISO 9660 without `;1`).
    pub name: String,
    /// Whether it is a folder.
    pub is_dir: bool,
    /// Size in bytes (files).
    pub size: u64,
    /// First logical block (2048 bytes).
    pub extent: u32,
}

/// A directory record with every extent of its file.
#[derive(Debug, Clone)]
struct Rec {
    entry: IsoEntry,
    /// (first block, length in bytes) of each extent, in order.
    extents: Vec<(u32, u64)>,
}

/// An open ISO image.
pub struct Iso9660 {
    file: std::fs::File,
    path: PathBuf,
    file_len: u64,
    joliet: bool,
    root: Rec,
}

impl std::fmt::Debug for Iso9660 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iso9660")
            .field("path", &self.path)
            .field("joliet", &self.joliet)
            .finish()
    }
}

fn bad(msg: String) -> Error {
    Error::InvalidFormat(msg)
}

/// Whether a supplementary descriptor's escape sequences (offset 88) announce Joliet UCS-2.
fn is_joliet(vd: &[u8]) -> bool {
    let esc = vd.get(88..120).unwrap_or(&[]);
    esc.windows(3)
        .any(|w| w == b"%/@" || w == b"%/C" || w == b"%/E")
}

/// Decodes a file identifier: UCS-2 big-endian for Joliet, else ASCII; `;N` stripped, and a
/// trailing `.` of an ISO 9660 name without extension.
fn decode_name(raw: &[u8], joliet: bool) -> String {
    let mut name = if joliet {
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        raw.iter()
            .map(|&b| if b.is_ascii() { b as char } else { '\u{FFFD}' })
            .collect()
    };
    if let Some(i) = name
        .rfind(';')
        .filter(|&i| name[i + 1..].chars().all(|c| c.is_ascii_digit()))
    {
        name.truncate(i);
    }
    if !joliet && name.ends_with('.') {
        name.pop();
    }
    name
}

impl Iso9660 {
    /// Opens and checks the volume descriptors (`CD001`), preferring a Joliet tree.
    pub fn open(path: &Path) -> Result<Iso9660> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io("opening the ISO image", e).in_file(path))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("reading the ISO image's size", e).in_file(path))?
            .len();
        let mut iso = Iso9660 {
            file,
            path: path.to_path_buf(),
            file_len,
            joliet: false,
            root: Rec {
                entry: IsoEntry {
                    name: String::new(),
                    is_dir: true,
                    size: 0,
                    extent: 0,
                },
                extents: Vec::new(),
            },
        };
        let mut primary = None;
        let mut joliet = None;
        let mut terminated = false;
        for i in 0..MAX_DESCRIPTORS {
            let sector = 16 + i;
            let mut vd = vec![0u8; BLOCK as usize];
            if (sector + 1) * BLOCK > file_len {
                break;
            }
            iso.read_exact(&mut vd, sector * BLOCK, "a volume descriptor")?;
            if vd.get(1..6) != Some(&b"CD001"[..]) {
                return Err(bad(format!(
                    "sector {sector} (byte {:#x}) is not an ISO 9660 volume descriptor (no \
                     'CD001' at byte 1)",
                    sector * BLOCK
                ))
                .in_file(path));
            }
            match vd.first().copied() {
                Some(1) if primary.is_none() => primary = Some((sector, vd)),
                Some(2) if joliet.is_none() && is_joliet(&vd) => joliet = Some((sector, vd)),
                Some(255) => {
                    terminated = true;
                    break;
                }
                _ => {}
            }
        }
        if primary.is_none() && !terminated {
            return Err(bad(
                "no ISO 9660 volume descriptor set (sector 16 and on: 'CD001' descriptors up to \
                 a terminator)"
                    .into(),
            )
            .in_file(path));
        }
        let (use_joliet, (sector, vd)) = match (joliet, primary) {
            (Some(j), _) => (true, j),
            (None, Some(p)) => (false, p),
            (None, None) => {
                return Err(bad("the ISO has no primary volume descriptor".into()).in_file(path));
            }
        };
        let bs = get_le16(&vd, 128).unwrap_or(0) as u64;
        if bs != BLOCK {
            return Err(Error::Unsupported(format!(
                "the volume descriptor at sector {sector} gives a logical block size of {bs} \
                 (only {BLOCK} is supported)"
            ))
            .in_file(path));
        }
        iso.joliet = use_joliet;
        let root_raw = vd.get(156..190).unwrap_or(&[]);
        let root = iso
            .parse_record(
                root_raw,
                &format!("the root directory record (sector {sector})"),
                true,
            )?
            .ok_or_else(|| {
                bad(format!(
                    "the root directory record in the descriptor at sector {sector} is empty"
                ))
                .in_file(path)
            })?;
        if !root.entry.is_dir {
            return Err(bad(format!(
                "the root directory record in the descriptor at sector {sector} is not a folder"
            ))
            .in_file(path));
        }
        iso.root = root;
        Ok(iso)
    }

    /// Whether names come from a Joliet tree.
    pub fn is_joliet(&self) -> bool {
        self.joliet
    }

    fn read_exact(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.file_len => {}
            _ => {
                return Err(Error::Corrupt(format!(
                    "{what}: {} bytes at byte {offset:#x} reach past the end of the ISO ({} bytes)",
                    buf.len(),
                    self.file_len
                ))
                .in_file(&self.path));
            }
        }
        self.file.read_exact_at(buf, offset).map_err(|e| {
            Error::io(format!("reading {what} at byte {offset:#x}"), e).in_file(&self.path)
        })
    }

    /// Parses one directory record (`raw` = exactly its bytes). `None` for the `.`/`..` entries.
    fn parse_record(&self, raw: &[u8], where_: &str, is_root: bool) -> Result<Option<Rec>> {
        let corrupt = |m: String| Error::Corrupt(format!("{where_}: {m}")).in_file(&self.path);
        if raw.len() < 34 {
            return Err(corrupt(format!("{} bytes, shorter than 34", raw.len())));
        }
        let extent = get_le32(raw, 2).unwrap_or(0);
        let size = get_le32(raw, 10).unwrap_or(0) as u64;
        let flags = raw.get(25).copied().unwrap_or(0);
        let unit = raw.get(26).copied().unwrap_or(0);
        let gap = raw.get(27).copied().unwrap_or(0);
        let name_len = raw.get(32).copied().unwrap_or(0) as usize;
        let raw_name = raw
            .get(33..33 + name_len)
            .ok_or_else(|| corrupt(format!("a name of {name_len} bytes does not fit")))?;
        if !is_root && name_len == 1 && matches!(raw_name.first(), Some(0) | Some(1)) {
            return Ok(None);
        }
        if unit != 0 || gap != 0 {
            return Err(Error::Unsupported(format!(
                "{where_}: interleaved file (unit {unit}, gap {gap})"
            ))
            .in_file(&self.path));
        }
        let end = (extent as u64)
            .checked_mul(BLOCK)
            .and_then(|o| o.checked_add(size));
        if end.is_none_or(|e| e > self.file_len) {
            return Err(corrupt(format!(
                "its extent (block {extent}, {size} bytes) reaches past the end of the ISO ({} \
                 bytes)",
                self.file_len
            )));
        }
        let is_dir = flags & 2 != 0;
        Ok(Some(Rec {
            entry: IsoEntry {
                name: decode_name(raw_name, self.joliet),
                is_dir,
                size,
                extent,
            },
            extents: vec![(extent, size)],
        }))
    }

    /// The records of a folder, multi-extent files joined.
    fn records(&self, dir: &Rec, dir_path: &str) -> Result<Vec<Rec>> {
        let size = dir.entry.size;
        if size > MAX_DIR_BYTES {
            return Err(Error::Unsupported(format!(
                "folder '/{dir_path}' holds {size} bytes of records, more than {MAX_DIR_BYTES}"
            ))
            .in_file(&self.path));
        }
        let mut data = vec![0u8; size as usize];
        self.read_exact(
            &mut data,
            dir.entry.extent as u64 * BLOCK,
            &format!("folder '/{dir_path}'"),
        )?;
        let mut out: Vec<Rec> = Vec::new();
        let mut continuing = false;
        let mut pos = 0usize;
        while pos < data.len() {
            let len = data.get(pos).copied().unwrap_or(0) as usize;
            if len == 0 {
                // Records never cross a sector: the rest of this sector is padding.
                pos = (pos / BLOCK as usize + 1) * BLOCK as usize;
                continue;
            }
            let sector_end = (pos / BLOCK as usize + 1) * BLOCK as usize;
            let where_ = format!(
                "folder '/{dir_path}', record at byte {pos} (ISO byte {:#x})",
                dir.entry.extent as u64 * BLOCK + pos as u64
            );
            if pos + len > sector_end.min(data.len()) {
                return Err(Error::Corrupt(format!(
                    "{where_}: its {len} bytes cross the end of its sector"
                ))
                .in_file(&self.path));
            }
            let raw = &data[pos..pos + len];
            let flags = raw.get(25).copied().unwrap_or(0);
            if let Some(rec) = self.parse_record(raw, &where_, false)? {
                let joins = continuing
                    && out
                        .last()
                        .is_some_and(|l| l.entry.name == rec.entry.name && !rec.entry.is_dir);
                if joins {
                    if let Some(last) = out.last_mut() {
                        if last.extents.len() >= MAX_EXTENTS {
                            return Err(Error::Unsupported(format!(
                                "{where_}: file '{}' has more than {MAX_EXTENTS} extents",
                                rec.entry.name
                            ))
                            .in_file(&self.path));
                        }
                        last.extents.push((rec.entry.extent, rec.entry.size));
                        last.entry.size = last.entry.size.saturating_add(rec.entry.size);
                    }
                } else if continuing {
                    return Err(Error::Corrupt(format!(
                        "{where_}: a multi-extent file is followed by '{}' instead of its next \
                         extent",
                        rec.entry.name
                    ))
                    .in_file(&self.path));
                } else {
                    out.push(rec);
                }
                continuing = flags & 0x80 != 0;
            }
            pos += len;
        }
        if continuing {
            return Err(Error::Corrupt(format!(
                "folder '/{dir_path}': its last multi-extent file has no final extent"
            ))
            .in_file(&self.path));
        }
        Ok(out)
    }

    /// The record at `path` (`/`-separated, case-insensitive).
    fn lookup(&self, path: &str) -> Result<Rec> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() > MAX_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "'{path}' has more than {MAX_DEPTH} components"
            )));
        }
        let mut cur = self.root.clone();
        let mut walked = String::new();
        for part in parts {
            if !cur.entry.is_dir {
                return Err(Error::InvalidArgument(format!(
                    "'/{walked}' in the ISO is a file, not a folder"
                ))
                .in_file(&self.path));
            }
            let want = part.to_lowercase();
            let next = self
                .records(&cur, &walked)?
                .into_iter()
                .find(|r| r.entry.name.to_lowercase() == want);
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            cur = next.ok_or_else(|| {
                Error::InvalidArgument(format!("'/{walked}' is not in the ISO")).in_file(&self.path)
            })?;
        }
        Ok(cur)
    }

    /// The entries of the folder at `path` (`/`-separated, case-insensitive; "" for the root).
    pub fn read_dir(&self, path: &str) -> Result<Vec<IsoEntry>> {
        let dir = self.lookup(path)?;
        if !dir.entry.is_dir {
            return Err(Error::InvalidArgument(format!(
                "'{path}' in the ISO is a file, not a folder"
            ))
            .in_file(&self.path));
        }
        Ok(self
            .records(&dir, path.trim_matches('/'))?
            .into_iter()
            .map(|r| r.entry)
            .collect())
    }

    /// The content of the file at `path`; files over `max_len` are refused.
    pub fn read_file(&self, path: &str, max_len: u64) -> Result<Vec<u8>> {
        let rec = self.lookup(path)?;
        if rec.entry.is_dir {
            return Err(Error::InvalidArgument(format!(
                "'{path}' in the ISO is a folder, not a file"
            ))
            .in_file(&self.path));
        }
        if rec.entry.size > max_len {
            return Err(Error::InvalidArgument(format!(
                "'{path}' in the ISO is {} bytes, more than the {max_len} allowed",
                rec.entry.size
            ))
            .in_file(&self.path));
        }
        let mut out = Vec::with_capacity(rec.entry.size as usize);
        for (block, len) in rec.extents {
            let at = out.len();
            out.resize(at + len as usize, 0);
            self.read_exact(
                &mut out[at..],
                block as u64 * BLOCK,
                &format!("file '{path}'"),
            )?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_versions_and_bare_dots() {
        assert_eq!(decode_name(b"README.TXT;1", false), "README.TXT");
        assert_eq!(decode_name(b"NOEXT.;1", false), "NOEXT");
        let j: Vec<u8> = "Mixed Case.inf;1"
            .encode_utf16()
            .flat_map(|u| u.to_be_bytes())
            .collect();
        assert_eq!(decode_name(&j, true), "Mixed Case.inf");
        // A ';' not followed by a version stays.
        assert_eq!(decode_name(b"A;B", false), "A;B");
    }

    /// A directory record.
    fn rec(name: &[u8], extent: u32, size: u32, flags: u8) -> Vec<u8> {
        let mut r = vec![0u8; 33 + name.len() + (1 - name.len() % 2)];
        r[0] = r.len() as u8;
        r[2..6].copy_from_slice(&extent.to_le_bytes());
        r[6..10].copy_from_slice(&extent.to_be_bytes());
        r[10..14].copy_from_slice(&size.to_le_bytes());
        r[14..18].copy_from_slice(&size.to_be_bytes());
        r[25] = flags;
        r[28] = 1;
        r[32] = name.len() as u8;
        r[33..33 + name.len()].copy_from_slice(name);
        r
    }

    /// A minimal ISO: primary descriptor (16), terminator (17), root folder (18) holding
    /// `records`, data blocks from 20.
    fn tiny_iso(records: &[Vec<u8>], blocks: usize) -> Vec<u8> {
        let mut img = vec![0u8; (20 + blocks) * 2048];
        let pvd = &mut img[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        let root = rec(&[0], 18, 2048, 2);
        pvd[156..156 + root.len()].copy_from_slice(&root);
        let t = &mut img[17 * 2048..18 * 2048];
        t[0] = 255;
        t[1..6].copy_from_slice(b"CD001");
        let mut at = 18 * 2048;
        for r in [rec(&[0], 18, 2048, 2), rec(&[1], 18, 2048, 2)]
            .iter()
            .chain(records)
        {
            img[at..at + r.len()].copy_from_slice(r);
            at += r.len();
        }
        img
    }

    fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Iso9660>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("t.iso");
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
        let iso = Iso9660::open(&p);
        (dir, iso)
    }

    #[test]
    fn multi_extent_files_are_joined() {
        let mut img = tiny_iso(
            &[
                rec(b"BIG.BIN;1", 20, 2048, 0x80),
                rec(b"BIG.BIN;1", 22, 100, 0),
                rec(b"SMALL;1", 21, 5, 0),
            ],
            3,
        );
        img[20 * 2048..21 * 2048].fill(0xAA);
        img[21 * 2048..21 * 2048 + 5].copy_from_slice(b"small");
        img[22 * 2048..22 * 2048 + 100].fill(0xBB);
        let (_d, iso) = open_bytes(&img);
        let iso = iso.unwrap_or_else(|e| panic!("{e}"));
        let entries = iso.read_dir("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "BIG.BIN");
        assert_eq!(entries[0].size, 2148);
        let big = iso
            .read_file("big.bin", 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(big.len(), 2148);
        assert!(big[..2048].iter().all(|&b| b == 0xAA));
        assert!(big[2048..].iter().all(|&b| b == 0xBB));
        assert_eq!(iso.read_file("small", 10).unwrap_or_default(), b"small");

        // A multi-extent file whose next record has another name; one with no final extent;
        // an extent past the end; a record crossing its sector.
        let bad = [
            vec![rec(b"A;1", 20, 10, 0x80), rec(b"B;1", 21, 10, 0)],
            vec![rec(b"A;1", 20, 10, 0x80)],
            vec![rec(b"A;1", 9999, 10, 0)],
        ];
        for records in bad {
            let (_d, iso) = open_bytes(&tiny_iso(&records, 3));
            let iso = iso.unwrap_or_else(|e| panic!("{e}"));
            assert!(iso.read_dir("").is_err(), "{records:?}");
        }
        let mut img = tiny_iso(&[], 3);
        img[18 * 2048 + 68] = 34; // a record after "." and ".."...
        img[18 * 2048 + 68 + 32] = 250; // ...whose name runs past its end
        let (_d, iso) = open_bytes(&img);
        let e = iso
            .and_then(|iso| iso.read_dir(""))
            .map(|_| ())
            .unwrap_err();
        assert!(format!("{e:?}").contains("does not fit"), "{e:?}");
        // 58 records of 34 bytes after "." and ".." end at byte 2040; the next crosses.
        let mut img = tiny_iso(&vec![rec(b"X", 20, 0, 0); 58], 3);
        img[18 * 2048 + 2040] = 34;
        let (_d, iso) = open_bytes(&img);
        let e = iso
            .and_then(|iso| iso.read_dir(""))
            .map(|_| ())
            .unwrap_err();
        assert!(format!("{e:?}").contains("cross"), "{e:?}");
    }

    #[test]
    fn not_an_iso_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("x.iso");
        std::fs::write(&p, vec![0u8; 40 * 2048]).unwrap_or_else(|e| panic!("{e}"));
        let e = Iso9660::open(&p).unwrap_err().to_string();
        let chain = format!("{e} {:?}", Iso9660::open(&p).unwrap_err());
        assert!(chain.contains("CD001"), "{chain}");
        std::fs::write(&p, b"short").unwrap_or_else(|e| panic!("{e}"));
        assert!(Iso9660::open(&p).is_err());
    }
}
