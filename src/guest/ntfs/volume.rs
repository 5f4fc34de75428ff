//! The volume's plumbing: run-list I/O, MFT records (read, write with `$MFTMirr`, allocate,
//! grow `$MFT`), attribute streams (with attribute lists for reading), cluster allocation, and
//! path resolution.

use super::attribute;
use super::dir::Dir;
use super::index::{self, IndexEntry};
use super::record::{self, Attr, NonResidentSizes, Record};
use super::runlist::{self, Run};
use super::{DirEntry, FIRST_USER_RECORD, NtfsError, NtfsVolume, REF_MASK, ROOT};
use crate::bytes::{le16, le32, le64};
use crate::error::Result;
use crate::guest::disk::{DiskIo, DiskRead};

/// A non-resident attribute's clusters and sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    /// Runs from VCN 0.
    pub runs: Vec<Run>,
    /// Allocated bytes.
    pub alloc: u64,
    /// Logical size.
    pub size: u64,
    /// Initialized size.
    pub init: u64,
    /// Attribute flags (compressed, encrypted, sparse).
    pub flags: u16,
}

impl Stream {
    /// `clusters` contiguous clusters from `lcn`, all initialized.
    pub fn contiguous(lcn: u64, clusters: u64, cluster_size: u64) -> Stream {
        let bytes = clusters * cluster_size;
        Stream {
            runs: vec![Run {
                vcn: 0,
                len: clusters,
                lcn: Some(lcn),
            }],
            alloc: bytes,
            size: bytes,
            init: bytes,
            flags: 0,
        }
    }

    /// Clusters mapped.
    pub fn clusters(&self) -> u64 {
        self.runs.last().map(|r| r.vcn + r.len).unwrap_or(0)
    }

    /// Appends extents (start, len) of clusters, merging with the last run when adjacent.
    pub fn append(&mut self, extents: &[(u64, u64)]) {
        for &(lcn, len) in extents {
            let vcn = self.clusters();
            if let Some(last) = self.runs.last_mut() {
                if let Some(l) = last.lcn {
                    if l + last.len == lcn {
                        last.len += len;
                        continue;
                    }
                }
            }
            self.runs.push(Run {
                vcn,
                len,
                lcn: Some(lcn),
            });
        }
    }

    /// Drops the clusters from VCN `keep` on; returns the dropped allocated extents.
    pub fn truncate(&mut self, keep: u64) -> Vec<(u64, u64)> {
        let mut freed = Vec::new();
        let mut out = Vec::new();
        for r in &self.runs {
            if r.vcn + r.len <= keep {
                out.push(*r);
            } else if r.vcn >= keep {
                if let Some(l) = r.lcn {
                    freed.push((l, r.len));
                }
            } else {
                let k = keep - r.vcn;
                out.push(Run { len: k, ..*r });
                if let Some(l) = r.lcn {
                    freed.push((l + k, r.len - k));
                }
            }
        }
        self.runs = out;
        freed
    }

    /// The highest VCN field of the attribute (`u64::MAX`, i.e. -1, when empty).
    pub fn highest_vcn(&self) -> u64 {
        self.clusters().wrapping_sub(1)
    }

    /// The non-resident attribute holding this stream.
    pub fn attribute(&self, ty: u32, name: &[u16]) -> Vec<u8> {
        record::non_resident(
            ty,
            name,
            self.flags,
            NonResidentSizes {
                highest_vcn: self.highest_vcn(),
                alloc: self.alloc,
                size: self.size,
                init: self.init,
            },
            &runlist::encode(&self.runs),
        )
    }
}

/// An attribute's value: in the record, or in clusters.
#[derive(Debug, Clone)]
pub enum Loc {
    /// Resident value.
    Resident(Vec<u8>),
    /// Non-resident.
    NonResident(Stream),
}

impl Loc {
    /// Logical size.
    pub fn size(&self) -> u64 {
        match self {
            Loc::Resident(v) => v.len() as u64,
            Loc::NonResident(s) => s.size,
        }
    }
}

