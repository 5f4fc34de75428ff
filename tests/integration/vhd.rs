//! VHD (qemu's vpc): reading what qemu-img and real tools made, writing fixed (Azure) and
//! dynamic VHDs that qemu-img reads back equal, and clear errors for damaged files.

use std::path::Path;

use diskconv::convert::convert_to_files;
use diskconv::formats::vhd::{VhdSubformat, VhdWriteOptions, writer};
use diskconv::{ConvertOptions, ErrorKind, Format, ImageReader, OpenOptions, ReferencePolicy};

use crate::{contract, util};

const MIB: u64 = 1 << 20;

fn open_vhd(p: &Path) -> diskconv::Result<Box<dyn ImageReader>> {
    diskconv::open(p, &OpenOptions::default().format(Format::Vhd))
}

fn open_err(p: &Path) -> diskconv::Error {
    match open_vhd(p) {
        Ok(_) => panic!("{} opened but should not", p.display()),
        Err(e) => e,
    }
}

fn open_raw(p: &Path) -> Box<dyn ImageReader> {
    diskconv::open(p, &OpenOptions::default().format(Format::Raw)).unwrap()
}

fn write_vhd(src: &Path, dst: &Path, opts: &VhdWriteOptions) {
    let img = open_raw(src);
    let size = img.virtual_size();
    convert_to_files(
        &*img,
        dst,
        |files| writer::create(files, size, opts),
        &ConvertOptions::default(),
        None,
    )
    .unwrap_or_else(|e| panic!("writing {}: {}", dst.display(), e.chain()));
}

fn opts(sub: VhdSubformat, round: bool) -> VhdWriteOptions {
    VhdWriteOptions {
        subformat: sub,
        round_to_mib: round,
        ..Default::default()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn footer_checksum_ok(f: &[u8]) -> bool {
    let sum = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(b as u32));
    !sum == be32(f, 64)
}

fn fix_checksum(b: &mut [u8], at: usize) {
    b[at..at + 4].fill(0);
    let sum = b.iter().fold(0u32, |s, &x| s.wrapping_add(x as u32));
    b[at..at + 4].copy_from_slice(&(!sum).to_be_bytes());
}

fn qemu_size(p: &Path) -> u64 {
    let out = util::qemu_img(&["info", "-f", "vpc", "--output=json", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// qemu-img reads its own fixed and dynamic VHDs; diskconv reads them to the same bytes.
#[test]
fn vhd_reads_what_qemu_img_writes() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let raw = dir.path().join("src.raw");
    let size = 5 * MIB + 3 * 65536;
    util::make_raw(&raw, size, 7);
    let expected = std::fs::read(&raw).unwrap();
    for sub in ["fixed", "dynamic"] {
        for force in ["off", "on"] {
            let out = dir.path().join(format!("q-{sub}-{force}.vhd"));
            util::qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                &format!("subformat={sub},force_size={force}"),
                raw.to_str().unwrap(),
                out.to_str().unwrap(),
            ]);
            let img = open_vhd(&out).unwrap_or_else(|e| panic!("{sub}/{force}: {}", e.chain()));
            let qsize = qemu_size(&out);
            assert_eq!(img.virtual_size(), qsize, "{sub} force_size={force}");
            // Without force_size qemu grows the disk to a whole CHS geometry: the tail is zeros.
            let mut want = expected.clone();
            want.resize(qsize as usize, 0);
            contract::check_reader(&*img, &want);
            let sum = util::sha256_file(&out);
            drop(img);
            assert_eq!(sum, util::sha256_file(&out));
        }
    }
}

/// Both subformats, both roundings: qemu-img compare says equal and the size is right.
#[test]
fn vhd_writes_what_qemu_img_reads() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let raw = dir.path().join("src.raw");
    let size = 7 * MIB + 12345;
    util::make_raw(&raw, size, 3);
    for sub in [VhdSubformat::Fixed, VhdSubformat::Dynamic] {
        for round in [true, false] {
            let out = dir.path().join(format!("o-{sub:?}-{round}.vhd"));
            write_vhd(&raw, &out, &opts(sub, round));
            let want = if round {
                8 * MIB
            } else {
                size.div_ceil(512) * 512
            };
            assert_eq!(qemu_size(&out), want, "{sub:?} round={round}");
            // Compare against the source padded to the same size.
            let padded = dir.path().join("padded.raw");
            std::fs::copy(&raw, &padded).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&padded)
                .unwrap()
                .set_len(want)
                .unwrap();
            assert!(
                util::qemu_compare(&padded, "raw", &out, "vpc"),
                "{sub:?} round={round}"
            );
            // And we read back what we wrote.
            let img = open_vhd(&out).unwrap();
            let mut bytes = std::fs::read(&raw).unwrap();
            bytes.resize(want as usize, 0);
            contract::check_reader(&*img, &bytes);
        }
    }
}

