//! VirtualBox VDI: reading what qemu-img makes, writing what qemu-img reads, differencing
//! chains, in-place updates, clear errors for damaged files.
//!
//! Oracles: qemu-img (`convert` makes dynamic and static VDIs; `info`, `check`, `compare` and
//! `map` read ours); for differencing chains, which qemu cannot open, images laid out here by
//! hand from VirtualBox's `VDICore.h` (pre-header, header, block map, `uuidLinkage`; see
//! [`Vdi`]) and a raw model of what the chain must read as.

use std::path::{Path, PathBuf};
use std::process::Output;

use diskconv::formats::vdi::{self, VdiUpdater};
use diskconv::sync::target::open_updater;
use diskconv::{ErrorKind, Format, ImageReader, ImageUpdater, OpenOptions, ReferencePolicy};

use crate::contract::check_reader;
use crate::util::{
    Rng, assert_qemu_check, diskconv, make_raw, qemu_compare, qemu_img, qemu_info, require, run,
    sha256_file, sha256_image, tmpdir,
};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn open_vdi(p: &Path) -> diskconv::Result<Box<dyn ImageReader>> {
    diskconv::open(p, &OpenOptions::default())
}

fn open_err(p: &Path, opts: &OpenOptions) -> diskconv::Error {
    match diskconv::open(p, opts) {
        Ok(_) => panic!("{} opened but should not", p.display()),
        Err(e) => e,
    }
}

fn read_all(img: &dyn ImageReader) -> Vec<u8> {
    let mut v = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut v, 0).unwrap();
    v
}

/// Runs diskconv with `args`; returns (exit code, stdout, stderr).
fn dc(args: &[&str]) -> (i32, String, String) {
    let out: Output = diskconv().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn qemu_make(raw: &Path, vdi: &Path, opts: &str) {
    let mut args = vec!["convert", "-f", "raw", "-O", "vdi"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(raw), s(vdi)]);
    qemu_img(&args);
}

// ---------------------------------------------------------------------------------------
// A VDI laid out by hand, independently of diskconv's writer, from VirtualBox's VDICore.h.
// ---------------------------------------------------------------------------------------

/// What one block of a hand-made image holds.
#[derive(Clone)]
enum Slot {
    /// `VDI_IMAGE_BLOCK_FREE` (0xffffffff): the parent's data, or zeros.
    Free,
    /// `VDI_IMAGE_BLOCK_ZERO` (0xfffffffe): zeros.
    Zero,
    /// Stored: `block size` bytes.
    Data(Vec<u8>),
}

/// A VDI described field by field; [`Vdi::write`] lays it out.
#[derive(Clone)]
struct Vdi {
    /// `0x00010001` (1.1) or `0x00000002` (0.2, the old header).
    version: u32,
    /// 1 normal, 2 fixed, 3 undo, 4 differencing.
    image_type: u32,
    disk: u64,
    block: u32,
    extra: u32,
    /// Alignment of the block map and data offsets (version 1).
    align: u64,
    create: [u8; 16],
    modify: [u8; 16],
    linkage: [u8; 16],
    parent_modify: [u8; 16],
    blocks: Vec<Slot>,
}

fn uuid(n: u8) -> [u8; 16] {
    let mut u = [n; 16];
    u[7] = 0x40 | (n & 0x0f); // version 4, stored little-endian in the third field
    u[8] = 0x80 | (n & 0x3f);
    u
}

impl Vdi {
    /// A version 1.1 image of `disk` bytes in blocks of `block`, every block free.
    fn new(image_type: u32, disk: u64, block: u32, id: u8) -> Vdi {
        let n = disk.div_ceil(u64::from(block)) as usize;
        Vdi {
            version: 0x0001_0001,
            image_type,
            disk,
            block,
            extra: 0,
            align: 512,
            create: uuid(id),
            modify: uuid(id.wrapping_add(100)),
            linkage: [0; 16],
            parent_modify: [0; 16],
            blocks: vec![Slot::Free; n],
        }
    }

    /// A differencing child of `parent`.
    fn child(parent: &Vdi, id: u8) -> Vdi {
        let mut c = Vdi::new(4, parent.disk, parent.block, id);
        c.linkage = parent.create;
        c.parent_modify = parent.modify;
        c
    }

    /// Fills the blocks with pseudo-random slots: about `data`% stored, some zero, the rest
    /// free.
    fn fill(&mut self, rng: &mut Rng, data: u64) {
        let bs = self.block as usize;
        for b in self.blocks.iter_mut() {
            let r = rng.below(100);
            *b = if r < data {
                let byte = (rng.next() % 255 + 1) as u8;
                Slot::Data((0..bs).map(|i| byte.wrapping_add((i % 97) as u8)).collect())
            } else if r < data + 15 {
                Slot::Zero
            } else {
                Slot::Free
            };
        }
    }

    /// Applies this layer over `below` (the parent's content, or zeros).
    fn apply(&self, below: &mut [u8]) {
        assert_eq!(below.len() as u64, self.disk & !511);
        let bs = self.block as usize;
        for (i, b) in self.blocks.iter().enumerate() {
            let start = i * bs;
            if start >= below.len() {
                break;
            }
            let end = (start + bs).min(below.len());
            match b {
                Slot::Free => {}
                Slot::Zero => below[start..end].fill(0),
                Slot::Data(d) => below[start..end].copy_from_slice(&d[..end - start]),
            }
        }
    }

