//! LVM2 physical volumes: the label and PV header ([`read_pv`]), the metadata text area and its
//! text format ([`parse_metadata`]: volume group, physical volumes, logical volumes and their
//! segments), and a logical volume read through its linear segments ([`LvDisk`]).
//!
//! On-disk layout (lvm2 `lib/format_text/layout.h`, `lib/label/label.h`):
//! - a 512-byte label in one of the first four sectors: `LABELONE`, its sector number (u64 at
//!   8), a CRC (u32 at 16) of bytes 20..512, the PV header's offset in the sector (u32 at 20),
//!   the type `LVM2 001` (at 24);
//! - the PV header: the PV UUID (32 characters), the device size (u64), then two lists of
//!   (offset u64, size u64) ended by a zero entry: data areas, then metadata areas;
//! - each metadata area starts with a 512-byte header: a CRC (u32) of bytes 4..512, the magic
//!   ` LVM2 x[5A%r0N*>`, version 1, its own start and size (u64), then (offset u64, size u64,
//!   CRC u32, flags u32) locations of the metadata text, the first being the current one. The
//!   text sits in a circular buffer after the header: it may wrap to the buffer's start.
//!
//! Every CRC is lvm2's `calc_crc`: the reflected CRC-32 polynomial with the initial value
//! 0xf597a6cf and no final inversion.
//!
//! Everything is bounded: the text is at most [`MAX_METADATA`] bytes, the parser nests at most
//! [`MAX_DEPTH`] levels, and a hostile value is an error naming where it was.

use crate::bytes::{get_le32, get_le64};
use crate::error::{Error, Result};
use crate::guest::disk::{DiskIo, DiskRead};
pub use crate::guest::fsdetect::format_lvm_uuid;
use crate::guest::fsdetect::lvm_label_sector;

/// The largest metadata text read (LVM's default metadata area is 1 MiB).
pub const MAX_METADATA: u64 = 16 << 20;
/// The deepest nesting of sections and lists the text parser accepts.
pub const MAX_DEPTH: usize = 16;
/// The most data or metadata area entries read from a PV header.
const MAX_AREAS: usize = 16;
/// Metadata area header magic, ` LVM2 x[5A%r0N*>` (lvm2 `FMTT_MAGIC`).
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The initial value of lvm2's CRC (`INITIAL_CRC`).
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// Bytes of the metadata area header.
const MDA_HEADER_SIZE: u64 = 512;
/// The sector size every LVM2 count of sectors uses.
const SECTOR: u64 = 512;

/// lvm2's `calc_crc` over `data`, starting from `crc`.
pub fn lvm_crc(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

fn corrupt(what: String) -> Error {
    Error::Corrupt(what)
}

/// What an LVM2 PV's label and header say, and the metadata text they point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvLabel {
    /// The PV UUID, in text form with dashes.
    pub uuid: String,
    /// The device size the header records (bytes; 0 when not recorded).
    pub device_size: u64,
    /// The current metadata text of the first metadata area, when the PV has one.
    pub metadata: Option<Vec<u8>>,
}

/// Reads the LVM2 label, PV header and current metadata text of the PV that `pv` (a partition
/// or a whole disk) holds. `None` when it holds no LVM2 label.
pub fn read_pv(pv: &dyn DiskRead) -> Result<Option<PvLabel>> {
    let n = pv.len().min(4 * SECTOR) as usize;
    let mut head = vec![0u8; n];
    pv.read_at(&mut head, 0)?;
    let Some(sector) = lvm_label_sector(&head) else {
        return Ok(None);
    };
    let base = sector as usize * 512;
    let Some(label) = head.get(base..base + 512) else {
        return Err(corrupt(format!(
            "LVM2 label (sector {sector}): the volume ends inside it ({} bytes)",
            pv.len()
        )));
    };
    let at = |what: &str, off: usize| format!("LVM2 label (sector {sector}), {what} at byte {off}");
    let sector_xl = get_le64(label, 8).unwrap_or(0);
    if sector_xl != sector {
        return Err(corrupt(format!(
            "{}: sector number {sector_xl}, expected {sector}",
            at("sector_xl", 8)
        )));
    }
    let crc = get_le32(label, 16).unwrap_or(0);
    let want = lvm_crc(INITIAL_CRC, &label[20..]);
    if crc != want {
        return Err(corrupt(format!(
            "{}: checksum {crc:#010x}, computed {want:#010x}",
            at("crc_xl", 16)
        )));
    }
    let off = get_le32(label, 20).unwrap_or(0) as usize;
    // The PV header: 32 + 8 bytes, then the area lists, all inside the label sector.
    if !(32..=512 - 40).contains(&off) {
        return Err(corrupt(format!(
            "{}: PV header offset {off} is outside the label sector",
            at("offset_xl", 20)
        )));
    }
    let uuid = format_lvm_uuid(&label[off..off + 32]);
    let device_size = get_le64(label, off + 32).unwrap_or(0);
    // Data areas, then metadata areas; each list ends with a zero entry.
    let mut pos = off + 40;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        loop {
            let (Some(o), Some(s)) = (get_le64(label, pos), get_le64(label, pos + 8)) else {
                return Err(corrupt(format!(
                    "{}: the area list runs past the label sector",
                    at("PV header", off)
                )));
            };
            pos += 16;
            if o == 0 && s == 0 {
                break;
            }
            if list.len() == MAX_AREAS {
                return Err(corrupt(format!(
                    "{}: more than {MAX_AREAS} areas",
                    at("PV header", off)
                )));
            }
            list.push((o, s));
        }
    }
    let metadata = match lists[1].first() {
        Some(&(o, s)) => read_mda(pv, o, s)?,
        None => None,
    };
    Ok(Some(PvLabel {
        uuid,
        device_size,
        metadata,
    }))
}