#[test]
fn vhd_dynamic_block_sizes_and_sparseness() {
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let raw = dir.path().join("src.raw");
    let size = 9 * MIB;
    // Mostly empty: one 4 KiB pattern at 5 MiB.
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5au8; 4096], 5 * MIB).unwrap();
    for bs in [4096u32, 64 * 1024, 2 << 20] {
        let out = dir.path().join(format!("bs{bs}.vhd"));
        let o = VhdWriteOptions {
            block_size: bs,
            ..Default::default()
        };
        write_vhd(&raw, &out, &o);
        assert!(util::qemu_compare(&raw, "raw", &out, "vpc"), "bs {bs}");
        let len = std::fs::metadata(&out).unwrap().len();
        assert!(len < 3 * MIB, "bs {bs}: {len} bytes for one 4 KiB pattern");
        let img = open_vhd(&out).unwrap();
        contract::check_reader(&*img, &std::fs::read(&raw).unwrap());
    }
    // Below 4 KiB qemu misreads the bitmap: refused.
    let o = VhdWriteOptions {
        block_size: 512,
        ..Default::default()
    };
    let img = open_raw(&raw);
    let r = convert_to_files(
        &*img,
        &dir.path().join("bs512.vhd"),
        |files| writer::create(files, size, &o),
        &ConvertOptions::default(),
        None,
    );
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidArgument);
}

/// REFERENCE.md section 3, Azure row, for odd input sizes.
#[test]
fn vhd_fixed_meets_azure_rules() {
    let dir = util::tmpdir();
    let have_qemu = util::require("qemu-img");
    for size in [20 * MIB + 12345, 33 * MIB + 1, 20 * MIB, 5 * MIB + 7] {
        let raw = dir.path().join(format!("{size}.raw"));
        util::make_raw(&raw, size, size);
        let out = dir.path().join(format!("{size}.vhd"));
        write_vhd(&raw, &out, &opts(VhdSubformat::Fixed, true));
        let bytes = std::fs::read(&out).unwrap();
        let file = bytes.len() as u64;
        let f = &bytes[bytes.len() - 512..];
        let virt = be64(f, 48);
        assert_eq!(virt % MIB, 0, "virtual size a multiple of 1 MiB");
        assert_eq!(virt, size.div_ceil(MIB) * MIB);
        assert_eq!(be64(f, 40), virt, "original size");
        assert_eq!(file, virt + 512, "file size = virtual + 512");
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(be32(f, 60), 2, "footer type fixed");
        assert_eq!(be64(f, 16), u64::MAX, "fixed data offset");
        assert!(footer_checksum_ok(f), "footer checksum");
        // CHS never larger than the disk.
        let chs = u16::from_be_bytes([f[56], f[57]]) as u64 * f[58] as u64 * f[59] as u64 * 512;
        assert!(chs <= virt);
        if size >= 20 * MIB {
            assert!(virt >= 20 * MIB);
        } else {
            // Below Azure's 20 MiB minimum the size is kept (never padded to 20 MiB).
            assert!(virt < 20 * MIB);
        }
        assert_eq!(&bytes[..size as usize], &std::fs::read(&raw).unwrap()[..]);
        assert!(bytes[size as usize..virt as usize].iter().all(|&b| b == 0));
        if have_qemu {
            assert_eq!(qemu_size(&out), virt);
        }
    }
}

