//! `.reg` files (Windows Registry Editor Version 5.00, and REGEDIT4): parse, import, export.
//!
//! # What [`parse`] accepts
//!
//! - Encodings: UTF-16LE with a BOM (what regedit writes), UTF-16BE with a BOM, UTF-8 with or
//!   without a BOM, UTF-16LE without a BOM (recognised by a NUL second byte). Bytes that are not
//!   valid UTF-8 are read as Windows-1252 (the "ANSI" code page of western Windows), which is
//!   what a REGEDIT4 file usually holds.
//! - Line ends CRLF or LF; blank lines; comment lines starting with `;`.
//! - The header `Windows Registry Editor Version 5.00` or `REGEDIT4` as the first non-blank
//!   line ([`parse_with`] can accept files without one, as `hivexregedit` writes and reads them).
//! - `[path]` (create the key), `[-path]` (delete the key tree).
//! - `"name"=...` and `@=...` (the default value), names with `\\` and `\"` escapes; data:
//!   `"string"` (REG_SZ, same escapes), `dword:1f` (1 to 8 hex digits), `hex:` (REG_BINARY),
//!   `hex(N):` for any type number N written in hex (`hex(7)`, `hex(b)`, `hex(100000)`), comma
//!   separated hex bytes possibly empty and continued over lines ending in `\`, `-` (delete the
//!   value), and hivex's `str(N):"string"` (a UTF-16LE NUL-terminated string of type N).
//! - Value lines in the section of a deleted key (`[-path]`) are refused (regedit skips them
//!   silently).
//! - REGEDIT4 files: `hex(2)` and `hex(7)` data are single-byte ANSI characters, as regedit of
//!   that era wrote them. Like regedit, we convert them to UTF-16LE; we read the bytes as
//!   Windows-1252 (each byte becomes one UTF-16 unit, the terminating NUL bytes included).
//!   Every other type's bytes are taken as they are.
//!
//! Errors name the line (1-based) and what is wrong.
//!
//! # What [`export`] writes
//!
//! Regedit's format: the 5.00 header, a blank line, then every key depth-first in the order of
//! the subkey lists as `[prefix\path]`, its values, and a blank line. `REG_SZ` data that reads
//! back exactly is written as `"string"` (otherwise `hex(1):`), 4-byte `REG_DWORD` as `dword:`,
//! `REG_BINARY` as `hex:` and every other type as `hex(n):`, hex lines wrapped before 80
//! columns with `\` continuations indented by two spaces. Lines end in CRLF like regedit's;
//! [`to_utf16le_with_bom`] gives the bytes regedit would write.

use std::collections::HashSet;

use super::data::{RegData, utf16_bytes};
use super::{Hive, HiveError, KeyId, RegType, RegValue};
use crate::error::{Error, Result};

/// The header of a Windows 2000 and later `.reg` file.
pub const HEADER_V5: &str = "Windows Registry Editor Version 5.00";
/// The header of a Windows 9x/NT4 `.reg` file (ANSI text).
pub const HEADER_V4: &str = "REGEDIT4";

/// Cap on the size of a `.reg` file [`parse`] accepts (a whole exported SYSTEM hive is well
/// under this).
pub const MAX_REG_FILE: usize = 1 << 30;

/// One operation of a `.reg` file, with the key path as written (prefix not yet removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// `[path]`: create the key (and its parents).
    CreateKey(String),
    /// `[-path]`: delete the key tree.
    DeleteKey(String),
    /// `"name"=...` or `@=...`: set a value ("" is the default value).
    SetValue {
        /// The key.
        key: String,
        /// The value name.
        name: String,
        /// The type.
        kind: RegType,
        /// The raw data.
        data: Vec<u8>,
    },
    /// `"name"=-`: delete a value.
    DeleteValue {
        /// The key.
        key: String,
        /// The value name.
        name: String,
    },
}

/// Options of [`parse_with`].
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// Refuse a file without the `Windows Registry Editor Version 5.00` / `REGEDIT4` header
    /// (true by default, as regedit does). When false, a file without a header is read as a
    /// version 5.00 file (`hivexregedit --merge` accepts such files, and the virt-v2v test
    /// files have none).
    pub require_header: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            require_header: true,
        }
    }
}

/// The version a `.reg` file declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

fn line_err(line: usize, detail: impl std::fmt::Display) -> Error {
    Error::InvalidFormat(format!(".reg file, line {line}: {detail}"))
}

/// Parses a `.reg` file (UTF-16LE with BOM, or UTF-8 with or without BOM) that starts with a
/// header; see the module documentation for the forms accepted.
pub fn parse(bytes: &[u8]) -> Result<Vec<RegOp>> {
    parse_with(bytes, &ParseOptions::default())
}

/// Parses a `.reg` file with `opts`.
pub fn parse_with(bytes: &[u8], opts: &ParseOptions) -> Result<Vec<RegOp>> {
    if bytes.len() > MAX_REG_FILE {
        return Err(Error::InvalidFormat(format!(
            ".reg file of {} bytes is larger than the {MAX_REG_FILE} bytes accepted",
            bytes.len()
        )));
    }
    let text = decode_text(bytes)?;
    Parser::new(&text, opts).run()
}