/// Reads the current metadata text from the metadata area at `start` (`size` bytes) of `pv`;
/// `None` when the area holds no metadata yet.
fn read_mda(pv: &dyn DiskRead, start: u64, size: u64) -> Result<Option<Vec<u8>>> {
    let here = |what: &str| format!("LVM2 metadata area header at byte {start:#x}: {what}");
    let end = start.checked_add(size).filter(|&e| e <= pv.len());
    if end.is_none() || size < MDA_HEADER_SIZE {
        return Err(corrupt(here(&format!(
            "an area of {size} bytes does not fit the {} bytes of the PV",
            pv.len()
        ))));
    }
    let mut h = vec![0u8; MDA_HEADER_SIZE as usize];
    pv.read_at(&mut h, start)?;
    if h.get(4..20) != Some(&MDA_MAGIC[..]) {
        return Err(corrupt(here("no metadata area magic")));
    }
    let crc = get_le32(&h, 0).unwrap_or(0);
    let want = lvm_crc(INITIAL_CRC, &h[4..]);
    if crc != want {
        return Err(corrupt(here(&format!(
            "checksum {crc:#010x}, computed {want:#010x}"
        ))));
    }
    let version = get_le32(&h, 20).unwrap_or(0);
    if version != 1 {
        return Err(Error::Unsupported(here(&format!(
            "version {version} (only 1 is known)"
        ))));
    }
    // The first raw location is the current metadata (lvm2 reads only it).
    let off = get_le64(&h, 40).unwrap_or(0);
    let len = get_le64(&h, 48).unwrap_or(0);
    let text_crc = get_le32(&h, 56).unwrap_or(0);
    if off == 0 && len == 0 {
        return Ok(None);
    }
    if len > MAX_METADATA || off < MDA_HEADER_SIZE || off >= size || len > size - MDA_HEADER_SIZE {
        return Err(corrupt(here(&format!(
            "metadata text of {len} bytes at {off:#x} does not fit the area of {size} bytes"
        ))));
    }
    let mut text = vec![0u8; len as usize];
    // The buffer is circular: what does not fit before the area's end continues after the
    // header.
    let first = len.min(size - off);
    pv.read_at(&mut text[..first as usize], start + off)?;
    if first < len {
        pv.read_at(&mut text[first as usize..], start + MDA_HEADER_SIZE)?;
    }
    let want = lvm_crc(INITIAL_CRC, &text);
    if text_crc != want {
        return Err(corrupt(here(&format!(
            "metadata text checksum {text_crc:#010x}, computed {want:#010x}"
        ))));
    }
    Ok(Some(text))
}

/// A value of LVM's text metadata format.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A number with a fraction (kept as text).
    Float(String),
    /// `[a, b, ...]`.
    List(Vec<Value>),
    /// `name { ... }`.
    Section(Vec<(String, Value)>),
}