    /// The bytes of the image. Stored blocks go into the data area in reverse block order,
    /// so that the block map's indices are not the identity.
    fn bytes(&self) -> Vec<u8> {
        let n = self.blocks.len() as u32;
        let stored: Vec<usize> = (0..self.blocks.len())
            .rev()
            .filter(|&i| matches!(self.blocks[i], Slot::Data(_)))
            .collect();
        let v0 = self.version >> 16 == 0;
        let (off_blocks, off_data) = if v0 {
            // VDIHEADER0 has no offsets: the map follows the 348-byte header, the data the map.
            (420u64, 420 + 4 * u64::from(n))
        } else {
            let ob = (72u64 + 400).next_multiple_of(self.align);
            (ob, (ob + 4 * u64::from(n)).next_multiple_of(self.align))
        };
        let stride = u64::from(self.block) + u64::from(self.extra);
        let mut f = vec![0u8; (off_data + stride * stored.len() as u64) as usize];
        // VDIPREHEADER: text, signature, version.
        f[..27].copy_from_slice(b"<<< hand-made VDI test >>>\n");
        f[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        f[68..72].copy_from_slice(&self.version.to_le_bytes());
        let put32 =
            |f: &mut [u8], at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let h = 72;
        if v0 {
            // VDIHEADER0
            put32(&mut f, h, self.image_type); // u32Type
            put32(&mut f, h + 264 + 12, 512); // LegacyGeometry.cbSector
            f[h + 280..h + 288].copy_from_slice(&self.disk.to_le_bytes()); // cbDisk
            put32(&mut f, h + 288, self.block); // cbBlock
            put32(&mut f, h + 292, n); // cBlocks
            put32(&mut f, h + 296, stored.len() as u32); // cBlocksAllocated
            f[h + 300..h + 316].copy_from_slice(&self.create); // uuidCreate
            f[h + 316..h + 332].copy_from_slice(&self.modify); // uuidModify
            f[h + 332..h + 348].copy_from_slice(&self.linkage); // uuidLinkage
        } else {
            // VDIHEADER1PLUS
            put32(&mut f, h, 400); // cbHeader
            put32(&mut f, h + 4, self.image_type); // u32Type
            put32(&mut f, h + 268, off_blocks as u32); // offBlocks
            put32(&mut f, h + 272, off_data as u32); // offData
            put32(&mut f, h + 288, 512); // LegacyGeometry.cbSector
            f[h + 296..h + 304].copy_from_slice(&self.disk.to_le_bytes()); // cbDisk
            put32(&mut f, h + 304, self.block); // cbBlock
            put32(&mut f, h + 308, self.extra); // cbBlockExtra
            put32(&mut f, h + 312, n); // cBlocks
            put32(&mut f, h + 316, stored.len() as u32); // cBlocksAllocated
            f[h + 320..h + 336].copy_from_slice(&self.create); // uuidCreate
            f[h + 336..h + 352].copy_from_slice(&self.modify); // uuidModify
            f[h + 352..h + 368].copy_from_slice(&self.linkage); // uuidLinkage
            f[h + 368..h + 384].copy_from_slice(&self.parent_modify); // uuidParentModify
            put32(&mut f, h + 396, 512); // LCHSGeometry.cbSector
        }
        // The block map, then the stored blocks (extra data 0xee, then the block).
        for (i, b) in self.blocks.iter().enumerate() {
            let e = match b {
                Slot::Free => 0xffff_ffff,
                Slot::Zero => 0xffff_fffe,
                Slot::Data(_) => stored.iter().position(|&x| x == i).unwrap() as u32,
            };
            put32(&mut f, off_blocks as usize + 4 * i, e);
        }
        for (index, &i) in stored.iter().enumerate() {
            let at = (off_data + stride * index as u64) as usize;
            f[at..at + self.extra as usize].fill(0xee);
            if let Slot::Data(d) = &self.blocks[i] {
                f[at + self.extra as usize..at + stride as usize].copy_from_slice(d);
            }
        }
        f
    }

    fn write(&self, path: &Path) {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(path, self.bytes()).unwrap();
    }

    fn uuid_text(&self) -> String {
        let b = &self.create;
        let a = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let m = u16::from_le_bytes([b[4], b[5]]);
        let h = u16::from_le_bytes([b[6], b[7]]);
        let tail: String = b[10..].iter().map(|x| format!("{x:02x}")).collect();
        format!("{a:08x}-{m:04x}-{h:04x}-{:02x}{:02x}-{tail}", b[8], b[9])
    }
}

/// The content of a chain, base first.
fn model(chain: &[&Vdi]) -> Vec<u8> {
    let mut m = vec![0u8; (chain[0].disk & !511) as usize];
    for layer in chain {
        layer.apply(&mut m);
    }
    m
}

/// A three-level chain in blocks of 64 KiB with a disk of 1 MiB + 1.5 KiB (not a multiple of
/// the block size): a dynamic base, a middle layer with 512 bytes of extra data per block, a
/// top layer with free blocks over data, zero blocks over data and data over zero blocks.
fn chain3(seed: u64) -> (Vdi, Vdi, Vdi) {
    let mut rng = Rng::new(seed);
    let disk = MIB + 1536;
    let mut base = Vdi::new(1, disk, 64 << 10, 1);
    base.fill(&mut rng, 70);
    let mut mid = Vdi::child(&base, 2);
    mid.extra = 512;
    mid.fill(&mut rng, 35);
    let mut top = Vdi::child(&mid, 3);
    top.fill(&mut rng, 30);
    // Make sure the interesting cases are there: top free over mid data, top zero over base
    // data, top data over a mid zero.
    mid.blocks[0] = Slot::Data(vec![0x5a; 64 << 10]);
    top.blocks[0] = Slot::Free;
    base.blocks[1] = Slot::Data(vec![0x6b; 64 << 10]);
    mid.blocks[1] = Slot::Free;
    top.blocks[1] = Slot::Zero;
    mid.blocks[2] = Slot::Zero;
    top.blocks[2] = Slot::Data(vec![0x7c; 64 << 10]);
    // The parents' modification UUIDs as recorded by their children.
    mid.linkage = base.create;
    mid.parent_modify = base.modify;
    top.linkage = mid.create;
    top.parent_modify = mid.modify;
    (base, mid, top)
}

// ---------------------------------------------------------------------------------------
// qemu-img made and read
// ---------------------------------------------------------------------------------------

/// qemu-img's dynamic and static VDIs (sizes of whole blocks, of a partial last block, and
/// one not a multiple of 1 MiB) read as the raw they were made from, and as qemu reads them.
#[test]
fn qemu_made_vdis_read_as_their_source() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    for (i, size) in [MIB, 7 * MIB + 512, 5 * MIB + 300 * 1024]
        .into_iter()
        .enumerate()
    {
        let raw = d.path().join(format!("{i}.raw"));
        make_raw(&raw, size, 11 + i as u64);
        let want = std::fs::read(&raw).unwrap();
        for opts in ["", "static=on"] {
            let img = d.path().join(format!("{i}{opts}.vdi"));
            qemu_make(&raw, &img, opts);
            let r = open_vdi(&img).unwrap();
            assert_eq!(r.format(), Format::Vdi);
            assert_eq!(
                r.virtual_size(),
                qemu_info(&img)["virtual-size"].as_u64().unwrap()
            );
            check_reader(r.as_ref(), &want);
            let info = r.info();
            let sub = if opts.is_empty() { "dynamic" } else { "fixed" };
            assert_eq!(info.subformat.as_deref(), Some(sub));
            assert_eq!(info.cluster_size, Some(MIB));
            // The CLI agrees, and our check finds nothing wrong with qemu's image.
            let (code, _, err) = dc(&["compare", "-f", "raw", "-F", "vdi", s(&raw), s(&img)]);
            assert_eq!(code, 0, "{err}");
            let (code, out, err) = dc(&["check", s(&img)]);
            assert_eq!(code, 0, "{out}{err}");
        }
    }
}

