//! A folder's `$I30` index storage: the [`IndexStore`] the B+ tree code works on. The root
//! lives in the folder's MFT record (`$INDEX_ROOT`), blocks in `$INDEX_ALLOCATION` with a
//! `$BITMAP` of blocks in use, both named `$I30`.

use super::fixup;
use super::index::IndexStore;
use super::record::{self, Record};
use super::volume::{Loc, Stream};
use super::{NtfsError, NtfsVolume};
use crate::bytes::{le32, le64};
use crate::error::Result;
use crate::guest::disk::{DiskIo, DiskRead};

/// The name of a folder's file-name index: "$I30".
pub const I30: [u16; 4] = [b'$' as u16, b'I' as u16, b'3' as u16, b'0' as u16];
/// Signature of an index block: ASCII "INDX".
pub const INDX_MAGIC: &[u8; 4] = b"INDX";
/// Room kept free in a folder's record for `$INDEX_ALLOCATION` + `$BITMAP` when the root has
/// to move into a first index block.
const RESERVE_FOR_ALLOCATION: usize = 0x90;
/// Slack kept for the `$INDEX_ALLOCATION` run list to grow.
const RESERVE_SLACK: usize = 0x18;

/// Geometry of a folder's index.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    block_size: u32,
    vcn_per_block: u64,
    bytes_per_vcn: u64,
}

/// One folder's index, over a shared (`&NtfsVolume`, reads only) or exclusive
/// (`&mut NtfsVolume`) borrow of the volume.
pub struct Dir<V> {
    vol: V,
    rec: u64,
    geo: Geometry,
}

impl<D: DiskRead> NtfsVolume<D> {
    fn dir_record(&self, rec: u64) -> Result<(Record, record::Attr)> {
        let r = self.read_record(rec)?;
        if !r.is_dir() {
            return Err(NtfsError::NotFound(format!("MFT record {rec} is not a folder")).into());
        }
        let Some(a) = r.find(record::AT_INDEX_ROOT, &I30)? else {
            return Err(NtfsError::corrupt(
                format!("MFT record {rec}"),
                r.offset,
                "folder has no $INDEX_ROOT named $I30",
            )
            .into());
        };
        Ok((r, a))
    }

    fn dir_geometry(&self, rec: u64) -> Result<Geometry> {
        let (r, a) = self.dir_record(rec)?;
        let v = r.value(&a)?;
        if v.len() < 0x20 {
            return Err(NtfsError::corrupt(
                format!("$INDEX_ROOT of MFT record {rec}"),
                r.offset + a.pos as u64,
                format!("{} bytes, at least 32 expected", v.len()),
            )
            .into());
        }
        let block_size = le32(v, 8);
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(NtfsError::corrupt(
                format!("$INDEX_ROOT of MFT record {rec}"),
                r.offset + a.pos as u64,
                format!("index block size {block_size}: expected a power of two from 512 to 65536"),
            )
            .into());
        }
        let cs = self.cs();
        let bytes_per_vcn = if u64::from(block_size) >= cs { cs } else { 512 };
        Ok(Geometry {
            block_size,
            vcn_per_block: u64::from(block_size) / bytes_per_vcn,
            bytes_per_vcn,
        })
    }

    fn dir_root(&self, rec: u64) -> Result<Vec<u8>> {
        let (r, a) = self.dir_record(rec)?;
        Ok(r.value(&a)?.to_vec())
    }

    fn dir_root_capacity(&self, rec: u64) -> Result<usize> {
        let (r, a) = self.dir_record(rec)?;
        let has_alloc = r.find(record::AT_INDEX_ALLOCATION, &I30)?.is_some();
        let reserve = if has_alloc {
            RESERVE_SLACK
        } else {
            RESERVE_FOR_ALLOCATION
        };
        let room = r.free() + a.len;
        let header = record::resident_len(I30.len(), 0);
        Ok(room.saturating_sub(header + reserve) & !7)
    }

    fn dir_allocation(&self, rec: u64) -> Result<Stream> {
        let r = self.read_record(rec)?;
        match self.load(&r, record::AT_INDEX_ALLOCATION, &I30, "$INDEX_ALLOCATION")? {
            Some(Loc::NonResident(s)) => Ok(s),
            _ => Err(NtfsError::corrupt(
                format!("MFT record {rec}"),
                r.offset,
                "index refers to an index block but the folder has no non-resident $INDEX_ALLOCATION",
            )
            .into()),
        }
    }

    fn dir_block_pos(&self, rec: u64, geo: Geometry, vcn: u64, s: &Stream) -> Result<u64> {
        let bs = u64::from(geo.block_size);
        match vcn.checked_mul(geo.bytes_per_vcn) {
            Some(p)
                if vcn % geo.vcn_per_block == 0
                    && p.checked_add(bs).is_some_and(|e| e <= s.size) =>
            {
                Ok(p)
            }
            _ => Err(NtfsError::corrupt(
                format!("$INDEX_ALLOCATION of MFT record {rec}"),
                0,
                format!(
                    "index block VCN {vcn} is not a block start inside the {} bytes allocated",
                    s.size
                ),
            )
            .into()),
        }
    }

    fn dir_read_block(&self, rec: u64, geo: Geometry, vcn: u64) -> Result<Vec<u8>> {
        let s = self.dir_allocation(rec)?;
        let pos = self.dir_block_pos(rec, geo, vcn, &s)?;
        let mut buf = vec![0u8; geo.block_size as usize];
        self.read_runs(&s.runs, pos, &mut buf, "$INDEX_ALLOCATION")?;
        let abs = s
            .runs
            .iter()
            .find(|r| pos / self.cs() >= r.vcn && pos / self.cs() < r.vcn + r.len)
            .and_then(|r| r.lcn.map(|l| l * self.cs() + pos - r.vcn * self.cs()))
            .unwrap_or(0);
        let what = format!("index block VCN {vcn} of MFT record {rec}");
        if &buf[0..4] != INDX_MAGIC {
            return Err(NtfsError::invalid(
                what,
                abs,
                format!(
                    "signature must be \"INDX\", found {:?}",
                    String::from_utf8_lossy(&buf[0..4])
                ),
            )
            .into());
        }
        fixup::remove(&mut buf, &what, abs)?;
        let hv = le64(&buf, 0x10);
        if hv != vcn {
            return Err(NtfsError::corrupt(
                what,
                abs + 0x10,
                format!("block header says VCN {hv}"),
            )
            .into());
        }
        Ok(buf)
    }
}