/// Decodes the file's bytes to text according to its BOM (see the module documentation).
fn decode_text(bytes: &[u8]) -> Result<String> {
    let utf16 = |body: &[u8], big: bool| -> Result<String> {
        if body.len() % 2 != 0 {
            return Err(Error::InvalidFormat(format!(
                ".reg file in UTF-16 has an odd length ({} bytes after the byte order mark)",
                body.len()
            )));
        }
        let units = body.chunks_exact(2).map(|c| {
            if big {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        });
        let mut out = String::with_capacity(body.len() / 2);
        let mut line = 1usize;
        for r in char::decode_utf16(units) {
            match r {
                Ok(c) => {
                    if c == '\n' {
                        line += 1;
                    }
                    out.push(c);
                }
                Err(e) => {
                    return Err(line_err(
                        line,
                        format!(
                            "invalid UTF-16: unpaired surrogate {:#06x}",
                            e.unpaired_surrogate()
                        ),
                    ));
                }
            }
        }
        Ok(out)
    };
    if let Some(b) = bytes.strip_prefix(&[0xff, 0xfe]) {
        utf16(b, false)
    } else if let Some(b) = bytes.strip_prefix(&[0xfe, 0xff]) {
        utf16(b, true)
    } else if let Some(b) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        Ok(utf8_or_ansi(b))
    } else if bytes.len() >= 2 && bytes[0] != 0 && bytes[1] == 0 {
        // UTF-16LE without a byte order mark: ASCII text with NUL high bytes.
        utf16(bytes, false)
    } else {
        Ok(utf8_or_ansi(bytes))
    }
}

fn utf8_or_ansi(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.iter().map(|&x| cp1252(x)).collect(),
    }
}

/// The Windows-1252 character of byte `b` (bytes undefined in 1252 map to U+0080..U+009F as
/// Windows' own conversion does).
fn cp1252(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008d, 0x017d, 0x008f, 0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022,
        0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178,
    ];
    if (0x80..0xa0).contains(&b) {
        let u = HIGH[usize::from(b - 0x80)];
        char::from_u32(u32::from(u)).unwrap_or(char::REPLACEMENT_CHARACTER)
    } else {
        char::from(b)
    }
}

struct Parser<'a> {
    /// (1-based line number, line without its line end).
    lines: Vec<(usize, &'a str)>,
    pos: usize,
    opts: &'a ParseOptions,
}

/// The current section: the key of the last `[...]` line, or a deleted key.
enum Section {
    None,
    Key(String),
    Deleted(String),
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, opts: &'a ParseOptions) -> Parser<'a> {
        let lines = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
            .collect();
        Parser {
            lines,
            pos: 0,
            opts,
        }
    }

    fn next_line(&mut self) -> Option<(usize, &'a str)> {
        let l = self.lines.get(self.pos).copied();
        if l.is_some() {
            self.pos += 1;
        }
        l
    }