impl Value {
    /// The entry `key` of a section.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    fn sections(&self) -> impl Iterator<Item = (&str, &Value)> {
        let items: &[(String, Value)] = match self {
            Value::Section(items) => items,
            _ => &[],
        };
        items
            .iter()
            .filter(|(_, v)| matches!(v, Value::Section(_)))
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// Parses LVM's text format into the top-level section (its entries in order).
pub fn parse_text(text: &[u8]) -> Result<Value> {
    let mut p = Parser { b: text, pos: 0 };
    let items = p.items(0, true)?;
    Ok(Value::Section(items))
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        let line = 1 + self.b[..self.pos.min(self.b.len())]
            .iter()
            .filter(|&&c| c == b'\n')
            .count();
        corrupt(format!(
            "LVM2 metadata text, line {line} (byte {}): {what}",
            self.pos
        ))
    }
    fn skip_space(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if c == b'#' {
                while self.b.get(self.pos).is_some_and(|&c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() || c == 0 {
                self.pos += 1;
            } else {
                break;
            }
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.b.get(self.pos).copied()
    }
    fn ident(&mut self) -> Result<String> {
        let start = self.pos;
        while self
            .b
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"_.+-".contains(c))
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("a name was expected"));
        }
        Ok(String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
    }
    /// Entries until `}` (or the end of the text at the top level).
    fn items(&mut self, depth: usize, top: bool) -> Result<Vec<(String, Value)>> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let mut items = Vec::new();
        loop {
            match self.peek() {
                None if top => return Ok(items),
                None => return Err(self.err("the text ends inside a section")),
                Some(b'}') if !top => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(_) => {}
            }
            let key = self.ident()?;
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    let inner = self.items(depth + 1, false)?;
                    items.push((key, Value::Section(inner)));
                }
                Some(b'=') => {
                    self.pos += 1;
                    let v = self.value(depth + 1)?;
                    items.push((key, v));
                }
                _ => return Err(self.err(&format!("'=' or '{{' expected after {key:?}"))),
            }
        }
    }
    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                let mut s = Vec::new();
                loop {
                    match self.b.get(self.pos).copied() {
                        None => return Err(self.err("unterminated string")),
                        Some(b'"') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let Some(&c) = self.b.get(self.pos + 1) else {
                                return Err(self.err("unterminated string"));
                            };
                            s.push(c);
                            self.pos += 2;
                        }
                        Some(c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
                Ok(Value::Str(String::from_utf8_lossy(&s).into_owned()))
            }
            Some(b'[') => {
                self.pos += 1;
                let mut list = Vec::new();
                loop {
                    match self.peek() {
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::List(list));
                        }
                        Some(b',') if !list.is_empty() => self.pos += 1,
                        None => return Err(self.err("unterminated list")),
                        _ => {}
                    }
                    if self.peek() == Some(b']') {
                        continue;
                    }
                    list.push(self.value(depth + 1)?);
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                while self
                    .b
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
                {
                    self.pos += 1;
                }
                let t = String::from_utf8_lossy(&self.b[start..self.pos]).into_owned();
                if t.contains('.') {
                    return Ok(Value::Float(t));
                }
                t.parse::<i64>()
                    .map(Value::Int)
                    .map_err(|_| self.err(&format!("bad number {t:?}")))
            }
            _ => Err(self.err("a value was expected")),
        }
    }
}

/// A physical volume as the VG metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PvInfo {
    /// Its name inside the metadata (`pv0`).
    pub name: String,
    /// Its UUID (text form).
    pub uuid: String,
    /// Where its first extent starts, in bytes from the PV's start.
    pub pe_start: u64,
    /// How many extents it has.
    pub pe_count: u64,
}

/// One stripe of a segment: a PV and the first extent on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stripe {
    /// The PV's name in the metadata (`pv0`).
    pub pv: String,
    /// The first extent on that PV.
    pub extent: u64,
}

/// One segment of a logical volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// First logical extent.
    pub start_extent: u64,
    /// Number of extents.
    pub extent_count: u64,
    /// Segment type (`striped` for linear and striped; `thin-pool`, `raid1`, ...).
    pub kind: String,
    /// Its stripes (one for a linear segment).
    pub stripes: Vec<Stripe>,
}

impl Segment {
    /// Whether it maps one run of extents on one PV.
    pub fn is_linear(&self) -> bool {
        self.kind == "striped" && self.stripes.len() == 1
    }
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LvInfo {
    /// Its name.
    pub name: String,
    /// Size in bytes (its extents times the extent size).
    pub size: u64,
    /// Whether it is visible (not an internal LV of a pool or mirror).
    pub visible: bool,
    /// Its segments, in order.
    pub segments: Vec<Segment>,
}

/// A volume group's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VgInfo {
    /// Its name.
    pub name: String,
    /// Its UUID (text form).
    pub uuid: String,
    /// The metadata sequence number (the highest is the current one).
    pub seqno: u64,
    /// Extent size in bytes.
    pub extent_size: u64,
    /// Its physical volumes.
    pub pvs: Vec<PvInfo>,
    /// Its logical volumes.
    pub lvs: Vec<LvInfo>,
}

