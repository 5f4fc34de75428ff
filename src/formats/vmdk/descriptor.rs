//! The VMDK text descriptor (VMDK spec 5.0, "The Descriptor File"), stand-alone or embedded in
//! a hosted sparse extent.
//!
//! Real tools write it with `#` comments, blank lines, CRLF line ends, `key = "value"` and
//! `key=value`, quoted extent names with spaces, and (VMware on ESXi) an offset after VMFS extent
//! names. Errors name the line number.

use super::VmdkError;

/// The comment a text descriptor starts with (optional: [`crate::detect`] also recognises a
/// descriptor without it).
pub const DESCRIPTOR_START: &[u8] = b"# Disk DescriptorFile";

/// Largest descriptor accepted, in bytes (real ones are well under 4 KiB).
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;
/// Largest number of extent lines accepted (a 62 TB twoGbMaxExtent disk has about 31000).
pub const MAX_EXTENTS: usize = 65536;
/// Largest virtual disk accepted, in 512-byte sectors (64 TiB; VMware's limit is 62 TB).
pub const MAX_SECTORS: u64 = 1 << 37;

/// `parentCID` value meaning "no parent".
pub const CID_NO_PARENT: u32 = 0xffff_ffff;

/// Access mode of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmdkAccess {
    /// `RW`.
    ReadWrite,
    /// `RDONLY`.
    ReadOnly,
    /// `NOACCESS`.
    NoAccess,
}

/// Type of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmdkExtentType {
    /// `SPARSE`: a hosted sparse extent (`KDMV` header).
    Sparse,
    /// `FLAT`: raw data in a file, at an offset.
    Flat,
    /// `VMFS`: an ESXi flat extent (same as FLAT).
    Vmfs,
    /// `VMFSSPARSE`: an ESXi `COWD` snapshot extent.
    VmfsSparse,
    /// `VMFSRDM`: a raw device mapping (read as flat).
    VmfsRdm,
    /// `VMFSRAW`: a raw device (read as flat).
    VmfsRaw,
    /// `ZERO`: reads as zeros, no file.
    Zero,
    /// `SESPARSE`: an ESXi 6.5+ space-efficient sparse snapshot extent.
    SeSparse,
}