/// Our dynamic and fixed VDIs: qemu-img reads them equal to the source, `qemu-img check`
/// finds nothing, blocks of zeros are not stored in the dynamic one, and the data area
/// starts on a 1 MiB boundary.
#[test]
fn our_vdis_pass_qemu_info_check_and_compare() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("src.raw");
    let size = 9 * MIB + 512;
    make_raw(&raw, size, 5);
    // Blocks 3 and 4 all zeros.
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 2 * MIB as usize], 3 * MIB).unwrap();
    drop(f);
    for (opts, fixed) in [
        ("", false),
        ("subformat=dynamic", false),
        ("subformat=fixed", true),
        ("static=on", true),
    ] {
        let img = d.path().join("o.vdi");
        let _ = std::fs::remove_file(&img);
        let mut args = vec!["convert", "-O", "vdi"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([s(&raw), s(&img)]);
        let (code, _, err) = dc(&args);
        assert_eq!(code, 0, "{opts}: {err}");
        let info = qemu_info(&img);
        assert_eq!(info["format"], "vdi", "{opts}");
        assert_eq!(info["virtual-size"].as_u64(), Some(size), "{opts}");
        assert_eq!(info["cluster-size"].as_u64(), Some(MIB), "{opts}");
        assert_qemu_check(&img);
        assert!(qemu_compare(&raw, "raw", &img, "vdi"), "{opts}");
        let b = std::fs::read(&img).unwrap();
        let le32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(le32(72 + 272) as u64 % MIB, 0, "offData on 1 MiB");
        assert_eq!(
            le32(72 + 4),
            if fixed { 2 } else { 1 },
            "{opts}: image type"
        );
        let allocated = le32(72 + 316);
        if fixed {
            assert_eq!(allocated, 10);
        } else {
            // 10 blocks, 2 of them zeros.
            assert_eq!(allocated, 8, "{opts}");
            for i in [3, 4] {
                assert_eq!(le32(512 + 4 * i), 0xffff_ffff, "block {i} stays free");
            }
        }
        // qemu-img map agrees that the zero blocks hold no data in the dynamic image.
        let map: serde_json::Value =
            serde_json::from_str(&qemu_img(&["map", "--output=json", s(&img)])).unwrap();
        let zero_at_3m = map.as_array().unwrap().iter().any(|e| {
            e["start"].as_u64().unwrap() <= 3 * MIB
                && e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap() > 3 * MIB
                && e["data"] == false
        });
        assert!(fixed || zero_at_3m, "{map}");
        let r = open_vdi(&img).unwrap();
        assert_eq!(sha256_image(r.as_ref()), sha256_file(&raw));
    }
}

