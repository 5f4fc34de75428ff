//! The benchmark's source disk: a GPT disk whose one partition holds an ext4 file system filled
//! with real files (from /usr), a file of pseudo-random bytes and free space, written sparse.
//!
//! Layout of a disk of `size` bytes:
//!
//! ```text
//! 0         protective MBR, primary GPT header and entries (LBA 0..33)
//! 1 MiB     partition 1 (Linux filesystem): ext4 made by `mke2fs -d`, up to size - 1 MiB
//!           ~55% of the disk: files copied from /usr/lib, /usr/share, /usr/include, /usr/bin
//!           ~15% of the disk: random.bin, pseudo-random bytes (incompressible)
//!           the rest: free space, left as holes
//! size-33s  backup GPT entries and header
//! ```
//!
//! Without `mke2fs` (or when it fails) the partition gets a synthetic mix instead: text-like,
//! binary-like, random and zero regions, in the same proportions.
//!
//! The result is cached in the work folder, keyed by size and [`GENERATOR_VERSION`].

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use diskconv::util::is_zero;
use serde::{Deserialize, Serialize};

/// Bump when the layout or contents change, so cached images are regenerated.
pub const GENERATOR_VERSION: u32 = 1;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// Where the partition starts and how much is kept free at the end (backup GPT).
const PART_START: u64 = MIB;

/// What the generator produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceImage {
    pub path: PathBuf,
    pub virtual_size: u64,
    /// Bytes allocated on the host (holes excluded).
    pub allocated: u64,
    /// "ext4" or "synthetic".
    pub content: String,
    /// One line saying how it was made.
    pub description: String,
    /// Bytes of real files copied in (ext4) or of text/binary regions (synthetic).
    pub file_bytes: u64,
    pub file_count: u64,
    /// Bytes of pseudo-random data.
    pub random_bytes: u64,
}

/// The cached image for `size`, generating it when missing.
pub fn source_image(workdir: &Path, size: u64) -> io::Result<SourceImage> {
    let stem = format!("source-{}-v{GENERATOR_VERSION}", size_tag(size));
    let path = workdir.join(format!("{stem}.raw"));
    let meta_path = workdir.join(format!("{stem}.json"));
    if let (Ok(m), Ok(text)) = (fs::metadata(&path), fs::read_to_string(&meta_path)) {
        if m.len() == size {
            if let Ok(mut img) = serde_json::from_str::<SourceImage>(&text) {
                img.path = path;
                img.allocated = m.blocks() * 512;
                eprintln!("using cached source image {}", img.path.display());
                return Ok(img);
            }
        }
    }
    let _ = fs::remove_file(&meta_path);
    let tmp = workdir.join(format!("{stem}.raw.tmp"));
    let _ = fs::remove_file(&tmp);
    eprintln!(
        "generating a {} source image (cached for reruns) ...",
        size_tag(size)
    );
    let t = std::time::Instant::now();
    let mut img = match generate_ext4(workdir, &tmp, size) {
        Ok(img) => img,
        Err(e) => {
            eprintln!(
                "NOTE: no ext4 file system ({e}); falling back to a synthetic mix of text-like, \
                 binary-like, random and zero regions"
            );
            let _ = fs::remove_file(&tmp);
            generate_synthetic(&tmp, size)?
        }
    };
    write_gpt(&tmp, size)?;
    dig_holes(&tmp)?;
    fs::rename(&tmp, &path)?;
    img.path = path.clone();
    img.allocated = fs::metadata(&path)?.blocks() * 512;
    fs::write(&meta_path, serde_json::to_string_pretty(&img)?)?;
    eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());
    Ok(img)
}

/// "2G", "256M" or a byte count.
pub fn size_tag(size: u64) -> String {
    if size % (1 << 30) == 0 {
        format!("{}G", size >> 30)
    } else if size % MIB == 0 {
        format!("{}M", size >> 20)
    } else {
        size.to_string()
    }
}

/// Partition 1 as a byte range.
fn partition(size: u64) -> (u64, u64) {
    (PART_START, size - PART_START - MIB)
}

