//! Value types and the decoding and encoding of value data.
//!
//! The hive stores a value as a type number and raw bytes; [`RegData`] is the decoded form.
//! Decoding is lenient the way Windows' own tools are (a string without its terminating NUL, an
//! odd trailing byte), and never fails: data that does not fit its type is kept as raw bytes in
//! [`RegData::Other`], so nothing read from a hive is lost on a round trip.

use super::HiveError;

/// A registry value type (`REG_*`). Any 32-bit number is a valid type; the named constants are
/// the ones Windows defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegType(pub u32);

impl RegType {
    /// `REG_NONE` (0).
    pub const NONE: RegType = RegType(0);
    /// `REG_SZ` (1): a UTF-16LE string with a terminating NUL.
    pub const SZ: RegType = RegType(1);
    /// `REG_EXPAND_SZ` (2): a string with `%VARIABLE%` references.
    pub const EXPAND_SZ: RegType = RegType(2);
    /// `REG_BINARY` (3).
    pub const BINARY: RegType = RegType(3);
    /// `REG_DWORD` (4): 32-bit little endian.
    pub const DWORD: RegType = RegType(4);
    /// `REG_DWORD_BIG_ENDIAN` (5).
    pub const DWORD_BIG_ENDIAN: RegType = RegType(5);
    /// `REG_LINK` (6): a symbolic link target (UTF-16LE, no NUL).
    pub const LINK: RegType = RegType(6);
    /// `REG_MULTI_SZ` (7): NUL-separated strings ending with an empty string.
    pub const MULTI_SZ: RegType = RegType(7);
    /// `REG_RESOURCE_LIST` (8).
    pub const RESOURCE_LIST: RegType = RegType(8);
    /// `REG_FULL_RESOURCE_DESCRIPTOR` (9).
    pub const FULL_RESOURCE_DESCRIPTOR: RegType = RegType(9);
    /// `REG_RESOURCE_REQUIREMENTS_LIST` (10).
    pub const RESOURCE_REQUIREMENTS_LIST: RegType = RegType(10);
    /// `REG_QWORD` (11): 64-bit little endian.
    pub const QWORD: RegType = RegType(11);
    /// A device property of type `DEVPROP_TYPE_FILETIME` (0x10), stored as Windows stores
    /// device properties (`...\Properties\{GUID}\NNNN` keys): type `0xFFFF0000` + the
    /// `DEVPROP_TYPE`, data a little-endian FILETIME.
    pub const DEVPROP_FILETIME: RegType = RegType(0xFFFF_0010);

    /// The Windows name (`REG_DWORD`), or `REG_0x...` for a type without one.
    pub fn name(self) -> String {
        match self.0 {
            0 => "REG_NONE".into(),
            1 => "REG_SZ".into(),
            2 => "REG_EXPAND_SZ".into(),
            3 => "REG_BINARY".into(),
            4 => "REG_DWORD".into(),
            5 => "REG_DWORD_BIG_ENDIAN".into(),
            6 => "REG_LINK".into(),
            7 => "REG_MULTI_SZ".into(),
            8 => "REG_RESOURCE_LIST".into(),
            9 => "REG_FULL_RESOURCE_DESCRIPTOR".into(),
            10 => "REG_RESOURCE_REQUIREMENTS_LIST".into(),
            11 => "REG_QWORD".into(),
            n => format!("REG_{n:#x}"),
        }
    }