fn uint(v: &Value, key: &str, what: &str) -> Result<u64> {
    match v.int(key) {
        Some(i) if i >= 0 => Ok(i as u64),
        _ => Err(corrupt(format!(
            "LVM2 metadata: {what} has no valid {key:?}"
        ))),
    }
}

/// Parses a VG's metadata text (as [`read_pv`] returns it) into its PVs and LVs.
pub fn parse_metadata(text: &[u8]) -> Result<VgInfo> {
    let top = parse_text(text)?;
    let Some((name, vg)) = top.sections().next() else {
        return Err(corrupt("LVM2 metadata: no volume group section".into()));
    };
    let what = format!("volume group {name:?}");
    let extent_sectors = uint(vg, "extent_size", &what)?;
    let extent_size = extent_sectors
        .checked_mul(SECTOR)
        .filter(|&s| s > 0)
        .ok_or_else(|| {
            corrupt(format!(
                "LVM2 metadata: {what}: bad extent_size {extent_sectors}"
            ))
        })?;
    let mut pvs = Vec::new();
    if let Some(list) = vg.get("physical_volumes") {
        for (pv_name, pv) in list.sections() {
            let w = format!("{what}, PV {pv_name:?}");
            let pe_start = uint(pv, "pe_start", &w)?
                .checked_mul(SECTOR)
                .ok_or_else(|| corrupt(format!("LVM2 metadata: {w}: pe_start overflows")))?;
            pvs.push(PvInfo {
                name: pv_name.to_string(),
                uuid: pv.str("id").unwrap_or("").to_string(),
                pe_start,
                pe_count: uint(pv, "pe_count", &w)?,
            });
        }
    }
    let mut lvs = Vec::new();
    if let Some(list) = vg.get("logical_volumes") {
        for (lv_name, lv) in list.sections() {
            let w = format!("{what}, LV {lv_name:?}");
            let visible = match lv.get("status") {
                Some(Value::List(l)) => l.contains(&Value::Str("VISIBLE".into())),
                _ => false,
            };
            let mut segments = Vec::new();
            let mut extents: u64 = 0;
            for (seg_name, seg) in lv.sections() {
                let ws = format!("{w}, {seg_name}");
                let start_extent = uint(seg, "start_extent", &ws)?;
                let extent_count = uint(seg, "extent_count", &ws)?;
                let kind = seg.str("type").unwrap_or("").to_string();
                let mut stripes = Vec::new();
                if let Some(Value::List(l)) = seg.get("stripes") {
                    for pair in l.chunks(2) {
                        match pair {
                            [Value::Str(pv), Value::Int(e)] if *e >= 0 => stripes.push(Stripe {
                                pv: pv.clone(),
                                extent: *e as u64,
                            }),
                            _ => {
                                return Err(corrupt(format!(
                                    "LVM2 metadata: {ws}: stripes are not (\"pvN\", extent) pairs"
                                )));
                            }
                        }
                    }
                }
                extents = extents.checked_add(extent_count).ok_or_else(|| {
                    corrupt(format!("LVM2 metadata: {ws}: extent count overflows"))
                })?;
                segments.push(Segment {
                    start_extent,
                    extent_count,
                    kind,
                    stripes,
                });
            }
            segments.sort_by_key(|s| s.start_extent);
            let size = extents
                .checked_mul(extent_size)
                .ok_or_else(|| corrupt(format!("LVM2 metadata: {w}: size overflows")))?;
            lvs.push(LvInfo {
                name: lv_name.to_string(),
                size,
                visible,
                segments,
            });
        }
    }
    Ok(VgInfo {
        name: name.to_string(),
        uuid: vg.str("id").unwrap_or("").to_string(),
        seqno: uint(vg, "seqno", &what)?,
        extent_size,
        pvs,
        lvs,
    })
}

/// A piece of a logical volume: `len` bytes from `lv_start` on the LV are at `disk_start` on
/// the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    lv_start: u64,
    len: u64,
    disk_start: u64,
}

/// A logical volume read through its linear segments, over the disk that holds its PVs.
#[derive(Debug, Clone)]
pub struct LvDisk<D> {
    disk: D,
    len: u64,
    pieces: Vec<Piece>,
}