fn generate_ext4(workdir: &Path, disk: &Path, size: u64) -> io::Result<SourceImage> {
    if !on_path("mke2fs") {
        return Err(io::Error::other("mke2fs is not on PATH"));
    }
    let staging = workdir.join(format!("staging-{}", size_tag(size)));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    let result = (|| {
        let mut filler = Filler {
            budget: size * 55 / 100,
            used: 0,
            files: 0,
            dirs: 0,
        };
        for root in ["/usr/lib", "/usr/share", "/usr/include", "/usr/bin"] {
            let root = Path::new(root);
            let name = root.file_name().unwrap_or_default();
            filler.copy_tree(root, &staging.join(name))?;
        }
        let random_bytes = size * 15 / 100;
        write_random(&staging.join("random.bin"), random_bytes, 0x5eed_d15c)?;

        let (start, len) = partition(size);
        File::create(disk)?.set_len(size)?;
        let blocks = len / 4096;
        // Enough inodes for what we copied, whatever the default ratio gives.
        let inodes = (filler.files + filler.dirs) * 5 / 4 + 1024;
        let mut cmd = Command::new("mke2fs");
        cmd.args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            "diskconv-bench",
        ])
        .args(["-U", "6d1f2a3c-0b5e-4c6f-9a41-2f0c3b7e8d90"])
        .arg("-E")
        .arg(format!("offset={start}"))
        .arg("-N")
        .arg(inodes.max(len / 16384).to_string())
        .arg("-d")
        .arg(&staging)
        .arg(disk)
        .arg(blocks.to_string());
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mke2fs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if fs::metadata(disk)?.len() != size {
            return Err(io::Error::other(
                "mke2fs changed the length of the disk file",
            ));
        }
        Ok(SourceImage {
            path: disk.to_owned(),
            virtual_size: size,
            allocated: 0,
            content: "ext4".into(),
            description: format!(
                "GPT, one partition at 1 MiB: ext4 (mke2fs -d) with {} files ({}) from /usr \
                 and {} of pseudo-random bytes; free space as holes",
                filler.files,
                diskconv::util::human_bytes(filler.used),
                diskconv::util::human_bytes(random_bytes)
            ),
            file_bytes: filler.used,
            file_count: filler.files,
            random_bytes,
        })
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
}

/// Copies (or hard-links) regular files into the staging tree until the budget is spent.
struct Filler {
    budget: u64,
    used: u64,
    files: u64,
    dirs: u64,
}

impl Filler {
    fn copy_tree(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let Ok(rd) = fs::read_dir(from) else {
            return Ok(()); // unreadable or missing: skip
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        let mut made_dir = false;
        for e in entries {
            if self.used + 64 * 1024 >= self.budget {
                return Ok(());
            }
            let Ok(ft) = e.file_type() else { continue };
            let src = e.path();
            let dst = to.join(e.file_name());
            if ft.is_dir() {
                self.copy_tree(&src, &dst)?;
                continue;
            }
            if !ft.is_file() {
                continue; // symlinks, sockets, devices
            }
            let Ok(m) = e.metadata() else { continue };
            let cost = m.len().div_ceil(4096) * 4096;
            if m.len() == 0 || self.used + cost > self.budget {
                continue;
            }
            if !made_dir {
                fs::create_dir_all(to)?;
                self.dirs += 1;
                made_dir = true;
            }
            if fs::hard_link(&src, &dst).is_err() && fs::copy(&src, &dst).is_err() {
                let _ = fs::remove_file(&dst);
                continue;
            }
            self.used += cost;
            self.files += 1;
        }
        Ok(())
    }
}

/// splitmix64: a tiny, fast, seedable generator; plenty for incompressible filler.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn write_random(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let mut f = io::BufWriter::with_capacity(MIB as usize, File::create(path)?);
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// The fallback: 4 MiB regions of text-like, binary-like, random or zero bytes.
fn generate_synthetic(disk: &Path, size: u64) -> io::Result<SourceImage> {
    const REGION: u64 = 4 * MIB;
    const WORDS: &[&str] = &[
        "the",
        "disk",
        "image",
        "block",
        "cluster",
        "kernel",
        "module",
        "config",
        "error",
        "path",
        "value",
        "return",
        "struct",
        "static",
        "const",
        "void",
        "int",
        "if",
        "else",
        "for",
        "while",
        "#include",
        "<stdio.h>",
        "printf(\"%s\\n\",",
        "0x1000",
        "/usr/lib",
        "ENOENT",
        "systemd",
        "network",
        "interface",
        "address",
        "partition",
        "filesystem",
        "inode",
    ];
    let f = File::create(disk)?;
    f.set_len(size)?;
    let (start, len) = partition(size);
    let mut rng = Rng::new(0xd15c_c0de);
    let mut buf = vec![0u8; REGION as usize];
    let (mut text, mut random, mut files) = (0u64, 0u64, 0u64);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(REGION) as usize;
        let buf = &mut buf[..n];
        // Same proportions as the ext4 image: ~55% file-like data, ~15% random, ~30% zeros.
        match rng.next_u64() % 100 {
            0..=29 => {
                // Text: words, spaces and newlines.
                let mut i = 0;
                while i < n {
                    let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes();
                    let sep = if rng.next_u64() % 9 == 0 { b'\n' } else { b' ' };
                    for &b in w.iter().chain(std::iter::once(&sep)) {
                        if i < n {
                            buf[i] = b;
                            i += 1;
                        }
                    }
                }
                text += n as u64;
                files += 1;
            }
            30..=54 => {
                // Binary-like: 16-byte records, counters, small values, padding, some noise.
                for (k, rec) in buf.chunks_mut(16).enumerate() {
                    let r = rng.next_u64();
                    let mut b = [0u8; 16];
                    b[..4]
                        .copy_from_slice(&((off as u32 / 16).wrapping_add(k as u32)).to_le_bytes());
                    b[4..6].copy_from_slice(&((r & 0xff) as u16).to_le_bytes());
                    b[8] = (r >> 8) as u8 & 0x0f;
                    if r % 7 == 0 {
                        b[12..16].copy_from_slice(&(r as u32).to_le_bytes());
                    }
                    rec.copy_from_slice(&b[..rec.len()]);
                }
                text += n as u64;
                files += 1;
            }
            55..=69 => {
                rng.fill(buf);
                random += n as u64;
            }
            _ => {
                off += n as u64;
                continue; // zero region: leave the hole
            }
        }
        f.write_all_at(buf, start + off)?;
        off += n as u64;
    }
    Ok(SourceImage {
        path: disk.to_owned(),
        virtual_size: size,
        allocated: 0,
        content: "synthetic".into(),
        description: format!(
            "SYNTHETIC (mke2fs unavailable): GPT, one partition at 1 MiB with 4 MiB regions: {} \
             text/binary-like, {} random, the rest zero holes",
            diskconv::util::human_bytes(text),
            diskconv::util::human_bytes(random)
        ),
        file_bytes: text,
        file_count: files,
        random_bytes: random,
    })
}