impl<'a, D: DiskRead> Dir<&'a NtfsVolume<D>> {
    /// The index of folder record `rec`, for reading.
    pub fn open(vol: &'a NtfsVolume<D>, rec: u64) -> Result<Self> {
        let geo = vol.dir_geometry(rec)?;
        Ok(Dir { vol, rec, geo })
    }
}

impl<'a, D: DiskIo> Dir<&'a mut NtfsVolume<D>> {
    /// The index of folder record `rec`, for editing.
    pub fn open_mut(vol: &'a mut NtfsVolume<D>, rec: u64) -> Result<Self> {
        let geo = vol.dir_geometry(rec)?;
        Ok(Dir { vol, rec, geo })
    }
}

fn read_only() -> crate::error::Error {
    NtfsError::InvalidArgument("internal: index opened for reading was written".into()).into()
}

impl<D: DiskRead> IndexStore for Dir<&NtfsVolume<D>> {
    fn block_size(&self) -> u32 {
        self.geo.block_size
    }
    fn vcn_per_block(&self) -> u64 {
        self.geo.vcn_per_block
    }
    fn root(&self) -> Result<Vec<u8>> {
        self.vol.dir_root(self.rec)
    }
    fn root_capacity(&self) -> Result<usize> {
        self.vol.dir_root_capacity(self.rec)
    }
    fn set_root(&mut self, _value: &[u8]) -> Result<()> {
        Err(read_only())
    }
    fn read_block(&self, vcn: u64) -> Result<Vec<u8>> {
        self.vol.dir_read_block(self.rec, self.geo, vcn)
    }
    fn write_block(&mut self, _vcn: u64, _block: &[u8]) -> Result<()> {
        Err(read_only())
    }
    fn allocate_block(&mut self) -> Result<u64> {
        Err(read_only())
    }
}

