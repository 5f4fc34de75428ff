//! Creating files and folders, and a file's data: writes in place, growing and shrinking
//! (resident <-> non-resident, clusters allocated and freed), with the size copies in the
//! `$FILE_NAME` attributes and the parent index kept in step.

use super::attribute::{self, FILE_ATTR_ARCHIVE, FILE_ATTR_I30_INDEX_PRESENT, NS_WIN32};
use super::dir::{Dir, I30};
use super::index::{self, IndexEntry};
use super::record::{self, Record, align8};
use super::runlist::Run;
use super::volume::Stream;
use super::{NtfsError, NtfsVolume, REF_MASK};
use crate::bytes::set_le16;
use crate::error::Result;
use crate::guest::disk::DiskIo;

/// A growth by at most this many bytes is zero-filled on disk (see `resize_file`).
const ZERO_FILL_MAX: u64 = 64 << 20;

/// Bytes zero-filled per write when a file grows past its initialized size.
const ZERO_CHUNK: usize = 1 << 20;

impl<D: DiskIo> NtfsVolume<D> {
    /// Creates a file (`data`) or a folder (`None`) named `name` in folder record `parent`;
    /// returns its record number.
    pub(super) fn create(&mut self, parent: u64, name: &[u16], data: Option<&[u8]>) -> Result<u64> {
        let prec = self.read_used_record(parent, 0)?;
        if !prec.is_dir() {
            return Err(NtfsError::NotFound(format!("MFT record {parent} is not a folder")).into());
        }
        let parent_ref = prec.reference();
        let security = self.security_id_for(&prec)?;
        let rs = self.boot.record_size as usize;
        let cs = self.cs();
        // Space first: a non-resident $DATA and maybe a new index block and $MFT growth.
        if let Some(d) = data {
            let resident_room = rs.saturating_sub(0x38 + 8 + 0x60 + 0x60 + 2 * name.len());
            let clusters = if record::resident_len(0, d.len()) <= resident_room {
                0
            } else {
                (d.len() as u64).div_ceil(cs)
            };
            if clusters > self.free_cluster_count() {
                return Err(NtfsError::NoSpace {
                    detail: format!(
                        "a file of {} bytes needs {clusters} clusters of {cs} bytes, {} are free",
                        d.len(),
                        self.free_cluster_count()
                    ),
                }
                .into());
            }
        }
        let (n, seq) = self.alloc_record()?;
        let mut clusters_taken: Vec<(u64, u64)> = Vec::new();
        let built = self.build_new_record(
            n,
            seq,
            parent_ref,
            security,
            name,
            data,
            &mut clusters_taken,
        );
        let (rec, key) = match built {
            Ok(x) => x,
            Err(e) => {
                self.free_clusters(&clusters_taken)?;
                self.unused_record(n)?;
                return Err(e);
            }
        };
        self.write_record(&rec)?;
        let up = self.upcase.clone();
        let inserted = {
            let mut store = Dir::open_mut(self, parent)?;
            index::insert(
                &mut store,
                &up,
                IndexEntry {
                    file_ref: rec.reference(),
                    key,
                },
            )
        };
        if let Err(e) = inserted {
            // Take the record and clusters back so nothing refers to a half-made file.
            let mut dead = rec.clone();
            set_le16(&mut dead.buf, 0x16, 0);
            self.write_record(&dead)?;
            self.free_clusters(&clusters_taken)?;
            self.unused_record(n)?;
            return Err(e);
        }
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)]
    fn build_new_record(
        &mut self,
        n: u64,
        seq: u16,
        parent_ref: u64,
        security: Option<u32>,
        name: &[u16],
        data: Option<&[u8]>,
        taken: &mut Vec<(u64, u64)>,
    ) -> Result<(Record, Vec<u8>)> {
        let rs = self.boot.record_size as usize;
        let cs = self.cs();
        let (_, abs) = self.read_record_raw(n)?;
        let is_dir = data.is_none();
        let flags = record::FLAG_IN_USE | if is_dir { record::FLAG_DIRECTORY } else { 0 };
        let mut rec = Record::new_empty(n, abs, rs, seq, flags);
        let now = attribute::ntfs_now();
        let fattrs = if is_dir {
            FILE_ATTR_I30_INDEX_PRESENT
        } else {
            FILE_ATTR_ARCHIVE
        };
        let si_attrs = if is_dir { 0 } else { FILE_ATTR_ARCHIVE };
        rec.insert(record::resident(
            record::AT_STANDARD_INFORMATION,
            &[],
            &attribute::standard_information(now, si_attrs, security),
            false,
        ))?;
        let mut sizes = (0u64, 0u64);
        let fn_len = record::resident_len(0, attribute::FN_HEADER + 2 * name.len());
        match data {
            None => {
                let root = index::new_root(
                    self.boot.index_block_size,
                    self.boot.clusters_per_index_block(),
                );
                rec.insert(record::resident(record::AT_INDEX_ROOT, &I30, &root, false))?;
            }
            Some(d) => {
                if record::resident_len(0, d.len()) + fn_len <= rec.free() {
                    rec.insert(record::resident(record::AT_DATA, &[], d, false))?;
                    sizes = (align8(d.len()) as u64, d.len() as u64);
                } else {
                    let clusters = (d.len() as u64).div_ceil(cs);
                    let ext = self.alloc_clusters(clusters, 0, "the new file's data")?;
                    taken.extend_from_slice(&ext);
                    let mut s = Stream::default();
                    s.append(&ext);
                    s.alloc = clusters * cs;
                    s.size = d.len() as u64;
                    s.init = s.size;
                    let mut padded = d.to_vec();
                    padded.resize((clusters * cs) as usize, 0);
                    self.write_runs(&s.runs, 0, &padded, "the new file's data")?;
                    rec.insert(s.attribute(record::AT_DATA, &[]))?;
                    sizes = (s.alloc, s.size);
                }
            }
        }
        let key = attribute::file_name(parent_ref, now, sizes, fattrs, name, NS_WIN32);
        rec.insert(record::resident(record::AT_FILE_NAME, &[], &key, true))?;
        Ok((rec, key))
    }

    /// The file record `n` and its unnamed `$DATA` attribute, for a change of its layout.
    fn data_for_edit(&self, n: u64) -> Result<(Record, record::Attr)> {
        let rec = self.read_used_record(n, 0)?;
        if rec.find(record::AT_ATTRIBUTE_LIST, &[])?.is_some() {
            return Err(NtfsError::Unsupported(format!(
                "MFT record {n} has an attribute list; changing the size of such a file is not implemented"
            ))
            .into());
        }
        let Some(a) = rec.find(record::AT_DATA, &[])? else {
            return Err(NtfsError::corrupt(
                format!("MFT record {n}"),
                rec.offset,
                "file has no unnamed $DATA attribute",
            )
            .into());
        };
        if a.flags & (record::ATTR_COMPRESSED | record::ATTR_ENCRYPTED) != 0 {
            return Err(NtfsError::Unsupported(format!(
                "MFT record {n}: writing compressed or encrypted files (attribute flags {:#06x})",
                a.flags
            ))
            .into());
        }
        Ok((rec, a))
    }

    /// Sets the size of file record `n`.
    pub(super) fn resize_file(&mut self, n: u64, len: u64) -> Result<()> {
        let (mut rec, a) = self.data_for_edit(n)?;
        let cs = self.cs();
        let room = rec.free() + a.len;
        let fits = |l: u64| l <= room as u64 && record::resident_len(0, l as usize) <= room;
        let mut freed: Vec<(u64, u64)> = Vec::new();
        let sizes;
        if !a.non_resident {
            let mut value = rec.value(&a)?.to_vec();
            if value.len() as u64 == len {
                return Ok(());
            }
            if fits(len) {
                value.resize(len as usize, 0);
                rec.replace(&a, record::resident(record::AT_DATA, &[], &value, false))?;
                sizes = (align8(value.len()) as u64, len);
            } else {
                let clusters = len.div_ceil(cs);
                let ext = self.alloc_clusters(clusters, 0, "growing the file")?;
                let mut s = Stream::default();
                s.append(&ext);
                s.alloc = clusters * cs;
                s.size = len;
                // Zero-fill the growth on disk too (see below).
                if len <= ZERO_FILL_MAX {
                    value.resize(len as usize, 0);
                }
                s.init = value.len() as u64;
                let r = self
                    .write_runs(&s.runs.clone(), 0, &value, "file data")
                    .and_then(|_| Ok(rec.replace(&a, s.attribute(record::AT_DATA, &[]))?));
                if let Err(e) = r {
                    self.free_clusters(&ext)?;
                    return Err(e);
                }
                sizes = (s.alloc, s.size);
            }
        } else {
            let nr = rec.nonresident(&a)?;
            let mut s = self.load_stream(&rec, record::AT_DATA, &[], "file data")?;
            if nr.size == len {
                return Ok(());
            }
            if fits(len) && len < cs {
                let mut value = vec![0u8; len as usize];
                self.read_loc(&super::volume::Loc::NonResident(s.clone()), 0, &mut value)?;
                rec.replace(&a, record::resident(record::AT_DATA, &[], &value, false))?;
                freed = s.truncate(0);
                sizes = (align8(value.len()) as u64, len);
            } else {
                let want = len.div_ceil(cs);
                let have = s.clusters();
                let mut ext = Vec::new();
                if want > have {
                    let hint = s
                        .runs
                        .iter()
                        .rev()
                        .find_map(|r: &Run| r.lcn.map(|l| l + r.len))
                        .unwrap_or(0);
                    ext = self.alloc_clusters(want - have, hint, "growing the file")?;
                    s.append(&ext);
                } else if want < have {
                    freed = s.truncate(want);
                }
                s.alloc = want * cs;
                s.size = len;
                s.init = s.init.min(len);
                // Bytes past the initialized size read as zeros in Windows and ntfs-3g, but
                // not in every reader (the `ntfs` crate ignores it): write real zeros for
                // growths up to ZERO_FILL_MAX and keep the valid-data length only past that.
                if len > s.init && len - s.init <= ZERO_FILL_MAX {
                    let mut pos = s.init;
                    while pos < len {
                        let k = ((len - pos) as usize).min(ZERO_CHUNK);
                        if let Err(e) =
                            self.write_runs(&s.runs.clone(), pos, &vec![0u8; k], "file data")
                        {
                            self.free_clusters(&ext)?;
                            return Err(e);
                        }
                        pos += k as u64;
                    }
                    s.init = len;
                }
                if let Err(e) = rec.replace(&a, s.attribute(record::AT_DATA, &[])) {
                    self.free_clusters(&ext)?;
                    return Err(e.into());
                }
                sizes = (s.alloc, s.size);
            }
        }
        self.commit_sizes(rec, sizes)?;
        self.free_clusters(&freed)
    }

    /// Writes `data` at `off` of file record `n`, whose size already covers it.
    pub(super) fn write_data(&mut self, n: u64, off: u64, data: &[u8]) -> Result<()> {
        let rec = self.read_used_record(n, 0)?;
        let Some(a) = rec.find(record::AT_DATA, &[])? else {
            return Err(
                NtfsError::corrupt(format!("MFT record {n}"), rec.offset, "no $DATA").into(),
            );
        };
        if data.is_empty() {
            return Ok(());
        }
        let end = off + data.len() as u64;
        if !a.non_resident {
            let (mut rec, a) = self.data_for_edit(n)?;
            let mut value = rec.value(&a)?.to_vec();
            if end > value.len() as u64 {
                return Err(NtfsError::InvalidArgument(format!(
                    "internal: write of {} bytes at {off} past the resident value of {} bytes",
                    data.len(),
                    value.len()
                ))
                .into());
            }
            value[off as usize..end as usize].copy_from_slice(data);
            rec.replace(&a, record::resident(record::AT_DATA, &[], &value, false))?;
            return self.write_record(&rec);
        }
        if a.flags & (record::ATTR_COMPRESSED | record::ATTR_ENCRYPTED) != 0 {
            return Err(NtfsError::Unsupported(format!(
                "MFT record {n}: writing compressed or encrypted files"
            ))
            .into());
        }
        let mut s = self.load_stream(&rec, record::AT_DATA, &[], "file data")?;
        if end > s.size {
            return Err(NtfsError::InvalidArgument(format!(
                "internal: write ends at {end}, past the file size {}",
                s.size
            ))
            .into());
        }
        // Bytes between the initialized size and the write become zeros on disk.
        let mut pos = s.init;
        while pos < off {
            let k = ((off - pos) as usize).min(ZERO_CHUNK);
            self.write_runs(&s.runs.clone(), pos, &vec![0u8; k], "file data")?;
            pos += k as u64;
        }
        self.write_runs(&s.runs.clone(), off, data, "file data")?;
        if end > s.init {
            let (mut rec, a) = self.data_for_edit(n)?;
            s.init = end;
            rec.replace(&a, s.attribute(record::AT_DATA, &[]))?;
            self.write_record(&rec)?;
        }
        Ok(())
    }

    /// Writes the new size copies into the record's `$FILE_NAME`s, writes the record, then
    /// updates the parent index keys.
    fn commit_sizes(&mut self, mut rec: Record, sizes: (u64, u64)) -> Result<()> {
        let mut keys = Vec::new();
        for a in rec.find_all(record::AT_FILE_NAME)? {
            let mut v = rec.value(&a)?.to_vec();
            attribute::set_file_name_sizes(&mut v, sizes.0, sizes.1);
            let f = attribute::parse_file_name(&v, "$FILE_NAME", rec.offset + a.pos as u64)?;
            rec.replace(&a, record::resident(record::AT_FILE_NAME, &[], &v, true))?;
            keys.push((f.parent_ref & REF_MASK, f.name, v));
        }
        self.write_record(&rec)?;
        let up = self.upcase.clone();
        let reference = rec.reference();
        for (parent, name, key) in keys {
            let mut store = Dir::open_mut(self, parent)?;
            if !index::update_key(&mut store, &up, &name, reference, &key)? {
                return Err(NtfsError::corrupt(
                    format!("$I30 index of MFT record {parent}"),
                    0,
                    format!(
                        "has no entry for {:?} (MFT record {})",
                        String::from_utf16_lossy(&name),
                        rec.number
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}