/// `convert` both ways and through another format, `info` and `map` on the CLI.
#[test]
fn convert_info_and_map_on_the_command_line() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("src.raw");
    make_raw(&raw, 6 * MIB, 9);
    let q = d.path().join("q.vdi");
    qemu_make(&raw, &q, "");
    // vdi -> qcow2 -> vdi -> raw, checked by qemu at each step.
    let qcow = d.path().join("a.qcow2");
    let back = d.path().join("b.vdi");
    let out = d.path().join("c.raw");
    for (a, b) in [(&q, &qcow), (&qcow, &back), (&back, &out)] {
        let (code, _, err) = dc(&["convert", s(a), s(b)]);
        assert_eq!(code, 0, "{err}");
    }
    assert!(qemu_compare(&raw, "raw", &qcow, "qcow2"));
    assert!(qemu_compare(&raw, "raw", &back, "vdi"));
    assert_qemu_check(&back);
    assert_eq!(sha256_file(&out), sha256_file(&raw));
    // info: format, size, block size.
    let (code, text, err) = dc(&["info", "--json", s(&back)]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], "vdi");
    assert_eq!(v["subformat"], "dynamic");
    assert_eq!(v["virtual_size"].as_u64(), Some(6 * MIB));
    assert_eq!(v["cluster_size"].as_u64(), Some(MIB));
    // map: every data extent of ours is data for qemu too (qemu reports whole blocks).
    let (code, text, err) = dc(&["map", "--json", s(&q)]);
    assert_eq!(code, 0, "{err}");
    let ours: serde_json::Value = serde_json::from_str(&text).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", s(&q)])).unwrap();
    let data_in = |map: &serde_json::Value, off: u64, key: &str, yes: &serde_json::Value| {
        map.as_array().unwrap().iter().any(|e| {
            let start = e["start"].as_u64().unwrap();
            start <= off && off < start + e["length"].as_u64().unwrap() && &e[key] == yes
        })
    };
    for e in ours.as_array().unwrap() {
        if e["kind"] == "data" {
            let off = e["start"].as_u64().unwrap();
            assert!(
                data_in(&theirs, off, "data", &serde_json::json!(true)),
                "{off:#x}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Differencing chains
// ---------------------------------------------------------------------------------------

/// A three-level chain laid out by hand reads as its model: free blocks show the parent,
/// zero blocks hide it; per-block extra data and a disk size that is not a multiple of the
/// block size are handled; `info`, `map`, `check` and `convert` on the CLI follow the chain.
#[test]
fn a_differencing_chain_reads_as_its_model() {
    let d = tmpdir();
    let (base, mid, top) = chain3(7);
    base.write(&d.path().join("base.vdi"));
    mid.write(&d.path().join("mid.vdi"));
    top.write(&d.path().join("top.vdi"));
    let want = model(&[&base, &mid, &top]);
    assert_eq!(
        &want[..64 << 10],
        &[0x5a; 64 << 10][..],
        "free over the parent's data"
    );
    assert!(
        want[64 << 10..128 << 10].iter().all(|&b| b == 0),
        "zero over data"
    );
    let top_path = d.path().join("top.vdi");
    let r = open_vdi(&top_path).unwrap_or_else(|e| panic!("{}", e.chain()));
    check_reader(r.as_ref(), &want);
    let info = r.info();
    assert_eq!(info.subformat.as_deref(), Some("differencing"));
    assert_eq!(info.backing_file.as_deref(), Some("mid.vdi"));
    let b = info.backing.as_ref().unwrap();
    assert_eq!(b.backing_file.as_deref(), Some("base.vdi"));
    assert!(b.backing.as_ref().unwrap().backing.is_none());
    // Each layer alone reads as its own part of the model.
    let r = open_vdi(&d.path().join("mid.vdi")).unwrap();
    assert_eq!(read_all(r.as_ref()), model(&[&base, &mid]));

    // The CLI: map reports all three depths, convert writes the model, check is clean.
    let (code, text, err) = dc(&["map", "--json", s(&top_path)]);
    assert_eq!(code, 0, "{err}");
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    for depth in 0..=2 {
        assert!(
            m.as_array().unwrap().iter().any(|e| e["depth"] == depth),
            "no extent at depth {depth}: {text}"
        );
    }
    let out = d.path().join("out.raw");
    let (code, _, err) = dc(&["convert", s(&top_path), s(&out)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), want);
    let (code, text, err) = dc(&["check", s(&top_path)]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("parent mid.vdi"), "{text}");
    if require("qemu-img") {
        // Flattened into a qcow2 by diskconv, checked against the model by qemu.
        let q = d.path().join("flat.qcow2");
        let (code, _, err) = dc(&["convert", s(&top_path), s(&q)]);
        assert_eq!(code, 0, "{err}");
        std::fs::write(&out, &want).unwrap();
        assert!(qemu_compare(&out, "raw", &q, "qcow2"));
    }
}

/// VirtualBox's own layout: the base beside the machine's `Snapshots` folder, the snapshot
/// images inside it named `{UUID}.vdi`. The default policy (the image's folder) refuses the
/// base one folder up, saying why; `--references=anywhere` reads the chain.
#[test]
fn the_snapshots_folder_layout() {
    let d = tmpdir();
    let (base, mid, top) = chain3(8);
    base.write(&d.path().join("disk.vdi"));
    let snaps = d.path().join("Snapshots");
    mid.write(&snaps.join(format!("{{{}}}.vdi", mid.uuid_text())));
    let top_path = snaps.join(format!("{{{}}}.vdi", top.uuid_text()));
    top.write(&top_path);
    // Another unrelated VDI in the folder is looked at and passed over.
    Vdi::new(1, MIB, 1 << 20, 9).write(&snaps.join("other.vdi"));
    let e = open_err(&top_path, &OpenOptions::default());
    assert_eq!(e.kind(), ErrorKind::ReferenceDenied, "{}", e.chain());
    assert!(
        e.chain().contains("outside the image's folder") && e.chain().contains("../disk.vdi"),
        "{}",
        e.chain()
    );
    let any = OpenOptions::default().references(ReferencePolicy::Anywhere);
    let r = diskconv::open(&top_path, &any).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(read_all(r.as_ref()), model(&[&base, &mid, &top]));
    let (code, _, err) = dc(&["info", "--references=anywhere", s(&top_path)]);
    assert_eq!(code, 0, "{err}");
    // The library can name the parent instead of searching (the base still needs the policy
    // to allow the folder above).
    let r = vdi::open_with_parent(
        &top_path,
        snaps.join(format!("{{{}}}.vdi", mid.uuid_text())),
        &any,
    )
    .unwrap();
    assert_eq!(read_all(r.as_ref()), model(&[&base, &mid, &top]));
    let e = match vdi::open_with_parent(&top_path, d.path().join("disk.vdi"), &any) {
        Ok(_) => panic!("the grandparent accepted as parent"),
        Err(e) => e,
    };
    assert!(
        e.chain().contains("this image's parent is"),
        "{}",
        e.chain()
    );
}

/// A parent changed after the child was made (its `uuidModify` differs from the child's
/// `uuidParentModify`), a chain that loops, a missing parent and `--references=deny` are
/// clear errors.
#[test]
fn chain_errors() {
    // One folder down, so that the folder above (searched too) holds nothing else.
    let t = tmpdir();
    let vm = t.path().join("vm");
    std::fs::create_dir(&vm).unwrap();
    let (base, mid, top) = chain3(9);
    base.write(&vm.as_path().join("base.vdi"));
    mid.write(&vm.as_path().join("mid.vdi"));
    let top_path = vm.as_path().join("top.vdi");
    top.write(&top_path);

    // Deny: nothing is searched.
    let deny = OpenOptions::default().references(ReferencePolicy::Deny);
    let e = open_err(&top_path, &deny);
    assert_eq!(e.kind(), ErrorKind::ReferenceDenied, "{}", e.chain());
    let (code, _, err) = dc(&["info", "--references=deny", s(&top_path)]);
    assert_eq!(code, 1);
    assert!(err.contains("references are denied"), "{err}");

    // The middle image modified after the top was made.
    let mut changed = mid.clone();
    changed.modify = uuid(77);
    changed.write(&vm.as_path().join("mid.vdi"));
    let e = open_err(&top_path, &OpenOptions::default());
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    assert!(
        e.chain()
            .contains("was modified after this differencing image was made"),
        "{}",
        e.chain()
    );
    let (code, text, _) = dc(&["check", s(&top_path)]);
    assert_eq!(code, 2, "a modified parent is a corruption: {text}");

    // The parent missing.
    std::fs::remove_file(vm.as_path().join("mid.vdi")).unwrap();
    let e = open_err(&top_path, &OpenOptions::default());
    assert!(e.chain().contains("was not found"), "{}", e.chain());
    let (code, text, _) = dc(&["check", s(&top_path)]);
    assert_eq!(code, 0, "a missing parent is a warning: {text}");
    assert!(
        text.contains("Warning: the parent was not checked"),
        "{text}"
    );

    // Two images naming each other.
    let mut a = Vdi::new(4, MIB, 1 << 20, 40);
    let mut b = Vdi::new(4, MIB, 1 << 20, 41);
    a.linkage = b.create;
    a.parent_modify = b.modify;
    b.linkage = a.create;
    b.parent_modify = a.modify;
    let loop_dir = vm.as_path().join("loop");
    a.write(&loop_dir.join("a.vdi"));
    b.write(&loop_dir.join("b.vdi"));
    let e = open_err(&loop_dir.join("a.vdi"), &OpenOptions::default());
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    assert!(e.chain().contains("loops"), "{}", e.chain());
}

/// The old version 0 header (map right after the header, no alignment) and an undo image.
#[test]
fn version_0_and_undo_images() {
    let d = tmpdir();
    let mut rng = Rng::new(21);
    let mut v0 = Vdi::new(1, 3 * MIB + 1024, 256 << 10, 50);
    v0.version = 0x0000_0002;
    v0.fill(&mut rng, 60);
    let p = d.path().join("v0.vdi");
    v0.write(&p);
    let r = open_vdi(&p).unwrap_or_else(|e| panic!("{}", e.chain()));
    check_reader(r.as_ref(), &model(&[&v0]));
    assert!(r.info().flags.iter().any(|f| f == "version 0.2"));
    // A version 1.1 undo image (type 3) over it reads like a differencing one.
    let mut undo = Vdi::child(&v0, 51);
    undo.image_type = 3;
    undo.parent_modify = [0; 16]; // a version 0 parent records nothing to check against
    undo.fill(&mut rng, 40);
    let u = d.path().join("undo.vdi");
    undo.write(&u);
    let r = open_vdi(&u).unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(read_all(r.as_ref()), model(&[&v0, &undo]));
    assert_eq!(r.info().subformat.as_deref(), Some("undo"));
}

// ---------------------------------------------------------------------------------------
// Damaged files
// ---------------------------------------------------------------------------------------

/// Damaged and hostile files: a clear error naming the structure and where it is, exit 1,
/// never a panic.
#[test]
fn damaged_files_are_clear_errors() {
    let d = tmpdir();
    // Blocks 0, 1 and 3 stored (in reverse order: entries 2, 1, zero, 0), block 2 zero.
    let mut good = Vdi::new(1, 4 * MIB, 1 << 20, 60);
    good.blocks = vec![
        Slot::Data(vec![1; 1 << 20]),
        Slot::Data(vec![2; 1 << 20]),
        Slot::Zero,
        Slot::Data(vec![3; 1 << 20]),
    ];
    let bytes = good.bytes();
    let set32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push((
        "truncated header",
        bytes[..300].to_vec(),
        "VDI header at 0x48: the file ends 228 bytes into",
    ));
    let mut b = bytes.clone();
    b[64] ^= 0xff;
    cases.push(("bad signature", b, "signature 0xbeda107f expected"));
    let mut b = bytes.clone();
    b.truncate(b.len() - 1);
    cases.push(("block past the end", b, "run past the end of the file"));
    let mut b = bytes.clone();
    set32(&mut b, 72 + 304, 0);
    cases.push((
        "block size zero",
        b,
        "block size (cbBlock) 0 is not a power of two",
    ));
    let mut b = bytes.clone();
    set32(&mut b, 72 + 304, 1 << 31);
    cases.push(("block size huge", b, "a block size of 2147483648 bytes"));
    let mut b = bytes.clone();
    set32(&mut b, 72 + 312, u32::MAX); // cBlocks: with 1 MiB blocks, 4 PiB: no overflow
    cases.push(("huge block count", b, "a block map of 4294967295 entries"));
    let mut b = bytes.clone();
    set32(&mut b, 72 + 316, 9); // cBlocksAllocated > cBlocks
    cases.push((
        "allocated count above the block count",
        b,
        "9 blocks allocated (cBlocksAllocated) out of 4",
    ));
    let mut b = bytes.clone();
    let stored = u32::from_le_bytes(b[72 + 316..72 + 320].try_into().unwrap());
    set32(&mut b, 72 + 316, stored - 1); // one stored block more than the count says
    cases.push((
        "allocated count too low",
        b,
        "blocks are allocated (cBlocksAllocated)",
    ));
    let mut b = bytes.clone();
    set32(&mut b, 512 + 4, 2); // entry 1 names entry 0's block
    cases.push((
        "two entries, one block",
        b,
        "entries 0 and 1 (at 0x204) both name block 2",
    ));
    let mut b = bytes.clone();
    set32(&mut b, 72 + 272, 0x204); // offData inside the block map
    cases.push(("data offset inside the map", b, "offData"));
    let mut b = bytes.clone();
    b[72 + 4] = 4; // differencing, without a parent UUID
    cases.push(("child without a parent", b, "uuidLinkage is nil"));
    for (what, bytes, want) in cases {
        let p = d.path().join("bad.vdi");
        std::fs::write(&p, &bytes).unwrap();
        let (code, _, err) = dc(&["info", "-f", "vdi", s(&p)]);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(
            err.contains(want) && err.contains("bad.vdi"),
            "{what}: expected {want:?} in: {err}"
        );
        // Library: an error too, never a panic; the file is untouched by a failed update.
        assert!(
            diskconv::open(&p, &OpenOptions::default().format(Format::Vdi)).is_err(),
            "{what}"
        );
        assert!(VdiUpdater::open(&p).is_err(), "{what}");
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "{what}: file changed");
    }
}

/// `diskconv check` lists leaks (blocks counted but named by no entry, bytes after the data
/// area: exit 3) and corruptions (entries past the count, shared blocks: exit 2).
#[test]
fn check_reports_leaks_and_corruptions() {
    let d = tmpdir();
    let mut good = Vdi::new(1, 4 * MIB, 1 << 20, 70);
    for i in 0..3 {
        good.blocks[i] = Slot::Data(vec![i as u8 + 1; 1 << 20]);
    }
    let bytes = good.bytes();
    let p = d.path().join("c.vdi");
    // Entry 1 freed by hand: its block is counted but unnamed (a leak, what qemu-img check
    // calls a mismatch of the allocated count).
    let mut b = bytes.clone();
    b[512 + 4..512 + 8].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let (code, text, err) = dc(&["check", s(&p)]);
    assert_eq!(code, 3, "{text}{err}");
    assert!(text.contains("Leaked data blocks"), "{text}");
    if require("qemu-img") {
        let out = std::process::Command::new("qemu-img")
            .args(["check", s(&p)])
            .output()
            .unwrap();
        assert_ne!(
            out.status.code(),
            Some(0),
            "qemu-img check agrees it is not clean"
        );
    }
    // Bytes after the data area.
    let mut b = bytes.clone();
    b.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&p, &b).unwrap();
    let (code, text, _) = dc(&["check", "--json", s(&p)]);
    assert_eq!(code, 3, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["leaks"], 1);
    // Two entries naming one block.
    let mut b = bytes.clone();
    let e0: [u8; 4] = b[512..516].try_into().unwrap();
    b[512 + 8..512 + 12].copy_from_slice(&e0);
    std::fs::write(&p, &b).unwrap();
    let (code, text, _) = dc(&["check", s(&p)]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("both name block") && text.contains("at 0x208"),
        "{text}"
    );
    // The good one is clean.
    std::fs::write(&p, &bytes).unwrap();
    let (code, text, _) = dc(&["check", s(&p)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("3/4 = 75.00% allocated"), "{text}");
}

// ---------------------------------------------------------------------------------------
// In-place updates
// ---------------------------------------------------------------------------------------

/// Random writes and zeroes (unaligned, across blocks, whole blocks, the whole disk once),
/// applied through the updater and to a model, flushes at random; then the image must read as
/// the model. `block` is the image's block size (for whole-block zeroes).
fn exercise(up: &mut dyn ImageUpdater, model: &mut [u8], block: u64, seed: u64, ops: usize) {
    let size = up.virtual_size();
    assert_eq!(size, model.len() as u64);
    let mut rng = Rng::new(seed);
    for op in 0..ops {
        if op == ops / 3 {
            up.write_zeroes(0, size).unwrap();
            model.fill(0);
            continue;
        }
        let (off, len) = match rng.below(10) {
            0..=4 => {
                let len = 1 + rng.below(400_000).min(size - 1);
                let off = rng.below(size - len + 1);
                let byte = (rng.next() % 255 + 1) as u8;
                let buf: Vec<u8> = (0..len)
                    .map(|i| byte.wrapping_add((i % 251) as u8))
                    .collect();
                up.write_at(&buf, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
                continue;
            }
            5 | 6 => {
                let len = 1 + rng.below((size / 8).clamp(1, 3 * MIB));
                (rng.below(size - len + 1), len)
            }
            7 | 8 => {
                let blocks = size.div_ceil(block);
                let first = rng.below(blocks);
                let n = 1 + rng.below((blocks - first).min(3));
                let off = first * block;
                (off, (n * block).min(size - off))
            }
            _ => {
                up.flush().unwrap();
                continue;
            }
        };
        up.write_zeroes(off, len).unwrap();
        model[off as usize..(off + len) as usize].fill(0);
    }
    up.flush().unwrap();
}

/// qemu-made and our own VDIs, dynamic and fixed, updated through the library updater:
/// qemu-img compare with the model, qemu-img check and our check clean, our reader equal.
#[test]
fn updates_in_place_match_a_model() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("src.raw");
    make_raw(&raw, 7 * MIB + 512, 41);
    let cases: [(&str, bool); 4] = [
        ("qemu", false),
        ("qemu", true),
        ("ours", false),
        ("ours", true),
    ];
    for (i, (who, fixed)) in cases.into_iter().enumerate() {
        let img = d.path().join(format!("u{i}.vdi"));
        if who == "qemu" {
            qemu_make(&raw, &img, if fixed { "static=on" } else { "" });
        } else {
            let sub = if fixed {
                "subformat=fixed"
            } else {
                "subformat=dynamic"
            };
            let (code, _, err) = dc(&["convert", "-O", "vdi", "-o", sub, s(&raw), s(&img)]);
            assert_eq!(code, 0, "{err}");
        }
        let mut model = std::fs::read(&raw).unwrap();
        {
            let mut up = open_updater(&img, Some(Format::Vdi)).unwrap();
            assert_eq!(up.format(), Format::Vdi);
            exercise(up.as_mut(), &mut model, MIB, 100 + i as u64, 250);
        }
        let m = d.path().join("model.raw");
        std::fs::write(&m, &model).unwrap();
        assert!(
            qemu_compare(&m, "raw", &img, "vdi"),
            "{who} fixed={fixed}: qemu-img compare differs from the model"
        );
        assert_qemu_check(&img);
        let (code, text, _) = dc(&["check", s(&img)]);
        assert_eq!(code, 0, "{who} fixed={fixed}: {text}");
        let r = open_vdi(&img).unwrap();
        assert_eq!(read_all(r.as_ref()), model);
        let len = std::fs::metadata(&img).unwrap().len();
        if fixed {
            assert_eq!(
                r.info()
                    .flags
                    .iter()
                    .filter(|f| f.contains("8 of 8 blocks"))
                    .count(),
                1
            );
        } else {
            // The data area stays dense: the file ends with the last stored block.
            let b = std::fs::read(&img).unwrap();
            let le32 = |at: usize| u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()));
            assert_eq!(len, le32(72 + 272) + le32(72 + 316) * MIB, "{who}");
        }
    }
}