struct CorpusCase {
    file: &'static str,
    size: u64,
    sha256: Option<&'static str>,
}

#[test]
fn vhd_corpus_reads_to_manifest() {
    let cases = [
        CorpusCase {
            file: "images/dissect_fixed.vhd",
            size: 10_485_760,
            sha256: Some("459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463"),
        },
        CorpusCase {
            file: "images/qemu_samples/hyperv2012r2-dynamic.vhd",
            size: 136_365_211_648,
            sha256: None,
        },
        CorpusCase {
            file: "images/qemu_samples/virtualpc-dynamic.vhd",
            size: 136_363_130_880,
            sha256: None,
        },
    ];
    for c in cases {
        let Some(p) = util::corpus(c.file) else {
            return;
        };
        let before = util::sha256_file(&p);
        let img = open_vhd(&p).unwrap_or_else(|e| panic!("{}: {}", c.file, e.chain()));
        assert_eq!(img.virtual_size(), c.size, "{}", c.file);
        match c.sha256 {
            Some(s) => assert_eq!(util::sha256_image(&*img), s, "{}", c.file),
            None => {
                // 127 GiB, empty: every extent is unallocated.
                let mut off = 0;
                while off < c.size {
                    let e = img.map(off, u64::MAX).unwrap();
                    assert!(e.len > 0);
                    assert_ne!(e.kind, diskconv::ExtentKind::Data, "{} at {off:#x}", c.file);
                    off = e.end();
                }
                let mut buf = vec![0xa5u8; 1 << 20];
                img.read_at(&mut buf, 0).unwrap();
                assert!(buf.iter().all(|&b| b == 0));
            }
        }
        drop(img);
        assert_eq!(util::sha256_file(&p), before, "{} was modified", c.file);
    }
}

/// VHD to VHD: the corpus' Windows-made fixed disk, rewritten both ways, compares equal.
#[test]
fn vhd_corpus_rewritten_compares_equal() {
    let Some(p) = util::corpus("images/dissect_fixed.vhd") else {
        return;
    };
    if !util::require("qemu-img") {
        return;
    }
    let dir = util::tmpdir();
    let img = open_vhd(&p).unwrap();
    // Holes of the fixed disk's file are reported as zeros, data as data.
    let e = img.map(0, u64::MAX).unwrap();
    assert!(e.len > 0);
    for sub in [VhdSubformat::Fixed, VhdSubformat::Dynamic] {
        let out = dir.path().join(format!("{sub:?}.vhd"));
        let o = opts(sub, true);
        convert_to_files(
            &*img,
            &out,
            |files| writer::create(files, img.virtual_size(), &o),
            &ConvertOptions::default(),
            None,
        )
        .unwrap();
        assert!(util::qemu_compare(&p, "vpc", &out, "vpc"), "{sub:?}");
        assert_eq!(qemu_size(&out), 10_485_760);
        let back = open_vhd(&out).unwrap();
        assert_eq!(
            util::sha256_image(&*back),
            "459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463"
        );
    }
}

#[test]
fn vhd_corpus_disk2vhd() {
    let Some(p) = util::corpus("images/qemu_samples/d2v-zerofilled.vhd.bz2") else {
        return;
    };
    if !util::require("bzip2") {
        return;
    }
    let dir = util::tmpdir();
    let out = dir.path().join("d2v.vhd");
    let o = util::run(std::process::Command::new("bzip2").arg("-dc").arg(&p));
    std::fs::write(&out, &o.stdout).unwrap();
    let img = open_vhd(&out).unwrap();
    assert_eq!(img.virtual_size(), 263_454_720);
    assert_eq!(
        util::sha256_image(&*img),
        "1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143"
    );
}