/// Where a volume's bytes lie on its disk: the linear pieces of a logical volume, or one
/// stretch for a partition; kept by inspection so that adaptation opens the same volume again
/// (for writing) without reading the LVM metadata twice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeLayout {
    len: u64,
    pieces: Vec<Piece>,
}

impl VolumeLayout {
    /// One stretch of `len` bytes from `start` (a partition, the whole disk).
    pub fn contiguous(start: u64, len: u64) -> VolumeLayout {
        VolumeLayout {
            len,
            pieces: vec![Piece {
                lv_start: 0,
                len,
                disk_start: start,
            }],
        }
    }

    /// Size of the volume in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the volume is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The volume on `disk` (the same disk it was found on, or a transaction over it).
    pub fn on<D>(&self, disk: D) -> LvDisk<D> {
        LvDisk {
            disk,
            len: self.len,
            pieces: self.pieces.clone(),
        }
    }
}

impl<D: DiskRead> LvDisk<D> {
    /// The logical volume `lv` of `vg` on `disk`; `pv_at` gives where each PV (by its name in
    /// the metadata) starts on `disk` and how long it is, or `None` when that PV is not on
    /// this disk. Only linear segments are read: a striped, mirrored, thin or RAID segment, a
    /// missing PV, or segments that do not tile the LV are errors saying so.
    pub fn new(
        disk: D,
        vg: &VgInfo,
        lv: &LvInfo,
        pv_at: impl Fn(&str) -> Option<(u64, u64)>,
    ) -> Result<LvDisk<D>> {
        let what = format!("logical volume {}/{}", vg.name, lv.name);
        let mut pieces = Vec::new();
        let mut next: u64 = 0;
        for s in &lv.segments {
            if !s.is_linear() {
                return Err(Error::Unsupported(format!(
                    "{what}: a {} segment with {} stripe(s) is not read (only linear segments)",
                    s.kind,
                    s.stripes.len()
                )));
            }
            let stripe = &s.stripes[0]; // is_linear: exactly one stripe
            let lv_start = s
                .start_extent
                .checked_mul(vg.extent_size)
                .filter(|&o| o == next)
                .ok_or_else(|| {
                    corrupt(format!(
                        "{what}: segments do not follow each other at extent {}",
                        s.start_extent
                    ))
                })?;
            let Some(pv) = vg.pvs.iter().find(|p| p.name == stripe.pv) else {
                return Err(corrupt(format!(
                    "{what}: its segment names {:?}, which the VG does not list",
                    stripe.pv
                )));
            };
            let Some((pv_start, pv_len)) = pv_at(&stripe.pv) else {
                return Err(Error::Unsupported(format!(
                    "{what}: its PV {} ({}) is not on this disk",
                    stripe.pv, pv.uuid
                )));
            };
            let len = s.extent_count.checked_mul(vg.extent_size);
            let on_pv = stripe
                .extent
                .checked_mul(vg.extent_size)
                .and_then(|o| o.checked_add(pv.pe_start));
            let (Some(len), Some(on_pv)) = (len, on_pv) else {
                return Err(corrupt(format!("{what}: a segment's extents overflow")));
            };
            let fits = stripe
                .extent
                .checked_add(s.extent_count)
                .is_some_and(|e| e <= pv.pe_count)
                && on_pv.checked_add(len).is_some_and(|e| e <= pv_len);
            if !fits {
                return Err(corrupt(format!(
                    "{what}: extents {}..+{} lie outside PV {} ({} extents, {pv_len} bytes)",
                    stripe.extent, s.extent_count, stripe.pv, pv.pe_count
                )));
            }
            let disk_start = pv_start
                .checked_add(on_pv)
                .ok_or_else(|| corrupt(format!("{what}: a segment's offset overflows")))?;
            if len > 0 {
                pieces.push(Piece {
                    lv_start,
                    len,
                    disk_start,
                });
            }
            next = lv_start
                .checked_add(len)
                .ok_or_else(|| corrupt(format!("{what}: its size overflows")))?;
        }
        if next != lv.size {
            return Err(corrupt(format!(
                "{what}: its segments cover {next} bytes, its size is {}",
                lv.size
            )));
        }
        Ok(LvDisk {
            disk,
            len: next,
            pieces,
        })
    }
}

impl<D> LvDisk<D> {
    /// Where this volume lies on its disk.
    pub fn layout(&self) -> VolumeLayout {
        VolumeLayout {
            len: self.len,
            pieces: self.pieces.clone(),
        }
    }