/// A differencing child updated in place (partial writes over the parent's data copy the
/// parent's block first; whole-block zeroes hide it), a version 0 image and one with extra
/// data per block: our reader against the model, the parent untouched, `check` clean.
#[test]
fn updates_of_hand_made_layouts() {
    let d = tmpdir();
    let (base, mid, top) = chain3(31);
    base.write(&d.path().join("base.vdi"));
    mid.write(&d.path().join("mid.vdi"));
    let top_path = d.path().join("top.vdi");
    top.write(&top_path);
    let parents = [
        sha256_file(&d.path().join("base.vdi")),
        sha256_file(&d.path().join("mid.vdi")),
    ];
    let mut want = model(&[&base, &mid, &top]);
    {
        let mut up = VdiUpdater::open(&top_path).unwrap_or_else(|e| panic!("{}", e.chain()));
        // A small write into a free block over the parent's data keeps the rest of it.
        up.write_at(b"abc", 10).unwrap();
        want[10..13].copy_from_slice(b"abc");
        exercise(&mut up, &mut want, 64 << 10, 7, 300);
        assert_eq!(read_all(&up), want, "the updater reads what it wrote");
    }
    let r = open_vdi(&top_path).unwrap();
    assert_eq!(read_all(r.as_ref()), want);
    assert_eq!(sha256_file(&d.path().join("base.vdi")), parents[0]);
    assert_eq!(sha256_file(&d.path().join("mid.vdi")), parents[1]);
    let (code, text, _) = dc(&["check", s(&top_path)]);
    assert_eq!(code, 0, "{text}");

    // Version 0 and extra data per block, through sync's updater factory.
    let mut rng = Rng::new(5);
    let mut v0 = Vdi::new(1, 2 * MIB + 512, 128 << 10, 80);
    v0.version = 0x0000_0002;
    v0.fill(&mut rng, 50);
    let mut extra = Vdi::new(1, 2 * MIB, 64 << 10, 81);
    extra.extra = 4096;
    extra.align = MIB;
    extra.fill(&mut rng, 50);
    for (name, img, block) in [("v0.vdi", &v0, 128 << 10), ("extra.vdi", &extra, 64 << 10)] {
        let p = d.path().join(name);
        img.write(&p);
        let mut want = model(&[img]);
        {
            let mut up = open_updater(&p, None).unwrap();
            exercise(up.as_mut(), &mut want, block, 9, 200);
        }
        let r = open_vdi(&p).unwrap();
        assert_eq!(read_all(r.as_ref()), want, "{name}");
        let (code, text, _) = dc(&["check", s(&p)]);
        assert_eq!(code, 0, "{name}: {text}");
    }
}