impl VmdkExtentType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SPARSE" => VmdkExtentType::Sparse,
            "FLAT" => VmdkExtentType::Flat,
            "VMFS" => VmdkExtentType::Vmfs,
            "VMFSSPARSE" => VmdkExtentType::VmfsSparse,
            "VMFSRDM" => VmdkExtentType::VmfsRdm,
            "VMFSRAW" => VmdkExtentType::VmfsRaw,
            "ZERO" => VmdkExtentType::Zero,
            "SESPARSE" => VmdkExtentType::SeSparse,
            _ => return None,
        })
    }

    /// Raw data stored plainly in a file (FLAT, VMFS, VMFSRDM, VMFSRAW).
    pub fn is_flat(self) -> bool {
        matches!(
            self,
            VmdkExtentType::Flat
                | VmdkExtentType::Vmfs
                | VmdkExtentType::VmfsRdm
                | VmdkExtentType::VmfsRaw
        )
    }
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkExtentLine {
    /// Access mode.
    pub access: VmdkAccess,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Type.
    pub kind: VmdkExtentType,
    /// File name as written (empty for ZERO extents).
    pub file: String,
    /// Offset in the file, in sectors (flat extents).
    pub offset: u64,
    /// Line number (1-based) in the descriptor.
    pub line: usize,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmdkDescriptor {
    /// `version` (1, 2 or 3).
    pub version: u32,
    /// `CID`, content id of this link.
    pub cid: Option<u32>,
    /// `parentCID` (`0xffffffff` = none).
    pub parent_cid: Option<u32>,
    /// `createType`, e.g. `monolithicSparse`.
    pub create_type: String,
    /// `parentFileNameHint`.
    pub parent_hint: Option<String>,
    /// Extent lines, in order.
    pub extents: Vec<VmdkExtentLine>,
    /// `ddb.*` entries, in order, values unquoted.
    pub ddb: Vec<(String, String)>,
    /// Other `key = value` entries, values unquoted.
    pub other: Vec<(String, String)>,
}

impl VmdkDescriptor {
    /// Sum of the extents' sectors (checked against [`MAX_SECTORS`] by [`parse`](Self::parse)).
    pub fn total_sectors(&self) -> u64 {
        self.extents.iter().map(|e| e.sectors).sum()
    }

    /// A `ddb.` value by its full key.
    pub fn ddb(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the descriptor names a parent (`parentCID` other than `ffffffff`).
    pub fn has_parent(&self) -> bool {
        self.parent_cid.is_some_and(|c| c != CID_NO_PARENT)
    }

    /// Parses descriptor text. `offset` is where the bytes lie in their file (for errors).
    /// The text ends at the first NUL byte (embedded descriptors are NUL-padded).
    pub fn parse(bytes: &[u8], offset: u64) -> Result<Self, VmdkError> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let bytes = &bytes[..end];
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(VmdkError::invalid(
                "descriptor",
                offset,
                format!(
                    "{} bytes long, more than the {MAX_DESCRIPTOR_BYTES} accepted",
                    bytes.len()
                ),
            ));
        }
        // VMware writes `encoding="windows-1252"` (or other code pages) on older hosts; such
        // text is read as Latin-1, which maps every byte to a character.
        let text: std::borrow::Cow<'_, str> = match std::str::from_utf8(bytes) {
            Ok(t) => t.into(),
            Err(_) => bytes
                .iter()
                .map(|&b| char::from(b))
                .collect::<String>()
                .into(),
        };
        let mut d = VmdkDescriptor::default();
        let mut version = None;
        let mut total: u64 = 0;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let what = || format!("descriptor line {n}");
            let line = raw.trim_matches(|c: char| c == '\r' || c.is_whitespace());
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
                let e = parse_extent(line, n).map_err(|m| VmdkError::invalid(what(), offset, m))?;
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(VmdkError::invalid(
                        what(),
                        offset,
                        format!("more than {MAX_EXTENTS} extents"),
                    ));
                }
                total = total.saturating_add(e.sectors);
                if total > MAX_SECTORS {
                    return Err(VmdkError::invalid(
                        what(),
                        offset,
                        format!(
                            "the extents add up to more than {MAX_SECTORS} sectors (64 TiB), the most accepted"
                        ),
                    ));
                }
                d.extents.push(e);
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(VmdkError::invalid(
                    what(),
                    offset,
                    format!(
                        "expected 'key = value' or an extent line, found '{}'",
                        clip(line)
                    ),
                ));
            };
            let key = k.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(VmdkError::invalid(
                    what(),
                    offset,
                    format!("bad key '{}'", clip(key)),
                ));
            }
            let value = unquote(v.trim()).map_err(|m| VmdkError::invalid(what(), offset, m))?;
            let hex = |v: &str| {
                u32::from_str_radix(v, 16).map_err(|_| {
                    VmdkError::invalid(
                        what(),
                        offset,
                        format!("{key} must be 8 hex digits, found '{}'", clip(v)),
                    )
                })
            };
            match key.to_ascii_lowercase().as_str() {
                "version" => {
                    let v: u32 = value.parse().map_err(|_| {
                        VmdkError::invalid(
                            what(),
                            offset,
                            format!("version must be a number, found '{}'", clip(&value)),
                        )
                    })?;
                    if !(1..=3).contains(&v) {
                        return Err(VmdkError::invalid(
                            what(),
                            offset,
                            format!("version must be 1, 2 or 3, found {v}"),
                        ));
                    }
                    version = Some(v);
                }
                "cid" => d.cid = Some(hex(&value)?),
                "parentcid" => d.parent_cid = Some(hex(&value)?),
                "createtype" => d.create_type = value,
                "parentfilenamehint" => d.parent_hint = Some(value),
                _ if key.starts_with("ddb.") => d.ddb.push((key.to_string(), value)),
                _ => d.other.push((key.to_string(), value)),
            }
        }
        d.version = version.unwrap_or(1);
        if d.extents.is_empty() {
            return Err(VmdkError::invalid(
                "descriptor",
                offset,
                "no extent lines (RW|RDONLY|NOACCESS <sectors> <type> \"<file>\")",
            ));
        }
        if d.create_type.is_empty() {
            return Err(VmdkError::invalid("descriptor", offset, "no createType"));
        }
        Ok(d)
    }
}

