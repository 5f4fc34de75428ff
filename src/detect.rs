//! Format detection from content, never from the file name.

use crate::error::{Error, Result};
use crate::formats::ova::{TAR_MAGIC, TAR_MAGIC_OFFSET};
use crate::formats::qcow2::header::MAGIC as QCOW2_MAGIC;
use crate::formats::vhd::footer::COOKIE as VHD_COOKIE;
use crate::formats::vhdx::header::FILE_SIGNATURE as VHDX_SIGNATURE;
use crate::formats::vmdk::cowd::COWD_MAGIC as VMDK_COWD_MAGIC;
use crate::formats::vmdk::descriptor::DESCRIPTOR_START as VMDK_DESCRIPTOR_START;
use crate::formats::vmdk::sparse::SPARSE_MAGIC as VMDK_SPARSE_MAGIC;
use crate::image::Format;
use crate::storage::Storage;

pub use crate::formats::vdi::header::SIGNATURE as VDI_SIGNATURE;

/// A small text file whose first sector names a `createType` and an extent access mode: a VMDK
/// descriptor whose writer left out the `# Disk DescriptorFile` comment (the comment is
/// optional). Large files never qualify, so a raw disk is not mistaken for one.
fn looks_like_vmdk_descriptor(head: &[u8], len: u64) -> bool {
    const MAX_DESCRIPTOR: u64 = 1 << 20;
    if len > MAX_DESCRIPTOR || head.contains(&0) {
        return false;
    }
    let text = String::from_utf8_lossy(head);
    let has_key = |k: &str| {
        text.lines()
            .any(|l| l.trim_start().to_ascii_lowercase().starts_with(k))
    };
    has_key("createtype") && (has_key("rw ") || has_key("rdonly ") || has_key("noaccess "))
}

/// Detects the format of an image from its first and last sectors.
///
/// Anything not recognised is raw. A raw disk that happens to start with a known magic (a guest
/// may write anything into its disk) must be opened with the format forced to raw.
pub fn detect(storage: &dyn Storage) -> Result<Format> {
    let len = storage
        .len()
        .map_err(|e| Error::io("reading the file size", e))?;
    let mut head = [0u8; 512];
    let n = storage
        .read_at(&mut head, 0)
        .map_err(|e| Error::io("reading the first sector", e))?;
    let head = &head[..n];
    if head.starts_with(&QCOW2_MAGIC) {
        return Ok(Format::Qcow2);
    }
    if head.starts_with(&VMDK_SPARSE_MAGIC)
        || head.starts_with(&VMDK_COWD_MAGIC)
        || head.starts_with(VMDK_DESCRIPTOR_START)
        || looks_like_vmdk_descriptor(head, len)
    {
        return Ok(Format::Vmdk);
    }
    if head.starts_with(VHDX_SIGNATURE) {
        return Ok(Format::Vhdx);
    }
    if head.starts_with(&VHD_COOKIE) {
        return Ok(Format::Vhd);
    }
    if head.len() >= TAR_MAGIC_OFFSET + 6
        && head[TAR_MAGIC_OFFSET..TAR_MAGIC_OFFSET + TAR_MAGIC.len()] == *TAR_MAGIC
    {
        // A tar whose first member is an OVF descriptor: an OVA package.
        let name = head[..100].split(|&b| b == 0).next().unwrap_or(&[]);
        if name.to_ascii_lowercase().ends_with(b".ovf") {
            return Ok(Format::Ova);
        }
    }
    if crate::formats::vdi::probe(head) {
        return Ok(Format::Vdi);
    }
    if len >= 512 {
        // Fixed VHD: the footer is the last sector (older tools wrote a 511-byte footer).
        let mut tail = [0u8; 512];
        storage
            .read_exact_at(&mut tail, len - 512)
            .map_err(|e| Error::io("reading the last sector", e))?;
        if tail.starts_with(&VHD_COOKIE) || tail[1..].starts_with(&VHD_COOKIE) {
            return Ok(Format::Vhd);
        }
    }
    Ok(Format::Raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn detect_bytes(b: Vec<u8>) -> Format {
        detect(&MemStorage::from_vec(b)).unwrap()
    }

    #[test]
    fn recognises_magics() {
        let mut q = vec![0u8; 1024];
        q[..4].copy_from_slice(&QCOW2_MAGIC);
        assert_eq!(detect_bytes(q), Format::Qcow2);
        let mut v = vec![0u8; 1024];
        v[..4].copy_from_slice(b"KDMV");
        assert_eq!(detect_bytes(v), Format::Vmdk);
        let mut d = b"# Disk DescriptorFile\nversion=1\n".to_vec();
        d.resize(600, 0);
        assert_eq!(detect_bytes(d), Format::Vmdk);
        let mut x = vec![0u8; 1024];
        x[..8].copy_from_slice(b"vhdxfile");
        assert_eq!(detect_bytes(x), Format::Vhdx);
        let mut f = vec![0u8; 2048];
        f[1536..1544].copy_from_slice(b"conectix");
        assert_eq!(detect_bytes(f), Format::Vhd);
        let mut vdi = vec![0u8; 1024];
        vdi[0x40..0x44].copy_from_slice(&VDI_SIGNATURE);
        assert_eq!(detect_bytes(vdi), Format::Vdi);
        let mut ova = vec![0u8; 1024];
        ova[..9].copy_from_slice(b"vm/vm.ovf");
        ova[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(detect_bytes(ova.clone()), Format::Ova);
        ova[..9].copy_from_slice(b"vm/vm.txt");
        assert_eq!(detect_bytes(ova), Format::Raw);
    }

    #[test]
    fn descriptor_without_its_comment_is_vmdk() {
        let d = b"version=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
                  RW 20480 FLAT \"a-flat.vmdk\" 0\n"
            .to_vec();
        assert_eq!(detect_bytes(d), Format::Vmdk);
        // The same words inside a large binary image do not count.
        let mut big = b"createType=x\nRW 1 FLAT \"a\"\n".to_vec();
        big.resize(2 << 20, 0);
        assert_eq!(detect_bytes(big), Format::Raw);
    }

    #[test]
    fn everything_else_is_raw() {
        assert_eq!(detect_bytes(vec![]), Format::Raw);
        assert_eq!(detect_bytes(vec![0x55; 100]), Format::Raw);
        assert_eq!(detect_bytes(vec![0; 4096]), Format::Raw);
        // "QFI" alone is not the magic.
        assert_eq!(detect_bytes(b"QFI\x00".to_vec()), Format::Raw);
    }
}