    fn run(mut self) -> Result<Vec<RegOp>> {
        let version = self.header()?;
        let mut ops = Vec::new();
        let mut section = Section::None;
        while let Some((n, raw)) = self.next_line() {
            let line = raw.trim_start();
            if line.trim_end().is_empty() || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let close = rest
                    .rfind(']')
                    .ok_or_else(|| line_err(n, "key line without its closing ']'"))?;
                let after = rest[close + 1..].trim();
                if !after.is_empty() && !after.starts_with(';') {
                    return Err(line_err(
                        n,
                        format!("unexpected text '{after}' after the key name"),
                    ));
                }
                let inner = &rest[..close];
                let (delete, path) = match inner.strip_prefix('-') {
                    Some(p) => (true, p),
                    None => (false, inner),
                };
                if path.trim().is_empty() {
                    return Err(line_err(n, "empty key name"));
                }
                let path = path.to_string();
                if delete {
                    ops.push(RegOp::DeleteKey(path.clone()));
                    section = Section::Deleted(path);
                } else {
                    ops.push(RegOp::CreateKey(path.clone()));
                    section = Section::Key(path);
                }
            } else if line.starts_with('"') || line.starts_with('@') {
                let key = match &section {
                    Section::Key(k) => k.clone(),
                    Section::None => {
                        return Err(line_err(n, "value line before any [key] line"));
                    }
                    Section::Deleted(k) => {
                        return Err(line_err(
                            n,
                            format!("value line in the section of deleted key [-{k}]"),
                        ));
                    }
                };
                ops.push(self.value_line(n, line, key, version)?);
            } else {
                let shown: String = line.chars().take(40).collect();
                return Err(line_err(
                    n,
                    format!(
                        "expected a [key] line, a \"name\"= or @= value line, or a ; comment; found '{shown}'"
                    ),
                ));
            }
        }
        Ok(ops)
    }

    /// Reads the header (first non-blank line).
    fn header(&mut self) -> Result<Version> {
        while let Some((n, raw)) = self.lines.get(self.pos).copied() {
            let l = raw.trim();
            if l.is_empty() {
                self.pos += 1;
                continue;
            }
            if l == HEADER_V5 {
                self.pos += 1;
                return Ok(Version::V5);
            }
            if l == HEADER_V4 {
                self.pos += 1;
                return Ok(Version::V4);
            }
            if self.opts.require_header {
                let shown: String = l.chars().take(40).collect();
                return Err(line_err(
                    n,
                    format!(
                        "missing header: expected '{HEADER_V5}' or '{HEADER_V4}', found '{shown}'"
                    ),
                ));
            }
            return Ok(Version::V5);
        }
        if self.opts.require_header {
            return Err(line_err(
                self.lines.len().max(1),
                format!(
                    "missing header: the file is empty (expected '{HEADER_V5}' or '{HEADER_V4}')"
                ),
            ));
        }
        Ok(Version::V5)
    }

    /// Parses one value line (and its continuation lines).
    fn value_line(&mut self, n: usize, line: &str, key: String, version: Version) -> Result<RegOp> {
        let (name, rest) = if let Some(r) = line.strip_prefix('@') {
            (String::new(), r)
        } else {
            let (name, used) = quoted(n, line, "value name")?;
            (name, &line[used..])
        };
        let rest = rest.trim_start();
        let rest = rest.strip_prefix('=').ok_or_else(|| {
            line_err(
                n,
                format!(
                    "expected '=' after the value name {}",
                    if name.is_empty() {
                        "@".to_string()
                    } else {
                        format!("\"{name}\"")
                    }
                ),
            )
        })?;
        let data = rest.trim();
        if data == "-" {
            return Ok(RegOp::DeleteValue { key, name });
        }
        if data.starts_with('"') {
            let (s, used) = quoted(n, data, "string data")?;
            trailing(n, &data[used..])?;
            return Ok(RegOp::SetValue {
                key,
                name,
                kind: RegType::SZ,
                data: sz(&s),
            });
        }
        let colon = data.find(':').ok_or_else(|| {
            let shown: String = data.chars().take(20).collect();
            line_err(
                n,
                format!("unknown data '{shown}': expected \"string\", dword:, hex:, hex(N): or -"),
            )
        })?;
        let token = &data[..colon];
        let body = &data[colon + 1..];
        let lower = token.trim().to_ascii_lowercase();
        if lower == "dword" {
            let digits = body.trim();
            let digits = digits.split_once(';').map_or(digits, |(d, _)| d.trim_end());
            if digits.is_empty()
                || digits.len() > 8
                || !digits.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(line_err(
                    n,
                    format!("bad dword data '{digits}': expected 1 to 8 hex digits"),
                ));
            }
            let v = u32::from_str_radix(digits, 16)
                .map_err(|e| line_err(n, format!("bad dword data '{digits}': {e}")))?;
            return Ok(RegOp::SetValue {
                key,
                name,
                kind: RegType::DWORD,
                data: v.to_le_bytes().to_vec(),
            });
        }
        if lower == "hex" {
            let bytes = self.hex_data(n, body)?;
            return Ok(RegOp::SetValue {
                key,
                name,
                kind: RegType::BINARY,
                data: bytes,
            });
        }
        if let Some(num) = lower.strip_prefix("hex(").and_then(|r| r.strip_suffix(')')) {
            let kind = type_number(n, num)?;
            let mut bytes = self.hex_data(n, body)?;
            if version == Version::V4 && (kind == RegType::EXPAND_SZ || kind == RegType::MULTI_SZ) {
                bytes = bytes
                    .iter()
                    .flat_map(|&b| {
                        let mut buf = [0u16; 2];
                        let units = cp1252(b).encode_utf16(&mut buf);
                        units
                            .iter()
                            .flat_map(|u| u.to_le_bytes())
                            .collect::<Vec<u8>>()
                    })
                    .collect();
            }
            return Ok(RegOp::SetValue {
                key,
                name,
                kind,
                data: bytes,
            });
        }
        if let Some(num) = lower.strip_prefix("str(").and_then(|r| r.strip_suffix(')')) {
            let kind = type_number(n, num)?;
            let body = body.trim_start();
            if !body.starts_with('"') {
                return Err(line_err(n, "expected a \"string\" after str(N):"));
            }
            let (s, used) = quoted(n, body, "string data")?;
            trailing(n, &body[used..])?;
            return Ok(RegOp::SetValue {
                key,
                name,
                kind,
                data: sz(&s),
            });
        }
        let shown: String = token.chars().take(20).collect();
        Err(line_err(
            n,
            format!("unknown type token '{shown}:': expected dword:, hex:, hex(N): or str(N):"),
        ))
    }

    /// Parses comma-separated hex bytes starting with `first` on line `n`, following `\`
    /// continuations onto the next lines.
    fn hex_data(&mut self, n: usize, first: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut line_no = n;
        let mut seg = first;
        loop {
            let t = seg.trim();
            let (t, more) = match t.strip_suffix('\\') {
                Some(t) => (t, true),
                None => (t, false),
            };
            hex_bytes(line_no, t, &mut out)?;
            if !more {
                return Ok(out);
            }
            // The continuation: the next line, leading whitespace removed. A file ending after
            // a '\' just ends the data.
            match self.lines.get(self.pos).copied() {
                Some((m, l)) => {
                    let lt = l.trim();
                    if lt.is_empty() || lt.starts_with(['[', '"', '@']) {
                        // Not a continuation (a `\` before a blank line, a key or a value
                        // line): leave the line to the caller.
                        return Ok(out);
                    }
                    self.pos += 1;
                    line_no = m;
                    seg = l;
                }
                None => return Ok(out),
            }
        }
    }
}

