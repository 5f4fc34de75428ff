//! A page blob read as [`Storage`]: ranged Get Blob requests, its page ranges as the map of
//! data and holes, so an image reader (the fixed VHD reader) opens it like a local sparse
//! file and reads only the pages that exist.

use std::ops::Range;
use std::sync::Arc;

use super::rest::{BlobClient, BlobProperties};
use crate::error::{Error, Result};
use crate::storage::{Segment, Storage};

/// A page blob, read-only.
pub struct PageBlobStorage {
    client: Arc<BlobClient>,
    name: String,
    len: u64,
    ranges: Vec<Range<u64>>,
    props: BlobProperties,
}

impl std::fmt::Debug for PageBlobStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlobStorage")
            .field("blob", &self.client.shown(&self.name))
            .field("len", &self.len)
            .finish()
    }
}

impl PageBlobStorage {
    /// Opens blob `name` of `client`'s container: its properties and page ranges.
    pub fn open(client: Arc<BlobClient>, name: &str) -> Result<PageBlobStorage> {
        let props = client.properties(name)?.ok_or_else(|| {
            Error::io(
                format!("opening {}", client.shown(name)),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such blob"),
            )
        })?;
        if !props.blob_type.eq_ignore_ascii_case("PageBlob") {
            return Err(Error::InvalidArgument(format!(
                "{} is a {} blob, not a page blob",
                client.shown(name),
                props.blob_type
            )));
        }
        let ranges = client.page_ranges(name, props.len)?;
        Ok(PageBlobStorage {
            len: props.len,
            name: name.to_string(),
            client,
            ranges,
            props,
        })
    }

    /// The page ranges (sorted, merged).
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// The blob's properties (metadata included).
    pub fn properties(&self) -> &BlobProperties {
        &self.props
    }

    /// Reads `buf.len()` bytes at `offset` (inside the blob) with Get Blob.
    pub fn fetch(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.client.read_range(&self.name, offset, buf)
    }
}

impl Storage for PageBlobStorage {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        let buf = &mut buf[..n];
        // Holes read as zeros without a request; pages with one request per range.
        buf.fill(0);
        let end = offset + n as u64;
        let first = self.ranges.partition_point(|r| r.end <= offset);
        for r in &self.ranges[first..] {
            if r.start >= end {
                break;
            }
            let (a, z) = (r.start.max(offset), r.end.min(end));
            let piece = &mut buf[(a - offset) as usize..(z - offset) as usize];
            self.fetch(piece, a)
                .map_err(|e| std::io::Error::other(e.chain()))?;
        }
        Ok(n)
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("the page blob is opened read-only"))
    }

    fn set_len(&self, _len: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("the page blob is opened read-only"))
    }

    fn segment(&self, offset: u64) -> std::io::Result<Segment> {
        if offset >= self.len {
            return Ok(Segment {
                data: false,
                len: 0,
            });
        }
        let i = self.ranges.partition_point(|r| r.end <= offset);
        Ok(match self.ranges.get(i) {
            Some(r) if r.start <= offset => Segment {
                data: true,
                len: r.end.min(self.len) - offset,
            },
            Some(r) => Segment {
                data: false,
                len: r.start.min(self.len) - offset,
            },
            None => Segment {
                data: false,
                len: self.len - offset,
            },
        })
    }
}