    /// Parses a type as a user writes it: `dword`, `REG_DWORD`, `reg_dword`, `sz`, `expand_sz`
    /// (or `expand`), `multi_sz` (or `multi`), `binary`, `none`, `qword`, `dword_be`
    /// (or `dword_big_endian`), `link`, `resource_list`, `full_resource_descriptor`,
    /// `resource_requirements_list`, or a number (`4`, `0x4`).
    pub fn parse(s: &str) -> Result<RegType, HiveError> {
        let l = s.trim().to_ascii_lowercase();
        let l = l.strip_prefix("reg_").unwrap_or(&l);
        let t = match l {
            "none" => 0,
            "sz" | "string" => 1,
            "expand_sz" | "expand" | "expandsz" => 2,
            "binary" | "bin" => 3,
            "dword" | "dword_little_endian" => 4,
            "dword_be" | "dword_big_endian" => 5,
            "link" => 6,
            "multi_sz" | "multi" | "multisz" => 7,
            "resource_list" => 8,
            "full_resource_descriptor" => 9,
            "resource_requirements_list" => 10,
            "qword" | "qword_little_endian" => 11,
            other => {
                let n = if let Some(h) = other.strip_prefix("0x") {
                    u32::from_str_radix(h, 16).ok()
                } else {
                    other.parse::<u32>().ok()
                };
                n.ok_or_else(|| {
                    HiveError::InvalidArgument(format!(
                        "unknown value type '{s}' (expected sz, expand_sz, multi_sz, dword, \
                         dword_be, qword, binary, none, link, or a number)"
                    ))
                })?
            }
        };
        Ok(RegType(t))
    }
}

impl std::fmt::Display for RegType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Decoded value data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegData {
    /// `REG_NONE`: raw bytes.
    None(Vec<u8>),
    /// `REG_SZ`.
    Sz(String),
    /// `REG_EXPAND_SZ`.
    ExpandSz(String),
    /// `REG_BINARY`.
    Binary(Vec<u8>),
    /// `REG_DWORD`.
    Dword(u32),
    /// `REG_DWORD_BIG_ENDIAN`.
    DwordBigEndian(u32),
    /// `REG_LINK`.
    Link(String),
    /// `REG_MULTI_SZ`.
    MultiSz(Vec<String>),
    /// `REG_QWORD`.
    Qword(u64),
    /// Any other type (resource lists included), or data that does not fit its type (a DWORD
    /// of 3 bytes, a string of odd length): the raw bytes.
    Other(RegType, Vec<u8>),
}