/// At most 60 characters of a line, for error messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// `"a b"` -> `a b`; `abc` -> `abc`.
fn unquote(v: &str) -> Result<String, String> {
    if let Some(rest) = v.strip_prefix('"') {
        match rest.find('"') {
            Some(end) if rest[end + 1..].trim().is_empty() => Ok(rest[..end].to_string()),
            Some(_) => Err(format!("text after the closing quote in '{}'", clip(v))),
            None => Err(format!("unterminated quote in '{}'", clip(v))),
        }
    } else {
        Ok(v.to_string())
    }
}

fn parse_extent(line: &str, n: usize) -> Result<VmdkExtentLine, String> {
    let mut rest = line;
    let mut word = || -> Option<&str> {
        let t = rest.trim_start();
        if t.is_empty() {
            return None;
        }
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (w, r) = t.split_at(end);
        rest = r;
        Some(w)
    };
    let access = match word() {
        Some("RW") => VmdkAccess::ReadWrite,
        Some("RDONLY") => VmdkAccess::ReadOnly,
        Some("NOACCESS") => VmdkAccess::NoAccess,
        _ => return Err("expected RW, RDONLY or NOACCESS".into()),
    };
    let sectors_s = word().ok_or("extent line ends before the sector count")?;
    let sectors: u64 = sectors_s
        .parse()
        .map_err(|_| format!("bad sector count '{}'", clip(sectors_s)))?;
    if sectors == 0 || sectors > MAX_SECTORS {
        return Err(format!(
            "sector count {sectors} out of range (1..={MAX_SECTORS})"
        ));
    }
    let kind_s = word().ok_or("extent line ends before the extent type")?;
    let kind = VmdkExtentType::parse(kind_s).ok_or_else(|| {
        format!(
            "unknown extent type '{}' (expected SPARSE, FLAT, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, ZERO or SESPARSE)",
            clip(kind_s)
        )
    })?;
    let t = rest.trim_start();
    let (file, after) = if let Some(q) = t.strip_prefix('"') {
        let end = q
            .find('"')
            .ok_or_else(|| "unterminated quote in the extent file name".to_string())?;
        (q[..end].to_string(), &q[end + 1..])
    } else if t.is_empty() {
        (String::new(), "")
    } else {
        return Err(format!(
            "the extent file name must be quoted, found '{}'",
            clip(t)
        ));
    };
    if kind != VmdkExtentType::Zero && file.is_empty() {
        return Err("the extent has no file name".into());
    }
    let after = after.trim();
    let offset = if after.is_empty() {
        0
    } else {
        let off_s = after.split_whitespace().next().unwrap_or("");
        if after.split_whitespace().nth(1).is_some() {
            return Err(format!(
                "unexpected text after the offset: '{}'",
                clip(after)
            ));
        }
        let off: u64 = off_s
            .parse()
            .map_err(|_| format!("bad extent offset '{}'", clip(off_s)))?;
        if !kind.is_flat() && off != 0 {
            return Err(format!(
                "offset {off} on a {kind_s} extent (only flat extents have one)"
            ));
        }
        if off > MAX_SECTORS * 4 {
            return Err(format!("extent offset {off} is absurdly large"));
        }
        off
    };
    Ok(VmdkExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
        line: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmware_and_qemu_syntax() {
        let text = "# Disk DescriptorFile\r\nversion=1\r\nencoding=\"UTF-8\"\r\nCID=8f67ca74\r\n\
            parentCID=ffffffff\r\ncreateType = \"twoGbMaxExtentSparse\"\r\n\r\n# Extent description\r\n\
            RW 4192256 SPARSE \"my disk-s001.vmdk\"\r\nRDONLY 8 FLAT \"flat file.vmdk\" 2048\r\n\
            NOACCESS 16 ZERO\r\n  RW 4 VMFS \"vm-flat.vmdk\" 0\r\n\r\n#DDB\r\n\
            ddb.adapterType = \"lsilogic\"\r\nddb.virtualHWVersion=\"14\"\r\n";
        let d = VmdkDescriptor::parse(text.as_bytes(), 0).unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.cid, Some(0x8f67ca74));
        assert!(!d.has_parent());
        assert_eq!(d.create_type, "twoGbMaxExtentSparse");
        assert_eq!(d.extents.len(), 4);
        assert_eq!(d.extents[0].file, "my disk-s001.vmdk");
        assert_eq!(d.extents[0].kind, VmdkExtentType::Sparse);
        assert_eq!(d.extents[0].line, 9);
        assert_eq!(d.extents[1].access, VmdkAccess::ReadOnly);
        assert_eq!(d.extents[1].offset, 2048);
        assert_eq!(d.extents[2].kind, VmdkExtentType::Zero);
        assert_eq!(d.extents[2].file, "");
        assert_eq!(d.extents[3].kind, VmdkExtentType::Vmfs);
        assert_eq!(d.total_sectors(), 4192256 + 8 + 16 + 4);
        assert_eq!(d.ddb("ddb.adapterType"), Some("lsilogic"));
        assert_eq!(d.ddb("ddb.virtualHWVersion"), Some("14"));
    }

    #[test]
    fn parent_and_nul_padding() {
        let mut b = b"version=1\nCID=00000002\nparentCID=0172e8a4\ncreateType=\"vmfsSparse\"\n\
            parentFileNameHint=\"base disk.vmdk\"\nRW 4096 VMFSSPARSE \"d-delta.vmdk\"\n"
            .to_vec();
        b.extend_from_slice(&[0; 100]);
        b.extend_from_slice(b"garbage after NUL");
        let d = VmdkDescriptor::parse(&b, 0x200).unwrap();
        assert!(d.has_parent());
        assert_eq!(d.parent_cid, Some(0x0172e8a4));
        assert_eq!(d.parent_hint.as_deref(), Some("base disk.vmdk"));
    }

    fn err(text: &str) -> String {
        VmdkDescriptor::parse(text.as_bytes(), 0)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let base = "version=1\ncreateType=\"monolithicFlat\"\n";
        let e = err(&format!("{base}RW 10 FLOPPY \"a\"\n"));
        assert!(e.contains("line 3") && e.contains("FLOPPY"), "{e}");
        let e = err(&format!("{base}RW x FLAT \"a\"\n"));
        assert!(e.contains("line 3") && e.contains("sector count"), "{e}");
        let e = err(&format!("{base}RW 10 FLAT \"a\n"));
        assert!(e.contains("unterminated"), "{e}");
        let e = err(&format!("{base}RW 10 FLAT a.vmdk\n"));
        assert!(e.contains("quoted"), "{e}");
        let e = err(&format!("{base}RW 10 SPARSE \"a\" 5\n"));
        assert!(e.contains("offset"), "{e}");
        let e = err(&format!("{base}this is not a descriptor\n"));
        assert!(e.contains("line 3"), "{e}");
        let e = err("version=1\nCID=xyz\ncreateType=\"a\"\nRW 1 ZERO\n");
        assert!(e.contains("line 2") && e.contains("hex"), "{e}");
        let e = err("version=9\nRW 1 ZERO\n");
        assert!(e.contains("version"), "{e}");
        let e = err("version=1\ncreateType=\"a\"\n");
        assert!(e.contains("no extent"), "{e}");
        let e = err("version=1\nRW 1 ZERO\n");
        assert!(e.contains("createType"), "{e}");
        let e = err(&format!("{base}RW 0 ZERO\n"));
        assert!(e.contains("out of range"), "{e}");
        let e = err(&format!(
            "{base}RW 137438953472 ZERO\nRW 137438953472 ZERO\n"
        ));
        assert!(e.contains("line 4") && e.contains("64 TiB"), "{e}");
        assert!(VmdkDescriptor::parse(&[0xff, 0xfe, b'\n'], 0).is_err());
    }

    #[test]
    fn windows_1252_text_is_read_as_latin1() {
        let mut b =
            b"encoding=\"windows-1252\"\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"d".to_vec();
        b.push(0xe9); // e acute in windows-1252
        b.extend_from_slice(b"-flat.vmdk\" 0\n");
        let d = VmdkDescriptor::parse(&b, 0).unwrap();
        assert_eq!(d.extents[0].file, "d\u{e9}-flat.vmdk");
    }
}