/// CRC-32 (IEEE, reflected), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A GUID in its on-disk (mixed-endian) form.
fn guid(s: &str) -> [u8; 16] {
    diskconv::bytes::Guid::parse(s)
        .map(diskconv::bytes::Guid::to_bytes)
        .unwrap_or_default()
}

/// Writes a protective MBR and primary and backup GPT with one Linux partition.
fn write_gpt(disk: &Path, size: u64) -> io::Result<()> {
    const ENTRIES: u64 = 128;
    const ENTRY_SIZE: u64 = 128;
    let f = fs::OpenOptions::new().write(true).open(disk)?;
    let last_lba = size / SECTOR - 1;
    let (start, len) = partition(size);

    // Protective MBR: one 0xEE partition over the whole disk (capped at 2^32-1 sectors).
    let mut mbr = [0u8; 512];
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    pe[4] = 0xee;
    pe[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&(last_lba.min(u32::MAX as u64) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all_at(&mbr, 0)?;

    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let e = &mut entries[..128];
    e[0..16].copy_from_slice(&guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4")); // Linux filesystem
    e[16..32].copy_from_slice(&guid("2B7C3A61-5E0D-4F2A-9C1B-7E4D8A6F3C25"));
    e[32..40].copy_from_slice(&(start / SECTOR).to_le_bytes());
    e[40..48].copy_from_slice(&((start + len) / SECTOR - 1).to_le_bytes());
    for (i, u) in "diskconv-bench".encode_utf16().enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    let entries_crc = crc32(&entries);
    let entry_sectors = ENTRIES * ENTRY_SIZE / SECTOR;

    let header = |my_lba: u64, alt_lba: u64, entries_lba: u64| {
        let mut h = [0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + entry_sectors).to_le_bytes()); // first usable
        h[48..56].copy_from_slice(&(last_lba - entry_sectors - 1).to_le_bytes()); // last usable
        h[56..72].copy_from_slice(&guid("9E4B2D17-3C8A-4F60-B5D2-1A7C6E9F0B38"));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    f.write_all_at(&header(1, last_lba, 2), SECTOR)?;
    f.write_all_at(&entries, 2 * SECTOR)?;
    let backup_entries = last_lba - entry_sectors;
    f.write_all_at(&entries, backup_entries * SECTOR)?;
    f.write_all_at(&header(last_lba, 1, backup_entries), last_lba * SECTOR)?;
    f.sync_all()
}

/// Punches holes over every all-zero, 64 KiB-aligned 64 KiB block, so zeroed regions are holes
/// whatever the tools that wrote them did.
fn dig_holes(path: &Path) -> io::Result<()> {
    const BLOCK: usize = 64 * 1024;
    let mut f = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
            if block.len() == BLOCK && is_zero(block) {
                punch_hole(&f, off + (i * BLOCK) as u64, BLOCK as u64)?;
            }
        }
        off += n as u64;
    }
    f.sync_all()
}

fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a file once so its data is in the page cache for whichever tool runs first (holes
/// read back as zeros without touching the disk).
pub fn warm_cache(path: &Path) -> io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 4 * MIB as usize];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}