/// Decodes UTF-16LE bytes up to the first NUL unit (a trailing odd byte is ignored).
pub fn utf16_until_nul(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Encodes `s` as UTF-16LE, without a terminating NUL.
pub fn utf16_bytes(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn sz_bytes(s: &str) -> Vec<u8> {
    let mut v = utf16_bytes(s);
    v.extend_from_slice(&[0, 0]);
    v
}

impl RegData {
    /// Decodes `data` stored with type `kind`. Never fails (see the module docs).
    pub fn decode(kind: RegType, data: &[u8]) -> RegData {
        match kind {
            RegType::NONE => RegData::None(data.to_vec()),
            RegType::SZ | RegType::EXPAND_SZ | RegType::LINK => {
                // Lossless only when the bytes are what encode() would give back; otherwise keep
                // them raw so a round trip never changes the data.
                let s = if kind == RegType::LINK {
                    let units: Vec<u16> = data
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16(&units)
                        .ok()
                        .filter(|_| data.len() % 2 == 0)
                } else {
                    let s = utf16_until_nul(data);
                    Some(s)
                };
                match s {
                    Some(s) => {
                        let d = match kind {
                            RegType::SZ => RegData::Sz(s),
                            RegType::EXPAND_SZ => RegData::ExpandSz(s),
                            _ => RegData::Link(s),
                        };
                        if d.encode() == data {
                            d
                        } else {
                            RegData::Other(kind, data.to_vec())
                        }
                    }
                    None => RegData::Other(kind, data.to_vec()),
                }
            }
            RegType::BINARY => RegData::Binary(data.to_vec()),
            RegType::DWORD if data.len() == 4 => {
                RegData::Dword(u32::from_le_bytes([data[0], data[1], data[2], data[3]]))
            }
            RegType::DWORD_BIG_ENDIAN if data.len() == 4 => {
                RegData::DwordBigEndian(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
            }
            RegType::QWORD if data.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                RegData::Qword(u64::from_le_bytes(b))
            }
            RegType::MULTI_SZ => {
                let d = RegData::MultiSz(decode_multi_sz(data));
                if d.encode() == data {
                    d
                } else {
                    RegData::Other(kind, data.to_vec())
                }
            }
            _ => RegData::Other(kind, data.to_vec()),
        }
    }

    /// The type this data is stored with.
    pub fn kind(&self) -> RegType {
        match self {
            RegData::None(_) => RegType::NONE,
            RegData::Sz(_) => RegType::SZ,
            RegData::ExpandSz(_) => RegType::EXPAND_SZ,
            RegData::Binary(_) => RegType::BINARY,
            RegData::Dword(_) => RegType::DWORD,
            RegData::DwordBigEndian(_) => RegType::DWORD_BIG_ENDIAN,
            RegData::Link(_) => RegType::LINK,
            RegData::MultiSz(_) => RegType::MULTI_SZ,
            RegData::Qword(_) => RegType::QWORD,
            RegData::Other(t, _) => *t,
        }
    }

    /// The bytes to store: strings as UTF-16LE with a terminating NUL (`REG_LINK` without),
    /// multi-strings each NUL-terminated plus a final NUL, numbers in their byte order.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RegData::None(b) | RegData::Binary(b) | RegData::Other(_, b) => b.clone(),
            RegData::Sz(s) | RegData::ExpandSz(s) => sz_bytes(s),
            RegData::Link(s) => utf16_bytes(s),
            RegData::Dword(v) => v.to_le_bytes().to_vec(),
            RegData::DwordBigEndian(v) => v.to_be_bytes().to_vec(),
            RegData::Qword(v) => v.to_le_bytes().to_vec(),
            RegData::MultiSz(list) => {
                let mut v = Vec::new();
                for s in list {
                    v.extend(sz_bytes(s));
                }
                v.extend_from_slice(&[0, 0]);
                v
            }
        }
    }

    /// Parses data as a user writes it on the command line for type `kind`: a string for the
    /// string types (for `REG_MULTI_SZ`, each further argument is one string), a decimal or
    /// `0x` hexadecimal number for DWORD/QWORD, hex bytes (`01 ff`, `01,ff` or `01ff`) for the
    /// rest.
    pub fn from_args(kind: RegType, args: &[String]) -> Result<RegData, HiveError> {
        let one = || -> Result<&str, HiveError> {
            match args {
                [a] => Ok(a.as_str()),
                _ => Err(HiveError::InvalidArgument(format!(
                    "type {kind} takes exactly one data argument, {} given",
                    args.len()
                ))),
            }
        };
        let num = |s: &str, max: u64| -> Result<u64, HiveError> {
            let t = s.trim();
            let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                u64::from_str_radix(h, 16).ok()
            } else {
                t.parse::<u64>().ok()
            };
            v.filter(|&v| v <= max).ok_or_else(|| {
                HiveError::InvalidArgument(format!(
                    "'{s}' is not a number for {kind} (decimal or 0x hexadecimal, at most {max:#x})"
                ))
            })
        };
        Ok(match kind {
            RegType::SZ => RegData::Sz(one()?.to_string()),
            RegType::EXPAND_SZ => RegData::ExpandSz(one()?.to_string()),
            RegType::LINK => RegData::Link(one()?.to_string()),
            RegType::MULTI_SZ => RegData::MultiSz(args.to_vec()),
            RegType::DWORD => RegData::Dword(num(one()?, u32::MAX as u64)? as u32),
            RegType::DWORD_BIG_ENDIAN => {
                RegData::DwordBigEndian(num(one()?, u32::MAX as u64)? as u32)
            }
            RegType::QWORD => RegData::Qword(num(one()?, u64::MAX)?),
            other => {
                let joined = args.join(" ");
                let bytes = parse_hex_bytes(&joined)?;
                match other {
                    RegType::NONE => RegData::None(bytes),
                    RegType::BINARY => RegData::Binary(bytes),
                    t => RegData::Other(t, bytes),
                }
            }
        })
    }
}