impl<D: DiskIo> IndexStore for Dir<&mut NtfsVolume<D>> {
    fn block_size(&self) -> u32 {
        self.geo.block_size
    }
    fn vcn_per_block(&self) -> u64 {
        self.geo.vcn_per_block
    }
    fn root(&self) -> Result<Vec<u8>> {
        self.vol.dir_root(self.rec)
    }
    fn root_capacity(&self) -> Result<usize> {
        self.vol.dir_root_capacity(self.rec)
    }
    fn set_root(&mut self, value: &[u8]) -> Result<()> {
        let (mut r, a) = self.vol.dir_record(self.rec)?;
        r.replace(
            &a,
            record::resident(record::AT_INDEX_ROOT, &I30, value, false),
        )?;
        self.vol.write_record(&r)
    }
    fn read_block(&self, vcn: u64) -> Result<Vec<u8>> {
        self.vol.dir_read_block(self.rec, self.geo, vcn)
    }
    fn write_block(&mut self, vcn: u64, block: &[u8]) -> Result<()> {
        if block.len() != self.geo.block_size as usize {
            return Err(NtfsError::InvalidArgument(format!(
                "index block of {} bytes written, the folder's blocks are {}",
                block.len(),
                self.geo.block_size
            ))
            .into());
        }
        let s = self.vol.dir_allocation(self.rec)?;
        let pos = self.vol.dir_block_pos(self.rec, self.geo, vcn, &s)?;
        let mut raw = block.to_vec();
        fixup::apply(
            &mut raw,
            &format!("index block VCN {vcn} of MFT record {}", self.rec),
            pos,
        )?;
        self.vol.write_runs(&s.runs, pos, &raw, "$INDEX_ALLOCATION")
    }
    fn allocate_block(&mut self) -> Result<u64> {
        let vol = &mut *self.vol;
        let (mut r, _) = vol.dir_record(self.rec)?;
        if r.find(record::AT_ATTRIBUTE_LIST, &[])?.is_some() {
            return Err(NtfsError::Unsupported(format!(
                "folder record {} has an attribute list; growing its index is not implemented",
                self.rec
            ))
            .into());
        }
        let bs = u64::from(self.geo.block_size);
        let cs = vol.cs();
        let ia = r.find(record::AT_INDEX_ALLOCATION, &I30)?;
        let mut stream = match &ia {
            Some(_) => vol.dir_allocation(self.rec)?,
            None => Stream::default(),
        };
        let bm_attr = r.find(record::AT_BITMAP, &I30)?;
        let mut bits: Vec<u8> = match &bm_attr {
            Some(a) if !a.non_resident => r.value(a)?.to_vec(),
            Some(_) => {
                return Err(NtfsError::Unsupported(format!(
                    "folder record {} has a non-resident $I30 $BITMAP; growing its index is not implemented",
                    self.rec
                ))
                .into())
            }
            None => Vec::new(),
        };
        let blocks = stream.size / bs;
        // A free block inside the allocation?
        let free = (0..blocks).find(|&i| {
            bits.get((i / 8) as usize)
                .is_some_and(|b| b & (1 << (i % 8)) == 0)
        });
        let index = free.unwrap_or(blocks);
        let mut new_ext = Vec::new();
        if free.is_none() {
            let need = (index + 1) * bs;
            if need > stream.alloc {
                let more = (need - stream.alloc).div_ceil(cs);
                let hint = stream
                    .runs
                    .iter()
                    .rev()
                    .find_map(|x| x.lcn.map(|l| l + x.len))
                    .unwrap_or(0);
                // Reserve room for more blocks than asked (half as many as the index has, up
                // to 16) so a growing folder's run list stays short: one run per new block
                // (file data is allocated in between) would fill the folder's MFT record after
                // a few hundred blocks. Without room for the reserve, take just what is needed.
                let reserve = (blocks / 2).min(16) * bs;
                let want = (need + reserve - stream.alloc).div_ceil(cs);
                new_ext = match vol.alloc_clusters(want, hint, "a new index block") {
                    Ok(e) => e,
                    Err(_) if want > more => vol.alloc_clusters(more, hint, "a new index block")?,
                    Err(e) => return Err(e),
                };
                let got: u64 = new_ext.iter().map(|x| x.1).sum();
                stream.append(&new_ext);
                stream.alloc += got * cs;
            }
            stream.size = need;
            stream.init = need;
        }
        let byte = (index / 8) as usize;
        if bits.len() <= byte {
            bits.resize((byte + 1).div_ceil(8) * 8, 0);
        }
        bits[byte] |= 1 << (index % 8);
        let edit = (|| -> Result<()> {
            let ia_bytes = stream.attribute(record::AT_INDEX_ALLOCATION, &I30);
            match r.find(record::AT_INDEX_ALLOCATION, &I30)? {
                Some(a) => r.replace(&a, ia_bytes)?,
                None => r.insert(ia_bytes)?,
            }
            let bm_bytes = record::resident(record::AT_BITMAP, &I30, &bits, false);
            match r.find(record::AT_BITMAP, &I30)? {
                Some(a) => r.replace(&a, bm_bytes)?,
                None => r.insert(bm_bytes)?,
            }
            Ok(())
        })();
        if let Err(e) = edit {
            vol.free_clusters(&new_ext)?;
            return Err(e);
        }
        vol.write_record(&r)?;
        Ok(index * self.geo.vcn_per_block)
    }
}