/// A path resolved to an entry of its parent's index.
#[derive(Debug, Clone)]
pub struct Node {
    /// MFT record number.
    pub record: u64,
    /// Whether it is a folder.
    pub is_dir: bool,
    /// The index entry naming it.
    pub entry: IndexEntry,
}

impl<D: DiskRead> NtfsVolume<D> {
    pub(super) fn cs(&self) -> u64 {
        self.boot.cluster_size
    }

    /// Absolute disk pieces of bytes `off..off+len` of a run list: (disk offset or `None` for
    /// sparse, offset in the buffer, length).
    fn pieces(
        &self,
        runs: &[Run],
        off: u64,
        len: usize,
        what: &str,
    ) -> Result<Vec<(Option<u64>, usize, usize)>> {
        let cs = self.cs();
        let end = off
            .checked_add(len as u64)
            .ok_or_else(|| NtfsError::corrupt(what, 0, "byte range overflows"))?;
        let mut out = Vec::new();
        let mut pos = off;
        for r in runs {
            if pos >= end {
                break;
            }
            let (Some(rs), Some(re)) = (
                r.vcn.checked_mul(cs),
                r.vcn.checked_add(r.len).and_then(|v| v.checked_mul(cs)),
            ) else {
                return Err(NtfsError::corrupt(what, 0, "run list overflows").into());
            };
            if re <= pos || rs > pos {
                continue;
            }
            let n = (re.min(end) - pos) as usize;
            let disk = match r.lcn {
                Some(l) => Some(
                    l.checked_mul(cs)
                        .and_then(|b| b.checked_add(pos - rs))
                        .ok_or_else(|| NtfsError::corrupt(what, 0, "LCN overflows"))?,
                ),
                None => None,
            };
            out.push((disk, (pos - off) as usize, n));
            pos += n as u64;
        }
        if pos < end {
            return Err(NtfsError::corrupt(
                what,
                0,
                format!(
                    "bytes {pos:#x}..{end:#x} are past the end of its run list ({} clusters)",
                    runs.last().map(|r| r.vcn + r.len).unwrap_or(0)
                ),
            )
            .into());
        }
        Ok(out)
    }

    /// Reads through a run list (sparse runs read as zeros).
    pub(super) fn read_runs(
        &self,
        runs: &[Run],
        off: u64,
        buf: &mut [u8],
        what: &str,
    ) -> Result<()> {
        for (disk, b, n) in self.pieces(runs, off, buf.len(), what)? {
            match disk {
                Some(d) => self.disk.read_at(&mut buf[b..b + n], d)?,
                None => buf[b..b + n].fill(0),
            }
        }
        Ok(())
    }

