//! Reading the disk inside an OVA package without extracting it.
//!
//! An OVA is a USTAR tar: the `.ovf` descriptor first, an optional `.mf` manifest, then the
//! disks in the order the OVF lists them. The first disk of the OVF's `DiskSection` (its
//! `ovf:fileRef` resolved through the `References` `File` elements' `ovf:href`) is opened as a
//! VMDK over a [`SliceStorage`] of its tar member; without a usable OVF the first `.vmdk` member
//! is taken. The manifest is not verified on read.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::VmdkReader;
use crate::error::{Error, Result};
use crate::open::OpenContext;
use crate::storage::Storage;

/// Largest OVF descriptor read, in bytes.
const MAX_OVF_BYTES: u64 = 16 << 20;
/// Largest number of tar members looked at.
const MAX_MEMBERS: usize = 10_000;

/// A read-only window `[offset, offset + len)` of another storage.
#[derive(Debug)]
pub struct SliceStorage {
    inner: Arc<dyn Storage>,
    offset: u64,
    len: u64,
}

impl SliceStorage {
    /// A window of `len` bytes at `offset` of `inner`.
    pub fn new(inner: Arc<dyn Storage>, offset: u64, len: u64) -> Self {
        SliceStorage { inner, offset, len }
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a member of an OVA package is read-only",
    )
}

impl Storage for SliceStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        // offset < len and self.offset + len was checked against the inner length at creation.
        let mut done = 0;
        while done < n {
            let r = self
                .inner
                .read_at(&mut buf[done..n], self.offset + offset + done as u64)?;
            if r == 0 {
                break;
            }
            done += r;
        }
        Ok(done)
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
}

/// `Read + Seek` over a storage, for the tar crate.
struct Cursor<'a> {
    storage: &'a dyn Storage,
    pos: u64,
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.storage.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.storage.len()?.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// One member of the tar.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    offset: u64,
    size: u64,
}

fn list_members(storage: &dyn Storage) -> Result<Vec<Member>> {
    let total = storage
        .len()
        .map_err(|e| Error::io("getting the OVA's length", e))?;
    let tar_err =
        |e: io::Error| Error::InvalidFormat(format!("the OVA is not a readable tar archive: {e}"));
    let mut archive = tar::Archive::new(Cursor { storage, pos: 0 });
    let mut out = Vec::new();
    for entry in archive.entries_with_seek().map_err(tar_err)? {
        let entry = entry.map_err(tar_err)?;
        if out.len() >= MAX_MEMBERS {
            return Err(Error::InvalidFormat(format!(
                "the OVA has more than {MAX_MEMBERS} members"
            )));
        }
        let h = entry.header();
        if !h.entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let size = entry.size();
        let offset = entry.raw_file_position();
        if offset.checked_add(size).is_none_or(|e| e > total) {
            return Err(Error::Corrupt(format!(
                "OVA member '{name}' ({size} bytes at {offset:#x}) runs past the end of the file ({total:#x} bytes): the package is truncated"
            )));
        }
        out.push(Member { name, offset, size });
    }
    Ok(out)
}

/// The attributes of every element named `local` (any namespace prefix), in document order.
fn elements(xml: &str, local: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let Some(gt) = rest.find('>') else { break };
        let tag = &rest[..gt];
        rest = &rest[gt + 1..];
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = &tag[..name_end];
        if name.rsplit(':').next() != Some(local) {
            continue;
        }
        let mut attrs = Vec::new();
        let mut a = &tag[name_end..];
        while let Some(eq) = a.find('=') {
            let key = a[..eq].trim().trim_start_matches('/').trim();
            let v = a[eq + 1..].trim_start();
            let Some(q) = v.chars().next().filter(|&c| c == '"' || c == '\'') else {
                break;
            };
            let Some(end) = v[1..].find(q) else { break };
            let key = key.rsplit(':').next().unwrap_or(key).to_string();
            attrs.push((key, v[1..1 + end].to_string()));
            a = &v[end + 2..];
        }
        out.push(attrs);
    }
    out
}