#[test]
fn vhd_corpus_bad_checksums_fail_as_documented() {
    for f in [
        "images/dfvfs/image.vhd",
        "images/dfvfs/image-differential.vhd",
    ] {
        let Some(p) = util::corpus(f) else {
            return;
        };
        let before = util::sha256_file(&p);
        let e = open_err(&p);
        assert_eq!(e.kind(), ErrorKind::InvalidFormat, "{f}: {}", e.chain());
        assert!(e.chain().contains("checksum"), "{f}: {}", e.chain());
        assert_eq!(util::sha256_file(&p), before);
    }
}

#[test]
fn vhd_corpus_differencing_without_parent() {
    let Some(p) = util::corpus("images/dfvfs/fat-differential.vhd") else {
        return;
    };
    // The parent (C:\Projects\dfvfs\test_data\fat-parent.vhd) is not in the corpus: a clear
    // "not found" error that names it, never a panic.
    let e = open_err(&p);
    let msg = e.chain();
    assert!(msg.contains("fat-parent.vhd"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
}

// ---- differencing disks built by hand -------------------------------------------------

/// Builds a differencing VHD over `parent` (a dynamic VHD written by us) in `dir`, where
/// `block` 0's sectors 1 and 3 hold 0xcc and the rest comes from the parent.
fn make_child(dir: &Path, parent: &Path, locator: &str, parent_id: Option<[u8; 16]>) -> Vec<u8> {
    make_child_with(dir, parent, b"W2ru", locator, parent_id)
}

/// [`make_child`] with a chosen locator platform code.
fn make_child_with(
    dir: &Path,
    parent: &Path,
    code: &[u8; 4],
    locator: &str,
    parent_id: Option<[u8; 16]>,
) -> Vec<u8> {
    let pbytes = std::fs::read(parent).unwrap();
    let pf = &pbytes[pbytes.len() - 512..];
    let size = be64(pf, 48);
    let bs: u64 = 2 << 20;
    let entries = size.div_ceil(bs);
    // Layout: footer copy 0, header 512, BAT 1536 (padded), locator data, block 0, footer.
    let bat_off = 1536u64;
    let bat_len = (entries * 4).next_multiple_of(512);
    let loc_off = bat_off + bat_len;
    let loc: Vec<u8> = locator
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let loc_space = (loc.len() as u64).next_multiple_of(512);
    let block_off = loc_off + loc_space;
    let mut f = vec![0u8; (block_off + 512 + bs + 512) as usize];
    // Footer: copy the parent's, change type, data offset and id.
    let mut footer = pf.to_vec();
    footer[16..24].copy_from_slice(&512u64.to_be_bytes());
    footer[60..64].copy_from_slice(&4u32.to_be_bytes());
    footer[68..84].copy_from_slice(&[0x11; 16]);
    fix_checksum(&mut footer, 64);
    // Header.
    let mut h = vec![0u8; 1024];
    h[0..8].copy_from_slice(b"cxsparse");
    h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    h[16..24].copy_from_slice(&bat_off.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&(entries as u32).to_be_bytes());
    h[32..36].copy_from_slice(&(bs as u32).to_be_bytes());
    h[40..56].copy_from_slice(&parent_id.unwrap_or_else(|| pf[68..84].try_into().unwrap()));
    for (i, u) in "unused-name.vhd".encode_utf16().enumerate() {
        h[64 + 2 * i..66 + 2 * i].copy_from_slice(&u.to_be_bytes());
    }
    h[576..580].copy_from_slice(code);
    h[580..584].copy_from_slice(&(loc_space as u32).to_be_bytes());
    h[584..588].copy_from_slice(&(loc.len() as u32).to_be_bytes());
    h[592..600].copy_from_slice(&loc_off.to_be_bytes());
    fix_checksum(&mut h, 36);
    let n = f.len();
    f[0..512].copy_from_slice(&footer);
    f[512..1536].copy_from_slice(&h);
    for i in 0..entries as usize {
        let e: u32 = if i == 0 {
            (block_off / 512) as u32
        } else {
            u32::MAX
        };
        f[bat_off as usize + 4 * i..bat_off as usize + 4 * i + 4].copy_from_slice(&e.to_be_bytes());
    }
    f[loc_off as usize..loc_off as usize + loc.len()].copy_from_slice(&loc);
    // Bitmap: sectors 1 and 3 present.
    f[block_off as usize] = 0b0101_0000;
    let data = (block_off + 512) as usize;
    f[data + 512..data + 1024].fill(0xcc);
    f[data + 1536..data + 2048].fill(0xcc);
    f[n - 512..].copy_from_slice(&footer);
    std::fs::write(dir.join("child.vhd"), &f).unwrap();
    // Expected contents.
    let mut want = {
        let img = open_vhd(parent).unwrap();
        let mut b = vec![0u8; img.virtual_size() as usize];
        img.read_at(&mut b, 0).unwrap();
        b
    };
    want[512..1024].fill(0xcc);
    want[1536..2048].fill(0xcc);
    want
}

fn parent_in(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("p.raw");
    util::make_raw(&raw, 3 * MIB, 11);
    let parent = dir.join("parent.vhd");
    write_vhd(&raw, &parent, &opts(VhdSubformat::Dynamic, true));
    parent
}

#[test]
fn vhd_differencing_reads_through_parent() {
    let dir = util::tmpdir();
    let parent = parent_in(dir.path());
    let want = make_child(dir.path(), &parent, ".\\parent.vhd", None);
    let img = open_vhd(&dir.path().join("child.vhd")).unwrap_or_else(|e| panic!("{}", e.chain()));
    contract::check_reader(&*img, &want);
    let info = img.info();
    assert_eq!(info.subformat.as_deref(), Some("differencing"));
    assert_eq!(info.backing_file.as_deref(), Some("parent.vhd"));
    assert!(img.map(0, 512).unwrap().depth == 1);
    assert!(img.map(512, 512).unwrap().depth == 0);
}

/// A Windows absolute locator (drive letter) cannot be opened here: its file name is looked
/// for beside the child, under the reference policy.
#[test]
fn vhd_differencing_absolute_windows_locator() {
    let dir = util::tmpdir();
    let parent = parent_in(dir.path());
    let want = make_child_with(
        dir.path(),
        &parent,
        b"W2ku",
        "C:\\VMs\\Disks\\parent.vhd",
        None,
    );
    let img = open_vhd(&dir.path().join("child.vhd")).unwrap_or_else(|e| panic!("{}", e.chain()));
    contract::check_reader(&*img, &want);
}

#[test]
fn vhd_differencing_wrong_or_missing_parent() {
    let dir = util::tmpdir();
    let parent = parent_in(dir.path());
    make_child(dir.path(), &parent, ".\\parent.vhd", Some([0x42; 16]));
    let e = open_err(&dir.path().join("child.vhd")).chain();
    assert!(
        e.contains("unique id") && e.contains("parent.vhd") && e.contains("child.vhd"),
        "{e}"
    );
    make_child(dir.path(), &parent, ".\\nothere.vhd", None);
    let e = open_err(&dir.path().join("child.vhd")).chain();
    assert!(e.contains("nothere.vhd") && e.contains("not found"), "{e}");
    // Denied by policy: a clear reference error.
    make_child(dir.path(), &parent, ".\\parent.vhd", None);
    let Err(e) = diskconv::open(
        dir.path().join("child.vhd"),
        &OpenOptions::default()
            .format(Format::Vhd)
            .references(ReferencePolicy::Deny),
    ) else {
        panic!("opened with references denied");
    };
    assert_eq!(e.kind(), ErrorKind::ReferenceDenied, "{}", e.chain());
}

// ---- damaged files ------------------------------------------------------------------------

fn small_dynamic(dir: &Path) -> Vec<u8> {
    let raw = dir.join("s.raw");
    util::make_raw(&raw, 3 * MIB, 5);
    let out = dir.join("s.vhd");
    write_vhd(&raw, &out, &opts(VhdSubformat::Dynamic, true));
    std::fs::read(out).unwrap()
}

fn try_open(dir: &Path, bytes: &[u8]) -> diskconv::Result<Vec<u8>> {
    let p = dir.join("bad.vhd");
    std::fs::write(&p, bytes).unwrap();
    let img = open_vhd(&p)?;
    let mut b = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut b, 0)?;
    Ok(b)
}

#[test]
fn vhd_damaged_files_give_clear_errors() {
    let dir = util::tmpdir();
    let good = small_dynamic(dir.path());
    let n = good.len();
    let content = try_open(dir.path(), &good).unwrap();

    // End footer damaged: the copy at offset 0 is used, and info says so.
    let mut b = good.clone();
    b[n - 400] ^= 0xff;
    assert_eq!(try_open(dir.path(), &b).unwrap(), content);
    let img = open_vhd(&dir.path().join("bad.vhd")).unwrap();
    assert!(
        img.info()
            .flags
            .iter()
            .any(|f| f.contains("copy at offset 0"))
    );
    // Both damaged.
    b[100] ^= 0xff;
    let e = try_open(dir.path(), &b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    assert!(e.chain().contains("checksum"), "{}", e.chain());
    // Bad cookie everywhere.
    let mut b = good.clone();
    b[0] = b'X';
    b[n - 512] = b'X';
    assert!(
        try_open(dir.path(), &b)
            .unwrap_err()
            .chain()
            .contains("cookie")
    );
    // Truncated: the end is no longer a footer, the copy at 0 names a BAT block past EOF.
    let e = try_open(dir.path(), &good[..n - 700]).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::InvalidFormat),
        "{}",
        e.chain()
    );
    // Tiny file.
    assert!(try_open(dir.path(), &good[..100]).is_err());
    // Dynamic header checksum.
    let mut b = good.clone();
    b[512 + 900] ^= 1;
    assert!(
        try_open(dir.path(), &b)
            .unwrap_err()
            .chain()
            .contains("dynamic header")
    );
    // Absurd block size (checksum fixed so the block size is what fails).
    let mut b = good.clone();
    b[512 + 32..512 + 36].copy_from_slice(&(1u32 << 31).to_be_bytes());
    fix_checksum(&mut b[512..1536], 36);
    assert!(
        try_open(dir.path(), &b)
            .unwrap_err()
            .chain()
            .contains("block size")
    );
    // BAT entry past EOF: Corrupt when that block is read.
    let mut b = good.clone();
    b[1536..1540].copy_from_slice(&0x00ff_0000u32.to_be_bytes());
    let e = try_open(dir.path(), &b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
    assert!(e.chain().contains("past the end"), "{}", e.chain());
    // Two entries at the same block.
    let mut b = good.clone();
    let first: [u8; 4] = b[1536..1540].try_into().unwrap();
    b[1540..1544].copy_from_slice(&first);
    let e = try_open(dir.path(), &b).unwrap_err();
    assert!(e.chain().contains("overlapping"), "{}", e.chain());
    // A fixed disk whose data is cut short.
    let raw = dir.path().join("f.raw");
    util::make_raw(&raw, 2 * MIB, 1);
    let out = dir.path().join("f.vhd");
    write_vhd(&raw, &out, &opts(VhdSubformat::Fixed, true));
    let fixed = std::fs::read(&out).unwrap();
    let mut cut = fixed[..MIB as usize].to_vec();
    cut.extend_from_slice(&fixed[fixed.len() - 512..]);
    let e = try_open(dir.path(), &cut).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.chain());
}

#[test]
fn vhd_old_511_byte_footer() {
    let dir = util::tmpdir();
    let raw = dir.path().join("f.raw");
    util::make_raw(&raw, MIB, 9);
    let out = dir.path().join("f.vhd");
    write_vhd(&raw, &out, &opts(VhdSubformat::Fixed, true));
    let mut b = std::fs::read(&out).unwrap();
    b.pop(); // the last reserved byte is zero: the checksum stays valid
    assert_eq!(
        try_open(dir.path(), &b).unwrap(),
        std::fs::read(&raw).unwrap()
    );
}