/// `diskconv sync` to a VDI target: the first pass creates a dynamic VDI, later passes update
/// it in place; qemu-img compares and checks it after each pass.
#[test]
fn sync_to_a_vdi_target() {
    if !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let src = d.path().join("src.raw");
    make_raw(&src, 6 * MIB + 4096, 13);
    let dst: PathBuf = d.path().join("dst.vdi");
    run(diskconv().args(["sync", s(&src), s(&dst)]));
    assert_eq!(qemu_info(&dst)["format"], "vdi");
    assert!(qemu_compare(&src, "raw", &dst, "vdi"));
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    let mut rng = Rng::new(77);
    for pass in 0..3 {
        for _ in 0..6 {
            let off = rng.below(6 * MIB);
            let len = 1 + rng.below(200_000).min(6 * MIB + 4096 - off - 1);
            let buf = if rng.below(3) == 0 {
                vec![0u8; len as usize]
            } else {
                rng.bytes(len as usize)
            };
            std::os::unix::fs::FileExt::write_all_at(&f, &buf, off).unwrap();
        }
        if pass == 1 {
            // A whole block of the target becomes zeros: the target frees it.
            std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; MIB as usize], 2 * MIB)
                .unwrap();
        }
        run(diskconv().args(["sync", s(&src), s(&dst)]));
        assert!(qemu_compare(&src, "raw", &dst, "vdi"), "pass {pass}");
        assert_qemu_check(&dst);
    }
    let (code, text, _) = dc(&["check", s(&dst)]);
    assert_eq!(code, 0, "{text}");
}

