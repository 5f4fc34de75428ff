//! Fuzzes the btrfs reader: the parsers on the raw input (superblock, sys_chunk_array, tree
//! block with and without a valid checksum, dir entries, file extent items, LZO1X and btrfs'
//! LZO framing, zlib and zstd), then a small file system made once by `mkfs.btrfs --rootdir`
//! (btrfs-progs must be installed; nothing is committed as a blob) patched with the input read
//! as 4-byte records (24-bit offset into the metadata, new byte value), opened and walked. Any
//! panic or endless loop is a bug; errors are fine.
#![no_main]

use std::process::Command;
use std::sync::OnceLock;

use diskconv::guest::btrfs::BtrfsVolume;
use diskconv::guest::btrfs::chunk::ChunkMap;
use diskconv::guest::btrfs::dir::parse_entries;
use diskconv::guest::btrfs::extent::{decompress, lzo1x_decompress, Compression, ExtentData};
use diskconv::guest::btrfs::superblock::{CsumType, Superblock};
use diskconv::guest::btrfs::tree::Node;
use diskconv::guest::disk::DiskRead;
use diskconv::guest::fs::GuestFs;
use libfuzzer_sys::fuzz_target;

fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("btrfs-fuzz-{}", std::process::id()));
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("etc/d")).expect("temp dir");
        std::fs::write(src.join("etc/os-release"), b"ID=fuzz\n").expect("file");
        std::fs::write(src.join("big"), vec![0x5a; 200_000]).expect("file");
        for i in 0..50 {
            std::fs::write(src.join(format!("etc/d/f{i}")), [i as u8; 100]).expect("file");
        }
        std::os::unix::fs::symlink("../big", src.join("etc/link")).expect("link");
        let img = dir.join("t.img");
        std::fs::File::create(&img).expect("image").set_len(120 << 20).expect("size");
        let ok = Command::new("mkfs.btrfs")
            .args(["-q", "-f", "-m", "single", "--nodesize", "4096", "--rootdir"])
            .arg(&src)
            .arg(&img)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mkfs.btrfs (btrfs-progs) is needed to build the template");
        let bytes = std::fs::read(&img).expect("template bytes");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

/// The template with some bytes replaced, without copying it; with `reseal`, a patched
/// 4 KiB tree block read whole gets a valid checksum again, so the parsers see the damage.
struct Patched {
    base: &'static [u8],
    patches: Vec<(usize, u8)>,
    reseal: bool,
}

/// CRC-32C, bit by bit (the fuzz crate does not depend on a CRC crate).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

impl DiskRead for Patched {
    fn len(&self) -> u64 {
        self.base.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> diskconv::Result<()> {
        let o = offset as usize;
        let end = o.checked_add(buf.len()).filter(|&e| e <= self.base.len()).ok_or_else(|| {
            diskconv::Error::InvalidArgument("read past the end".into())
        })?;
        buf.copy_from_slice(&self.base[o..end]);
        let mut hit = false;
        for &(at, v) in &self.patches {
            if (o..end).contains(&at) {
                buf[at - o] = v;
                hit = true;
            }
        }
        if hit && self.reseal && buf.len() == 4096 && o % 4096 == 0 && o != 0x10000 {
            let c = crc32c(&buf[0x20..]);
            buf[..4].copy_from_slice(&c.to_le_bytes());
        }
        Ok(())
    }
}

fn walk(v: &BtrfsVolume, path: &str, depth: u32) {
    let Ok(Some(names)) = v.list_dir(path, 64) else {
        return;
    };
    for n in names {
        let p = format!("{}/{n}", path.trim_end_matches('/'));
        let _ = v.read_head(&p, 1 << 20);
        let _ = v.read_link(&p);
        if depth < 2 {
            walk(v, &p, depth + 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::parse(data, 0x10000);
    let _ = ChunkMap::from_sys_array(data, 0);
    let _ = parse_entries(data, "fuzz", 0);
    let _ = ExtentData::parse(data, 257, 0);
    let _ = lzo1x_decompress(data, &mut [0u8; 8192]);
    for c in [Compression::Lzo, Compression::Zlib, Compression::Zstd] {
        let _ = decompress(c, data, 8192, 4096, "fuzz");
    }
    let fsid = [0u8; 16];
    let _ = Node::parse(data.to_vec(), 0, 0, CsumType::Crc32c, &fsid, None);
    if data.len() >= 0x30 {
        let mut b = data.to_vec();
        let c = crc32c(&b[0x20..]);
        b[..4].copy_from_slice(&c.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[0x20..0x30]);
        let logical = u64::from_le_bytes(b[0x28..0x30].try_into().unwrap_or([0; 8]));
        let _ = Node::parse(b, logical, 0, CsumType::Crc32c, &id, None);
    }
    let base = template();
    // Patch only past the first 64 KiB, where the superblock and the trees are.
    let patches = data
        .chunks_exact(4)
        .take(256)
        .map(|r| (0x10000 + (u32::from_le_bytes([r[0], r[1], r[2], 0]) as usize) % (base.len() - 0x10000), r[3]))
        .collect();
    let reseal = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(v) = BtrfsVolume::open(Patched { base, patches, reseal }) {
        walk(&v, "/", 0);
        let _ = v.subvolumes();
        let _ = v.stat("/etc/link");
    }
});