    /// Calls `f(range in the buffer, offset on the disk)` for each piece of the LV that
    /// `len` bytes from `offset` cover, in order.
    fn walk(
        &self,
        what: &str,
        offset: u64,
        len: usize,
        mut f: impl FnMut(std::ops::Range<usize>, u64) -> Result<()>,
    ) -> Result<()> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{what} the logical volume: {len} bytes at offset {offset:#x} reach past \
                     the end ({:#x} bytes)",
                    self.len
                ))
            })?;
        let mut pos = offset;
        while pos < end {
            // The pieces tile [0, len) in order (checked in `new`).
            let i = self.pieces.partition_point(|p| p.lv_start + p.len <= pos);
            let Some(p) = self.pieces.get(i) else {
                return Err(Error::Internal(format!(
                    "logical volume offset {pos:#x} is in no segment"
                )));
            };
            let n = (p.lv_start + p.len).min(end) - pos;
            let b = (pos - offset) as usize;
            f(b..b + n as usize, p.disk_start + (pos - p.lv_start))?;
            pos += n;
        }
        Ok(())
    }
}

impl<D: DiskRead> DiskRead for LvDisk<D> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let disk = &self.disk;
        self.walk("reading", offset, buf.len(), |r, at| {
            disk.read_at(&mut buf[r], at)
        })
    }
}

/// Writes go through the same linear segments onto the PVs' disk (an LV of a guest being
/// adapted, over a [`TxDisk`](crate::guest::disk::TxDisk)).
impl<D: DiskIo> DiskIo for LvDisk<D> {
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let mut pieces = Vec::new();
        self.walk("writing", offset, buf.len(), |r, at| {
            pieces.push((r, at));
            Ok(())
        })?;
        for (r, at) in pieces {
            self.disk.write_at(&buf[r], at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    /// Metadata text as `vgcreate vg0` + `lvcreate -L 3M -n root` + `lvcreate -L 2M -n data`
    /// write it (trimmed), extent size 1 MiB (2048 sectors), the PV's extents from 1 MiB.
    pub(crate) const TEXT: &str = r#"vg0 {
id = "AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGGGG"
seqno = 3
format = "lvm2" # informational
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 2048
max_lv = 0

physical_volumes {

pv0 {
id = "abcdef-ghij-klmn-opqr-stuv-wxyz-012345"
device = "/dev/loop0"
status = ["ALLOCATABLE"]
dev_size = 16384
pe_start = 2048
pe_count = 7
}
}

logical_volumes {

root {
id = "x"
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 2

segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1 # linear
stripes = [
"pv0", 4
]
}
segment2 {
start_extent = 1
extent_count = 2
type = "striped"
stripe_count = 1
stripes = [
"pv0", 0
]
}
}

data {
status = ["READ", "WRITE", "VISIBLE"]
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 2
stripe_size = 128
stripes = [
"pv0", 2,
"pv0", 5
]
}
}
}
}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Mon Dec  7 04:00:00 2026