fn attr<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The file name (href) of the first disk the OVF lists, with its compression if any.
fn first_disk_href(ovf: &str) -> Option<(String, Option<String>)> {
    let files = elements(ovf, "File");
    let disks = elements(ovf, "Disk");
    let file_ref = disks.iter().find_map(|d| attr(d, "fileRef"))?;
    let file = files.iter().find(|f| attr(f, "id") == Some(file_ref))?;
    let href = attr(file, "href")?.to_string();
    let compression = attr(file, "compression")
        .filter(|c| !c.is_empty() && *c != "identity")
        .map(str::to_string);
    if attr(file, "chunkSize").is_some() {
        return Some((href, Some("chunked".into())));
    }
    Some((href, compression))
}

/// Opens the first disk of the OVA package in `storage`.
pub fn open_ova(
    storage: Arc<dyn Storage>,
    _path: Option<&Path>,
    ctx: &OpenContext<'_>,
) -> Result<VmdkReader> {
    let members = list_members(storage.as_ref())?;
    let ovf = members
        .iter()
        .find(|m| m.name.to_ascii_lowercase().ends_with(".ovf"));
    let from_ovf = match ovf {
        Some(m) if m.size <= MAX_OVF_BYTES => {
            let mut b = vec![0u8; m.size as usize];
            storage
                .read_exact_at(&mut b, m.offset)
                .map_err(|e| Error::io(format!("reading the OVF descriptor '{}'", m.name), e))?;
            first_disk_href(&String::from_utf8_lossy(&b))
        }
        Some(m) => {
            return Err(Error::InvalidFormat(format!(
                "the OVF descriptor '{}' is {} bytes, more than the {MAX_OVF_BYTES} accepted",
                m.name, m.size
            )));
        }
        None => None,
    };
    let disk = match from_ovf {
        Some((href, Some(c))) => {
            return Err(Error::Unsupported(format!(
                "the OVA's disk '{href}' is stored with compression '{c}'; only plain VMDK members are read"
            )));
        }
        Some((href, None)) => members
            .iter()
            .find(|m| m.name == href || m.name.rsplit('/').next() == Some(href.as_str()))
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "the OVF names disk file '{href}' but the OVA has no such member (members: {})",
                    members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
        None => members
            .iter()
            .find(|m| m.name.to_ascii_lowercase().ends_with(".vmdk"))
            .ok_or_else(|| Error::InvalidFormat("the OVA holds no VMDK disk".into()))?,
    };
    let slice: Arc<dyn Storage> = Arc::new(SliceStorage::new(storage, disk.offset, disk.size));
    // The disk has no folder of its own: any file it names is refused.
    VmdkReader::open(slice, None, ctx).map_err(|e| e.in_file(format!("(OVA member) {}", disk.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn finds_the_first_disk_of_the_ovf() {
        let ovf = r#"<?xml version="1.0"?><Envelope xmlns:ovf="x">
          <References>
            <File ovf:href="other.iso" ovf:id="file0"/>
            <ovf:File ovf:href="my disk-1.vmdk" ovf:id='file1' ovf:size="5"/>
          </References>
          <DiskSection><Info>x</Info>
            <Disk ovf:capacity="1" ovf:diskId="vmdisk1" ovf:fileRef="file1" />
          </DiskSection></Envelope>"#;
        assert_eq!(
            first_disk_href(ovf),
            Some(("my disk-1.vmdk".to_string(), None))
        );
        let gz = ovf.replace("ovf:size=\"5\"", "ovf:compression=\"gzip\"");
        assert_eq!(first_disk_href(&gz).unwrap().1.as_deref(), Some("gzip"));
        assert_eq!(first_disk_href("<Envelope><Disk/></Envelope>"), None);
        assert_eq!(first_disk_href("<<<Disk ovf:fileRef=\"a"), None);
    }

    #[test]
    fn slice_storage_is_a_bounded_read_only_window() {
        let inner: Arc<dyn Storage> = Arc::new(MemStorage::from_vec((0..100u8).collect()));
        let s = SliceStorage::new(inner, 10, 20);
        let mut b = [0u8; 30];
        assert_eq!(s.read_at(&mut b, 15).unwrap(), 5);
        assert_eq!(&b[..5], &[25, 26, 27, 28, 29]);
        assert_eq!(s.read_at(&mut b, 20).unwrap(), 0);
        assert!(s.write_all_at(&[1], 0).is_err());
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let s = MemStorage::from_vec(vec![0x41; 1024]);
        assert!(list_members(&s).is_err());
    }
}