    /// The whole (initialized) content of a stream, refused over `max` bytes.
    pub(super) fn read_stream(&self, s: &Stream, what: &str, max: u64) -> Result<Vec<u8>> {
        if s.size > max {
            return Err(NtfsError::Unsupported(format!(
                "{what} is {} bytes, more than the {max} this reader loads",
                s.size
            ))
            .into());
        }
        let mut buf = vec![0u8; s.size as usize];
        self.read_loc(&Loc::NonResident(s.clone()), 0, &mut buf)?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes at `off` of a value; bytes past the initialized size or the
    /// end read as zeros.
    pub(super) fn read_loc(&self, loc: &Loc, off: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        match loc {
            Loc::Resident(v) => {
                if off < v.len() as u64 {
                    let o = off as usize;
                    let n = (v.len() - o).min(buf.len());
                    buf[..n].copy_from_slice(&v[o..o + n]);
                }
            }
            Loc::NonResident(s) => {
                if s.flags & (record::ATTR_COMPRESSED | record::ATTR_ENCRYPTED) != 0 {
                    return Err(NtfsError::Unsupported(format!(
                        "compressed or encrypted data (attribute flags {:#06x})",
                        s.flags
                    ))
                    .into());
                }
                if off < s.init {
                    let n = ((s.init - off).min(buf.len() as u64)) as usize;
                    self.read_runs(&s.runs, off, &mut buf[..n], "attribute data")?;
                }
            }
        }
        Ok(())
    }

    /// Byte offset of record `n` in `$MFT`'s data, checked.
    fn record_pos(&self, n: u64) -> Result<u64> {
        let rs = u64::from(self.boot.record_size);
        match n.checked_mul(rs) {
            Some(p) if p.checked_add(rs).is_some_and(|e| e <= self.mft.alloc) => Ok(p),
            _ => Err(NtfsError::corrupt(
                format!("MFT record {n}"),
                0,
                format!("past the end of $MFT ({} bytes)", self.mft.size),
            )
            .into()),
        }
    }

    /// The raw bytes of record slot `n` and its absolute offset.
    pub(super) fn read_record_raw(&self, n: u64) -> Result<(Vec<u8>, u64)> {
        let pos = self.record_pos(n)?;
        let what = format!("MFT record {n}");
        let pieces = self.pieces(&self.mft.runs, pos, self.boot.record_size as usize, &what)?;
        let abs = pieces.first().and_then(|p| p.0).unwrap_or(0);
        let mut buf = vec![0u8; self.boot.record_size as usize];
        self.read_runs(&self.mft.runs, pos, &mut buf, &what)?;
        Ok((buf, abs))
    }

    /// Record `n`, parsed (fixups removed, headers checked).
    pub(super) fn read_record(&self, n: u64) -> Result<Record> {
        let (buf, abs) = self.read_record_raw(n)?;
        Ok(Record::parse(buf, n, abs)?)
    }

    /// A record that must be in use (a file or folder reached by a path).
    pub(super) fn read_used_record(&self, n: u64, seq: u16) -> Result<Record> {
        let rec = self.read_record(n)?;
        if !rec.in_use() {
            return Err(NtfsError::corrupt(
                format!("MFT record {n}"),
                rec.offset,
                "an index entry points to a record that is not in use",
            )
            .into());
        }
        if seq != 0 && rec.sequence() != seq {
            return Err(NtfsError::corrupt(
                format!("MFT record {n}"),
                rec.offset,
                format!(
                    "sequence number {} does not match the reference's {seq} (stale index entry)",
                    rec.sequence()
                ),
            )
            .into());
        }
        if rec.base_ref() != 0 {
            return Err(NtfsError::corrupt(
                format!("MFT record {n}"),
                rec.offset,
                "an index entry points to an extension record",
            )
            .into());
        }
        Ok(rec)
    }

    /// Records 0..16 must be in-use base records.
    pub(super) fn check_system_records(&self) -> Result<()> {
        for n in [0u64, 1, 2, 3, 5, 6, 10] {
            let rec = self.read_record(n)?;
            if !rec.in_use() || rec.base_ref() != 0 {
                return Err(NtfsError::corrupt(
                    format!("MFT record {n}"),
                    rec.offset,
                    "system file record is not an in-use base record",
                )
                .into());
            }
        }
        if !self.read_record(ROOT)?.is_dir() {
            return Err(NtfsError::corrupt("MFT record 5 (root)", 0, "not a folder").into());
        }
        Ok(())
    }

    /// `$MFTMirr` must hold the same records as the start of `$MFT`.
    pub(super) fn check_mirror(&self) -> Result<()> {
        let rs = u64::from(self.boot.record_size);
        for n in 0..self.mirr_records {
            let (a, abs) = self.read_record_raw(n)?;
            let mut b = vec![0u8; rs as usize];
            self.read_runs(&self.mirr.runs, n * rs, &mut b, "$MFTMirr")?;
            if a != b {
                let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
                return Err(NtfsError::corrupt(
                    format!("$MFTMirr copy of MFT record {n}"),
                    abs,
                    format!(
                        "differs from $MFT at byte {at:#x} of the record (the mirror is out of step; run chkdsk)"
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// Every instance of attribute `ty`/`name` of a base record: itself, or the extension
    /// records its attribute list names.
    fn instances(&self, rec: &Record, ty: u32, name: &[u16]) -> Result<Vec<(Record, Attr)>> {
        let Some(list) = rec.find(record::AT_ATTRIBUTE_LIST, &[])? else {
            return Ok(rec
                .find(ty, name)?
                .map(|a| vec![(rec.clone(), a)])
                .unwrap_or_default());
        };
        let value = if list.non_resident {
            let nr = rec.nonresident(&list)?;
            let runs = runlist::decode(
                &rec.buf[nr.pairs.clone()],
                0,
                self.boot.total_clusters,
                rec.offset + nr.pairs.start as u64,
            )?;
            let s = Stream {
                runs,
                alloc: nr.alloc,
                size: nr.size,
                init: nr.init,
                flags: 0,
            };
            self.read_stream(&s, "$ATTRIBUTE_LIST", 1 << 20)?
        } else {
            rec.value(&list)?.to_vec()
        };
        let mut numbers: Vec<u64> = Vec::new();
        let mut pos = 0usize;
        while pos + 0x1A <= value.len() {
            let ety = le32(&value, pos);
            let elen = le16(&value, pos + 4) as usize;
            let nlen = value[pos + 6] as usize;
            let noff = value[pos + 7] as usize;
            if elen < 0x1A || pos + elen > value.len() || noff + 2 * nlen > elen {
                return Err(NtfsError::corrupt(
                    format!("$ATTRIBUTE_LIST of MFT record {}", rec.number),
                    rec.offset,
                    format!("entry at {pos:#x} has an invalid length {elen}"),
                )
                .into());
            }
            let ename: Vec<u16> = (0..nlen)
                .map(|i| le16(&value, pos + noff + 2 * i))
                .collect();
            if ety == ty && ename == name {
                let n = le64(&value, pos + 0x10) & REF_MASK;
                if !numbers.contains(&n) {
                    numbers.push(n);
                }
            }
            pos += elen;
        }
        let mut out = Vec::new();
        for n in numbers {
            let r = if n == rec.number {
                rec.clone()
            } else {
                let r = self.read_record(n)?;
                if r.base_ref() & REF_MASK != rec.number {
                    return Err(NtfsError::corrupt(
                        format!("MFT record {n}"),
                        r.offset,
                        format!(
                            "listed in the attribute list of record {} but its base is {}",
                            rec.number,
                            r.base_ref() & REF_MASK
                        ),
                    )
                    .into());
                }
                r
            };
            for a in r.attrs()? {
                if a.ty == ty && a.name == name {
                    out.push((r.clone(), a));
                }
            }
        }
        Ok(out)
    }

    /// The value of attribute `ty`/`name` of a base record (`what` names it in errors).
    pub(super) fn load(
        &self,
        rec: &Record,
        ty: u32,
        name: &[u16],
        what: &str,
    ) -> Result<Option<Loc>> {
        let parts = self.instances(rec, ty, name)?;
        let Some((r0, a0)) = parts.first() else {
            return Ok(None);
        };
        if !a0.non_resident {
            return Ok(Some(Loc::Resident(r0.value(a0)?.to_vec())));
        }
        let mut extents = Vec::new();
        let mut sizes = None;
        for (r, a) in &parts {
            let nr = r.nonresident(a)?;
            let runs = runlist::decode(
                &r.buf[nr.pairs.clone()],
                nr.lowest_vcn,
                self.boot.total_clusters,
                r.offset + nr.pairs.start as u64,
            )?;
            if nr.lowest_vcn == 0 {
                sizes = Some((nr.alloc, nr.size, nr.init, a.flags));
            }
            extents.push((nr.lowest_vcn, runs));
        }
        extents.sort_by_key(|e| e.0);
        let Some((alloc, size, init, flags)) = sizes else {
            return Err(NtfsError::corrupt(
                format!("MFT record {}", rec.number),
                rec.offset,
                format!("{what}: no extent of attribute {ty:#x} starts at VCN 0"),
            )
            .into());
        };
        let mut runs: Vec<Run> = Vec::new();
        for (_, rs) in extents {
            for r in rs {
                let next = runs.last().map(|l| l.vcn + l.len).unwrap_or(0);
                if r.vcn != next {
                    return Err(NtfsError::corrupt(
                        format!("MFT record {}", rec.number),
                        rec.offset,
                        format!("{what}: run list has a gap or overlap at VCN {next}"),
                    )
                    .into());
                }
                runs.push(r);
            }
        }
        let s = Stream {
            runs,
            alloc,
            size,
            init,
            flags,
        };
        if s.clusters()
            .checked_mul(self.cs())
            .is_none_or(|b| b < s.alloc.min(s.init))
        {
            return Err(NtfsError::corrupt(
                format!("MFT record {}", rec.number),
                rec.offset,
                format!(
                    "{what}: {} clusters mapped but {} bytes initialized",
                    s.clusters(),
                    s.init
                ),
            )
            .into());
        }
        Ok(Some(Loc::NonResident(s)))
    }

    /// A non-resident attribute's stream (a resident one or a missing one is an error).
    pub(super) fn load_stream(
        &self,
        rec: &Record,
        ty: u32,
        name: &[u16],
        what: &str,
    ) -> Result<Stream> {
        match self.load(rec, ty, name, what)? {
            Some(Loc::NonResident(s)) => Ok(s),
            Some(Loc::Resident(_)) => Err(NtfsError::corrupt(
                format!("MFT record {} ({what})", rec.number),
                rec.offset,
                format!("attribute {ty:#x} is resident, expected non-resident"),
            )
            .into()),
            None => Err(NtfsError::corrupt(
                format!("MFT record {} ({what})", rec.number),
                rec.offset,
                format!("attribute {ty:#x} is missing"),
            )
            .into()),
        }
    }

    /// Refuses writes on a read-only or not writable volume.
    pub(super) fn check_writable(&self) -> Result<()> {
        if let Some(reason) = self.state.not_writable_reason() {
            return Err(NtfsError::NotWritable { reason }.into());
        }
        if self.read_only {
            return Err(NtfsError::NotWritable {
                reason: "the volume was opened read-only".into(),
            }
            .into());
        }
        Ok(())
    }

    /// The entry named `name` in folder `dir`.
    pub(super) fn lookup_child(&self, dir: u64, name: &[u16]) -> Result<Option<IndexEntry>> {
        let view = Dir::open(self, dir)?;
        index::lookup(&view, &self.upcase, name)
    }

    /// Resolves path components from the root.
    pub(super) fn resolve(&self, comps: &[&str]) -> Result<Option<Node>> {
        let mut cur = ROOT;
        let mut node = None;
        for (i, c) in comps.iter().enumerate() {
            if i > 0 {
                match &node {
                    Some(Node { is_dir: true, .. }) => {}
                    _ => return Ok(None),
                }
            }
            let name: Vec<u16> = c.encode_utf16().collect();
            let Some(e) = self.lookup_child(cur, &name)? else {
                return Ok(None);
            };
            let n = e.file_ref & REF_MASK;
            let rec = self.read_used_record(n, (e.file_ref >> 48) as u16)?;
            cur = n;
            node = Some(Node {
                record: n,
                is_dir: rec.is_dir(),
                entry: e,
            });
        }
        Ok(node)
    }

    /// The folder record at `path` (an error when missing or a file).
    pub(super) fn folder(&self, path: &str) -> Result<u64> {
        let comps = super::components(path);
        self.folder_of(&comps, path)
    }

    /// The folder record of `comps` (`path` names it in errors).
    pub(super) fn folder_of(&self, comps: &[&str], path: &str) -> Result<u64> {
        if comps.is_empty() {
            return Ok(ROOT);
        }
        match self.resolve(comps)? {
            Some(n) if n.is_dir => Ok(n.record),
            Some(_) => Err(NtfsError::NotFound(format!(
                "{}: {} is a file, not a folder",
                path,
                comps.join("\\")
            ))
            .into()),
            None => Err(NtfsError::NotFound(format!(
                "{path}: folder {} does not exist",
                comps.join("\\")
            ))
            .into()),
        }
    }

    /// The existing file at `path`.
    pub(super) fn file(&self, path: &str) -> Result<Node> {
        let comps = super::components(path);
        match self.resolve(&comps)? {
            Some(n) if !n.is_dir => Ok(n),
            Some(_) => Err(NtfsError::Exists(format!("{path} is a folder, not a file")).into()),
            None => Err(NtfsError::NotFound(format!("{path} does not exist")).into()),
        }
    }

    /// A [`DirEntry`] for an index entry (size from the file's record).
    pub(super) fn dir_entry(&self, e: &IndexEntry) -> Result<DirEntry> {
        let n = e.file_ref & REF_MASK;
        let rec = self.read_record(n)?;
        let is_dir = rec.is_dir();
        let size = if is_dir {
            0
        } else {
            self.load(&rec, record::AT_DATA, &[], "file")?
                .map(|l| l.size())
                .unwrap_or(0)
        };
        Ok(DirEntry {
            name: String::from_utf16_lossy(&e.name()?),
            record: n,
            is_dir,
            size,
        })
    }

    /// The security id to give a new file in `parent`: the parent's own (so `$Secure` needs
    /// no new descriptor).
    pub(super) fn security_id_for(&self, parent: &Record) -> Result<Option<u32>> {
        let Some(a) = parent.find(record::AT_STANDARD_INFORMATION, &[])? else {
            return Ok(None);
        };
        Ok(attribute::si_security_id(parent.value(&a)?))
    }
}

/// The writing half: every method here changes the disk.
impl<D: DiskIo> NtfsVolume<D> {
    /// Writes through a run list (a sparse run is refused before anything is written).
    pub(super) fn write_runs(
        &mut self,
        runs: &[Run],
        off: u64,
        buf: &[u8],
        what: &str,
    ) -> Result<()> {
        let pieces = self.pieces(runs, off, buf.len(), what)?;
        if pieces.iter().any(|p| p.0.is_none()) {
            return Err(NtfsError::Unsupported(format!(
                "writing into a sparse region of {what} (allocating clusters inside a sparse file)"
            ))
            .into());
        }
        for (disk, b, n) in pieces {
            if let Some(d) = disk {
                self.disk.write_at(&buf[b..b + n], d)?;
            }
        }
        Ok(())
    }

    /// Writes a record (fixups applied) and its `$MFTMirr` copy.
    pub(super) fn write_record(&mut self, rec: &Record) -> Result<()> {
        let raw = rec.to_disk()?;
        let pos = self.record_pos(rec.number)?;
        let what = format!("MFT record {}", rec.number);
        let runs = self.mft.runs.clone();
        self.write_runs(&runs, pos, &raw, &what)?;
        if rec.number < self.mirr_records {
            let runs = self.mirr.runs.clone();
            self.write_runs(&runs, pos, &raw, "$MFTMirr")?;
        }
        Ok(())
    }

    /// Writes the bytes `range` of the cluster bitmap.
    fn persist_clusters(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let bytes = self.clusters.bytes[range.clone()].to_vec();
        let runs = self.cluster_stream.runs.clone();
        self.write_runs(&runs, range.start as u64, &bytes, "$Bitmap")
    }

    /// Allocates `n` clusters (one extent when possible, near `hint`), marking them in
    /// `$Bitmap` on disk. `what` names the purpose in a [`NtfsError::NoSpace`].
    pub(super) fn alloc_clusters(
        &mut self,
        n: u64,
        hint: u64,
        what: &str,
    ) -> Result<Vec<(u64, u64)>> {
        let Some(extents) = self.clusters.choose(n, hint) else {
            return Err(NtfsError::NoSpace {
                detail: format!(
                    "{what} needs {n} clusters of {} bytes, {} are free",
                    self.cs(),
                    self.state.free_clusters
                ),
            }
            .into());
        };
        for &(s, l) in &extents {
            let r = self.clusters.set_range(s, l, true);
            self.persist_clusters(r)?;
            self.state.free_clusters -= l;
        }
        Ok(extents)
    }

    /// Frees cluster extents in `$Bitmap` on disk.
    pub(super) fn free_clusters(&mut self, extents: &[(u64, u64)]) -> Result<()> {
        for &(s, l) in extents {
            let r = self.clusters.set_range(s, l, false);
            self.persist_clusters(r)?;
            self.state.free_clusters += l;
        }
        Ok(())
    }

    /// Clusters free right now.
    pub(super) fn free_cluster_count(&self) -> u64 {
        self.state.free_clusters
    }

    /// Allocates an MFT record (growing `$MFT` when none is free); returns its number and the
    /// sequence number the new file gets.
    pub(super) fn alloc_record(&mut self) -> Result<(u64, u16)> {
        if self.mft_bitmap.is_none() {
            return Err(NtfsError::Unsupported(
                "$MFT's $BITMAP is resident; allocating MFT records there is not implemented"
                    .into(),
            )
            .into());
        }
        let free = |v: &Self| {
            v.mft_bitmap
                .as_ref()
                .and_then(|(_, b)| b.first_free(FIRST_USER_RECORD))
        };
        let n = match free(self) {
            Some(n) => n,
            None => {
                self.grow_mft()?;
                free(self).ok_or_else(|| {
                    NtfsError::corrupt("$MFT", 0, "no free record after growing $MFT")
                })?
            }
        };
        let (raw, abs) = self.read_record_raw(n)?;
        let mut seq = 1u16;
        if Record::has_magic(&raw) {
            if let Ok(r) = Record::parse(raw, n, abs) {
                if r.in_use() {
                    return Err(NtfsError::corrupt(
                        format!("MFT record {n}"),
                        abs,
                        "free in $MFT's $BITMAP but marked in use in its header",
                    )
                    .into());
                }
                if r.sequence() != 0 {
                    seq = r.sequence();
                }
            }
        }
        self.mark_record(n, true)?;
        Ok((n, seq))
    }

    /// Sets or clears record `n`'s bit in `$MFT`'s `$BITMAP` on disk.
    pub(super) fn mark_record(&mut self, n: u64, used: bool) -> Result<()> {
        let Some((s, b)) = self.mft_bitmap.as_mut() else {
            return Ok(());
        };
        let r = b.set_range(n, 1, used);
        let bytes = b.bytes[r.clone()].to_vec();
        let runs = s.runs.clone();
        self.write_runs(&runs, r.start as u64, &bytes, "$MFT:$BITMAP")
    }

    /// Grows `$MFT` by 16 to 4096 records: new clusters, a longer `$DATA` run list, a larger
    /// `$BITMAP`, the new records formatted as free.
    fn grow_mft(&mut self) -> Result<()> {
        if self.mft_has_list {
            return Err(NtfsError::Unsupported(
                "$MFT is full and its $DATA is described by an attribute list; growing it is not implemented"
                    .into(),
            )
            .into());
        }
        let rs = u64::from(self.boot.record_size);
        let cs = self.cs();
        // Grow by an eighth of the current size (16 to 4096 records), so a volume receiving
        // thousands of files keeps a short $MFT run list (growing 16 records at a time between
        // file data fills record 0); 16 records when the free space is short.
        let small = (16 * rs).max(cs).div_ceil(cs);
        let current = self.mft.alloc / rs;
        let large = ((current / 8).clamp(16, 4096) * rs).max(cs).div_ceil(cs);
        let add = if self.free_cluster_count() >= large.saturating_mul(4) {
            large
        } else {
            small
        };
        let mut rec0 = self.read_record(0)?;
        let data_attr = rec0
            .find(record::AT_DATA, &[])?
            .ok_or_else(|| NtfsError::corrupt("MFT record 0", rec0.offset, "no $DATA"))?;
        let bm_attr = rec0
            .find(record::AT_BITMAP, &[])?
            .ok_or_else(|| NtfsError::corrupt("MFT record 0", rec0.offset, "no $BITMAP"))?;
        let Some((bm_stream, bm)) = self.mft_bitmap.clone() else {
            return Err(NtfsError::Unsupported("resident $MFT:$BITMAP".into()).into());
        };
        let old_mft = self.mft.clone();
        let new_records = (old_mft.alloc + add * cs) / rs;
        let bm_bytes = (new_records.div_ceil(8)).div_ceil(8) * 8;
        let bm_more = if bm_bytes > bm_stream.alloc {
            (bm_bytes - bm_stream.alloc).div_ceil(cs)
        } else {
            0
        };
        if self.free_cluster_count() < add + bm_more {
            return Err(NtfsError::NoSpace {
                detail: format!(
                    "$MFT has no free record and growing it needs {} clusters, {} are free",
                    add + bm_more,
                    self.free_cluster_count()
                ),
            }
            .into());
        }
        let hint = old_mft
            .runs
            .iter()
            .rev()
            .find_map(|r| r.lcn.map(|l| l + r.len))
            .unwrap_or(0);
        let ext = self.alloc_clusters(add, hint, "growing $MFT")?;
        let mut mft = old_mft.clone();
        mft.append(&ext);
        mft.alloc += add * cs;
        mft.size = new_records * rs;
        mft.init = mft.size;
        let mut bms = bm_stream.clone();
        let mut bm_ext = Vec::new();
        if bm_more > 0 {
            let h = bms
                .runs
                .iter()
                .rev()
                .find_map(|r| r.lcn.map(|l| l + r.len))
                .unwrap_or(0);
            bm_ext = self.alloc_clusters(bm_more, h, "growing $MFT's $BITMAP")?;
            bms.append(&bm_ext);
            bms.alloc += bm_more * cs;
        }
        let old_bm_size = bms.size;
        if bm_bytes > bms.size {
            bms.size = bm_bytes;
            bms.init = bm_bytes;
        }
        // Record 0 with both attributes; if it does not fit, give the clusters back.
        let edit = (|| -> Result<()> {
            rec0.replace(&data_attr, mft.attribute(record::AT_DATA, &[]))?;
            let bm_attr2 = rec0
                .find(record::AT_BITMAP, &[])?
                .ok_or_else(|| NtfsError::corrupt("MFT record 0", 0, "no $BITMAP"))?;
            debug_assert_eq!(bm_attr2.id, bm_attr.id);
            rec0.replace(&bm_attr2, bms.attribute(record::AT_BITMAP, &[]))?;
            Ok(())
        })();
        if let Err(e) = edit {
            let mut all = ext.clone();
            all.extend(bm_ext);
            self.free_clusters(&all)?;
            return Err(e);
        }
        // Format the new records, zero the new bitmap bytes, then commit record 0.
        self.mft = mft;
        let first_new = old_mft.init / rs;
        for n in first_new..new_records {
            let off = self.record_pos(n)?;
            let r = Record::new_empty(n, off, rs as usize, 1, 0);
            self.write_record(&r)?;
        }
        if bms.size > old_bm_size {
            let zeros = vec![0u8; (bms.size - old_bm_size) as usize];
            self.write_runs(&bms.runs.clone(), old_bm_size, &zeros, "$MFT:$BITMAP")?;
        }
        let mut bm = bm;
        bm.bytes.resize(bms.size as usize, 0);
        bm.bits = (bm.bytes.len() as u64 * 8).min(new_records);
        self.mft_bitmap = Some((bms, bm));
        self.write_record(&rec0)?;
        Ok(())
    }

    /// Frees record `n` (after a failed creation).
    pub(super) fn unused_record(&mut self, n: u64) -> Result<()> {
        self.mark_record(n, false)
    }
}