/// Splits `REG_MULTI_SZ` data into its strings (stopping at the empty string that ends it).
pub fn decode_multi_sz(data: &[u8]) -> Vec<String> {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let mut out = Vec::new();
    for part in units.split(|&u| u == 0) {
        if part.is_empty() {
            break;
        }
        out.push(String::from_utf16_lossy(part));
    }
    out
}

/// Parses hex bytes written as `01 ff`, `01,ff`, `01:ff` or `01ff` (empty input: no bytes).
pub fn parse_hex_bytes(s: &str) -> Result<Vec<u8>, HiveError> {
    let digits: String = s
        .chars()
        .filter(|c| !matches!(c, ' ' | ',' | ':' | '\t' | '\n' | '\r'))
        .collect();
    if digits.len() % 2 != 0 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(HiveError::InvalidArgument(format!(
            "'{s}' is not a list of hex bytes (e.g. '01 ff 00' or '01,ff,00')"
        )));
    }
    Ok((0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap_or(0))
        .collect())
}

impl std::fmt::Display for RegData {
    /// A one-line human form: strings as they are, numbers in hex and decimal, bytes in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match self {
            RegData::Sz(s) | RegData::ExpandSz(s) | RegData::Link(s) => f.write_str(s),
            RegData::MultiSz(l) => f.write_str(&l.join("\n")),
            RegData::Dword(v) | RegData::DwordBigEndian(v) => write!(f, "{v:#010x} ({v})"),
            RegData::Qword(v) => write!(f, "{v:#018x} ({v})"),
            RegData::None(b) | RegData::Binary(b) | RegData::Other(_, b) => f.write_str(&hex(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for d in [
            RegData::Sz("system32\\drivers\\viostor.sys".into()),
            RegData::ExpandSz("%SystemRoot%\\x".into()),
            RegData::MultiSz(vec!["a".into(), "bé".into()]),
            RegData::MultiSz(vec![]),
            RegData::Dword(0xdead_beef),
            RegData::DwordBigEndian(1),
            RegData::Qword(u64::MAX),
            RegData::Binary(vec![1, 0xff, 0, 0]),
            RegData::None(vec![]),
            RegData::Link("\\Registry\\Machine\\System\\ControlSet001".into()),
            RegData::Other(RegType::RESOURCE_LIST, vec![1, 2, 3]),
        ] {
            assert_eq!(RegData::decode(d.kind(), &d.encode()), d, "{d:?}");
        }
    }

    #[test]
    fn odd_data_is_kept_raw() {
        // A DWORD of 3 bytes, an SZ without NUL, an SZ with garbage after the NUL.
        for (t, b) in [
            (RegType::DWORD, vec![1u8, 2, 3]),
            (RegType::SZ, vec![b'a', 0]),
            (RegType::SZ, vec![b'a', 0, 0, 0, b'x', 0]),
            (RegType::MULTI_SZ, vec![b'a', 0, 0, 0]),
        ] {
            let d = RegData::decode(t, &b);
            assert_eq!(d.encode(), b, "{d:?}");
        }
    }

    #[test]
    fn parses_types_and_args() {
        assert_eq!(RegType::parse("dword").unwrap(), RegType::DWORD);
        assert_eq!(RegType::parse("REG_EXPAND_SZ").unwrap(), RegType::EXPAND_SZ);
        assert_eq!(RegType::parse("0x20").unwrap(), RegType(0x20));
        assert!(RegType::parse("dwrod").is_err());
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            RegData::from_args(RegType::DWORD, &a(&["0x10"])).unwrap(),
            RegData::Dword(16)
        );
        assert!(RegData::from_args(RegType::DWORD, &a(&["4294967296"])).is_err());
        assert_eq!(
            RegData::from_args(RegType::BINARY, &a(&["01,ff", "00"])).unwrap(),
            RegData::Binary(vec![1, 0xff, 0])
        );
        assert!(RegData::from_args(RegType::BINARY, &a(&["0g"])).is_err());
    }
}