/// The NTFS writer edits a volume inside a VDI through the same updater (`ntfs put`), and
/// ntfs-3g reads the file back from the converted image.
#[test]
fn ntfs_edit_inside_a_vdi() {
    if !require("mkntfs") || !require("ntfscat") || !require("qemu-img") {
        return;
    }
    let d = tmpdir();
    let raw = d.path().join("vol.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    run(std::process::Command::new("mkntfs").args(["-F", "-q", "-Q", s(&raw)]));
    let img = d.path().join("vol.vdi");
    run(diskconv().args(["convert", "-O", "vdi", s(&raw), s(&img)]));
    let file = d.path().join("hello.txt");
    std::fs::write(&file, b"written into a VDI\n").unwrap();
    run(diskconv().args(["ntfs", "mkdir", s(&img), "/dir"]));
    run(diskconv().args(["ntfs", "put", s(&img), s(&file), "/dir/hello.txt"]));
    assert_qemu_check(&img);
    let back = d.path().join("back.raw");
    qemu_img(&["convert", "-f", "vdi", "-O", "raw", s(&img), s(&back)]);
    let out = run(std::process::Command::new("ntfscat").args([s(&back), "/dir/hello.txt"]));
    assert_eq!(out.stdout, b"written into a VDI\n");
}

/// A chain deeper than the depth limit (16 images below the top, as for the other formats) is
/// refused; one at the limit reads.
#[test]
fn chain_depth_limit() {
    let t = tmpdir();
    let dir = t.path().join("vm");
    let mut layers = vec![Vdi::new(1, MIB, 64 << 10, 100)];
    layers[0].blocks[0] = Slot::Data(vec![0x42; 64 << 10]);
    for i in 1..=18u8 {
        let mut c = Vdi::child(&layers[i as usize - 1], 100 + i);
        c.blocks[i as usize % 16] = Slot::Data(vec![i; 64 << 10]);
        layers.push(c);
    }
    for (i, l) in layers.iter().enumerate() {
        l.write(&dir.join(format!("l{i:02}.vdi")));
    }
    // l16 has 16 images below it: the limit.
    let r = open_vdi(&dir.join("l16.vdi")).unwrap_or_else(|e| panic!("{}", e.chain()));
    let refs: Vec<&Vdi> = layers[..=16].iter().collect();
    assert_eq!(read_all(r.as_ref()), model(&refs));
    let e = open_err(&dir.join("l18.vdi"), &OpenOptions::default());
    assert!(e.chain().contains("deeper than 16"), "{}", e.chain());
}

/// Regression (fuzz `vdi_image`, out of memory): a header whose data area starts far past the
/// end of the file (offData 0xffffff00, two blocks counted, none named) had the updater store
/// a block 4 GiB into the file. Such an image is refused for updates, untouched; it still
/// reads (as zeros).
#[test]
fn regression_fuzz_oom_data_area_past_the_end_is_not_updated() {
    let d = tmpdir();
    let p = d.path().join("far.vdi");
    let mut b = Vdi::new(1, 4 * MIB, 1 << 20, 90).bytes();
    b[72 + 272..72 + 276].copy_from_slice(&0xffff_ff00u32.to_le_bytes()); // offData
    b[72 + 316..72 + 320].copy_from_slice(&2u32.to_le_bytes()); // cBlocksAllocated
    std::fs::write(&p, &b).unwrap();
    let e = VdiUpdater::open(&p).unwrap_err();
    assert!(
        e.chain().contains("past the end of the file"),
        "{}",
        e.chain()
    );
    assert_eq!(std::fs::read(&p).unwrap(), b);
    let r = open_vdi(&p).unwrap();
    assert!(read_all(r.as_ref()).iter().all(|&x| x == 0));
}