/// Parses `hex(N)`'s N (hex digits, any value that fits 32 bits).
fn type_number(n: usize, num: &str) -> Result<RegType> {
    let num = num.trim();
    if num.is_empty() || num.len() > 8 || !num.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(line_err(
            n,
            format!("bad type number '{num}' in hex(N): expected 1 to 8 hex digits"),
        ));
    }
    u32::from_str_radix(num, 16)
        .map(RegType)
        .map_err(|e| line_err(n, format!("bad type number '{num}': {e}")))
}

/// Appends the comma-separated hex bytes of `s` (one line's worth) to `out`.
fn hex_bytes(n: usize, s: &str, out: &mut Vec<u8>) -> Result<()> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = s.split(',').collect();
    let last = parts.len() - 1;
    for (i, p) in parts.iter().enumerate() {
        let p = p.trim();
        if p.is_empty() {
            // A trailing comma (before a continuation) is fine; an empty byte inside is not.
            if i == last {
                continue;
            }
            return Err(line_err(
                n,
                format!("bad hex byte: empty byte at position {}", i + 1),
            ));
        }
        if p.len() > 2 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            let shown: String = p.chars().take(16).collect();
            return Err(line_err(
                n,
                format!(
                    "bad hex byte '{shown}' at position {}: expected two hex digits",
                    i + 1
                ),
            ));
        }
        let b = u8::from_str_radix(p, 16)
            .map_err(|e| line_err(n, format!("bad hex byte '{p}': {e}")))?;
        out.push(b);
    }
    Ok(())
}

/// Allows only whitespace or a `;` comment after a string.
fn trailing(n: usize, rest: &str) -> Result<()> {
    let r = rest.trim();
    if r.is_empty() || r.starts_with(';') {
        Ok(())
    } else {
        let shown: String = r.chars().take(20).collect();
        Err(line_err(
            n,
            format!("unexpected text '{shown}' after the closing quote"),
        ))
    }
}

/// Reads a `"..."` string at the start of `s` with `\\` and `\"` escapes (any other `\x` is
/// kept as written). Returns the string and the bytes of `s` used.
fn quoted(n: usize, s: &str, what: &str) -> Result<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, '"')) => {}
        _ => return Err(line_err(n, format!("expected a quoted {what}"))),
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(line_err(
        n,
        format!("unterminated {what}: no closing '\"' on the line"),
    ))
}

/// REG_SZ bytes: UTF-16LE with a terminating NUL.
fn sz(s: &str) -> Vec<u8> {
    let mut v = utf16_bytes(s);
    v.extend_from_slice(&[0, 0]);
    v
}

/// What [`import`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Keys created (missing parents included).
    pub keys_created: usize,
    /// Key trees deleted.
    pub keys_deleted: usize,
    /// Values set.
    pub values_set: usize,
    /// Values deleted.
    pub values_deleted: usize,
}

/// The long name of a root key abbreviation (`HKLM` → `HKEY_LOCAL_MACHINE`), upper-cased.
fn long_root(c: &str) -> String {
    let u = c.to_uppercase();
    match u.as_str() {
        "HKLM" => "HKEY_LOCAL_MACHINE".into(),
        "HKCU" => "HKEY_CURRENT_USER".into(),
        "HKCR" => "HKEY_CLASSES_ROOT".into(),
        "HKU" => "HKEY_USERS".into(),
        "HKCC" => "HKEY_CURRENT_CONFIG".into(),
        _ => u,
    }
}

/// The components of a path, empty ones (leading, doubled or trailing `\`) dropped.
fn components(path: &str) -> Vec<&str> {
    path.split('\\').filter(|c| !c.is_empty()).collect()
}

/// `path` relative to `prefix`: the components after the prefix's, joined with `\`, or `None`
/// when `path` is not inside `prefix`. Compared without regard to case, the first component's
/// abbreviations (`HKLM`, `HKCU`, `HKCR`, `HKU`, `HKCC`) equal to their long names.
pub fn strip_prefix(path: &str, prefix: &str) -> Option<String> {
    let p = components(path);
    let q = components(prefix);
    if q.len() > p.len() {
        return None;
    }
    for (i, (a, b)) in p.iter().zip(q.iter()).enumerate() {
        let same = if i == 0 {
            long_root(a) == long_root(b)
        } else {
            a.to_uppercase() == b.to_uppercase()
        };
        if !same {
            return None;
        }
    }
    Some(p[q.len()..].join("\\"))
}