contents = "Text Format Volume Group"
version = 1
description = "Created *after* executing 'lvcreate'"
creation_time = 1796000000 # Mon Dec  7 04:00:00 2026
"#;

    #[test]
    fn metadata_text_gives_pvs_lvs_and_segments() {
        let vg = parse_metadata(TEXT.as_bytes()).unwrap();
        assert_eq!(vg.name, "vg0");
        assert_eq!(vg.seqno, 3);
        assert_eq!(vg.extent_size, 1 << 20);
        assert_eq!(vg.pvs.len(), 1);
        assert_eq!(vg.pvs[0].pe_start, 1 << 20);
        assert_eq!(vg.lvs.len(), 2);
        let root = &vg.lvs[0];
        assert_eq!(
            (root.name.as_str(), root.size, root.visible),
            ("root", 3 << 20, true)
        );
        assert!(root.segments.iter().all(Segment::is_linear));
        assert_eq!(root.segments[0].stripes[0].extent, 4);
        let data = &vg.lvs[1];
        assert_eq!(data.size, 2 << 20);
        assert!(!data.segments[0].is_linear());
        assert_eq!(data.segments[0].stripes.len(), 2);
    }

    #[test]
    fn linear_segments_map_onto_the_pv_and_striped_ones_are_refused() {
        let vg = parse_metadata(TEXT.as_bytes()).unwrap();
        // A disk with the PV at 1 MiB: 8 MiB of PV, extents from PV byte 1 MiB; every extent
        // filled with its number.
        let pv_start = 1u64 << 20;
        let mut d = vec![0u8; 10 << 20];
        for e in 0..7u64 {
            let at = (pv_start + (1 << 20) + (e << 20)) as usize;
            d[at..at + (1 << 20)].fill(e as u8 + 1);
        }
        let disk = MemStorage::from_vec(d.clone());
        let pv_at = |n: &str| (n == "pv0").then_some((pv_start, 8u64 << 20));
        let lv = LvDisk::new(&disk, &vg, &vg.lvs[0], pv_at).unwrap();
        assert_eq!(lv.len(), 3 << 20);
        // Across the boundary of segment 1 (PV extent 4) and segment 2 (PV extents 0, 1).
        let mut b = vec![0u8; 4];
        lv.read_at(&mut b, (1 << 20) - 2).unwrap();
        assert_eq!(b, [5, 5, 1, 1]);
        lv.read_at(&mut b, (3 << 20) - 4).unwrap();
        assert_eq!(b, [2, 2, 2, 2]);
        assert!(lv.read_at(&mut b, (3 << 20) - 3).is_err());
        // Writes land on the PV extents the reads come from, across the same boundary.
        let mut copy = MemStorage::from_vec(d);
        let mut lvw = LvDisk::new(&mut copy, &vg, &vg.lvs[0], pv_at).unwrap();
        lvw.write_at(&[9, 8, 7, 6], (1 << 20) - 2).unwrap();
        assert!(lvw.write_at(&[0; 4], (3 << 20) - 3).is_err());
        let mut b2 = vec![0u8; 4];
        lvw.read_at(&mut b2, (1 << 20) - 2).unwrap();
        assert_eq!(b2, [9, 8, 7, 6]);
        lv.read_at(&mut b, (1 << 20) - 2).unwrap();
        assert_eq!(b, [5, 5, 1, 1], "the original disk is untouched");
        let e = LvDisk::new(&disk, &vg, &vg.lvs[1], pv_at).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(e.to_string().contains("2 stripe(s)"), "{e}");
        // The PV elsewhere: not on this disk.
        let e = LvDisk::new(&disk, &vg, &vg.lvs[0], |_| None).unwrap_err();
        assert!(e.to_string().contains("not on this disk"), "{e}");
        // A PV too small for the extents the LV names.
        let e = LvDisk::new(&disk, &vg, &vg.lvs[0], |_| Some((pv_start, 3 << 20))).unwrap_err();
        assert!(e.to_string().contains("outside PV"), "{e}");
    }

    /// A PV as `pvcreate` lays it out: label in sector 1, PV header, one data area from 1 MiB,
    /// one metadata area at 4 KiB of 1020 KiB holding `text` at `text_off` (wrapping when it
    /// does not fit).
    pub(crate) fn pv_bytes(size: usize, text: &[u8], text_off: u64) -> Vec<u8> {
        let mut d = vec![0u8; size];
        let l = 512;
        d[l..l + 8].copy_from_slice(b"LABELONE"); // id
        d[l + 8..l + 16].copy_from_slice(&1u64.to_le_bytes()); // sector_xl
        d[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes()); // offset_xl
        d[l + 24..l + 32].copy_from_slice(b"LVM2 001"); // type
        let h = l + 32;
        d[h..h + 32].copy_from_slice(b"abcdefghijklmnopqrstuvwxyz012345"); // pv_uuid
        d[h + 32..h + 40].copy_from_slice(&(size as u64).to_le_bytes()); // device_size_xl
        d[h + 40..h + 48].copy_from_slice(&(1u64 << 20).to_le_bytes()); // data area offset
        // data area size 0 (to the end); then the terminating zero entry (already zero).
        let m = h + 40 + 32;
        d[m..m + 8].copy_from_slice(&4096u64.to_le_bytes()); // metadata area offset
        d[m + 8..m + 16].copy_from_slice(&((1u64 << 20) - 4096).to_le_bytes()); // its size
        let crc = lvm_crc(INITIAL_CRC, &d[l + 20..l + 512]);
        d[l + 16..l + 20].copy_from_slice(&crc.to_le_bytes()); // crc_xl
        let a = 4096;
        let mda_size = (1u64 << 20) - 4096;
        d[a + 4..a + 20].copy_from_slice(MDA_MAGIC);
        d[a + 20..a + 24].copy_from_slice(&1u32.to_le_bytes()); // version
        d[a + 24..a + 32].copy_from_slice(&4096u64.to_le_bytes()); // start
        d[a + 32..a + 40].copy_from_slice(&mda_size.to_le_bytes()); // size
        d[a + 40..a + 48].copy_from_slice(&text_off.to_le_bytes()); // raw_locn offset
        d[a + 48..a + 56].copy_from_slice(&(text.len() as u64).to_le_bytes()); // size
        let tcrc = lvm_crc(INITIAL_CRC, text);
        d[a + 56..a + 60].copy_from_slice(&tcrc.to_le_bytes()); // checksum
        let first = (text.len() as u64).min(mda_size - text_off) as usize;
        let t = a + text_off as usize;
        d[t..t + first].copy_from_slice(&text[..first]);
        d[a + 512..a + 512 + text.len() - first].copy_from_slice(&text[first..]);
        let hcrc = lvm_crc(INITIAL_CRC, &d[a + 4..a + 512]);
        d[a..a + 4].copy_from_slice(&hcrc.to_le_bytes());
        d
    }

    #[test]
    fn a_pv_label_and_its_metadata_area() {
        let d = MemStorage::from_vec(pv_bytes(2 << 20, TEXT.as_bytes(), 512));
        let pv = read_pv(&d).unwrap().unwrap();
        assert_eq!(pv.uuid, "abcdef-ghij-klmn-opqr-stuv-wxyz-012345");
        assert_eq!(pv.device_size, 2 << 20);
        assert_eq!(pv.metadata.as_deref(), Some(TEXT.as_bytes()));
        // Wrapping around the circular buffer's end.
        let off = (1u64 << 20) - 4096 - 100;
        let d = MemStorage::from_vec(pv_bytes(2 << 20, TEXT.as_bytes(), off));
        let pv = read_pv(&d).unwrap().unwrap();
        assert_eq!(pv.metadata.as_deref(), Some(TEXT.as_bytes()));
        // Not a PV.
        assert_eq!(read_pv(&MemStorage::from_vec(vec![0; 4096])).unwrap(), None);
    }

    #[test]
    fn damaged_labels_and_areas_are_errors() {
        let good = pv_bytes(2 << 20, TEXT.as_bytes(), 512);
        // A flipped byte in the PV header: label CRC.
        let mut d = good.clone();
        d[512 + 40] ^= 1;
        let e = read_pv(&MemStorage::from_vec(d)).unwrap_err().to_string();
        assert!(e.contains("crc_xl at byte 16"), "{e}");
        // A flipped byte in the text: text CRC.
        let mut d = good.clone();
        d[4096 + 600] ^= 1;
        let e = read_pv(&MemStorage::from_vec(d)).unwrap_err().to_string();
        assert!(e.contains("metadata text checksum"), "{e}");
        // The PV cut short before its metadata area ends.
        let d = good[..8192].to_vec();
        let e = read_pv(&MemStorage::from_vec(d)).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        // Every truncation and a sweep of single-byte changes: never a panic.
        for n in (0..6000).step_by(7) {
            let _ = read_pv(&MemStorage::from_vec(good[..n].to_vec()));
        }
        for i in (0..1200).step_by(3) {
            let mut d = good.clone();
            d[512 + i % 512] = 0xFF;
            d[4096 + i] ^= 0x5A;
            let _ = read_pv(&MemStorage::from_vec(d));
        }
    }

    #[test]
    fn hostile_text_is_an_error_not_a_panic() {
        for bad in [
            &b"vg0 {"[..],
            b"vg0 { a = \"x",
            b"vg0 { a = [1, 2",
            b"vg0 { a = 99999999999999999999999 }",
            b"vg0 { = }",
            b"vg0 { extent_size = 0 seqno = 1 }",
            b"vg0 { extent_size = -5 seqno = 1 }",
            b"vg0 { extent_size = 9223372036854775807 seqno = 1 }",
            b"",
        ] {
            assert!(
                parse_metadata(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "a { ".repeat(100) + &"} ".repeat(100);
        let e = parse_text(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        let deep = "a = ".to_string() + &"[".repeat(100);
        assert!(parse_text(deep.as_bytes()).is_err());
        // Every prefix of a real text.
        for n in 0..TEXT.len() {
            let _ = parse_metadata(&TEXT.as_bytes()[..n]);
        }
        // Overflowing sizes.
        let big = TEXT.replace("extent_count = 2\n", "extent_count = 9223372036854775807\n");
        let _ = parse_metadata(big.as_bytes());
    }
}