/// Applies `ops` to `hive`. Each key path must start with `prefix` (compared without regard to
/// case, e.g. `HKEY_LOCAL_MACHINE\SYSTEM`; the short root names such as `HKLM` match their long
/// names either way), which is removed; the key equal to the prefix is the root; an empty
/// prefix takes the paths as relative to the root (a leading `\` is allowed). Deleting a key or
/// value that does not exist is not an error (as with regedit); deleting the root is.
pub fn import(hive: &mut Hive, ops: &[RegOp], prefix: &str) -> Result<ImportStats> {
    let mut stats = ImportStats::default();
    // The key of the last value op, to avoid a lookup per value.
    let mut cached: Option<(String, KeyId)> = None;
    let rel = |path: &str| -> Result<String> {
        strip_prefix(path, prefix).ok_or_else(|| {
            HiveError::InvalidArgument(format!(
                "key [{path}] of the .reg file is outside the prefix '{prefix}'"
            ))
            .into()
        })
    };
    for op in ops {
        match op {
            RegOp::CreateKey(path) => {
                let r = rel(path)?;
                stats.keys_created += missing_components(hive, &r)?;
                let id = hive.create_key(&r)?;
                cached = Some((r, id));
            }
            RegOp::DeleteKey(path) => {
                let r = rel(path)?;
                if r.is_empty() {
                    return Err(HiveError::InvalidArgument(format!(
                        "[-{path}] would delete the root key of the hive"
                    ))
                    .into());
                }
                if hive.delete_key(&r)? {
                    stats.keys_deleted += 1;
                }
                cached = None;
            }
            RegOp::SetValue {
                key,
                name,
                kind,
                data,
            } => {
                let r = rel(key)?;
                let id = match &cached {
                    Some((p, id)) if *p == r => *id,
                    _ => {
                        stats.keys_created += missing_components(hive, &r)?;
                        let id = hive.create_key(&r)?;
                        cached = Some((r, id));
                        id
                    }
                };
                hive.set_value(id, name, *kind, data)?;
                stats.values_set += 1;
            }
            RegOp::DeleteValue { key, name } => {
                let r = rel(key)?;
                let id = match &cached {
                    Some((p, id)) if *p == r => Some(*id),
                    _ => hive.open_key(&r)?,
                };
                if let Some(id) = id {
                    if hive.delete_value(id, name)? {
                        stats.values_deleted += 1;
                    }
                }
            }
        }
    }
    Ok(stats)
}

/// How many components of `rel` do not exist yet.
fn missing_components(hive: &Hive, rel: &str) -> Result<usize> {
    let comps = components(rel);
    let mut cur = hive.root();
    for (i, c) in comps.iter().enumerate() {
        match hive.subkey(cur, c)? {
            Some(k) => cur = k,
            None => return Ok(comps.len() - i),
        }
    }
    Ok(0)
}

/// Regedit ends a hex line with `\` once it reaches this many characters (so a line, `\`
/// included, stays under 80 columns; continuation lines hold 25 bytes).
const HEX_WRAP: usize = 76;

/// Escapes `\` and `"` for a quoted name or string.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if c == '\\' || c == '"' {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Appends one value line (with its continuation lines) in regedit's format.
fn write_value(out: &mut String, v: &RegValue) {
    let mut line = if v.name.is_empty() {
        "@=".to_string()
    } else {
        format!("\"{}\"=", escape(&v.name))
    };
    if v.kind == RegType::SZ {
        if let RegData::Sz(s) = RegData::decode(v.kind, &v.data) {
            // A string with a line break would not read back as one line.
            if !s.contains(['\r', '\n']) {
                line.push('"');
                line.push_str(&escape(&s));
                line.push('"');
                out.push_str(&line);
                out.push_str("\r\n");
                return;
            }
        }
    }
    if v.kind == RegType::DWORD && v.data.len() == 4 {
        let d = u32::from_le_bytes([v.data[0], v.data[1], v.data[2], v.data[3]]);
        out.push_str(&format!("{line}dword:{d:08x}\r\n"));
        return;
    }
    if v.kind == RegType::BINARY {
        line.push_str("hex:");
    } else {
        line.push_str(&format!("hex({:x}):", v.kind.0));
    }
    let mut len = line.chars().count();
    let last = v.data.len().saturating_sub(1);
    for (i, b) in v.data.iter().enumerate() {
        line.push_str(&format!("{b:02x}"));
        if i == last {
            break;
        }
        line.push(',');
        len += 3;
        if len >= HEX_WRAP {
            line.push_str("\\\r\n  ");
            len = 2;
        }
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// Appends one key section: `[path]`, its values, a blank line.
fn write_key(out: &mut String, path: &str, values: &[RegValue]) {
    out.push('[');
    out.push_str(path);
    out.push_str("]\r\n");
    for v in values {
        write_value(out, v);
    }
    out.push_str("\r\n");
}

/// `prefix\rel` (or `\rel` with an empty prefix, as hivexregedit writes it).
fn full_path(prefix: &str, rel: &str) -> String {
    let p = prefix.trim_end_matches('\\');
    if rel.is_empty() {
        if p.is_empty() {
            "\\".to_string()
        } else {
            p.to_string()
        }
    } else {
        format!("{p}\\{rel}")
    }
}

/// Exports `key` and its subtree as a `.reg` file (Windows Registry Editor Version 5.00, UTF-8
/// text with CRLF line ends; the caller may encode it with [`to_utf16le_with_bom`]), naming
/// keys `prefix\path` where path is the key's full path from the root.
pub fn export(hive: &Hive, key: KeyId, prefix: &str) -> Result<String> {
    let mut out = String::new();
    out.push_str(HEADER_V5);
    out.push_str("\r\n\r\n");
    let start = hive.key_path(key)?;
    // Depth first with an explicit stack (a hostile hive may be deep), and a visited set (a
    // corrupt one may loop).
    let mut stack = vec![(key, start)];
    let mut seen = HashSet::new();
    while let Some((k, path)) = stack.pop() {
        if !seen.insert(k) {
            return Err(HiveError::corrupt(
                "key node",
                4096 + u64::from(k.0),
                format!("key [{path}] is reached twice while walking the tree (a loop)"),
            )
            .into());
        }
        let values = hive.values(k)?;
        write_key(&mut out, &full_path(prefix, &path), &values);
        let subs = hive.subkeys(k)?;
        for s in subs.into_iter().rev() {
            let name = hive.key_name(s)?;
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}\\{name}")
            };
            stack.push((s, p));
        }
    }
    Ok(out)
}

/// `text` as UTF-16LE with a byte order mark, the encoding regedit writes.
pub fn to_utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut v = vec![0xff, 0xfe];
    v.extend(utf16_bytes(text));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, name: &str, kind: RegType, data: &[u8]) -> RegOp {
        RegOp::SetValue {
            key: key.into(),
            name: name.into(),
            kind,
            data: data.to_vec(),
        }
    }

    fn u16le(s: &str) -> Vec<u8> {
        utf16_bytes(s)
    }

    const K: &str = "HKEY_LOCAL_MACHINE\\SYSTEM\\Test";

    #[test]
    fn parses_every_form() {
        let text = "Windows Registry Editor Version 5.00\r\n\
\r\n\
; a comment\r\n\
[HKEY_LOCAL_MACHINE\\SYSTEM\\Test]\r\n\
@=\"default\"\r\n\
\"str\"=\"a \\\"quoted\\\" back\\\\slash\"\r\n\
\"na\\\"me\"=dword:0000001f\r\n\
\"short\"=dword:1F\r\n\
\"bin\"=hex:01,ff,00\r\n\
\"empty\"=hex:\r\n\
\"none\"=hex(0):\r\n\
\"multi\"=hex(7):61,00,00,00,62,00,00,00,00,00\r\n\
\"exp\"=hex(2):25,00,00,00\r\n\
\"q\"=hex(b):01,00,00,00,00,00,00,00\r\n\
\"big\"=hex(100000):aa\r\n\
\"cont\"=hex:01,02,\\\r\n\
    03,04,\\\r\n\
  05\r\n\
\"ends\"=hex:06,\\\r\n\
\"gone\"=-\r\n\
\"hstr\"=str(2):\"%x%\"\r\n\
\r\n\
[-HKEY_LOCAL_MACHINE\\SYSTEM\\Old]\r\n";
        let ops = parse(text.as_bytes()).unwrap();
        let mut multi = u16le("a\0b\0");
        multi.extend([0, 0]);
        assert_eq!(
            ops,
            vec![
                RegOp::CreateKey(K.into()),
                set(K, "", RegType::SZ, &sz("default")),
                set(K, "str", RegType::SZ, &sz("a \"quoted\" back\\slash")),
                set(K, "na\"me", RegType::DWORD, &[0x1f, 0, 0, 0]),
                set(K, "short", RegType::DWORD, &[0x1f, 0, 0, 0]),
                set(K, "bin", RegType::BINARY, &[1, 0xff, 0]),
                set(K, "empty", RegType::BINARY, &[]),
                set(K, "none", RegType::NONE, &[]),
                set(
                    K,
                    "multi",
                    RegType::MULTI_SZ,
                    &[0x61, 0, 0, 0, 0x62, 0, 0, 0, 0, 0]
                ),
                set(K, "exp", RegType::EXPAND_SZ, &[0x25, 0, 0, 0]),
                set(K, "q", RegType::QWORD, &[1, 0, 0, 0, 0, 0, 0, 0]),
                set(K, "big", RegType(0x100000), &[0xaa]),
                set(K, "cont", RegType::BINARY, &[1, 2, 3, 4, 5]),
                set(K, "ends", RegType::BINARY, &[6]),
                RegOp::DeleteValue {
                    key: K.into(),
                    name: "gone".into()
                },
                set(K, "hstr", RegType::EXPAND_SZ, &sz("%x%")),
                RegOp::DeleteKey("HKEY_LOCAL_MACHINE\\SYSTEM\\Old".into()),
            ]
        );
        // The same file as LF, UTF-8 with BOM, UTF-16LE with BOM, UTF-16BE with BOM.
        let lf = text.replace("\r\n", "\n");
        assert_eq!(parse(lf.as_bytes()).unwrap(), ops);
        let mut bom8 = vec![0xef, 0xbb, 0xbf];
        bom8.extend(lf.as_bytes());
        assert_eq!(parse(&bom8).unwrap(), ops);
        assert_eq!(parse(&to_utf16le_with_bom(text)).unwrap(), ops);
        let mut be = vec![0xfe, 0xff];
        be.extend(text.encode_utf16().flat_map(|u| u.to_be_bytes()));
        assert_eq!(parse(&be).unwrap(), ops);
        // UTF-16LE without a BOM.
        assert_eq!(parse(&u16le(text)).unwrap(), ops);
    }

    #[test]
    fn regedit4_ansi_strings() {
        // "é" in Windows-1252 is 0xe9, "€" is 0x80.
        let mut bytes = b"REGEDIT4\n\n[HKEY_LOCAL_MACHINE\\X]\n\"e\"=hex(2):41,e9,80,00\n\"m\"=hex(7):61,00,00\n\"b\"=hex:e9\n\"s\"=\"".to_vec();
        bytes.push(0xe9);
        bytes.extend(b"\"\n");
        let ops = parse(&bytes).unwrap();
        let k = "HKEY_LOCAL_MACHINE\\X";
        assert_eq!(
            ops,
            vec![
                RegOp::CreateKey(k.into()),
                set(
                    k,
                    "e",
                    RegType::EXPAND_SZ,
                    &[0x41, 0, 0xe9, 0, 0xac, 0x20, 0, 0]
                ),
                set(k, "m", RegType::MULTI_SZ, &[0x61, 0, 0, 0, 0, 0]),
                set(k, "b", RegType::BINARY, &[0xe9]),
                set(k, "s", RegType::SZ, &sz("é")),
            ]
        );
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line() {
        let h = "Windows Registry Editor Version 5.00\n\n";
        let e = err("[HKEY_LOCAL_MACHINE\\X]\n");
        assert!(e.contains("line 1") && e.contains("missing header"), "{e}");
        let e = err("");
        assert!(e.contains("missing header"), "{e}");
        let e = err(&format!("{h}[K]\n\"a\"=\"unterminated\n"));
        assert!(e.contains("line 4") && e.contains("unterminated"), "{e}");
        let e = err(&format!("{h}[K]\n\"a=dword:1\n"));
        assert!(
            e.contains("line 4") && e.contains("unterminated value name"),
            "{e}"
        );
        let e = err(&format!("{h}[K]\n\"a\"=hex:01,0g\n"));
        assert!(
            e.contains("line 4") && e.contains("bad hex byte '0g'"),
            "{e}"
        );
        let e = err(&format!("{h}[K]\n\"a\"=hex:01,\\\n  02,123\n"));
        assert!(
            e.contains("line 5") && e.contains("bad hex byte '123'"),
            "{e}"
        );
        let e = err(&format!("{h}\"a\"=dword:1\n"));
        assert!(
            e.contains("line 3") && e.contains("before any [key]"),
            "{e}"
        );
        let e = err(&format!("{h}[K]\n\"a\"=qword:1\n"));
        assert!(
            e.contains("line 4") && e.contains("unknown type token 'qword:'"),
            "{e}"
        );
        let e = err(&format!("{h}[K]\n\"a\"=dword:123456789\n"));
        assert!(e.contains("line 4") && e.contains("bad dword"), "{e}");
        let e = err(&format!("{h}[K]\n\"a\"=hex(100000000):00\n"));
        assert!(e.contains("bad type number"), "{e}");
        let e = err(&format!("{h}[K\n"));
        assert!(e.contains("line 3") && e.contains("']'"), "{e}");
        let e = err(&format!("{h}[]\n"));
        assert!(e.contains("empty key name"), "{e}");
        let e = err(&format!("{h}garbage\n"));
        assert!(e.contains("line 3") && e.contains("garbage"), "{e}");
        let e = err(&format!("{h}[-K]\n\"a\"=dword:1\n"));
        assert!(e.contains("deleted key"), "{e}");
        let e = err(&format!("{h}[K]\n\"a\"\n"));
        assert!(e.contains("expected '='"), "{e}");
        let e = err(&format!("{h}[K]\n\"a\"=\"x\" y\n"));
        assert!(e.contains("after the closing quote"), "{e}");
        // Odd UTF-16 and unpaired surrogates.
        assert!(parse(&[0xff, 0xfe, 0x41]).is_err());
        assert!(parse(&[0xff, 0xfe, 0x00, 0xd8, 0x41, 0x00]).is_err());
    }

    #[test]
    fn headerless_files_with_the_option() {
        let t = "[\\Select]\n\"Current\"=dword:00000001\n";
        assert!(parse(t.as_bytes()).is_err());
        let ops = parse_with(
            t.as_bytes(),
            &ParseOptions {
                require_header: false,
            },
        )
        .unwrap();
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn prefixes() {
        let p = "HKEY_LOCAL_MACHINE\\SYSTEM";
        assert_eq!(strip_prefix("HKEY_LOCAL_MACHINE\\SYSTEM", p).unwrap(), "");
        assert_eq!(
            strip_prefix("hkey_local_machine\\system\\A\\b", p).unwrap(),
            "A\\b"
        );
        assert_eq!(strip_prefix("HKLM\\System\\A", p).unwrap(), "A");
        assert_eq!(
            strip_prefix("HKEY_LOCAL_MACHINE\\SYSTEM\\A", "HKLM\\SYSTEM").unwrap(),
            "A"
        );
        assert!(strip_prefix("HKEY_LOCAL_MACHINE\\SOFTWARE\\A", p).is_none());
        assert!(strip_prefix("HKEY_LOCAL_MACHINE\\SYSTEMX", p).is_none());
        assert!(strip_prefix("HKEY_LOCAL_MACHINE", p).is_none());
        assert_eq!(strip_prefix("\\Select", "").unwrap(), "Select");
        assert_eq!(strip_prefix("\\", "").unwrap(), "");
    }

    fn val(name: &str, kind: RegType, data: &[u8]) -> RegValue {
        RegValue {
            name: name.into(),
            kind,
            data: data.to_vec(),
        }
    }

    #[test]
    fn writes_like_regedit_and_reads_back() {
        let long: Vec<u8> = (0..=255u8).collect();
        let values = vec![
            val("", RegType::SZ, &sz("dflt \"q\" \\")),
            val("a\\\"b", RegType::DWORD, &[0x1f, 0, 0, 0]),
            val("odd dword", RegType::DWORD, &[1, 2, 3]),
            val("bin", RegType::BINARY, &long),
            val("e", RegType::BINARY, &[]),
            val("none", RegType::NONE, &[]),
            val("sz no nul", RegType::SZ, &[0x41, 0]),
            val("sz newline", RegType::SZ, &sz("a\r\nb")),
            val("multi", RegType::MULTI_SZ, &long[..100]),
            val("q", RegType::QWORD, &[1, 2, 3, 4, 5, 6, 7, 8]),
            val("x", RegType(0x100000), &[9]),
        ];
        let mut text = format!("{HEADER_V5}\r\n\r\n");
        write_key(&mut text, "HKEY_LOCAL_MACHINE\\S\\K", &values);
        write_key(&mut text, "HKEY_LOCAL_MACHINE\\S\\K\\Sub", &[]);
        for l in text.lines() {
            assert!(l.chars().count() <= 80, "line too long: {l}");
        }
        assert!(text.contains("@=\"dflt \\\"q\\\" \\\\\"\r\n"), "{text}");
        assert!(text.contains("\"a\\\\\\\"b\"=dword:0000001f\r\n"), "{text}");
        assert!(text.contains("\"odd dword\"=hex(4):01,02,03\r\n"), "{text}");
        assert!(text.contains("\"e\"=hex:\r\n"), "{text}");
        assert!(text.contains("\"none\"=hex(0):\r\n"), "{text}");
        assert!(text.contains("\"sz no nul\"=hex(1):41,00\r\n"), "{text}");
        assert!(text.contains("\"x\"=hex(100000):09\r\n"), "{text}");
        // Regedit's wrapping: the first line fills up to 77 columns before the '\', the
        // following ones hold 25 bytes after two spaces.
        assert!(text.contains(
            "\"bin\"=hex:00,01,02,03,04,05,06,07,08,09,0a,0b,0c,0d,0e,0f,10,11,12,13,14,15,\\\r\n  16,17,"
        ), "{text}");
        let ops = parse(text.as_bytes()).unwrap();
        let mut want = vec![RegOp::CreateKey("HKEY_LOCAL_MACHINE\\S\\K".into())];
        for v in &values {
            want.push(set("HKEY_LOCAL_MACHINE\\S\\K", &v.name, v.kind, &v.data));
        }
        want.push(RegOp::CreateKey("HKEY_LOCAL_MACHINE\\S\\K\\Sub".into()));
        assert_eq!(ops, want);
    }

    #[test]
    fn never_panics_on_junk() {
        // Every prefix of a file with every form, and some byte mutations of it.
        let text = "Windows Registry Editor Version 5.00\n\n[K]\n@=\"x\"\n\"a\"=hex(7):61,00,\\\n 00,00\n\"b\"=dword:1\n\"c\"=-\n[-K]\n";
        let b = text.as_bytes();
        for i in 0..b.len() {
            let _ = parse(&b[..i]);
            for x in [0u8, b'"', b'\\', b'[', b',', 0xff, b'\n'] {
                let mut m = b.to_vec();
                m[i] = x;
                let _ = parse(&m);
            }
        }
    }
}
